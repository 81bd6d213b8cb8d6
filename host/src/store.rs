//! The event store: the contract every backend implements.
//!
//! The store is append-only. Each event has a 1-based `version` inside its
//! stream and a gap-free `position` in the global order, plus a hash chained
//! to the previous event in that order (see [`hash_chain`]). Appends carry an
//! [`ExpectedVersion`]; a mismatch is a [`StoreError::WrongExpectedVersion`],
//! never a silent overwrite. An acknowledged append is durable (fsynced);
//! backends batch concurrent appends into one transaction (group commit).

pub mod db_error;
pub mod hash_chain;
pub mod postgres;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

/// A position in the global order of events, 1-based.
pub type Position = u64;

/// What the writer of an append believes the stream's version to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must have no events yet.
    NoStream,
    /// The stream must be at exactly this version (0 is the same as `NoStream`).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream currently at `actual` (0 = no stream) satisfies this.
    pub fn matches(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exact(v) => v == actual,
        }
    }
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no_stream"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// An event to append. `data` and `metadata` are JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub event_type: String,
    pub schema: u32,
    pub data: String,
    pub metadata: String,
}

/// An event as committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub position: Position,
    pub stream_id: String,
    pub version: u64,
    pub event_type: String,
    pub schema: u32,
    /// JSON text.
    pub data: String,
    /// JSON text.
    pub metadata: String,
    /// Microseconds since the Unix epoch, never decreasing along positions.
    pub recorded_at_us: i64,
    pub hash: [u8; 32],
}

/// The idempotency record written with an append, in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyClaim {
    pub key: String,
    /// A digest of the request, to tell a repeat from a reuse of the key.
    pub request_hash: String,
    /// Entries created before this time (microseconds) have expired: the key
    /// is free again and its old entry is replaced.
    pub window_start_us: i64,
}

/// The stored result of a command that carried an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IdempotencyEntry {
    pub key: String,
    pub request_hash: String,
    pub stream_id: String,
    /// The stream's version after the command.
    pub version: u64,
    /// The position of the command's first event, if it produced any.
    pub first_position: Option<Position>,
    pub event_count: u32,
    /// Microseconds since the Unix epoch.
    pub created_at_us: i64,
}

/// One append: events for one stream, all or nothing.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    pub stream_id: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
    pub idempotency: Option<IdempotencyClaim>,
}

/// The result of an append that did not fail.
#[derive(Debug, Clone)]
pub enum AppendOutcome {
    /// The events were committed (an empty request commits nothing and
    /// reports the current version).
    Committed {
        /// The stream's version after the append.
        version: u64,
        events: Vec<RecordedEvent>,
    },
    /// The idempotency key was already used; nothing was appended.
    AlreadyApplied(IdempotencyEntry),
}

/// A slice of one stream.
#[derive(Debug, Clone)]
pub struct StreamQuery<'a> {
    pub stream_id: &'a str,
    /// First version to return (1-based).
    pub from_version: u64,
    /// Last version to return, inclusive.
    pub to_version: Option<u64>,
    /// Only events recorded at or before this time (microseconds).
    pub recorded_until_us: Option<i64>,
    pub limit: u32,
}

/// A saved aggregate state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub stream_id: String,
    /// The content hash of the plugin that folded this state.
    pub plugin_hash: String,
    pub version: u64,
    pub state: Vec<u8>,
}

/// A slice of the global log.
#[derive(Debug, Clone, Copy)]
pub struct GlobalQuery<'a> {
    /// First position to return.
    pub from_position: Position,
    /// Last position to consider, inclusive.
    pub until_position: Option<Position>,
    pub limit: u32,
    /// Only events of these types (`None` or empty: all).
    pub types: Option<&'a [String]>,
}

/// Events committed together, in position order, as the live feed carries them.
pub type CommittedBatch = Arc<[RecordedEvent]>;

/// One generation of a projection's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ViewId<'a> {
    pub projection: &'a str,
    pub generation: u64,
}

/// What a generation is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GenerationRole {
    /// Serves reads.
    Active,
    /// Being built from history; takes over reads once caught up.
    Building,
    /// Being built, but reads stay on the active one until an operator promotes it.
    Shadow,
    /// Replaced; its rows are being dropped.
    Retired,
}

impl GenerationRole {
    pub fn as_str(self) -> &'static str {
        match self {
            GenerationRole::Active => "active",
            GenerationRole::Building => "building",
            GenerationRole::Shadow => "shadow",
            GenerationRole::Retired => "retired",
        }
    }

    pub fn parse(text: &str) -> Result<Self, StoreError> {
        Ok(match text {
            "active" => GenerationRole::Active,
            "building" => GenerationRole::Building,
            "shadow" => GenerationRole::Shadow,
            "retired" => GenerationRole::Retired,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "unknown generation role {other:?}"
                )));
            }
        })
    }
}

/// A projection generation as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationRecord {
    pub name: String,
    pub generation: u64,
    pub plugin_hash: String,
    pub role: GenerationRole,
    /// The checkpoint: the last position processed.
    pub position: Position,
}

/// A change to one view row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowWrite {
    Put(Vec<u8>),
    Delete,
}

/// An event skipped by an operator's decision, recorded with the checkpoint
/// that moves past it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkipRecord {
    pub position: Position,
    pub stream_id: String,
    pub event_type: String,
    pub reason: String,
}

/// The result of one projection batch: its view writes and its new
/// checkpoint, committed in one transaction or not at all.
#[derive(Debug, Clone)]
pub struct ViewCommit {
    pub projection: String,
    pub generation: u64,
    /// The checkpoint the batch started from. The commit fails with
    /// [`StoreError::CheckpointMoved`] if the stored one differs, so two
    /// runners of one generation can never both write.
    pub from_position: Position,
    /// The new checkpoint.
    pub to_position: Position,
    /// At most one write per key, in any order.
    pub writes: Vec<(String, RowWrite)>,
    pub skip: Option<SkipRecord>,
}

/// How a plugin version got deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployMode {
    /// Takes over (a projection rebuilds, then switches).
    Live,
    /// A projection built beside the active one, not serving reads.
    Shadow,
    /// A previous version deployed again.
    Rollback,
}

impl DeployMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployMode::Live => "live",
            DeployMode::Shadow => "shadow",
            DeployMode::Rollback => "rollback",
        }
    }

    pub fn parse(text: &str) -> Result<Self, StoreError> {
        Ok(match text {
            "live" => DeployMode::Live,
            "shadow" => DeployMode::Shadow,
            "rollback" => DeployMode::Rollback,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "unknown deploy mode {other:?}"
                )));
            }
        })
    }
}

/// One deployment of a plugin version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deployment {
    pub id: u64,
    pub name: String,
    /// `sha256:<hex>` of the component.
    pub hash: String,
    pub kind: String,
    pub mode: DeployMode,
    /// `upload` or `directory`.
    pub source: String,
    pub size: u64,
    /// Microseconds since the Unix epoch.
    pub deployed_at_us: i64,
}

/// A deployment to record, with the component's bytes.
#[derive(Debug, Clone)]
pub struct NewDeployment {
    pub name: String,
    pub hash: String,
    pub kind: String,
    pub mode: DeployMode,
    pub source: String,
    pub bytes: Arc<Vec<u8>>,
}

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

/// A lease as stored: which host runs a projection or saga, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseRecord {
    /// `projection:<name>` or `saga:<name>`.
    pub name: String,
    /// The holding host's id.
    pub holder: String,
    /// Microseconds since the Unix epoch (by the database's clock on
    /// PostgreSQL); past it, any host may take the lease.
    pub expires_at_us: i64,
}

/// Errors at the store boundary. Cloning is cheap: one failed batch answers
/// each of its writes with the same error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The stream is not at the expected version.
    ///
    /// Handling: report 409 `wrong_expected_version`, or reload and retry when
    /// the caller did not ask for a version itself.
    #[error("stream {stream_id} is at version {actual}, expected {expected}")]
    WrongExpectedVersion {
        stream_id: String,
        expected: ExpectedVersion,
        actual: u64,
    },
    /// No connection to the database can be had (a pool timed out or
    /// closed, an I/O or TLS error, a server that went away or is shutting
    /// down, a busy or full SQLite file): retrying later may succeed.
    ///
    /// Handling: 503 `unavailable`; the append may be retried.
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    /// The database answered with an error that retrying will not mend: a
    /// violated constraint, a row that does not decode, a statement that
    /// fails. A bug, or data changed behind the store's back; `source`
    /// keeps the whole cause.
    ///
    /// Handling: 500 `internal` with an error id; the cause chain is logged
    /// under that id.
    #[error("event store failed: {source}")]
    Internal {
        source: Arc<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The store is shutting down and takes no more writes.
    ///
    /// Handling: 503 `unavailable`.
    #[error("event store is shutting down")]
    ShuttingDown,
    /// Data in the store breaks an invariant (e.g. a malformed hash).
    ///
    /// Handling: 500; an operator must look.
    #[error("event store data is corrupt: {0}")]
    Corrupt(String),
    /// A projection generation's checkpoint is not where the committing
    /// runner started: another runner wrote, or the generation was dropped.
    ///
    /// Handling: the runner stops and reloads its checkpoint.
    #[error(
        "checkpoint of {projection} generation {generation} is at {actual:?}, expected {expected}"
    )]
    CheckpointMoved {
        projection: String,
        generation: u64,
        expected: Position,
        actual: Option<Position>,
    },
}

impl StoreError {
    /// An [`StoreError::Internal`] keeping `cause` as its source.
    pub fn internal(cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Internal {
            source: Arc::new(cause),
        }
    }
}

/// Only a connection that cannot be had is [`StoreError::Unavailable`]
/// (see [`db_error::connection_lost`]); any other database error is
/// [`StoreError::Internal`], keeping the error itself.
impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if db_error::connection_lost(&e) {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::internal(e)
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Unavailable(format!("migration failed: {e}"))
    }
}

/// The event store. One implementation per backend; the logic above it (the
/// command pipeline, the API) is shared.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Append events to one stream atomically and durably.
    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError>;

    /// Events of one stream, in version order.
    async fn read_stream(&self, query: StreamQuery<'_>) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Events of the global log from `from_position`, in order, optionally
    /// only of the given types.
    async fn read_all(
        &self,
        from_position: Position,
        limit: u32,
        types: Option<&[String]>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_global(GlobalQuery {
            from_position,
            until_position: None,
            limit,
            types,
        })
        .await
    }

    /// Events of a slice of the global log, in order.
    async fn read_global(&self, query: GlobalQuery<'_>) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Events at the given positions range `[first, first + count)`.
    async fn read_positions(
        &self,
        first: Position,
        count: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The stream's current version; 0 when it has no events.
    async fn stream_version(&self, stream_id: &str) -> Result<u64, StoreError>;

    /// The last committed position; 0 for an empty store.
    async fn head_position(&self) -> Result<Position, StoreError>;

    /// The stored result of an idempotency key used at or after `since_us`.
    async fn find_idempotency(
        &self,
        key: &str,
        since_us: i64,
    ) -> Result<Option<IdempotencyEntry>, StoreError>;

    /// Forget idempotency keys used before `before_us`.
    async fn purge_idempotency(&self, before_us: i64) -> Result<u64, StoreError>;

    /// The latest snapshot of a stream folded by the given plugin version.
    async fn load_snapshot(
        &self,
        stream_id: &str,
        plugin_hash: &str,
    ) -> Result<Option<Snapshot>, StoreError>;

    /// Save (replace) the snapshot of a stream for one plugin version.
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<(), StoreError>;

    /// A receiver that sees the head position after every commit.
    fn subscribe_head(&self) -> tokio::sync::watch::Receiver<Position>;

    /// The events of every commit, as they are committed. The channel is
    /// bounded: a receiver that falls behind gets `Lagged` and must read
    /// what it missed from the store.
    fn subscribe_commits(&self) -> tokio::sync::broadcast::Receiver<CommittedBatch>;

    /// Commit a projection batch: view writes and checkpoint together.
    async fn commit_view(&self, commit: ViewCommit) -> Result<(), StoreError>;

    /// One view row.
    async fn view_get(&self, view: ViewId<'_>, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Up to `limit` view rows whose key starts with `prefix` and sorts after
    /// `after`, in key order.
    async fn view_scan(
        &self,
        view: ViewId<'_>,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Every generation of every projection.
    async fn generations(&self) -> Result<Vec<GenerationRecord>, StoreError>;

    /// Create a generation (checkpoint 0, no rows) or change its role.
    async fn save_generation(&self, record: GenerationRecord) -> Result<(), StoreError>;

    /// Make `generation` the active one of `projection` and retire the
    /// active one, atomically.
    async fn promote_generation(&self, projection: &str, generation: u64)
    -> Result<(), StoreError>;

    /// Delete up to `limit` rows of a generation; when none are left, the
    /// generation itself. Returns the rows deleted (0: the generation is gone).
    async fn drop_generation(&self, view: ViewId<'_>, limit: u32) -> Result<u64, StoreError>;

    /// Events skipped in a projection, newest first.
    async fn skips(&self, projection: &str) -> Result<Vec<(u64, SkipRecord)>, StoreError>;

    /// Store a plugin version (content-addressed) and record its deployment.
    async fn record_deployment(&self, deployment: NewDeployment) -> Result<Deployment, StoreError>;

    /// Deployments of a plugin name, newest first.
    async fn plugin_history(&self, name: &str) -> Result<Vec<Deployment>, StoreError>;

    /// The latest deployment of every plugin name.
    async fn current_deployments(&self) -> Result<Vec<Deployment>, StoreError>;

    /// The bytes of a stored plugin version.
    async fn plugin_bytes(&self, hash: &str) -> Result<Option<Vec<u8>>, StoreError>;

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

    /// Take or renew the lease `name` for `holder` for `ttl_us` from now:
    /// true when `holder` holds it afterwards (it was free, expired, or
    /// already held by `holder`), false when another holder's lease is live.
    async fn try_lease(&self, name: &str, holder: &str, ttl_us: i64) -> Result<bool, StoreError>;

    /// Give up a lease `holder` holds (nothing when another holds it).
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;

    /// Every lease row, live or expired, by name.
    async fn leases(&self) -> Result<Vec<LeaseRecord>, StoreError>;

    /// Whether other hosts may write to this store too (then a state cached
    /// in memory may be behind it). A SQLite file has one writer: this host.
    fn shared(&self) -> bool {
        false
    }

    /// Whether this store has seen a commit that took `stream_id` beyond
    /// `version` (this host's own commits keep its cached states current,
    /// so in practice: another host's): a state cached at `version` is then
    /// behind, and worth bringing up to date before a command is decided on
    /// it, rather than learning it from a conflict. A hint, known a moment
    /// after the other host's commit: the expected-version check of every
    /// append keeps commands correct either way.
    fn newer_version_known(&self, _stream_id: &str, _version: u64) -> bool {
        false
    }

    /// Whether the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Stop accepting writes, finish the ones queued, and close.
    async fn close(&self);
}

/// Idempotency keys the saga manager derives for its commands start with
/// this; HTTP clients may not use it.
pub const SAGA_IDEMPOTENCY_PREFIX: &str = "kiln-saga/";
/// How long the result of a saga command is remembered: a saga that resumes
/// after an outage shorter than this never applies a command twice.
pub const SAGA_IDEMPOTENCY_RETENTION_US: i64 = 7 * 24 * 3600 * 1_000_000;

/// Whether a `--db` URL names a PostgreSQL database (else it is SQLite).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Open the store a `--db` URL names: `postgres://…` or `postgresql://…`
/// (several hosts may share it), else a SQLite file (`sqlite://path` or a
/// path). Migrations are applied.
pub async fn open(
    url: &str,
    sqlite_options: sqlite::SqliteOptions,
    postgres_options: postgres::PostgresOptions,
) -> Result<Arc<dyn EventStore>, StoreError> {
    if is_postgres_url(url) {
        let store = postgres::PostgresStore::open(url, postgres_options).await?;
        Ok(Arc::new(store))
    } else {
        let store = sqlite::SqliteStore::open(url, sqlite_options).await?;
        Ok(Arc::new(store))
    }
}

/// A queued write's answer once its batch is over: its own outcome if the
/// batch committed (`outcome` is `None` when the write never ran), else
/// why the batch did not.
pub(crate) fn write_answer<T>(
    outcome: Option<Result<T, StoreError>>,
    committed: Result<(), StoreError>,
) -> Result<T, StoreError> {
    match committed {
        Ok(()) => {
            outcome.unwrap_or_else(|| Err(StoreError::Unavailable("the write was not run".into())))
        }
        Err(e) => Err(e),
    }
}

/// The current time in microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

#[cfg(test)]
pub(crate) mod conformance;
