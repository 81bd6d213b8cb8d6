//! The statements both backends run alike, as writer jobs or as reads the
//! backends call themselves: one function each, generic over the sqlx
//! `Database`, given the backend's own SQL (`Sql`, kept next to each
//! backend). Rows decode through `store::rows`; the other reads are in
//! `store::sql_roles`.
//!
//! What really differs stays with the backend: the SQLite writer's direct
//! statements (appends, saga commits), PostgreSQL's fencing by conditional
//! `UPDATE` and its NUL check (`commit_view`), the database clock for
//! PostgreSQL's leases, and the statements that bind a list (a JSON array
//! on SQLite, an array parameter on PostgreSQL).

use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use super::rows::{self, DeploymentRow, InstanceRow, TimerRow};
use crate::store::{
    Deployment, GenerationRecord, NewDeployment, SagaLoad, SagaStatus, StoreError, now_us,
};

/// The SQL text of the shared statements (here and in `sql_roles`), per backend (`?` or
/// `$n` placeholders, bound in the order each function documents).
pub struct Sql {
    /// A view row's value: projection, generation, key.
    pub view_get: &'static str,
    /// A stored component's bytes: hash.
    pub plugin_bytes: &'static str,
    /// key, value of a view's rows: projection, generation, prefix, after,
    /// end (`after` and `end` may be NULL), limit.
    pub view_scan: &'static str,
    /// Every generation, by name and generation.
    pub generations: &'static str,
    /// name, generation, plugin_hash, role, position, created_at.
    pub save_generation: &'static str,
    /// The generation's row (locked where the backend can): name, generation.
    pub find_generation: &'static str,
    /// Retire the other active generation: name, generation.
    pub retire_active: &'static str,
    /// name, generation.
    pub activate_generation: &'static str,
    /// Delete a page of a generation's rows: projection, generation, limit.
    pub drop_rows: &'static str,
    /// name, generation.
    pub delete_generation: &'static str,
    /// A projection's skips, newest first: name.
    pub skips: &'static str,
    /// hash, bytes, size, created_at.
    pub insert_blob: &'static str,
    /// name, hash, kind, mode, source, deployed_at; returns the id.
    pub insert_deployment: &'static str,
    /// A name's deployments, newest first: name.
    pub plugin_history: &'static str,
    /// The latest deployment of every name.
    pub latest_deployments: &'static str,
    /// Record a name's removal, a copy of its latest deployment in mode
    /// `removed`, unless that one is a removal: name, source, deployed_at;
    /// returns the id.
    pub insert_removal: &'static str,
    /// One deployment: id.
    pub deployment: &'static str,
    /// name, holder.
    pub release_lease: &'static str,
    /// Every lease, by name.
    pub leases: &'static str,
    /// Delete a page of history of completed instances: updated before, limit.
    pub purge_history: &'static str,
    /// A saga's checkpoint: saga.
    pub saga_checkpoint: &'static str,
    /// A saga's instances that are not completed: saga, completed.
    pub open_instances: &'static str,
    /// A saga's outbox, by instance and step: saga.
    pub saga_outbox: &'static str,
    /// A saga's timers: saga.
    pub saga_timers: &'static str,
    /// saga, instance.
    pub instance: &'static str,
    /// An instance's outbox, by step: saga, instance.
    pub instance_outbox: &'static str,
    /// An instance's history, newest first: saga, instance, limit.
    pub history: &'static str,
    /// status, count of a saga's instances: saga.
    pub status_counts: &'static str,
    /// A saga's outbox size and dead letter count, in one row: saga.
    pub pending_counts: &'static str,
    /// Dead letters after an id, by id: after, limit.
    pub dead_letters: &'static str,
    /// id.
    pub dead_letter: &'static str,
}

/// The number of rows a statement changed: `rows_affected` is each
/// backend's own method, not part of `sqlx::Database`.
pub trait Affected {
    fn rows_affected(&self) -> u64;
}

impl Affected for sqlx::sqlite::SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        self.rows_affected()
    }
}

impl Affected for sqlx::postgres::PgQueryResult {
    fn rows_affected(&self) -> u64 {
        self.rows_affected()
    }
}

pub async fn save_generation<DB: Database>(
    sql: &Sql,
    conn: &mut DB::Connection,
    record: GenerationRecord,
) -> Result<Result<(), StoreError>, sqlx::Error>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    sqlx::query::<DB>(sql.save_generation)
        .bind(record.name.as_str())
        .bind(int8(record.generation))
        .bind(record.plugin_hash.as_str())
        .bind(record.role.as_str())
        .bind(int8(record.position))
        .bind(now_us())
        .execute(&mut *conn)
        .await?;
    Ok(Ok(()))
}

/// Make `generation` the active one and retire the one active before.
pub async fn promote_generation<DB: Database>(
    sql: &Sql,
    conn: &mut DB::Connection,
    projection: String,
    generation: u64,
) -> Result<Result<(), StoreError>, sqlx::Error>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    (i64,): for<'r> FromRow<'r, DB::Row>,
{
    let found = sqlx::query_as::<DB, (i64,)>(sql.find_generation)
        .bind(projection.as_str())
        .bind(int8(generation))
        .fetch_optional(&mut *conn)
        .await?;
    if found.is_none() {
        return Ok(Err(StoreError::Corrupt(format!(
            "projection {projection} has no generation {generation} to promote"
        ))));
    }
    for statement in [sql.retire_active, sql.activate_generation] {
        sqlx::query::<DB>(statement)
            .bind(projection.as_str())
            .bind(int8(generation))
            .execute(&mut *conn)
            .await?;
    }
    Ok(Ok(()))
}

/// Delete up to `limit` rows of a generation; once none is left, the
/// generation itself. Answers the rows deleted.
pub async fn drop_generation<DB: Database>(
    sql: &Sql,
    conn: &mut DB::Connection,
    projection: String,
    generation: u64,
    limit: u32,
) -> Result<Result<u64, StoreError>, sqlx::Error>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    DB::QueryResult: Affected,
{
    let deleted = sqlx::query::<DB>(sql.drop_rows)
        .bind(projection.as_str())
        .bind(int8(generation))
        .bind(i64::from(limit.max(1)))
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if deleted == 0 {
        sqlx::query::<DB>(sql.delete_generation)
            .bind(projection.as_str())
            .bind(int8(generation))
            .execute(&mut *conn)
            .await?;
    }
    Ok(Ok(deleted))
}

/// Store the component (once per hash) and record its deployment.
pub async fn record_deployment<DB: Database>(
    sql: &Sql,
    conn: &mut DB::Connection,
    deployment: NewDeployment,
) -> Result<Result<Deployment, StoreError>, sqlx::Error>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    (i64,): for<'r> FromRow<'r, DB::Row>,
{
    let now = now_us();
    sqlx::query::<DB>(sql.insert_blob)
        .bind(deployment.hash.as_str())
        .bind(deployment.bytes.as_slice())
        .bind(deployment.bytes.len() as i64)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    let (id,) = sqlx::query_as::<DB, (i64,)>(sql.insert_deployment)
        .bind(deployment.name.as_str())
        .bind(deployment.hash.as_str())
        .bind(deployment.kind.as_str())
        .bind(deployment.mode.as_str())
        .bind(deployment.source.as_str())
        .bind(now)
        .fetch_one(&mut *conn)
        .await?;
    Ok(Ok(Deployment {
        id: id as u64,
        size: deployment.bytes.len() as u64,
        name: deployment.name,
        hash: deployment.hash,
        kind: deployment.kind,
        mode: deployment.mode,
        source: deployment.source,
        deployed_at_us: now,
    }))
}

/// Record the removal of `name` (see `PluginCatalog::record_removal`).
pub async fn record_removal<DB: Database>(
    sql: &Sql,
    conn: &mut DB::Connection,
    name: String,
    source: String,
) -> Result<Result<Option<Deployment>, StoreError>, sqlx::Error>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    (i64,): for<'r> FromRow<'r, DB::Row>,
    DeploymentRow: for<'r> FromRow<'r, DB::Row>,
{
    let inserted = sqlx::query_as::<DB, (i64,)>(sql.insert_removal)
        .bind(name.as_str())
        .bind(source.as_str())
        .bind(now_us())
        .fetch_optional(&mut *conn)
        .await?;
    let Some((id,)) = inserted else {
        return Ok(Ok(None));
    };
    let row = sqlx::query_as::<DB, DeploymentRow>(sql.deployment)
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    Ok(row.try_into().map(Some))
}

/// Deployments of one name, newest first; or, without a name, the latest
/// deployment of every name.
pub async fn plugin_history<DB: Database>(
    sql: &Sql,
    readers: &Pool<DB>,
    name: Option<&str>,
) -> Result<Vec<Deployment>, StoreError>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    DeploymentRow: for<'r> FromRow<'r, DB::Row>,
{
    let rows = match name {
        Some(name) => {
            sqlx::query_as::<DB, DeploymentRow>(sql.plugin_history)
                .bind(name)
                .fetch_all(readers)
                .await?
        }
        None => {
            sqlx::query_as::<DB, DeploymentRow>(sql.latest_deployments)
                .fetch_all(readers)
                .await?
        }
    };
    rows::convert(rows)
}

pub async fn release_lease<DB: Database>(
    sql: &Sql,
    conn: &mut DB::Connection,
    name: String,
    holder: String,
) -> Result<Result<(), StoreError>, sqlx::Error>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
{
    sqlx::query::<DB>(sql.release_lease)
        .bind(name.as_str())
        .bind(holder.as_str())
        .execute(&mut *conn)
        .await?;
    Ok(Ok(()))
}

/// Delete up to `limit` history entries of instances completed before
/// `completed_before_us`.
pub async fn purge_history<DB: Database>(
    sql: &Sql,
    conn: &mut DB::Connection,
    completed_before_us: i64,
    limit: u32,
) -> Result<Result<u64, StoreError>, sqlx::Error>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    DB::QueryResult: Affected,
{
    let done = sqlx::query::<DB>(sql.purge_history)
        .bind(completed_before_us)
        .bind(i64::from(limit))
        .execute(&mut *conn)
        .await?;
    Ok(Ok(done.rows_affected()))
}

/// What a runner resumes from, read on one connection (PostgreSQL's is in
/// a read-only snapshot transaction).
pub async fn load<DB: Database>(
    sql: &Sql,
    conn: &mut DB::Connection,
    saga: &str,
) -> Result<SagaLoad, StoreError>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    (i64,): for<'r> FromRow<'r, DB::Row>,
    InstanceRow: for<'r> FromRow<'r, DB::Row>,
    rows::CommandRow: for<'r> FromRow<'r, DB::Row>,
    TimerRow: for<'r> FromRow<'r, DB::Row>,
{
    let checkpoint = sqlx::query_as::<DB, (i64,)>(sql.saga_checkpoint)
        .bind(saga)
        .fetch_optional(&mut *conn)
        .await?;
    let instances = sqlx::query_as::<DB, InstanceRow>(sql.open_instances)
        .bind(saga)
        .bind(SagaStatus::Completed.as_str())
        .fetch_all(&mut *conn)
        .await?;
    let outbox = sqlx::query_as::<DB, rows::CommandRow>(sql.saga_outbox)
        .bind(saga)
        .fetch_all(&mut *conn)
        .await?;
    let timers = sqlx::query_as::<DB, TimerRow>(sql.saga_timers)
        .bind(saga)
        .fetch_all(&mut *conn)
        .await?;
    Ok(SagaLoad {
        checkpoint: checkpoint.map(|(p,)| p as u64),
        instances: rows::convert(instances)?,
        outbox: rows::convert(outbox)?,
        timers: timers.into_iter().map(Into::into).collect(),
    })
}

/// A `u64` as a `BIGINT`/`INTEGER` parameter, saturating at `i64::MAX`.
pub fn int8(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}
