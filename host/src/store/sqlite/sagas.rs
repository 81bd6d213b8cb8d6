//! Saga checkpoints, instances, outbox, timers, history and dead letters:
//! the SQLite side of the saga manager.

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection, SqlitePool};
use tokio::sync::oneshot;

use super::direct::{Direct, SqliteError, Value};

use crate::store::{
    DeadLetter, OutboxCommand, SagaCommit, SagaCounts, SagaHistoryEntry, SagaInstanceRecord,
    SagaLoad, SagaStatus, SagaTimerRecord, StoreError,
};

const OUTBOX_COLUMNS: &str = "saga, instance, step, aggregate, aggregate_id, command_type, data, metadata, compensating, attempts, errors, created_at, idempotency_key";

fn encode<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Unavailable(format!("a saga row did not encode: {e}")))
}

/// A saga commit queued to the writer, with its reply.
pub struct SagaJob {
    commit: SagaCommit,
    encoded: Encoded,
    outcome: Option<Result<(), StoreError>>,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// The JSON columns of a commit, encoded by the caller before the commit
/// is queued (the single writer, which every append waits for, then only
/// runs statements).
struct Encoded {
    /// `errors` of each `outbox_put` command, then of each dead letter.
    errors: Vec<String>,
    /// `entry` of each history entry.
    history: Vec<String>,
}

impl SagaJob {
    pub fn new(
        commit: SagaCommit,
        reply: oneshot::Sender<Result<(), StoreError>>,
    ) -> Result<Self, StoreError> {
        let errors = commit
            .outbox_put
            .iter()
            .chain(&commit.dead_letters)
            .map(|c| encode(&c.errors))
            .collect::<Result<_, _>>()?;
        let history = commit
            .history
            .iter()
            .map(|h| encode(&h.entry))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            commit,
            encoded: Encoded { errors, history },
            outcome: None,
            reply,
        })
    }

    /// Answer only once on disk (else once committed).
    pub fn needs_fsync(&self) -> bool {
        self.commit.durable
    }

    /// Run inside the writer's transaction. An `Err` fails the batch; a
    /// moved checkpoint is this commit's own refusal.
    pub fn run(&mut self, db: &mut Direct<'_>) -> Result<(), SqliteError> {
        self.outcome = Some(commit(db, &self.commit, &self.encoded)?);
        Ok(())
    }

    /// Answer the caller: `Ok` once the transaction committed, else why not.
    pub fn finish(self, committed: Result<(), StoreError>) {
        let _ = self
            .reply
            .send(crate::store::write_answer(self.outcome, committed));
    }
}

const OUTBOX_INSERT: &str = "INSERT OR REPLACE INTO saga_outbox (saga, instance, step, aggregate, aggregate_id, command_type, data, metadata, compensating, attempts, errors, created_at, idempotency_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
const DEAD_LETTER_INSERT: &str = "INSERT INTO saga_dead_letters (saga, instance, step, aggregate, aggregate_id, command_type, data, metadata, compensating, attempts, errors, created_at, idempotency_key, dead_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// A command's columns in `OUTBOX_COLUMNS` order.
fn command_values<'a>(c: &'a OutboxCommand, errors: &'a str) -> [Value<'a>; 13] {
    [
        Value::Text(&c.saga),
        Value::Text(&c.instance),
        Value::Int(c.step as i64),
        Value::Text(&c.aggregate),
        Value::Text(&c.aggregate_id),
        Value::Text(&c.command_type),
        Value::Text(&c.data),
        Value::Text(&c.metadata),
        Value::Int(i64::from(c.compensating)),
        Value::Int(i64::from(c.attempts)),
        Value::Text(errors),
        Value::Int(c.created_at_us),
        Value::Text(&c.idempotency_key),
    ]
}

/// Apply one saga commit, if the checkpoint is where it started; a row per
/// statement run, each statement prepared once for the writer's life.
fn commit(
    db: &mut Direct<'_>,
    commit: &SagaCommit,
    encoded: &Encoded,
) -> Result<Result<(), StoreError>, SqliteError> {
    let saga = commit.saga.as_str();
    if let Some((from, to)) = commit.checkpoint {
        // First: when the checkpoint moved, nothing of the commit is written.
        let mut actual = None;
        db.query(
            "SELECT position FROM saga_checkpoints WHERE saga = ?",
            &[Value::Text(saga)],
            |row| {
                actual = Some(row.int(0) as u64);
                Ok(())
            },
        )?;
        if actual.unwrap_or(0) != from {
            return Ok(Err(StoreError::CheckpointMoved {
                projection: format!("saga {saga}"),
                generation: 0,
                expected: from,
                actual,
            }));
        }
        db.run(
            "INSERT INTO saga_checkpoints (saga, position) VALUES (?, ?) \
             ON CONFLICT (saga) DO UPDATE SET position = excluded.position",
            &[Value::Text(saga), Value::Int(to as i64)],
        )?;
    }
    for i in &commit.instances {
        // Updated in place: an instance keeps the creation number its rows
        // are laid out by (migrations/sqlite/0005).
        db.run(
            "INSERT INTO saga_instances \
             (saga, instance, state, status, done, next_step, awaited_position, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (saga, instance) DO UPDATE SET state = excluded.state, status = excluded.status, \
             done = excluded.done, next_step = excluded.next_step, awaited_position = excluded.awaited_position, \
             updated_at = excluded.updated_at",
            &[
                Value::Text(&i.saga),
                Value::Text(&i.instance),
                Value::Blob(&i.state),
                Value::Text(i.status.as_str()),
                Value::Int(i64::from(i.done)),
                Value::Int(i.next_step as i64),
                Value::Int(i.awaited_position as i64),
                Value::Int(i.created_at_us),
                Value::Int(i.updated_at_us),
            ],
        )?;
    }
    for (instance, step) in &commit.outbox_delete {
        db.run(
            "DELETE FROM saga_outbox WHERE saga = ? AND instance = ? AND step = ?",
            &[
                Value::Text(saga),
                Value::Text(instance),
                Value::Int(*step as i64),
            ],
        )?;
    }
    let mut errors = encoded.errors.iter().map(String::as_str);
    for c in &commit.outbox_put {
        let errors = errors.next().unwrap_or("[]");
        db.run(OUTBOX_INSERT, &command_values(c, errors))?;
    }
    // Commands that exhausted their attempts leave the outbox for the
    // dead-letter list; dead letters retried leave it.
    let dead_at = crate::store::now_us();
    for c in &commit.dead_letters {
        db.run(
            "DELETE FROM saga_outbox WHERE saga = ? AND instance = ? AND step = ?",
            &[
                Value::Text(&c.saga),
                Value::Text(&c.instance),
                Value::Int(c.step as i64),
            ],
        )?;
        let errors = errors.next().unwrap_or("[]");
        let mut values = command_values(c, errors).to_vec();
        values.push(Value::Int(dead_at));
        db.run(DEAD_LETTER_INSERT, &values)?;
    }
    for id in &commit.dead_letters_delete {
        db.run(
            "DELETE FROM saga_dead_letters WHERE id = ?",
            &[Value::Int(*id as i64)],
        )?;
    }
    for (instance, name) in &commit.timers_delete {
        match name {
            Some(name) => db.run(
                "DELETE FROM saga_timers WHERE saga = ? AND instance = ? AND name = ?",
                &[Value::Text(saga), Value::Text(instance), Value::Text(name)],
            )?,
            None => db.run(
                "DELETE FROM saga_timers WHERE saga = ? AND instance = ?",
                &[Value::Text(saga), Value::Text(instance)],
            )?,
        };
    }
    for t in &commit.timers_put {
        db.run(
            "INSERT OR REPLACE INTO saga_timers (saga, instance, name, fire_at) VALUES (?, ?, ?, ?)",
            &[
                Value::Text(saga),
                Value::Text(&t.instance),
                Value::Text(&t.name),
                Value::Int(t.fire_at_ms),
            ],
        )?;
    }
    // After the instances: a new instance's number is known here.
    for (h, entry) in commit.history.iter().zip(&encoded.history) {
        db.run(
            "INSERT INTO saga_history (saga, instance, at, entry, instance_seq) VALUES (?, ?, ?, ?, \
             (SELECT seq FROM saga_instances WHERE saga = ? AND instance = ?))",
            &[
                Value::Text(saga),
                Value::Text(&h.instance),
                Value::Int(h.at_us),
                Value::Text(entry),
                Value::Text(saga),
                Value::Text(&h.instance),
            ],
        )?;
    }
    Ok(Ok(()))
}

/// Delete up to `limit` history entries of instances completed before
/// `completed_before_us`.
pub async fn purge_history(
    conn: &mut SqliteConnection,
    completed_before_us: i64,
    limit: u32,
) -> Result<Result<u64, StoreError>, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM saga_history WHERE id IN (\
         SELECT h.id FROM saga_instances i \
         JOIN saga_history h ON h.instance_seq = i.seq \
         WHERE i.status = 'completed' AND i.updated_at < ? LIMIT ?)",
    )
    .bind(completed_before_us)
    .bind(i64::from(limit))
    .execute(&mut *conn)
    .await?;
    Ok(Ok(done.rows_affected()))
}

fn command_from_row(row: &SqliteRow) -> Result<OutboxCommand, StoreError> {
    let errors: String = row.try_get("errors")?;
    Ok(OutboxCommand {
        saga: row.try_get("saga")?,
        instance: row.try_get("instance")?,
        step: row.try_get::<i64, _>("step")? as u64,
        aggregate: row.try_get("aggregate")?,
        aggregate_id: row.try_get("aggregate_id")?,
        command_type: row.try_get("command_type")?,
        data: row.try_get("data")?,
        metadata: row.try_get("metadata")?,
        compensating: row.try_get("compensating")?,
        attempts: row.try_get::<i64, _>("attempts")? as u32,
        errors: serde_json::from_str(&errors)
            .map_err(|e| StoreError::Corrupt(format!("saga command errors: {e}")))?,
        created_at_us: row.try_get("created_at")?,
        idempotency_key: row.try_get("idempotency_key")?,
    })
}

fn instance_from_row(row: &SqliteRow) -> Result<SagaInstanceRecord, StoreError> {
    Ok(SagaInstanceRecord {
        saga: row.try_get("saga")?,
        instance: row.try_get("instance")?,
        state: row.try_get("state")?,
        status: SagaStatus::parse(row.try_get("status")?)?,
        done: row.try_get("done")?,
        next_step: row.try_get::<i64, _>("next_step")? as u64,
        awaited_position: row.try_get::<i64, _>("awaited_position")? as u64,
        created_at_us: row.try_get("created_at")?,
        updated_at_us: row.try_get("updated_at")?,
    })
}

/// What a runner resumes from.
pub async fn load(readers: &SqlitePool, saga: &str) -> Result<SagaLoad, StoreError> {
    let checkpoint: Option<i64> =
        sqlx::query_scalar("SELECT position FROM saga_checkpoints WHERE saga = ?")
            .bind(saga)
            .fetch_optional(readers)
            .await?;
    let instances = sqlx::query("SELECT * FROM saga_instances WHERE saga = ? AND status <> ?")
        .bind(saga)
        .bind(SagaStatus::Completed.as_str())
        .fetch_all(readers)
        .await?
        .iter()
        .map(instance_from_row)
        .collect::<Result<_, _>>()?;
    let outbox = sqlx::query(&format!(
        "SELECT {OUTBOX_COLUMNS} FROM saga_outbox WHERE saga = ? ORDER BY instance, step"
    ))
    .bind(saga)
    .fetch_all(readers)
    .await?
    .iter()
    .map(command_from_row)
    .collect::<Result<_, _>>()?;
    let timers = sqlx::query("SELECT instance, name, fire_at FROM saga_timers WHERE saga = ?")
        .bind(saga)
        .fetch_all(readers)
        .await?
        .iter()
        .map(|row| {
            Ok(SagaTimerRecord {
                instance: row.try_get(0)?,
                name: row.try_get(1)?,
                fire_at_ms: row.try_get(2)?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(SagaLoad {
        checkpoint: checkpoint.map(|p| p as u64),
        instances,
        outbox,
        timers,
    })
}

pub async fn instance(
    readers: &SqlitePool,
    saga: &str,
    instance: &str,
) -> Result<Option<SagaInstanceRecord>, StoreError> {
    sqlx::query("SELECT * FROM saga_instances WHERE saga = ? AND instance = ?")
        .bind(saga)
        .bind(instance)
        .fetch_optional(readers)
        .await?
        .as_ref()
        .map(instance_from_row)
        .transpose()
}

pub async fn instances(
    readers: &SqlitePool,
    saga: &str,
    instances: &[String],
) -> Result<Vec<SagaInstanceRecord>, StoreError> {
    sqlx::query(
        "SELECT * FROM saga_instances WHERE saga = ? \
         AND instance IN (SELECT value FROM json_each(?))",
    )
    .bind(saga)
    .bind(encode(&instances)?)
    .fetch_all(readers)
    .await?
    .iter()
    .map(instance_from_row)
    .collect()
}

pub async fn outbox(
    readers: &SqlitePool,
    saga: &str,
    instance: &str,
) -> Result<Vec<OutboxCommand>, StoreError> {
    sqlx::query(&format!(
        "SELECT {OUTBOX_COLUMNS} FROM saga_outbox WHERE saga = ? AND instance = ? ORDER BY step"
    ))
    .bind(saga)
    .bind(instance)
    .fetch_all(readers)
    .await?
    .iter()
    .map(command_from_row)
    .collect()
}

pub async fn history(
    readers: &SqlitePool,
    saga: &str,
    instance: &str,
    limit: u32,
) -> Result<Vec<SagaHistoryEntry>, StoreError> {
    let rows = sqlx::query(
        "SELECT at, entry FROM saga_history WHERE instance_seq = \
         (SELECT seq FROM saga_instances WHERE saga = ? AND instance = ?) \
         ORDER BY id DESC LIMIT ?",
    )
    .bind(saga)
    .bind(instance)
    .bind(i64::from(limit))
    .fetch_all(readers)
    .await?;
    let mut entries = rows
        .iter()
        .map(|row| {
            let text: String = row.try_get(1)?;
            Ok(SagaHistoryEntry {
                instance: instance.to_string(),
                at_us: row.try_get(0)?,
                entry: serde_json::from_str(&text)
                    .map_err(|e| StoreError::Corrupt(format!("saga history entry: {e}")))?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    entries.reverse();
    Ok(entries)
}

pub async fn counts(readers: &SqlitePool, saga: &str) -> Result<SagaCounts, StoreError> {
    let mut counts = SagaCounts::default();
    let rows =
        sqlx::query("SELECT status, count(*) FROM saga_instances WHERE saga = ? GROUP BY status")
            .bind(saga)
            .fetch_all(readers)
            .await?;
    for row in rows {
        let n = row.try_get::<i64, _>(1)? as u64;
        match SagaStatus::parse(row.try_get(0)?)? {
            SagaStatus::Running => counts.running = n,
            SagaStatus::Compensating => counts.compensating = n,
            SagaStatus::Completed => counts.completed = n,
            SagaStatus::Failed => counts.failed = n,
        }
    }
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM saga_outbox WHERE saga = ?")
        .bind(saga)
        .fetch_one(readers)
        .await?;
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM saga_dead_letters WHERE saga = ?")
        .bind(saga)
        .fetch_one(readers)
        .await?;
    counts.outbox = outbox as u64;
    counts.dead_letters = dead as u64;
    Ok(counts)
}

fn dead_letter_from_row(row: &SqliteRow) -> Result<DeadLetter, StoreError> {
    Ok(DeadLetter {
        id: row.try_get::<i64, _>("id")? as u64,
        command: command_from_row(row)?,
        dead_at_us: row.try_get("dead_at")?,
    })
}

pub async fn dead_letters(
    readers: &SqlitePool,
    after: u64,
    limit: u32,
) -> Result<Vec<DeadLetter>, StoreError> {
    sqlx::query(&format!(
        "SELECT id, {OUTBOX_COLUMNS}, dead_at FROM saga_dead_letters WHERE id > ? ORDER BY id LIMIT ?"
    ))
    .bind(after as i64)
    .bind(i64::from(limit))
    .fetch_all(readers)
    .await?
    .iter()
    .map(dead_letter_from_row)
    .collect()
}

pub async fn dead_letter(readers: &SqlitePool, id: u64) -> Result<Option<DeadLetter>, StoreError> {
    sqlx::query(&format!(
        "SELECT id, {OUTBOX_COLUMNS}, dead_at FROM saga_dead_letters WHERE id = ?"
    ))
    .bind(id as i64)
    .fetch_optional(readers)
    .await?
    .as_ref()
    .map(dead_letter_from_row)
    .transpose()
}
