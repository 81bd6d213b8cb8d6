//! Saga checkpoints, instances, outbox, timers, history and dead letters:
//! the PostgreSQL side of the saga manager.

use sqlx::postgres::PgRow;
use sqlx::{Connection, PgConnection, PgPool, Row};

use super::int8;
use crate::store::{
    DeadLetter, OutboxCommand, SagaCommit, SagaCounts, SagaHistoryEntry, SagaInstanceRecord,
    SagaLoad, SagaStatus, SagaTimerRecord, StoreError,
};

const OUTBOX_COLUMNS: &str = "saga, instance, step, aggregate, aggregate_id, command_type, data, metadata, compensating, attempts, errors, created_at, idempotency_key";

const INSTANCE_COLUMNS: &str =
    "saga, instance, state, status, done, next_step, awaited_position, created_at, updated_at";

fn encode<T: serde::Serialize>(value: &T) -> Result<String, sqlx::Error> {
    serde_json::to_string(value).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

/// Move the saga's checkpoint from `from` to `to` if it is at `from` (a saga
/// without a checkpoint is at 0). The conditional write locks the row, so
/// two hosts committing the same saga take turns and the second is refused.
async fn move_checkpoint(
    conn: &mut PgConnection,
    saga: &str,
    from: u64,
    to: u64,
) -> Result<Result<(), StoreError>, sqlx::Error> {
    let mut moved =
        sqlx::query("UPDATE saga_checkpoints SET position = $3 WHERE saga = $1 AND position = $2")
            .bind(saga)
            .bind(int8(from))
            .bind(int8(to))
            .execute(&mut *conn)
            .await?
            .rows_affected();
    if moved == 0 && from == 0 {
        moved = sqlx::query(
            "INSERT INTO saga_checkpoints (saga, position) VALUES ($1, $2) \
             ON CONFLICT (saga) DO NOTHING",
        )
        .bind(saga)
        .bind(int8(to))
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    if moved == 1 {
        return Ok(Ok(()));
    }
    let actual: Option<i64> =
        sqlx::query_scalar("SELECT position FROM saga_checkpoints WHERE saga = $1")
            .bind(saga)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(Err(StoreError::CheckpointMoved {
        projection: format!("saga {saga}"),
        generation: 0,
        expected: from,
        actual: actual.map(|p| p as u64),
    }))
}

/// Delete up to `limit` history entries of instances completed before
/// `completed_before_us`.
pub async fn purge_history(
    conn: &mut PgConnection,
    completed_before_us: i64,
    limit: u32,
) -> Result<Result<u64, StoreError>, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM saga_history WHERE id IN (\
         SELECT h.id FROM saga_instances i \
         JOIN saga_history h ON h.saga = i.saga AND h.instance = i.instance \
         WHERE i.status = 'completed' AND i.updated_at < $1 LIMIT $2)",
    )
    .bind(completed_before_us)
    .bind(i64::from(limit))
    .execute(&mut *conn)
    .await?;
    Ok(Ok(done.rows_affected()))
}

/// Apply one saga batch, if the checkpoint is where it started.
pub async fn commit_saga(
    conn: &mut PgConnection,
    commit: SagaCommit,
) -> Result<Result<(), StoreError>, sqlx::Error> {
    let saga = commit.saga.as_str();
    if let Some((from, to)) = commit.checkpoint
        && let Err(refused) = move_checkpoint(conn, saga, from, to).await?
    {
        return Ok(Err(refused));
    }
    for i in &commit.instances {
        sqlx::query(&format!(
            "INSERT INTO saga_instances ({INSTANCE_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (saga, instance) DO UPDATE SET state = excluded.state, \
             status = excluded.status, done = excluded.done, next_step = excluded.next_step, \
             awaited_position = excluded.awaited_position, created_at = excluded.created_at, \
             updated_at = excluded.updated_at"
        ))
        .bind(&i.saga)
        .bind(&i.instance)
        .bind(&i.state)
        .bind(i.status.as_str())
        .bind(i.done)
        .bind(int8(i.next_step))
        .bind(int8(i.awaited_position))
        .bind(i.created_at_us)
        .bind(i.updated_at_us)
        .execute(&mut *conn)
        .await?;
    }
    for (instance, step) in &commit.outbox_delete {
        delete_outbox(conn, saga, instance, *step).await?;
    }
    for c in &commit.outbox_put {
        put_outbox(conn, c).await?;
    }
    for c in &commit.dead_letters {
        delete_outbox(conn, &c.saga, &c.instance, c.step).await?;
        insert_dead_letter(conn, c).await?;
    }
    for id in &commit.dead_letters_delete {
        sqlx::query("DELETE FROM saga_dead_letters WHERE id = $1")
            .bind(int8(*id))
            .execute(&mut *conn)
            .await?;
    }
    for (instance, name) in &commit.timers_delete {
        sqlx::query(
            "DELETE FROM saga_timers WHERE saga = $1 AND instance = $2 \
             AND ($3::text IS NULL OR name = $3)",
        )
        .bind(saga)
        .bind(instance)
        .bind(name.as_deref())
        .execute(&mut *conn)
        .await?;
    }
    for t in &commit.timers_put {
        sqlx::query(
            "INSERT INTO saga_timers (saga, instance, name, fire_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (saga, instance, name) DO UPDATE SET fire_at = excluded.fire_at",
        )
        .bind(saga)
        .bind(&t.instance)
        .bind(&t.name)
        .bind(t.fire_at_ms)
        .execute(&mut *conn)
        .await?;
    }
    for h in &commit.history {
        sqlx::query("INSERT INTO saga_history (saga, instance, at, entry) VALUES ($1, $2, $3, $4)")
            .bind(saga)
            .bind(&h.instance)
            .bind(h.at_us)
            .bind(encode(&h.entry)?)
            .execute(&mut *conn)
            .await?;
    }
    Ok(Ok(()))
}

async fn delete_outbox(
    conn: &mut PgConnection,
    saga: &str,
    instance: &str,
    step: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM saga_outbox WHERE saga = $1 AND instance = $2 AND step = $3")
        .bind(saga)
        .bind(instance)
        .bind(int8(step))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn put_outbox(conn: &mut PgConnection, c: &OutboxCommand) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO saga_outbox ({OUTBOX_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
         ON CONFLICT (saga, instance, step) DO UPDATE SET aggregate = excluded.aggregate, \
         aggregate_id = excluded.aggregate_id, command_type = excluded.command_type, \
         data = excluded.data, metadata = excluded.metadata, \
         compensating = excluded.compensating, attempts = excluded.attempts, \
         errors = excluded.errors, created_at = excluded.created_at, \
         idempotency_key = excluded.idempotency_key"
    );
    bind_command(sqlx::query(&sql), c)?
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn insert_dead_letter(conn: &mut PgConnection, c: &OutboxCommand) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO saga_dead_letters ({OUTBOX_COLUMNS}, dead_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
    );
    bind_command(sqlx::query(&sql), c)?
        .bind(crate::store::now_us())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Bind a command's columns, in `OUTBOX_COLUMNS` order.
fn bind_command<'q>(query: PgQuery<'q>, c: &'q OutboxCommand) -> Result<PgQuery<'q>, sqlx::Error> {
    Ok(query
        .bind(&c.saga)
        .bind(&c.instance)
        .bind(int8(c.step))
        .bind(&c.aggregate)
        .bind(&c.aggregate_id)
        .bind(&c.command_type)
        .bind(&c.data)
        .bind(&c.metadata)
        .bind(c.compensating)
        .bind(i64::from(c.attempts))
        .bind(encode(&c.errors)?)
        .bind(c.created_at_us)
        .bind(&c.idempotency_key))
}

fn command_from_row(row: &PgRow) -> Result<OutboxCommand, StoreError> {
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

fn instance_from_row(row: &PgRow) -> Result<SagaInstanceRecord, StoreError> {
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

/// What a runner resumes from, read in one snapshot of the database (a
/// host taking a saga over reads a state no commit is half way through).
pub async fn load(readers: &PgPool, saga: &str) -> Result<SagaLoad, StoreError> {
    let mut conn = readers.acquire().await?;
    let mut tx = conn.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let checkpoint: Option<i64> =
        sqlx::query_scalar("SELECT position FROM saga_checkpoints WHERE saga = $1")
            .bind(saga)
            .fetch_optional(&mut *tx)
            .await?;
    let instances = sqlx::query(&format!(
        "SELECT {INSTANCE_COLUMNS} FROM saga_instances WHERE saga = $1 AND status <> $2 \
         ORDER BY instance"
    ))
    .bind(saga)
    .bind(SagaStatus::Completed.as_str())
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(instance_from_row)
    .collect::<Result<_, _>>()?;
    let outbox = sqlx::query(&format!(
        "SELECT {OUTBOX_COLUMNS} FROM saga_outbox WHERE saga = $1 ORDER BY instance, step"
    ))
    .bind(saga)
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(command_from_row)
    .collect::<Result<_, _>>()?;
    let timers = sqlx::query(
        "SELECT instance, name, fire_at FROM saga_timers WHERE saga = $1 ORDER BY instance, name",
    )
    .bind(saga)
    .fetch_all(&mut *tx)
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
    tx.commit().await?;
    Ok(SagaLoad {
        checkpoint: checkpoint.map(|p| p as u64),
        instances,
        outbox,
        timers,
    })
}

pub async fn instances(
    readers: &PgPool,
    saga: &str,
    instances: &[String],
) -> Result<Vec<SagaInstanceRecord>, StoreError> {
    sqlx::query(&format!(
        "SELECT {INSTANCE_COLUMNS} FROM saga_instances WHERE saga = $1 AND instance = ANY($2)"
    ))
    .bind(saga)
    .bind(instances)
    .fetch_all(readers)
    .await?
    .iter()
    .map(instance_from_row)
    .collect()
}

pub async fn instance(
    readers: &PgPool,
    saga: &str,
    instance: &str,
) -> Result<Option<SagaInstanceRecord>, StoreError> {
    sqlx::query(&format!(
        "SELECT {INSTANCE_COLUMNS} FROM saga_instances WHERE saga = $1 AND instance = $2"
    ))
    .bind(saga)
    .bind(instance)
    .fetch_optional(readers)
    .await?
    .as_ref()
    .map(instance_from_row)
    .transpose()
}

pub async fn outbox(
    readers: &PgPool,
    saga: &str,
    instance: &str,
) -> Result<Vec<OutboxCommand>, StoreError> {
    sqlx::query(&format!(
        "SELECT {OUTBOX_COLUMNS} FROM saga_outbox WHERE saga = $1 AND instance = $2 ORDER BY step"
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
    readers: &PgPool,
    saga: &str,
    instance: &str,
    limit: u32,
) -> Result<Vec<SagaHistoryEntry>, StoreError> {
    let rows = sqlx::query(
        "SELECT at, entry FROM saga_history WHERE saga = $1 AND instance = $2 \
         ORDER BY id DESC LIMIT $3",
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

pub async fn counts(readers: &PgPool, saga: &str) -> Result<SagaCounts, StoreError> {
    let mut counts = SagaCounts::default();
    let rows =
        sqlx::query("SELECT status, count(*) FROM saga_instances WHERE saga = $1 GROUP BY status")
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
    let (outbox, dead): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM saga_outbox WHERE saga = $1), \
         (SELECT count(*) FROM saga_dead_letters WHERE saga = $1)",
    )
    .bind(saga)
    .fetch_one(readers)
    .await?;
    counts.outbox = outbox as u64;
    counts.dead_letters = dead as u64;
    Ok(counts)
}

fn dead_letter_from_row(row: &PgRow) -> Result<DeadLetter, StoreError> {
    Ok(DeadLetter {
        id: row.try_get::<i64, _>("id")? as u64,
        command: command_from_row(row)?,
        dead_at_us: row.try_get("dead_at")?,
    })
}

pub async fn dead_letters(
    readers: &PgPool,
    after: u64,
    limit: u32,
) -> Result<Vec<DeadLetter>, StoreError> {
    sqlx::query(&format!(
        "SELECT id, {OUTBOX_COLUMNS}, dead_at FROM saga_dead_letters WHERE id > $1 \
         ORDER BY id LIMIT $2"
    ))
    .bind(int8(after))
    .bind(i64::from(limit))
    .fetch_all(readers)
    .await?
    .iter()
    .map(dead_letter_from_row)
    .collect()
}

pub async fn dead_letter(readers: &PgPool, id: u64) -> Result<Option<DeadLetter>, StoreError> {
    sqlx::query(&format!(
        "SELECT id, {OUTBOX_COLUMNS}, dead_at FROM saga_dead_letters WHERE id = $1"
    ))
    .bind(int8(id))
    .fetch_optional(readers)
    .await?
    .as_ref()
    .map(dead_letter_from_row)
    .transpose()
}
