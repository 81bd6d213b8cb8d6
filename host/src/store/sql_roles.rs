//! The role traits a sqlx backend implements, written once for both.
//!
//! A backend says what is its own through `SqlBackend`: its database, its
//! SQL (`queries::Sql`), its readers, how its writer runs a job, and the
//! operations that really differ (see each hook); every other method of
//! `ViewStore`, `PluginCatalog`, `LeaseStore` and `SagaStore` is the generic
//! function of `store::queries`, here.

use async_trait::async_trait;
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};
use tokio::sync::oneshot;

use super::jobs::JobFn;
use super::queries::{self, Affected, Sql, int8};
use super::rows::{
    self, CommandRow, DeadLetterRow, DeploymentRow, GenerationRow, HistoryRow, InstanceRow,
    LeaseRow, SkipRow, StatusCountRow, TimerRow,
};
use crate::store::{
    DeadLetter, Deployment, GenerationRecord, LeaseRecord, LeaseStore, NewDeployment,
    OutboxCommand, PluginCatalog, SagaCommit, SagaCounts, SagaHistoryEntry, SagaInstanceRecord,
    SagaLoad, SagaStatus, SagaStore, SkipRecord, StoreError, ViewCommit, ViewId, ViewStore,
};

/// The connection of a backend's database.
pub type Conn<S> = <<S as SqlBackend>::Db as Database>::Connection;

/// What a sqlx backend supplies for the role traits to be implemented.
#[async_trait]
pub trait SqlBackend: Send + Sync + 'static {
    type Db: Database;

    /// The backend's text of the shared statements.
    fn sql(&self) -> &'static Sql;

    /// The pool reads go through.
    fn readers(&self) -> &Pool<Self::Db>;

    /// Run `job` in the writer's next transaction, answered once that
    /// transaction has committed; with `durable` false, the commit need not
    /// be on disk before the answer (a projection batch or a purge:
    /// rebuildable or repeatable, and atomic).
    async fn run_job<T: Send + 'static>(
        &self,
        job: JobFn<T, Conn<Self>>,
        durable: bool,
    ) -> Result<T, StoreError>;

    /// Write a view batch, fenced by its checkpoint: by a read in SQLite's
    /// single writer, by a conditional `UPDATE` on PostgreSQL (several hosts
    /// write), which also refuses keys PostgreSQL text cannot hold.
    async fn commit_view(&self, commit: ViewCommit) -> Result<(), StoreError>;

    /// Take or renew a lease: by this host's clock on SQLite (one host), by
    /// the database's on PostgreSQL (the hosts' clocks need not agree).
    async fn try_lease(&self, name: &str, holder: &str, ttl_us: i64) -> Result<bool, StoreError>;

    /// What a saga runner resumes from (in one snapshot on PostgreSQL).
    async fn saga_load(&self, saga: &str) -> Result<SagaLoad, StoreError>;

    /// A saga commit: SQLite's writer runs direct statements, PostgreSQL
    /// fences by a conditional `UPDATE`.
    async fn commit_saga(&self, commit: SagaCommit) -> Result<(), StoreError>;

    /// See `SagaStore::commit_saga_ordered`; SQLite tells `ordered` once
    /// the commit is queued.
    async fn commit_saga_ordered(
        &self,
        commit: SagaCommit,
        ordered: oneshot::Sender<()>,
    ) -> Result<(), StoreError> {
        let result = self.commit_saga(commit).await;
        if result.is_ok() {
            let _ = ordered.send(());
        }
        result
    }

    /// See `SagaStore::orders_writes_as_queued`.
    fn orders_writes_as_queued(&self) -> bool {
        false
    }

    /// Some instances of a saga: the list is bound as a JSON array on
    /// SQLite, as an array parameter on PostgreSQL.
    async fn saga_instances(
        &self,
        saga: &str,
        instances: &[String],
    ) -> Result<Vec<SagaInstanceRecord>, StoreError>;
}

#[async_trait]
impl<S> ViewStore for S
where
    S: SqlBackend,
    for<'c> &'c mut Conn<S>: Executor<'c, Database = S::Db>,
    for<'q> <S::Db as Database>::Arguments<'q>: IntoArguments<'q, S::Db>,
    for<'q> &'q str: Encode<'q, S::Db> + Type<S::Db>,
    for<'q> Option<&'q str>: Encode<'q, S::Db> + Type<S::Db>,
    for<'q> i64: Encode<'q, S::Db> + Type<S::Db>,
    (i64,): for<'r> FromRow<'r, <S::Db as Database>::Row>,
    (Vec<u8>,): for<'r> FromRow<'r, <S::Db as Database>::Row>,
    (String, Vec<u8>): for<'r> FromRow<'r, <S::Db as Database>::Row>,
    GenerationRow: for<'r> FromRow<'r, <S::Db as Database>::Row>,
    SkipRow: for<'r> FromRow<'r, <S::Db as Database>::Row>,
    <S::Db as Database>::QueryResult: Affected,
{
    async fn commit_view(&self, commit: ViewCommit) -> Result<(), StoreError> {
        SqlBackend::commit_view(self, commit).await
    }

    async fn view_get(&self, view: ViewId<'_>, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row = sqlx::query_as::<S::Db, (Vec<u8>,)>(self.sql().view_get)
            .bind(view.projection)
            .bind(int8(view.generation))
            .bind(key)
            .fetch_optional(self.readers())
            .await?;
        Ok(row.map(|(value,)| value))
    }

    async fn view_scan(
        &self,
        view: ViewId<'_>,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        // A range on the primary key: the scan stops at the prefix's end.
        let end = rows::prefix_end(prefix);
        // Decoded by index (a tuple), as this read serves projections' scans.
        Ok(
            sqlx::query_as::<S::Db, (String, Vec<u8>)>(self.sql().view_scan)
                .bind(view.projection)
                .bind(view.generation.min(i64::MAX as u64) as i64)
                .bind(prefix)
                .bind(after)
                .bind(end.as_deref())
                .bind(i64::from(limit))
                .fetch_all(self.readers())
                .await?,
        )
    }

    async fn generations(&self) -> Result<Vec<GenerationRecord>, StoreError> {
        let rows = sqlx::query_as::<S::Db, GenerationRow>(self.sql().generations)
            .fetch_all(self.readers())
            .await?;
        rows::convert(rows)
    }

    async fn save_generation(&self, record: GenerationRecord) -> Result<(), StoreError> {
        let sql = self.sql();
        let job: JobFn<(), Conn<S>> =
            Box::new(move |conn| Box::pin(queries::save_generation::<S::Db>(sql, conn, record)));
        self.run_job(job, true).await
    }

    async fn promote_generation(
        &self,
        projection: &str,
        generation: u64,
    ) -> Result<(), StoreError> {
        let (sql, projection) = (self.sql(), projection.to_string());
        let job: JobFn<(), Conn<S>> = Box::new(move |conn| {
            Box::pin(queries::promote_generation::<S::Db>(
                sql, conn, projection, generation,
            ))
        });
        self.run_job(job, true).await
    }

    async fn drop_generation(&self, view: ViewId<'_>, limit: u32) -> Result<u64, StoreError> {
        let (sql, projection, generation) =
            (self.sql(), view.projection.to_string(), view.generation);
        let job: JobFn<u64, Conn<S>> = Box::new(move |conn| {
            Box::pin(queries::drop_generation::<S::Db>(
                sql, conn, projection, generation, limit,
            ))
        });
        self.run_job(job, true).await
    }

    async fn skips(&self, projection: &str) -> Result<Vec<(u64, SkipRecord)>, StoreError> {
        let rows = sqlx::query_as::<S::Db, SkipRow>(self.sql().skips)
            .bind(projection)
            .fetch_all(self.readers())
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }
}

#[async_trait]
impl<S> PluginCatalog for S
where
    S: SqlBackend,
    for<'c> &'c mut Conn<S>: Executor<'c, Database = S::Db>,
    for<'q> <S::Db as Database>::Arguments<'q>: IntoArguments<'q, S::Db>,
    for<'q> &'q str: Encode<'q, S::Db> + Type<S::Db>,
    for<'q> &'q [u8]: Encode<'q, S::Db> + Type<S::Db>,
    for<'q> i64: Encode<'q, S::Db> + Type<S::Db>,
    (i64,): for<'r> FromRow<'r, <S::Db as Database>::Row>,
    (Vec<u8>,): for<'r> FromRow<'r, <S::Db as Database>::Row>,
    DeploymentRow: for<'r> FromRow<'r, <S::Db as Database>::Row>,
{
    async fn record_deployment(&self, deployment: NewDeployment) -> Result<Deployment, StoreError> {
        let sql = self.sql();
        let job: JobFn<Deployment, Conn<S>> = Box::new(move |conn| {
            Box::pin(queries::record_deployment::<S::Db>(sql, conn, deployment))
        });
        self.run_job(job, true).await
    }

    async fn record_removal(
        &self,
        name: &str,
        source: &str,
    ) -> Result<Option<Deployment>, StoreError> {
        let (sql, name, source) = (self.sql(), name.to_string(), source.to_string());
        let job: JobFn<Option<Deployment>, Conn<S>> = Box::new(move |conn| {
            Box::pin(queries::record_removal::<S::Db>(sql, conn, name, source))
        });
        self.run_job(job, true).await
    }

    async fn plugin_history(&self, name: &str) -> Result<Vec<Deployment>, StoreError> {
        queries::plugin_history(self.sql(), self.readers(), Some(name)).await
    }

    async fn current_deployments(&self) -> Result<Vec<Deployment>, StoreError> {
        queries::plugin_history(self.sql(), self.readers(), None).await
    }

    async fn plugin_bytes(&self, hash: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row = sqlx::query_as::<S::Db, (Vec<u8>,)>(self.sql().plugin_bytes)
            .bind(hash)
            .fetch_optional(self.readers())
            .await?;
        Ok(row.map(|(bytes,)| bytes))
    }
}

#[async_trait]
impl<S> LeaseStore for S
where
    S: SqlBackend,
    for<'c> &'c mut Conn<S>: Executor<'c, Database = S::Db>,
    for<'q> <S::Db as Database>::Arguments<'q>: IntoArguments<'q, S::Db>,
    for<'q> &'q str: Encode<'q, S::Db> + Type<S::Db>,
    LeaseRow: for<'r> FromRow<'r, <S::Db as Database>::Row>,
{
    async fn try_lease(&self, name: &str, holder: &str, ttl_us: i64) -> Result<bool, StoreError> {
        SqlBackend::try_lease(self, name, holder, ttl_us).await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let (sql, name, holder) = (self.sql(), name.to_string(), holder.to_string());
        let job: JobFn<(), Conn<S>> = Box::new(move |conn| {
            Box::pin(queries::release_lease::<S::Db>(sql, conn, name, holder))
        });
        self.run_job(job, true).await
    }

    async fn leases(&self) -> Result<Vec<LeaseRecord>, StoreError> {
        let rows = sqlx::query_as::<S::Db, LeaseRow>(self.sql().leases)
            .fetch_all(self.readers())
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }
}

#[async_trait]
impl<S> SagaStore for S
where
    S: SqlBackend,
    for<'c> &'c mut Conn<S>: Executor<'c, Database = S::Db>,
    for<'q> <S::Db as Database>::Arguments<'q>: IntoArguments<'q, S::Db>,
    for<'q> &'q str: Encode<'q, S::Db> + Type<S::Db>,
    for<'q> i64: Encode<'q, S::Db> + Type<S::Db>,
    (i64, i64): for<'r> FromRow<'r, <S::Db as Database>::Row>,
    InstanceRow: for<'r> FromRow<'r, <S::Db as Database>::Row>,
    CommandRow: for<'r> FromRow<'r, <S::Db as Database>::Row>,
    TimerRow: for<'r> FromRow<'r, <S::Db as Database>::Row>,
    HistoryRow: for<'r> FromRow<'r, <S::Db as Database>::Row>,
    StatusCountRow: for<'r> FromRow<'r, <S::Db as Database>::Row>,
    DeadLetterRow: for<'r> FromRow<'r, <S::Db as Database>::Row>,
    <S::Db as Database>::QueryResult: Affected,
{
    async fn saga_load(&self, saga: &str) -> Result<SagaLoad, StoreError> {
        SqlBackend::saga_load(self, saga).await
    }

    async fn commit_saga(&self, commit: SagaCommit) -> Result<(), StoreError> {
        SqlBackend::commit_saga(self, commit).await
    }

    async fn commit_saga_ordered(
        &self,
        commit: SagaCommit,
        ordered: oneshot::Sender<()>,
    ) -> Result<(), StoreError> {
        SqlBackend::commit_saga_ordered(self, commit, ordered).await
    }

    fn orders_writes_as_queued(&self) -> bool {
        SqlBackend::orders_writes_as_queued(self)
    }

    async fn purge_saga_history(
        &self,
        completed_before_us: i64,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let sql = self.sql();
        let job: JobFn<u64, Conn<S>> = Box::new(move |conn| {
            Box::pin(queries::purge_history::<S::Db>(
                sql,
                conn,
                completed_before_us,
                limit,
            ))
        });
        self.run_job(job, false).await
    }

    async fn saga_instance(
        &self,
        saga: &str,
        instance: &str,
    ) -> Result<Option<SagaInstanceRecord>, StoreError> {
        sqlx::query_as::<S::Db, InstanceRow>(self.sql().instance)
            .bind(saga)
            .bind(instance)
            .fetch_optional(self.readers())
            .await?
            .map(TryInto::try_into)
            .transpose()
    }

    async fn saga_instances(
        &self,
        saga: &str,
        instances: &[String],
    ) -> Result<Vec<SagaInstanceRecord>, StoreError> {
        SqlBackend::saga_instances(self, saga, instances).await
    }

    async fn saga_outbox(
        &self,
        saga: &str,
        instance: &str,
    ) -> Result<Vec<OutboxCommand>, StoreError> {
        let rows = sqlx::query_as::<S::Db, rows::CommandRow>(self.sql().instance_outbox)
            .bind(saga)
            .bind(instance)
            .fetch_all(self.readers())
            .await?;
        rows::convert(rows)
    }

    async fn saga_history(
        &self,
        saga: &str,
        instance: &str,
        limit: u32,
    ) -> Result<Vec<SagaHistoryEntry>, StoreError> {
        let rows = sqlx::query_as::<S::Db, HistoryRow>(self.sql().history)
            .bind(saga)
            .bind(instance)
            .bind(i64::from(limit))
            .fetch_all(self.readers())
            .await?;
        let mut entries = rows
            .into_iter()
            .map(|row| row.into_entry(instance))
            .collect::<Result<Vec<_>, StoreError>>()?;
        entries.reverse();
        Ok(entries)
    }

    async fn saga_counts(&self, saga: &str) -> Result<SagaCounts, StoreError> {
        let mut counts = SagaCounts::default();
        let rows = sqlx::query_as::<S::Db, StatusCountRow>(self.sql().status_counts)
            .bind(saga)
            .fetch_all(self.readers())
            .await?;
        for row in rows {
            let (status, n) = row.parse()?;
            match status {
                SagaStatus::Running => counts.running = n,
                SagaStatus::Compensating => counts.compensating = n,
                SagaStatus::Completed => counts.completed = n,
                SagaStatus::Failed => counts.failed = n,
            }
        }
        let (outbox, dead) = sqlx::query_as::<S::Db, (i64, i64)>(self.sql().pending_counts)
            .bind(saga)
            .fetch_one(self.readers())
            .await?;
        counts.outbox = outbox as u64;
        counts.dead_letters = dead as u64;
        Ok(counts)
    }

    async fn dead_letters(&self, after: u64, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = sqlx::query_as::<S::Db, DeadLetterRow>(self.sql().dead_letters)
            .bind(int8(after))
            .bind(i64::from(limit))
            .fetch_all(self.readers())
            .await?;
        rows::convert(rows)
    }

    async fn dead_letter(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        sqlx::query_as::<S::Db, DeadLetterRow>(self.sql().dead_letter)
            .bind(int8(id))
            .fetch_optional(self.readers())
            .await?
            .map(TryInto::try_into)
            .transpose()
    }
}
