//! Undeployed projections (`DELETE /plugins/{name}`): their runners stop at
//! once and reads answer that they were removed; their generations are kept
//! for [`ProjectionConfig::undeploy_grace`](super::ProjectionConfig), so a
//! deployment within it resumes from the checkpoints, and then retired and
//! their rows dropped (a later deployment builds from the start).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::runner::Control;
use super::{ProjectionError, Projections};
use crate::lease::PROJECTION_PREFIX;
use crate::store::{
    DeployMode, GenerationRecord, GenerationRole, PluginCatalog, StoreError, ViewId, ViewStore,
    now_us,
};

/// The projections undeployed and not deployed since.
#[derive(Default)]
pub(super) struct Removed {
    names: RwLock<HashSet<String>>,
    /// The drops waiting for their grace to end, by name: a token each, so
    /// that a drop cancelled by a deployment (and scheduled again by a
    /// later removal) does not run.
    pending: Arc<tokio::sync::Mutex<HashMap<String, u64>>>,
    next_token: AtomicU64,
}

impl Removed {
    fn names(&self) -> std::sync::RwLockWriteGuard<'_, HashSet<String>> {
        self.names.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl Projections {
    /// `DELETE /plugins/{name}`: stop the projection's runners and forget
    /// it; its rows go when the grace that started at `removed_at_us` ends.
    pub async fn undeploy(&self, name: &str, removed_at_us: i64) {
        let entry = self
            .entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        self.removed.names().insert(name.to_string());
        if let Some(entry) = entry {
            entry.runs_here.store(false, Ordering::SeqCst);
            let mut state = entry.state.lock().await;
            state.current = None;
            let active = state.active.take();
            let next = state.next.take().map(|(g, _)| g);
            for generation in active.iter().chain(next.iter()) {
                generation.stop_serving();
                let _ = generation.control(Control::Stop).await;
            }
        }
        self.leases
            .forget(&format!("{PROJECTION_PREFIX}{name}"))
            .await;
        tracing::info!(
            projection = name,
            grace_s = self.ctx.config.undeploy_grace.as_secs(),
            "projection removed; its rows are dropped after the grace period"
        );
        self.schedule_drop(name, removed_at_us).await;
    }

    /// At start: `name` was removed at `removed_at_us` (by this host or
    /// another): its rows go when the grace ends, at once if it has.
    pub async fn restore_removed(&self, name: &str, removed_at_us: i64) {
        self.removed.names().insert(name.to_string());
        self.schedule_drop(name, removed_at_us).await;
    }

    /// A removed projection is deployed again: keep its generations if
    /// their drop has not started. Whether it was removed.
    pub async fn cancel_removal(&self, name: &str) -> bool {
        self.removed.pending.lock().await.remove(name);
        self.removed.names().remove(name)
    }

    /// Why `name` is not here: removed, or unknown.
    pub fn missing(&self, name: &str) -> ProjectionError {
        if self.removed.names().contains(name) {
            ProjectionError::Removed(name.to_string())
        } else {
            ProjectionError::NotFound(name.to_string())
        }
    }

    async fn schedule_drop(&self, name: &str, removed_at_us: i64) {
        let token = self.removed.next_token.fetch_add(1, Ordering::SeqCst);
        self.removed
            .pending
            .lock()
            .await
            .insert(name.to_string(), token);
        let elapsed = Duration::from_micros(now_us().saturating_sub(removed_at_us).max(0) as u64);
        let wait = self.ctx.config.undeploy_grace.saturating_sub(elapsed);
        let pending = self.removed.pending.clone();
        let catalog = self.catalog.clone();
        let views = self.views().clone();
        let chunk = self.ctx.config.drop_chunk;
        let name = name.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            // Under the lock, so that a deployment either cancels the drop
            // or finds the generations retired.
            let generations = {
                let mut pending = pending.lock().await;
                if pending.get(&name) != Some(&token) {
                    return;
                }
                pending.remove(&name);
                // Deployed again through another host meanwhile?
                match still_removed(catalog.as_ref(), &name).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => {
                        tracing::warn!(projection = %name, error = %e, "could not check a removed projection's catalog entry; its rows are dropped at the next start");
                        return;
                    }
                }
                match retire_all(views.as_ref(), &name).await {
                    Ok(generations) => generations,
                    Err(e) => {
                        tracing::warn!(projection = %name, error = %e, "could not retire a removed projection's generations; they are dropped at the next start");
                        return;
                    }
                }
            };
            let mut rows = 0;
            for generation in generations {
                match drop_rows(views.as_ref(), &name, generation, chunk).await {
                    Ok(n) => rows += n,
                    Err(e) => {
                        tracing::warn!(projection = %name, generation, error = %e, "could not drop a removed projection's rows; they are dropped at the next start");
                        return;
                    }
                }
            }
            tracing::info!(projection = %name, rows, "removed projection's rows dropped");
        });
    }
}

/// Whether the latest deployment of `name` is a removal.
async fn still_removed(catalog: &dyn PluginCatalog, name: &str) -> Result<bool, StoreError> {
    Ok(catalog
        .plugin_history(name)
        .await?
        .first()
        .is_some_and(|d| d.mode == DeployMode::Removed))
}

/// Mark every generation of `name` retired; their numbers.
async fn retire_all(views: &dyn ViewStore, name: &str) -> Result<Vec<u64>, StoreError> {
    let mut generations = Vec::new();
    for record in views.generations().await? {
        if record.name != name {
            continue;
        }
        generations.push(record.generation);
        if record.role != GenerationRole::Retired {
            views
                .save_generation(GenerationRecord {
                    role: GenerationRole::Retired,
                    ..record
                })
                .await?;
        }
    }
    Ok(generations)
}

/// Delete a generation's rows, `chunk` per transaction, then the
/// generation; the rows deleted.
async fn drop_rows(
    views: &dyn ViewStore,
    name: &str,
    generation: u64,
    chunk: u32,
) -> Result<u64, StoreError> {
    let mut dropped = 0;
    loop {
        let view = ViewId {
            projection: name,
            generation,
        };
        match views.drop_generation(view, chunk).await? {
            0 => return Ok(dropped),
            n => dropped += n,
        }
    }
}
