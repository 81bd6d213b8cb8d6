//! Saga checkpoints, instances, outbox, timers, history and dead letters:
//! the SQLite side of the saga manager.

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection, SqlitePool};

use crate::store::{
    DeadLetter, OutboxCommand, SagaCommit, SagaCounts, SagaHistoryEntry, SagaInstanceRecord,
    SagaLoad, SagaStatus, SagaTimerRecord, StoreError,
};

const OUTBOX_COLUMNS: &str = "saga, instance, step, aggregate, aggregate_id, command_type, data, metadata, compensating, attempts, errors, created_at, idempotency_key";

fn encode<T: serde::Serialize>(value: &T) -> Result<String, sqlx::Error> {
    serde_json::to_string(value).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

/// Apply one saga batch, if the checkpoint is where it started.
///
/// Each table is written by one statement over a JSON array, and the
/// statements go to SQLite as one multi-statement query: through sqlx every
/// query is a round trip to the connection's thread, and under load those
/// hops, not SQLite, were most of a saga commit's cost. Each statement gets
/// its table's rows as a JSON array of its own (one document for all made
/// each statement parse every table's rows; see [`Statements`] for how the
/// values are bound). Dead-letter moves (rare) keep a statement each.
pub async fn commit_saga(
    conn: &mut SqliteConnection,
    commit: SagaCommit,
    values: CommitValues,
) -> Result<Result<(), StoreError>, sqlx::Error> {
    let saga = commit.saga.as_str();
    let v = &values;
    let mut sql = Statements::default();
    if let Some((from, to)) = commit.checkpoint {
        // First: when the checkpoint moved, nothing after it runs.
        sql.push(
            "INSERT INTO saga_checkpoint_fence (saga, expected) VALUES (?, ?);",
            [Param::Text(saga), Param::Int(from as i64)],
        );
        sql.push(
            "INSERT INTO saga_checkpoints (saga, position) SELECT ?, ? WHERE true \
             ON CONFLICT (saga) DO UPDATE SET position = excluded.position;",
            [Param::Text(saga), Param::Int(to as i64)],
        );
    }
    if !commit.instances.is_empty() {
        // Updated in place: an instance keeps the creation number its rows
        // are laid out by (migrations/sqlite/0005).
        sql.push(
            "WITH r(v) AS MATERIALIZED (SELECT jsonb(value) FROM json_each(?)) \
             INSERT INTO saga_instances \
             (saga, instance, state, status, done, next_step, awaited_position, created_at, updated_at) \
             SELECT v->>0, v->>1, unhex(v->>2), v->>3, v->>4, v->>5, \
             v->>6, v->>7, v->>8 FROM r WHERE true \
             ON CONFLICT (saga, instance) DO UPDATE SET state = excluded.state, status = excluded.status, \
             done = excluded.done, next_step = excluded.next_step, awaited_position = excluded.awaited_position, \
             updated_at = excluded.updated_at;",
            [Param::Text(&v.instances)],
        );
    }
    if !commit.outbox_delete.is_empty() {
        sql.push(
            "DELETE FROM saga_outbox WHERE saga = ? AND (instance, step) IN \
             (SELECT value->>0, value->>1 FROM json_each(?));",
            [Param::Text(saga), Param::Text(&v.outbox_delete)],
        );
    }
    if !commit.outbox_put.is_empty() {
        sql.push(
            &format!(
                "WITH r(v) AS MATERIALIZED (SELECT jsonb(value) FROM json_each(?)) \
                 INSERT OR REPLACE INTO saga_outbox ({OUTBOX_COLUMNS}) \
                 SELECT v->>0, v->>1, v->>2, v->>3, v->>4, v->>5, \
                 v->>6, v->>7, v->>8, v->>9, v->>10, v->>11, v->>12 FROM r;"
            ),
            [Param::Text(&v.outbox_put)],
        );
    }
    if !commit.dead_letters.is_empty() || !commit.dead_letters_delete.is_empty() {
        // Written in the order the statements are listed here.
        if let Err(moved) = fenced(conn, &commit, std::mem::take(&mut sql)).await? {
            return Ok(Err(moved));
        }
        move_dead_letters(conn, &commit).await?;
    }
    if !commit.timers_delete.is_empty() {
        sql.push(
            "DELETE FROM saga_timers WHERE (saga, instance, name) IN \
             (SELECT ?, value->>0, value->>1 FROM json_each(?) WHERE value->>1 IS NOT NULL);\
             DELETE FROM saga_timers WHERE saga = ? AND instance IN \
             (SELECT value->>0 FROM json_each(?) WHERE value->>1 IS NULL);",
            [
                Param::Text(saga),
                Param::Text(&v.timers_delete),
                Param::Text(saga),
                Param::Text(&v.timers_delete),
            ],
        );
    }
    if !commit.timers_put.is_empty() {
        sql.push(
            "INSERT OR REPLACE INTO saga_timers (saga, instance, name, fire_at) \
             SELECT ?, value->>0, value->>1, value->>2 FROM json_each(?);",
            [Param::Text(saga), Param::Text(&v.timers_put)],
        );
    }
    if !commit.history.is_empty() {
        // After the instances: a new instance's number is known here.
        sql.push(
            "WITH r(v) AS MATERIALIZED (SELECT jsonb(value) FROM json_each(?)) \
             INSERT INTO saga_history (saga, instance, at, entry, instance_seq) \
             SELECT ?, v->>0, v->>1, v->>2, \
             (SELECT seq FROM saga_instances i WHERE i.saga = ? AND i.instance = v->>0) \
             FROM r;",
            [
                Param::Text(&v.history),
                Param::Text(saga),
                Param::Text(saga),
            ],
        );
    }
    fenced(conn, &commit, sql).await
}

/// What `saga_checkpoint_fence` (migrations/sqlite/0006) aborts with.
const CHECKPOINT_MOVED: &str = "kiln: saga checkpoint moved";

/// Run `sql`, which starts with the commit's fence when it has a
/// checkpoint: a moved checkpoint is this commit's refusal (nothing of it
/// was written), not a failure of the batch.
async fn fenced(
    conn: &mut SqliteConnection,
    commit: &SagaCommit,
    sql: Statements<'_>,
) -> Result<Result<(), StoreError>, sqlx::Error> {
    match sql.execute(&mut *conn).await {
        Ok(()) => Ok(Ok(())),
        Err(sqlx::Error::Database(e)) if e.message() == CHECKPOINT_MOVED => {
            let actual: Option<i64> =
                sqlx::query_scalar("SELECT position FROM saga_checkpoints WHERE saga = ?")
                    .bind(&commit.saga)
                    .fetch_optional(&mut *conn)
                    .await?;
            Ok(Err(StoreError::CheckpointMoved {
                projection: format!("saga {}", commit.saga),
                generation: 0,
                expected: commit.checkpoint.map_or(0, |(from, _)| from),
                actual: actual.map(|p| p as u64),
            }))
        }
        Err(e) => Err(e),
    }
}

/// A value bound to a statement.
#[derive(Clone, Copy)]
enum Param<'a> {
    Text(&'a str),
    Int(i64),
}

/// Statements sent to SQLite as one multi-statement query, with their
/// values. sqlx binds such a query's anonymous parameters (`?`) in order
/// across the statements, each statement taking the next ones, while a
/// numbered one (`?3`) is the query's third value in any statement; mixing
/// the two, or leaving numbers unused, misplaces values. So every statement
/// uses `?` alone and lists its values itself, repeated where two statements
/// (or one, twice) need the same value.
#[derive(Default)]
struct Statements<'a> {
    sql: String,
    params: Vec<Param<'a>>,
}

impl<'a> Statements<'a> {
    fn push<const N: usize>(&mut self, sql: &str, params: [Param<'a>; N]) {
        self.sql.push_str(sql);
        self.params.extend(params);
    }

    async fn execute(self, conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
        if self.sql.is_empty() {
            return Ok(());
        }
        let mut query = sqlx::query(&self.sql);
        for param in self.params {
            query = match param {
                Param::Text(text) => query.bind(text),
                Param::Int(n) => query.bind(n),
            };
        }
        query.execute(&mut *conn).await?;
        Ok(())
    }
}

/// The rows of a saga commit, one JSON array per table.
pub struct CommitValues {
    instances: String,
    outbox_delete: String,
    outbox_put: String,
    timers_delete: String,
    timers_put: String,
    history: String,
}

impl CommitValues {
    /// Encoded by the caller, before the commit is queued: the single
    /// writer, which every append waits for, then only runs the statements.
    pub fn new(commit: &SagaCommit) -> Result<Self, sqlx::Error> {
        let instances: Vec<_> = commit
            .instances
            .iter()
            .map(|i| {
                (
                    &i.saga,
                    &i.instance,
                    hex::encode(&i.state),
                    i.status.as_str(),
                    i.done,
                    i.next_step,
                    i.awaited_position,
                    i.created_at_us,
                    i.updated_at_us,
                )
            })
            .collect();
        let outbox_put = commit
            .outbox_put
            .iter()
            .map(|c| {
                Ok((
                    &c.saga,
                    &c.instance,
                    c.step,
                    &c.aggregate,
                    &c.aggregate_id,
                    &c.command_type,
                    &c.data,
                    &c.metadata,
                    c.compensating,
                    c.attempts,
                    encode(&c.errors)?,
                    c.created_at_us,
                    &c.idempotency_key,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let timers_put: Vec<_> = commit
            .timers_put
            .iter()
            .map(|t| (&t.instance, &t.name, t.fire_at_ms))
            .collect();
        let history = commit
            .history
            .iter()
            .map(|h| Ok((&h.instance, h.at_us, encode(&h.entry)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(Self {
            instances: encode(&instances)?,
            outbox_delete: encode(&commit.outbox_delete)?,
            outbox_put: encode(&outbox_put)?,
            timers_delete: encode(&commit.timers_delete)?,
            timers_put: encode(&timers_put)?,
            history: encode(&history)?,
        })
    }
}

/// Commands moved to the dead-letter list, and dead letters retried.
async fn move_dead_letters(
    conn: &mut SqliteConnection,
    commit: &SagaCommit,
) -> Result<(), sqlx::Error> {
    for c in &commit.dead_letters {
        sqlx::query("DELETE FROM saga_outbox WHERE saga = ? AND instance = ? AND step = ?")
            .bind(&c.saga)
            .bind(&c.instance)
            .bind(c.step as i64)
            .execute(&mut *conn)
            .await?;
        insert_command(
            conn,
            "INSERT INTO saga_dead_letters",
            c,
            Some(crate::store::now_us()),
        )
        .await?;
    }
    for id in &commit.dead_letters_delete {
        sqlx::query("DELETE FROM saga_dead_letters WHERE id = ?")
            .bind(*id as i64)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
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

async fn insert_command(
    conn: &mut SqliteConnection,
    insert: &str,
    c: &OutboxCommand,
    dead_at: Option<i64>,
) -> Result<(), sqlx::Error> {
    let sql = match dead_at {
        None => {
            format!("{insert} ({OUTBOX_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        }
        Some(_) => {
            format!(
                "{insert} ({OUTBOX_COLUMNS}, dead_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            )
        }
    };
    let mut query = sqlx::query(&sql)
        .bind(&c.saga)
        .bind(&c.instance)
        .bind(c.step as i64)
        .bind(&c.aggregate)
        .bind(&c.aggregate_id)
        .bind(&c.command_type)
        .bind(&c.data)
        .bind(&c.metadata)
        .bind(c.compensating)
        .bind(c.attempts as i64)
        .bind(encode(&c.errors)?)
        .bind(c.created_at_us)
        .bind(&c.idempotency_key);
    if let Some(at) = dead_at {
        query = query.bind(at);
    }
    query.execute(&mut *conn).await?;
    Ok(())
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
    .bind(encode(&instances).map_err(StoreError::from)?)
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
