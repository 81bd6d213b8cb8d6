//! Saga checkpoints, instances, outbox, timers, history and dead letters:
//! the PostgreSQL side of the saga manager.

//!
//! Reads are `store::queries`, shared with SQLite; what stays here is what
//! differs: the commit (sqlx statements fenced by a conditional `UPDATE`,
//! where SQLite's writer runs direct statements after a read), the load's
//! snapshot transaction, and the instance list bound as an array.

use sqlx::{Connection, PgConnection, PgPool};

use super::int8;
use super::statements::{SQL, command_columns, instance_columns};
use crate::store::rows::{self, InstanceRow};
use crate::store::{OutboxCommand, SagaCommit, SagaInstanceRecord, SagaLoad, StoreError, queries};

const INSERT_INSTANCE: &str = concat!(
    "INSERT INTO saga_instances (",
    instance_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
     ON CONFLICT (saga, instance) DO UPDATE SET state = excluded.state, \
     status = excluded.status, done = excluded.done, next_step = excluded.next_step, \
     awaited_position = excluded.awaited_position, created_at = excluded.created_at, \
     updated_at = excluded.updated_at"
);

const PUT_OUTBOX: &str = concat!(
    "INSERT INTO saga_outbox (",
    command_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
     ON CONFLICT (saga, instance, step) DO UPDATE SET aggregate = excluded.aggregate, \
     aggregate_id = excluded.aggregate_id, command_type = excluded.command_type, \
     data = excluded.data, metadata = excluded.metadata, \
     compensating = excluded.compensating, attempts = excluded.attempts, \
     errors = excluded.errors, created_at = excluded.created_at, \
     idempotency_key = excluded.idempotency_key"
);

const INSERT_DEAD_LETTER: &str = concat!(
    "INSERT INTO saga_dead_letters (",
    command_columns!(),
    ", dead_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
);

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
        put_instance(conn, i).await?;
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

async fn put_instance(conn: &mut PgConnection, i: &SagaInstanceRecord) -> Result<(), sqlx::Error> {
    sqlx::query(INSERT_INSTANCE)
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
    Ok(())
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
    bind_command(sqlx::query(PUT_OUTBOX), c)?
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn insert_dead_letter(conn: &mut PgConnection, c: &OutboxCommand) -> Result<(), sqlx::Error> {
    bind_command(sqlx::query(INSERT_DEAD_LETTER), c)?
        .bind(crate::store::now_us())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Bind a command's columns, in `command_columns!` order.
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

/// What a runner resumes from, read in one snapshot of the database (a
/// host taking a saga over reads a state no commit is half way through).
pub async fn load(readers: &PgPool, saga: &str) -> Result<SagaLoad, StoreError> {
    let mut conn = readers.acquire().await?;
    let mut tx = conn.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let load = queries::load::<sqlx::Postgres>(&SQL, &mut tx, saga).await?;
    tx.commit().await?;
    Ok(load)
}

pub async fn instances(
    readers: &PgPool,
    saga: &str,
    instances: &[String],
) -> Result<Vec<SagaInstanceRecord>, StoreError> {
    const SELECT: &str = concat!(
        "SELECT ",
        instance_columns!(),
        " FROM saga_instances WHERE saga = $1 AND instance = ANY($2)"
    );
    let rows = sqlx::query_as::<_, InstanceRow>(SELECT)
        .bind(saga)
        .bind(instances)
        .fetch_all(readers)
        .await?;
    rows::convert(rows)
}
