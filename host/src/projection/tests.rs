//! The runner against a store that fails: transient errors are retried with
//! backoff and never reported as poison.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use super::{ProjectionConfig, ProjectionStores, Projections};
use crate::config::Limits;
use crate::lease::Leases;
use crate::runtime::Runtime;
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::store::*;

/// Views whose first `failures` commits fail as unavailable.
struct Flaky {
    inner: Arc<dyn EventStore>,
    failures: AtomicU32,
    failed: AtomicU32,
}

#[async_trait]
impl ViewStore for Flaky {
    async fn commit_view(&self, c: ViewCommit) -> Result<(), StoreError> {
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Unavailable("injected: disk I/O error".into()));
        }
        self.inner.commit_view(c).await
    }
    async fn view_get(&self, v: ViewId<'_>, k: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.view_get(v, k).await
    }
    async fn view_scan(
        &self,
        v: ViewId<'_>,
        p: &str,
        a: Option<&str>,
        l: u32,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.view_scan(v, p, a, l).await
    }
    async fn generations(&self) -> Result<Vec<GenerationRecord>, StoreError> {
        self.inner.generations().await
    }
    async fn save_generation(&self, r: GenerationRecord) -> Result<(), StoreError> {
        self.inner.save_generation(r).await
    }
    async fn promote_generation(&self, p: &str, g: u64) -> Result<(), StoreError> {
        self.inner.promote_generation(p, g).await
    }
    async fn drop_generation(&self, v: ViewId<'_>, l: u32) -> Result<u64, StoreError> {
        self.inner.drop_generation(v, l).await
    }
    async fn skips(&self, p: &str) -> Result<Vec<(u64, SkipRecord)>, StoreError> {
        self.inner.skips(p).await
    }
}

#[tokio::test]
async fn transient_store_errors_are_retried_not_reported_as_poison() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("kiln.db").display());
    let inner: Arc<dyn EventStore> = Arc::new(
        SqliteStore::open(&url, SqliteOptions::default())
            .await
            .unwrap(),
    );
    let flaky = Arc::new(Flaky {
        inner: inner.clone(),
        failures: AtomicU32::new(3),
        failed: AtomicU32::new(0),
    });
    let store = inner.clone();
    let event = |event_type: &str, data: &str| NewEvent {
        event_type: event_type.into(),
        schema: 1,
        data: data.into(),
        metadata: "{}".into(),
    };
    store
        .append(AppendRequest {
            stream_id: "bank_account-1".into(),
            expected: ExpectedVersion::NoStream,
            events: vec![
                event("Opened", r#"{"owner":"ann"}"#),
                event("Deposited", r#"{"amount":40}"#),
                event("Deposited", r#"{"amount":2}"#),
            ],
            idempotency: None,
        })
        .await
        .unwrap();
    let runtime = Runtime::new(Limits::default(), false).unwrap();
    let bytes = std::fs::read(kiln_plugin_artifacts::ACCOUNT_BALANCES).unwrap();
    let plugin = Arc::new(runtime.compile("account_balances", &bytes).unwrap());
    let config = ProjectionConfig {
        retry_backoff_max: Duration::from_millis(100),
        ..ProjectionConfig::default()
    };
    let stores = ProjectionStores {
        log: inner.clone(),
        views: flaky.clone(),
        catalog: inner.clone(),
    };
    let leases = Leases::new(inner.clone(), Duration::from_secs(5), false);
    let projections = Projections::new(stores, runtime, config, leases);
    projections.deploy(plugin, DeployMode::Live).await.unwrap();
    let mut status = projections.status("account_balances").await.unwrap();
    for _ in 0..500 {
        if status.position == 3 {
            break;
        }
        assert!(
            status.error.as_ref().is_none_or(|e| e.position == 0),
            "a store error is not poison: {status:?}"
        );
        assert_ne!(status.state, "failed", "{status:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
        status = projections.status("account_balances").await.unwrap();
    }
    assert_eq!(status.position, 3, "{status:?}");
    assert_eq!(
        flaky.failed.load(Ordering::SeqCst),
        3,
        "the failures happened"
    );
    assert!(
        status.error.is_none(),
        "cleared once it went through: {status:?}"
    );
    let row = inner
        .view_get(
            ViewId {
                projection: "account_balances",
                generation: status.generation,
            },
            "account-1",
        )
        .await
        .unwrap()
        .unwrap();
    let row: serde_json::Value = serde_json::from_slice(&row).unwrap();
    assert_eq!(row["balance"], 42, "each event counted once: {row}");
    projections.stop_all().await;
}
