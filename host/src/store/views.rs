//! Projection views: generations, their rows and checkpoints, and the
//! events an operator skipped.

use async_trait::async_trait;
use serde::Serialize;

use super::{Position, StoreError};

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

/// Projection views and their checkpoints. What projection runners and the
/// row reads need.
#[async_trait]
pub trait ViewStore: Send + Sync + 'static {
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
}
