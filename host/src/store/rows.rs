//! One decoder per row shape, shared by both backends.
//!
//! Each struct is what a `SELECT` of the backend returns, decoded by
//! `sqlx::FromRow` from a SQLite or a PostgreSQL row alike (the columns are
//! `INTEGER`/`bigint`, `TEXT`/`text`, `BLOB`/`bytea` and, for flags,
//! `INTEGER`/`boolean`: `i64`, `String`, `Vec<u8>` and `bool` on both), and
//! then converted into the domain type. A conversion that can meet data no
//! version of Kiln wrote (an unknown role, status or mode, JSON that does not
//! parse) answers `StoreError::Corrupt`. The SQL stays with each backend.

use crate::store::{
    DeadLetter, DeployMode, Deployment, GenerationRecord, GenerationRole, LeaseRecord,
    OutboxCommand, SagaHistoryEntry, SagaInstanceRecord, SagaStatus, SagaTimerRecord, SkipRecord,
    StoreError,
};

/// `projection_generations`: name, generation, plugin_hash, role, position.
#[derive(sqlx::FromRow)]
pub struct GenerationRow {
    name: String,
    generation: i64,
    plugin_hash: String,
    role: String,
    position: i64,
}

impl TryFrom<GenerationRow> for GenerationRecord {
    type Error = StoreError;

    fn try_from(row: GenerationRow) -> Result<Self, StoreError> {
        Ok(GenerationRecord {
            name: row.name,
            generation: row.generation as u64,
            plugin_hash: row.plugin_hash,
            role: GenerationRole::parse(&row.role)?,
            position: row.position as u64,
        })
    }
}

/// `projection_skips`: generation, position, stream_id, event_type, reason;
/// decoded as the generation and the skip.
#[derive(sqlx::FromRow)]
pub struct SkipRow {
    generation: i64,
    position: i64,
    stream_id: String,
    event_type: String,
    reason: String,
}

impl From<SkipRow> for (u64, SkipRecord) {
    fn from(row: SkipRow) -> Self {
        (
            row.generation as u64,
            SkipRecord {
                position: row.position as u64,
                stream_id: row.stream_id,
                event_type: row.event_type,
                reason: row.reason,
            },
        )
    }
}

/// A deployment joined with its blob's size: id, name, hash, kind, mode,
/// source, size, deployed_at.
#[derive(sqlx::FromRow)]
pub struct DeploymentRow {
    id: i64,
    name: String,
    hash: String,
    kind: String,
    mode: String,
    source: String,
    size: i64,
    deployed_at: i64,
}

impl TryFrom<DeploymentRow> for Deployment {
    type Error = StoreError;

    fn try_from(row: DeploymentRow) -> Result<Self, StoreError> {
        Ok(Deployment {
            id: row.id as u64,
            name: row.name,
            hash: row.hash,
            kind: row.kind,
            mode: DeployMode::parse(&row.mode)?,
            source: row.source,
            size: row.size as u64,
            deployed_at_us: row.deployed_at,
        })
    }
}

/// `leases`: name, holder, expires_at.
#[derive(sqlx::FromRow)]
pub struct LeaseRow {
    name: String,
    holder: String,
    expires_at: i64,
}

impl From<LeaseRow> for LeaseRecord {
    fn from(row: LeaseRow) -> Self {
        LeaseRecord {
            name: row.name,
            holder: row.holder,
            expires_at_us: row.expires_at,
        }
    }
}

/// `saga_instances` (columns beyond these, such as SQLite's `seq`, are
/// ignored).
#[derive(sqlx::FromRow)]
pub struct InstanceRow {
    saga: String,
    instance: String,
    state: Vec<u8>,
    status: String,
    done: bool,
    next_step: i64,
    awaited_position: i64,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<InstanceRow> for SagaInstanceRecord {
    type Error = StoreError;

    fn try_from(row: InstanceRow) -> Result<Self, StoreError> {
        Ok(SagaInstanceRecord {
            saga: row.saga,
            instance: row.instance,
            state: row.state,
            status: SagaStatus::parse(&row.status)?,
            done: row.done,
            next_step: row.next_step as u64,
            awaited_position: row.awaited_position as u64,
            created_at_us: row.created_at,
            updated_at_us: row.updated_at,
        })
    }
}

/// The columns of a saga command, in `saga_outbox` and `saga_dead_letters`.
#[derive(sqlx::FromRow)]
pub struct CommandRow {
    saga: String,
    instance: String,
    step: i64,
    aggregate: String,
    aggregate_id: String,
    command_type: String,
    data: String,
    metadata: String,
    compensating: bool,
    attempts: i64,
    errors: String,
    created_at: i64,
    idempotency_key: String,
}

impl TryFrom<CommandRow> for OutboxCommand {
    type Error = StoreError;

    fn try_from(row: CommandRow) -> Result<Self, StoreError> {
        Ok(OutboxCommand {
            saga: row.saga,
            instance: row.instance,
            step: row.step as u64,
            aggregate: row.aggregate,
            aggregate_id: row.aggregate_id,
            command_type: row.command_type,
            data: row.data,
            metadata: row.metadata,
            compensating: row.compensating,
            attempts: row.attempts as u32,
            errors: serde_json::from_str(&row.errors)
                .map_err(|e| StoreError::Corrupt(format!("saga command errors: {e}")))?,
            created_at_us: row.created_at,
            idempotency_key: row.idempotency_key,
        })
    }
}

/// `saga_dead_letters`: id, the command's columns, dead_at.
#[derive(sqlx::FromRow)]
pub struct DeadLetterRow {
    id: i64,
    #[sqlx(flatten)]
    command: CommandRow,
    dead_at: i64,
}

impl TryFrom<DeadLetterRow> for DeadLetter {
    type Error = StoreError;

    fn try_from(row: DeadLetterRow) -> Result<Self, StoreError> {
        Ok(DeadLetter {
            id: row.id as u64,
            command: row.command.try_into()?,
            dead_at_us: row.dead_at,
        })
    }
}

/// `saga_timers`: instance, name, fire_at.
#[derive(sqlx::FromRow)]
pub struct TimerRow {
    instance: String,
    name: String,
    fire_at: i64,
}

impl From<TimerRow> for SagaTimerRecord {
    fn from(row: TimerRow) -> Self {
        SagaTimerRecord {
            instance: row.instance,
            name: row.name,
            fire_at_ms: row.fire_at,
        }
    }
}

/// `saga_history`: at, entry (JSON). The instance is the one asked for.
#[derive(sqlx::FromRow)]
pub struct HistoryRow {
    at: i64,
    entry: String,
}

impl HistoryRow {
    pub fn into_entry(self, instance: &str) -> Result<SagaHistoryEntry, StoreError> {
        Ok(SagaHistoryEntry {
            instance: instance.to_string(),
            at_us: self.at,
            entry: serde_json::from_str(&self.entry)
                .map_err(|e| StoreError::Corrupt(format!("saga history entry: {e}")))?,
        })
    }
}

/// `saga_instances` grouped by status: status, count.
#[derive(sqlx::FromRow)]
pub struct StatusCountRow {
    status: String,
    count: i64,
}

impl StatusCountRow {
    pub fn parse(self) -> Result<(SagaStatus, u64), StoreError> {
        Ok((SagaStatus::parse(&self.status)?, self.count as u64))
    }
}

/// Convert every decoded row into its domain type.
pub fn convert<R: TryInto<T, Error = StoreError>, T>(rows: Vec<R>) -> Result<Vec<T>, StoreError> {
    rows.into_iter().map(TryInto::try_into).collect()
}

/// The smallest string greater than every string starting with `prefix`
/// (in code point order, which is SQLite's `BINARY` order and the byte
/// order of PostgreSQL's "C" collation), if there is one: the end of a
/// prefix range.
pub fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        // Skip the surrogate gap; char::MAX has no successor.
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(c as u32 + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests;
