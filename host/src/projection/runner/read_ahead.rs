//! Batches of the global log read ahead of a runner by a task of their own.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::store::{EventLog, GlobalQuery, Position, RecordedEvent, StoreError};

/// A batch as read: its events, the position it covers up to, and whether
/// it reached the head it was read against.
pub(super) type ReadBatch = (Vec<RecordedEvent>, Position, bool);

/// Batches read ahead of the runner by a task of their own, up to a head.
/// Dropping it stops the task.
pub(super) struct ReadAhead {
    /// The position the next batch received starts at.
    pub(super) next_from: Position,
    pub(super) batches: mpsc::Receiver<Result<ReadBatch, StoreError>>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadAhead {
    pub(super) fn spawn(
        store: Arc<dyn EventLog>,
        from: Position,
        until: Position,
        limit: u32,
        types: Option<Arc<[String]>>,
        depth: usize,
    ) -> Self {
        let (tx, batches) = mpsc::channel(depth);
        let task = tokio::spawn(async move {
            let mut from = from;
            loop {
                let read = store
                    .read_global(GlobalQuery {
                        from_position: from,
                        until_position: Some(until),
                        limit,
                        types: types.as_deref(),
                    })
                    .await;
                let batch = read.map(|events| {
                    let last = events.len() < limit as usize;
                    let to = if last {
                        until
                    } else {
                        events.last().map_or(until, |e| e.position)
                    };
                    (events, to, last)
                });
                let done = match &batch {
                    Ok((_, to, last)) => {
                        from = to + 1;
                        *last
                    }
                    Err(_) => true,
                };
                if tx.send(batch).await.is_err() || done {
                    return;
                }
            }
        });
        Self {
            next_from: from,
            batches,
            task,
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.task.abort();
    }
}
