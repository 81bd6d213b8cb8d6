//! The event log: appends, stream and global reads, snapshots and
//! idempotency records, and the watches that announce commits.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use super::StoreError;

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

/// The log's last event as the store recorded it with its last append,
/// kept apart from the events: removing the last events leaves it behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordedTail {
    /// 0 for an empty log.
    pub position: Position,
    /// The event's hash (the genesis hash for an empty log).
    pub hash: [u8; 32],
}

/// Events committed together, in position order, as the live feed carries them.
pub type CommittedBatch = Arc<[RecordedEvent]>;

/// The event log. What the command pipeline, the live feeds and every
/// reader of history need.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
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

    /// The tail recorded with the last append (what `kiln verify` checks
    /// the last event against).
    async fn recorded_tail(&self) -> Result<RecordedTail, StoreError>;

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
}
