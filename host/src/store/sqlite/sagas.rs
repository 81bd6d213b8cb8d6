//! Saga checkpoints, instances, outbox, timers, history and dead letters:
//! the SQLite side of the saga manager.
//!
//! Reads are `store::queries`, shared with PostgreSQL; what stays here is
//! what differs: the commit, run by the single writer as direct statements
//! (the hot path every append waits behind), and the instance list bound as
//! a JSON array.

use sqlx::SqlitePool;
use tokio::sync::oneshot;

use super::direct::{Direct, SqliteError, Value};

use crate::store::rows::{self, InstanceRow};
use crate::store::{OutboxCommand, SagaCommit, SagaInstanceRecord, StoreError};

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

/// A command's columns in `OUTBOX_INSERT` order.
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
    if let Some((from, to)) = commit.checkpoint
        && let Err(refused) = move_checkpoint(db, saga, from, to)?
    {
        return Ok(Err(refused));
    }
    write_instances(db, commit)?;
    write_outbox(db, commit, encoded)?;
    write_timers(db, commit)?;
    write_history(db, commit, encoded)?;
    Ok(Ok(()))
}

/// Move the saga's checkpoint from `from` to `to`, if it is at `from` (a
/// saga without a checkpoint is at 0). The single writer is the only
/// writer, so a read then a write suffices (PostgreSQL's hosts fence with a
/// conditional `UPDATE` instead).
fn move_checkpoint(
    db: &mut Direct<'_>,
    saga: &str,
    from: u64,
    to: u64,
) -> Result<Result<(), StoreError>, SqliteError> {
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
    Ok(Ok(()))
}

fn write_instances(db: &mut Direct<'_>, commit: &SagaCommit) -> Result<(), SqliteError> {
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
    Ok(())
}

/// The outbox rows put and deleted, and the dead letters made and retried.
fn write_outbox(
    db: &mut Direct<'_>,
    commit: &SagaCommit,
    encoded: &Encoded,
) -> Result<(), SqliteError> {
    let saga = commit.saga.as_str();
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
    Ok(())
}

fn write_timers(db: &mut Direct<'_>, commit: &SagaCommit) -> Result<(), SqliteError> {
    let saga = commit.saga.as_str();
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
    Ok(())
}

/// Run after the instances: a new instance's number is known then.
fn write_history(
    db: &mut Direct<'_>,
    commit: &SagaCommit,
    encoded: &Encoded,
) -> Result<(), SqliteError> {
    let saga = commit.saga.as_str();
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
    Ok(())
}

pub async fn instances(
    readers: &SqlitePool,
    saga: &str,
    instances: &[String],
) -> Result<Vec<SagaInstanceRecord>, StoreError> {
    let rows = sqlx::query_as::<_, InstanceRow>(
        "SELECT * FROM saga_instances WHERE saga = ? \
         AND instance IN (SELECT value FROM json_each(?))",
    )
    .bind(saga)
    .bind(encode(&instances)?)
    .fetch_all(readers)
    .await?;
    rows::convert(rows)
}
