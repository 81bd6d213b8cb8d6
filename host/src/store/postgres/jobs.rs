//! Writes other than appends, run inside the writer's batch transaction and
//! answered only once that transaction has committed.

use std::future::Future;
use std::pin::Pin;

use sqlx::PgConnection;
use tokio::sync::oneshot;

use crate::store::StoreError;

/// A boxed future borrowing the connection.
pub type BoxFuture<'c, T> = Pin<Box<dyn Future<Output = T> + Send + 'c>>;

/// The work of one job. The outer error fails the whole batch (the database
/// failed, and PostgreSQL has aborted the transaction); the inner one is
/// this job's own refusal, decided before it wrote anything.
pub type JobFn<T> = Box<
    dyn for<'c> FnOnce(
            &'c mut PgConnection,
        ) -> BoxFuture<'c, Result<Result<T, StoreError>, sqlx::Error>>
        + Send,
>;

/// A job whose result type is erased, so that one batch can carry many kinds.
pub trait Job: Send {
    /// Do the work inside the open transaction.
    fn run<'c>(&'c mut self, conn: &'c mut PgConnection) -> BoxFuture<'c, Result<(), sqlx::Error>>;
    /// Answer the caller: `Ok` once the transaction committed, else why not.
    fn finish(self: Box<Self>, committed: Result<(), StoreError>);
    /// Whether the caller needs the commit flushed to the WAL before the
    /// answer, or only atomic and ordered with the others.
    fn durable(&self) -> bool;
}

pub struct TypedJob<T> {
    work: Option<JobFn<T>>,
    durable: bool,
    outcome: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T> TypedJob<T> {
    pub fn new(
        work: JobFn<T>,
        reply: oneshot::Sender<Result<T, StoreError>>,
        durable: bool,
    ) -> Self {
        Self {
            work: Some(work),
            durable,
            outcome: None,
            reply,
        }
    }
}

impl<T: Send + 'static> Job for TypedJob<T> {
    fn run<'c>(&'c mut self, conn: &'c mut PgConnection) -> BoxFuture<'c, Result<(), sqlx::Error>> {
        Box::pin(async move {
            if let Some(work) = self.work.take() {
                self.outcome = Some(work(conn).await?);
            }
            Ok(())
        })
    }

    fn finish(self: Box<Self>, committed: Result<(), StoreError>) {
        let _ = self
            .reply
            .send(crate::store::write_answer(self.outcome, committed));
    }

    fn durable(&self) -> bool {
        self.durable
    }
}
