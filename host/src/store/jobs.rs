//! Writes other than appends (and, on SQLite, saga commits), run through
//! sqlx inside the writer's batch transaction and answered only once that
//! transaction has committed. Generic over the backend's connection `C`.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::oneshot;

use crate::store::StoreError;

/// A boxed future borrowing the connection.
pub type BoxFuture<'c, T> = Pin<Box<dyn Future<Output = T> + Send + 'c>>;

/// The work of one job. The outer error fails the whole batch (the database
/// failed; PostgreSQL has then aborted the transaction); the inner one is
/// this job's own refusal, decided before it wrote anything.
pub type JobFn<T, C> = Box<
    dyn for<'c> FnOnce(&'c mut C) -> BoxFuture<'c, Result<Result<T, StoreError>, sqlx::Error>>
        + Send,
>;

/// A job whose result type is erased, so that one batch can carry many kinds.
pub trait Job<C>: Send {
    /// Do the work inside the open transaction.
    fn run<'c>(&'c mut self, conn: &'c mut C) -> BoxFuture<'c, Result<(), sqlx::Error>>;
    /// Answer the caller: `Ok` once the transaction committed, else why not.
    fn finish(self: Box<Self>, committed: Result<(), StoreError>);
    /// Whether the caller needs the write durable before the answer (fsynced
    /// on SQLite, flushed to the WAL on PostgreSQL), or only atomic and
    /// ordered with the others.
    fn durable(&self) -> bool;
}

pub struct TypedJob<T, C> {
    work: Option<JobFn<T, C>>,
    durable: bool,
    outcome: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, C> TypedJob<T, C> {
    pub fn new(
        work: JobFn<T, C>,
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

impl<T: Send + 'static, C: Send + 'static> Job<C> for TypedJob<T, C> {
    fn run<'c>(&'c mut self, conn: &'c mut C) -> BoxFuture<'c, Result<(), sqlx::Error>> {
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
