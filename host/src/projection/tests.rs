//! The runner against a store that fails: transient errors are retried with
//! backoff and never reported as poison.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use super::{ProjectionConfig, Projections};
use crate::config::Limits;
use crate::runtime::Runtime;
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::store::*;

/// A store whose first `failures` view commits fail as unavailable.
struct Flaky {
    inner: Arc<dyn EventStore>,
    failures: AtomicU32,
    failed: AtomicU32,
}

#[async_trait]
impl EventStore for Flaky {
    async fn append(&self, r: AppendRequest) -> Result<AppendOutcome, StoreError> {
        self.inner.append(r).await
    }
    async fn read_stream(&self, q: StreamQuery<'_>) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_stream(q).await
    }
    async fn read_global(&self, q: GlobalQuery<'_>) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_global(q).await
    }
    async fn read_positions(&self, f: Position, n: u32) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_positions(f, n).await
    }
    async fn stream_version(&self, s: &str) -> Result<u64, StoreError> {
        self.inner.stream_version(s).await
    }
    async fn head_position(&self) -> Result<Position, StoreError> {
        self.inner.head_position().await
    }
    async fn find_idempotency(
        &self,
        k: &str,
        s: i64,
    ) -> Result<Option<IdempotencyEntry>, StoreError> {
        self.inner.find_idempotency(k, s).await
    }
    async fn purge_idempotency(&self, b: i64) -> Result<u64, StoreError> {
        self.inner.purge_idempotency(b).await
    }
    async fn purge_saga_history(&self, b: i64, l: u32) -> Result<u64, StoreError> {
        self.inner.purge_saga_history(b, l).await
    }
    async fn load_snapshot(&self, s: &str, h: &str) -> Result<Option<Snapshot>, StoreError> {
        self.inner.load_snapshot(s, h).await
    }
    async fn save_snapshot(&self, s: Snapshot) -> Result<(), StoreError> {
        self.inner.save_snapshot(s).await
    }
    fn subscribe_head(&self) -> tokio::sync::watch::Receiver<Position> {
        self.inner.subscribe_head()
    }
    fn subscribe_commits(&self) -> tokio::sync::broadcast::Receiver<CommittedBatch> {
        self.inner.subscribe_commits()
    }
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
    async fn record_deployment(&self, d: NewDeployment) -> Result<Deployment, StoreError> {
        self.inner.record_deployment(d).await
    }
    async fn plugin_history(&self, n: &str) -> Result<Vec<Deployment>, StoreError> {
        self.inner.plugin_history(n).await
    }
    async fn current_deployments(&self) -> Result<Vec<Deployment>, StoreError> {
        self.inner.current_deployments().await
    }
    async fn plugin_bytes(&self, h: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.plugin_bytes(h).await
    }
    async fn saga_load(&self, s: &str) -> Result<SagaLoad, StoreError> {
        self.inner.saga_load(s).await
    }
    async fn commit_saga(&self, c: SagaCommit) -> Result<(), StoreError> {
        self.inner.commit_saga(c).await
    }
    async fn saga_instance(
        &self,
        s: &str,
        i: &str,
    ) -> Result<Option<SagaInstanceRecord>, StoreError> {
        self.inner.saga_instance(s, i).await
    }
    async fn saga_instances(
        &self,
        s: &str,
        i: &[String],
    ) -> Result<Vec<SagaInstanceRecord>, StoreError> {
        self.inner.saga_instances(s, i).await
    }
    async fn saga_outbox(&self, s: &str, i: &str) -> Result<Vec<OutboxCommand>, StoreError> {
        self.inner.saga_outbox(s, i).await
    }
    async fn saga_history(
        &self,
        s: &str,
        i: &str,
        l: u32,
    ) -> Result<Vec<SagaHistoryEntry>, StoreError> {
        self.inner.saga_history(s, i, l).await
    }
    async fn saga_counts(&self, s: &str) -> Result<SagaCounts, StoreError> {
        self.inner.saga_counts(s).await
    }
    async fn dead_letters(&self, a: u64, l: u32) -> Result<Vec<DeadLetter>, StoreError> {
        self.inner.dead_letters(a, l).await
    }
    async fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        self.inner.dead_letter(id).await
    }
    async fn try_lease(&self, n: &str, h: &str, ttl: i64) -> Result<bool, StoreError> {
        self.inner.try_lease(n, h, ttl).await
    }
    async fn release_lease(&self, n: &str, h: &str) -> Result<(), StoreError> {
        self.inner.release_lease(n, h).await
    }
    async fn leases(&self) -> Result<Vec<LeaseRecord>, StoreError> {
        self.inner.leases().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn close(&self) {
        self.inner.close().await
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
    let store: Arc<dyn EventStore> = flaky.clone();
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
    let projections = Projections::new(store.clone(), runtime, config);
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
