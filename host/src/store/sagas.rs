//! Sagas: instances, the outbox of commands they decided, timers, history
//! and dead letters.

use async_trait::async_trait;
use serde::Serialize;

use super::{Position, StoreError};

/// Where a saga instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SagaStatus {
    /// Reacting to events, its commands applied as they come.
    Running,
    /// A command was refused (or a timer ran out) and it is undoing steps.
    Compensating,
    /// Done, and every command it decided has been applied.
    Completed,
    /// A command exhausted its attempts and waits in the dead-letter list.
    Failed,
}

impl SagaStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SagaStatus::Running => "running",
            SagaStatus::Compensating => "compensating",
            SagaStatus::Completed => "completed",
            SagaStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Result<Self, StoreError> {
        Ok(match text {
            "running" => SagaStatus::Running,
            "compensating" => SagaStatus::Compensating,
            "completed" => SagaStatus::Completed,
            "failed" => SagaStatus::Failed,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "unknown saga status {other:?}"
                )));
            }
        })
    }
}

/// A saga instance as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaInstanceRecord {
    pub saga: String,
    pub instance: String,
    /// The plugin's state (JSON by convention).
    pub state: Vec<u8>,
    pub status: SagaStatus,
    /// The plugin said the instance is done.
    pub done: bool,
    /// The step number of the next command it decides.
    pub next_step: u64,
    /// The position of the last event its applied commands produced: the
    /// saga must have processed it before a timer or failure is delivered.
    pub awaited_position: Position,
    /// Microseconds since the Unix epoch.
    pub created_at_us: i64,
    pub updated_at_us: i64,
}

/// A command a saga decided, kept until it is applied (the outbox), or
/// moved to the dead-letter list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboxCommand {
    pub saga: String,
    pub instance: String,
    /// Per instance, increasing; the command's idempotency key derives from it.
    pub step: u64,
    pub aggregate: String,
    pub aggregate_id: String,
    pub command_type: String,
    /// JSON text.
    pub data: String,
    /// JSON object text: correlation and causation ids, saga and step.
    pub metadata: String,
    /// The command undoes an earlier step.
    pub compensating: bool,
    /// Failed attempts so far.
    pub attempts: u32,
    /// One entry per failed attempt: `{"at": RFC 3339, "error": {code, message}}`.
    pub errors: Vec<serde_json::Value>,
    pub created_at_us: i64,
    /// The key every dispatch of this command carries, so that it has one
    /// effect however often it is sent; fixed when the command is decided
    /// and stored with it (`saga::dispatch::idempotency_key`).
    pub idempotency_key: String,
}

/// A timer of a saga instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaTimerRecord {
    pub instance: String,
    pub name: String,
    /// Milliseconds since the Unix epoch.
    pub fire_at_ms: i64,
}

/// A command that exhausted its attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    pub id: u64,
    pub command: OutboxCommand,
    /// Microseconds since the Unix epoch.
    pub dead_at_us: i64,
}

/// One entry of an instance's history: a step and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaHistoryEntry {
    pub instance: String,
    /// Microseconds since the Unix epoch.
    pub at_us: i64,
    /// `{"kind": …, …}`.
    pub entry: serde_json::Value,
}

/// Everything a saga runner needs to resume.
#[derive(Debug, Clone, Default)]
pub struct SagaLoad {
    /// The checkpoint; `None` for a saga never started.
    pub checkpoint: Option<Position>,
    /// Instances not completed.
    pub instances: Vec<SagaInstanceRecord>,
    /// Every command in the outbox, by instance and step.
    pub outbox: Vec<OutboxCommand>,
    pub timers: Vec<SagaTimerRecord>,
}

/// The changes of one saga batch, committed in one transaction or not at all.
#[derive(Debug, Clone, Default)]
pub struct SagaCommit {
    pub saga: String,
    /// Move the checkpoint from `.0` to `.1`; fails with
    /// [`StoreError::CheckpointMoved`] when the stored one is not `.0`
    /// (`0` also matches a saga with no checkpoint yet).
    pub checkpoint: Option<(Position, Position)>,
    /// Instances written (replaced) whole.
    pub instances: Vec<SagaInstanceRecord>,
    /// Outbox rows inserted or replaced.
    pub outbox_put: Vec<OutboxCommand>,
    /// Outbox rows removed: (instance, step). A commit never both writes and
    /// removes the same row.
    pub outbox_delete: Vec<(String, u64)>,
    pub timers_put: Vec<SagaTimerRecord>,
    /// Timers removed: (instance, name), or every timer of the instance.
    pub timers_delete: Vec<(String, Option<String>)>,
    pub history: Vec<SagaHistoryEntry>,
    /// Commands moved to the dead-letter list (remove them from the outbox
    /// in the same commit).
    pub dead_letters: Vec<OutboxCommand>,
    /// Dead letters taken back (retried).
    pub dead_letters_delete: Vec<u64>,
    /// Answer only once the commit is on disk. Without it the commit is
    /// atomic and ordered, and on disk once any later durable commit is (a
    /// command the saga dispatches after it, say): a backend may skip the
    /// fsync (SQLite's WAL) when nothing else needs one.
    pub durable: bool,
}

/// Instances of a saga per status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SagaCounts {
    pub running: u64,
    pub compensating: u64,
    pub completed: u64,
    pub failed: u64,
    pub outbox: u64,
    pub dead_letters: u64,
}

/// Idempotency keys the saga manager derives for its commands start with
/// this; HTTP clients may not use it.
pub const SAGA_IDEMPOTENCY_PREFIX: &str = "kiln-saga/";
/// How long the result of a saga command is remembered: a saga that resumes
/// after an outage shorter than this never applies a command twice.
pub const SAGA_IDEMPOTENCY_RETENTION_US: i64 = 7 * 24 * 3600 * 1_000_000;

/// Saga state. What saga runners and the saga routes need.
#[async_trait]
pub trait SagaStore: Send + Sync + 'static {
    /// What a saga runner resumes from.
    async fn saga_load(&self, saga: &str) -> Result<SagaLoad, StoreError>;

    /// Commit a saga batch: checkpoint, instances, outbox, timers, history
    /// and dead letters together, durably.
    async fn commit_saga(&self, commit: SagaCommit) -> Result<(), StoreError>;

    /// `commit_saga`, telling `ordered` as soon as every write this store is
    /// asked for afterwards (an append above all) can only commit together
    /// with this commit or after it. A saga runner dispatches the commands a
    /// commit puts in the outbox from then on, rather than once it is
    /// written. The default tells it when the commit is written; a store
    /// whose single writer commits in the order it is asked (SQLite) tells
    /// it once the commit is queued.
    async fn commit_saga_ordered(
        &self,
        commit: SagaCommit,
        ordered: tokio::sync::oneshot::Sender<()>,
    ) -> Result<(), StoreError> {
        let result = self.commit_saga(commit).await;
        if result.is_ok() {
            let _ = ordered.send(());
        }
        result
    }

    /// Whether `commit_saga_ordered` tells `ordered` before the commit is
    /// written (then waiting for it is short and worth it).
    fn orders_writes_as_queued(&self) -> bool {
        false
    }

    /// One instance, whatever its status.
    async fn saga_instance(
        &self,
        saga: &str,
        instance: &str,
    ) -> Result<Option<SagaInstanceRecord>, StoreError>;

    /// The instances of a saga among `instances` (any status), in no order.
    async fn saga_instances(
        &self,
        saga: &str,
        instances: &[String],
    ) -> Result<Vec<SagaInstanceRecord>, StoreError>;

    /// The outbox of one instance, by step.
    async fn saga_outbox(
        &self,
        saga: &str,
        instance: &str,
    ) -> Result<Vec<OutboxCommand>, StoreError>;

    /// The newest `limit` history entries of an instance, oldest first.
    async fn saga_history(
        &self,
        saga: &str,
        instance: &str,
        limit: u32,
    ) -> Result<Vec<SagaHistoryEntry>, StoreError>;

    /// Instances per status, outbox depth and dead letters of a saga.
    async fn saga_counts(&self, saga: &str) -> Result<SagaCounts, StoreError>;

    /// Delete up to `limit` history entries of instances (of any saga)
    /// completed before `completed_before_us`; returns how many. The
    /// instances themselves stay: a completed instance ignores later events
    /// only as long as its row says it is completed.
    async fn purge_saga_history(
        &self,
        completed_before_us: i64,
        limit: u32,
    ) -> Result<u64, StoreError>;

    /// Dead letters, oldest first, from id `after` on.
    async fn dead_letters(&self, after: u64, limit: u32) -> Result<Vec<DeadLetter>, StoreError>;

    /// One dead letter.
    async fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>, StoreError>;
}
