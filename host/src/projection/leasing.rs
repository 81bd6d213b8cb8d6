//! Projections under leases: started when this host takes a projection's
//! lease, stopped when it loses it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;

use super::runner::Control;
use super::{ProjectionError, Projections};
use crate::lease::{LeaseHolder, PROJECTION_PREFIX};
use crate::store::GenerationRecord;

#[async_trait]
impl LeaseHolder for Projections {
    fn lease_prefix(&self) -> &'static str {
        PROJECTION_PREFIX
    }

    async fn take_over(&self, name: &str) {
        if let Err(e) = self.resume_here(name).await {
            tracing::error!(projection = name, error = %e, "could not start a projection after taking its lease");
        }
    }

    async fn let_go(&self, name: &str) {
        self.stop_here(name).await;
    }
}

impl Projections {
    /// This host took the projection's lease: start its runners from the
    /// stored generations and checkpoints (nothing when they run already).
    async fn resume_here(&self, name: &str) -> Result<(), ProjectionError> {
        let Some(entry) = self.get(name) else {
            return Ok(());
        };
        let (plugin, mode) = {
            let state = entry.state.lock().await;
            if state.active.is_some() || state.next.is_some() {
                entry.runs_here.store(true, Ordering::SeqCst);
                return Ok(());
            }
            match &state.current {
                Some(current) => current.clone(),
                None => return Ok(()),
            }
        };
        let records: Vec<GenerationRecord> = self
            .views()
            .generations()
            .await?
            .into_iter()
            .filter(|r| r.name == name)
            .collect();
        let mut versions = HashMap::new();
        for record in &records {
            if record.plugin_hash == plugin.hash || versions.contains_key(&record.plugin_hash) {
                continue;
            }
            let Some(bytes) = self.catalog.plugin_bytes(&record.plugin_hash).await? else {
                continue;
            };
            let runtime = self.ctx.runtime.clone();
            let owned = name.to_string();
            let compiled =
                tokio::task::spawn_blocking(move || runtime.compile(&owned, &bytes)).await;
            if let Ok(Ok(version)) = compiled {
                versions.insert(record.plugin_hash.clone(), Arc::new(version));
            }
        }
        tracing::info!(
            projection = name,
            "took over the projection; resuming from its checkpoints"
        );
        self.resume_records(&entry, &plugin, &records, &versions)
            .await;
        if self.adopt_running(&entry, &plugin).await {
            Ok(())
        } else {
            self.deploy(plugin, mode).await
        }
    }

    /// This host lost the projection's lease: stop its runners; reads
    /// follow the stored checkpoints from now on.
    async fn stop_here(&self, name: &str) {
        let Some(entry) = self.get(name) else { return };
        entry.runs_here.store(false, Ordering::SeqCst);
        let mut state = entry.state.lock().await;
        let active = state.active.take();
        let next = state.next.take().map(|(g, _)| g);
        for generation in active.iter().chain(next.iter()) {
            generation.stop_serving();
            let _ = generation.control(Control::Stop).await;
        }
        tracing::info!(
            projection = name,
            "stopped the projection: another host runs it"
        );
    }
}
