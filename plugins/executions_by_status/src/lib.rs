//! Example Kiln projection: the status of every workflow execution, and how
//! many executions are in each status, from the `workflow_execution`
//! aggregate's events.
//!
//! Rows:
//!
//! - `execution-{id}` for the stream `workflow_execution-{id}`:
//!   `{"status": "running"|"paused"|"finished"|"failed"|"interrupted"|"cancelled"}`,
//!   plus `"error": string` when the status is `failed` (the error of the
//!   `Failed` event);
//! - `status-{status}` (e.g. `status-running`): `{"count": int}`, the number
//!   of `execution-*` rows in that status. A status gets its row when the
//!   first execution enters it, and keeps it (with count 0) when the last
//!   one leaves.
//!
//! Each event sets its execution's status (the aggregate's state names, in
//! lower case, except COMPLETED, which the view calls `finished` after the
//! `Finished` event): `Started`, `Resumed` and `Retried` → `running`,
//! `Paused` → `paused`, `Finished` → `finished`, `Failed` → `failed`,
//! `Interrupted` → `interrupted`, `Cancelled` → `cancelled`. The view
//! records the transitions the log holds without checking them against the
//! state machine (the aggregate did): an event for an execution with no row
//! yet creates it. On every change of status the count of the old status
//! goes down by one and the count of the new one up by one, in the same
//! batch, so the counts always add up to the number of executions.
//!
//! Subscribes to the eight `workflow_execution` event types, and reads only
//! `workflow_execution-*` streams.

use kiln_sdk::{Envelope, Projection, View};
use serde::{Deserialize, Serialize};

/// The category of the streams the view reads, with its `-`.
pub const STREAM_PREFIX: &str = "workflow_execution-";
/// The prefix of the execution rows' keys.
pub const EXECUTION_PREFIX: &str = "execution-";
/// The prefix of the count rows' keys.
pub const STATUS_PREFIX: &str = "status-";

/// The `workflow_execution` events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    /// It started running.
    Started {},
    /// It was paused.
    Paused {},
    /// It resumed running.
    Resumed {},
    /// It completed.
    Finished {},
    /// It failed.
    Failed {
        /// What went wrong.
        error: String,
    },
    /// It was interrupted.
    Interrupted {},
    /// It was retried after an interruption.
    Retried {},
    /// It was cancelled.
    Cancelled {},
}

/// An execution's status in the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Started, resumed or retried.
    Running,
    /// Paused.
    Paused,
    /// Finished successfully.
    Finished,
    /// Failed with an error.
    Failed,
    /// Interrupted, waiting for a retry.
    Interrupted,
    /// Cancelled.
    Cancelled,
}

impl Status {
    /// The name in rows and keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Finished => "finished",
            Self::Failed => "failed",
            Self::Interrupted => "interrupted",
            Self::Cancelled => "cancelled",
        }
    }

    /// The key of this status's count row, e.g. `status-running`.
    pub fn key(self) -> String {
        format!("{STATUS_PREFIX}{}", self.as_str())
    }
}

/// The row of one execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionRow {
    /// Where the execution is.
    pub status: Status,
    /// Why it failed; only when the status is `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The row of one status.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    /// Executions in the status.
    pub count: u64,
}

/// The projection. It keeps nothing across events: the view's per-batch
/// cache makes the count rows cheap to read and write for every event.
#[derive(Debug, Default)]
pub struct ExecutionsByStatus;

impl Projection for ExecutionsByStatus {
    type Event = Event;
    const SUBSCRIPTIONS: &'static [&'static str] = &[
        "Started",
        "Paused",
        "Resumed",
        "Finished",
        "Failed",
        "Interrupted",
        "Retried",
        "Cancelled",
    ];

    fn accepts(stream_id: &str, _event_type: &str) -> bool {
        stream_id.starts_with(STREAM_PREFIX)
    }

    fn handle(&mut self, view: &mut View, event: &Envelope<Event>) -> Result<(), String> {
        let key = format!("{EXECUTION_PREFIX}{}", event.aggregate_id());
        let (status, error) = match &event.event {
            Event::Started {} | Event::Resumed {} | Event::Retried {} => (Status::Running, None),
            Event::Paused {} => (Status::Paused, None),
            Event::Finished {} => (Status::Finished, None),
            Event::Failed { error } => (Status::Failed, Some(error.clone())),
            Event::Interrupted {} => (Status::Interrupted, None),
            Event::Cancelled {} => (Status::Cancelled, None),
        };
        let before = view.get::<ExecutionRow>(&key)?.map(|row| row.status);
        if before != Some(status) {
            if let Some(before) = before {
                count(view, before, -1)?;
            }
            count(view, status, 1)?;
        }
        view.put(&key, &ExecutionRow { status, error })
    }
}

/// Add `delta` to the count of `status`.
fn count(view: &mut View, status: Status, delta: i8) -> Result<(), String> {
    let key = status.key();
    let mut row: Count = view.get(&key)?.unwrap_or_default();
    row.count = row.count.checked_add_signed(delta.into()).ok_or_else(|| {
        format!(
            "the count of `{}` ({}) cannot change by {delta}: the view is inconsistent",
            status.as_str(),
            row.count
        )
    })?;
    view.put(&key, &row)
}

kiln_sdk::export_projection!(ExecutionsByStatus);

#[cfg(test)]
mod tests {
    use kiln_sdk::testing::{ProjectionTest, TestEvent, json};

    use super::*;

    type Test = ProjectionTest<ExecutionsByStatus>;

    const E1: &str = "workflow_execution-1";
    const E2: &str = "workflow_execution-2";

    fn failed(error: &str) -> Event {
        Event::Failed {
            error: error.into(),
        }
    }

    /// Every status row, as (status, count).
    fn counts(test: &Test) -> Vec<(String, u64)> {
        test.rows(STATUS_PREFIX)
            .into_iter()
            .map(|(key, _)| {
                let count = test.row::<Count>(&key).unwrap_or_default().count;
                (key, count)
            })
            .collect()
    }

    #[test]
    fn started_executions_are_running() {
        Test::new()
            .given(vec![(E1, Event::Started {}), (E2, Event::Started {})])
            .then_expect_row("execution-1", json!({"status": "running"}))
            .then_expect_row("execution-2", json!({"status": "running"}))
            .then_expect_rows(STATUS_PREFIX, vec![("status-running", json!({"count": 2}))]);
    }

    #[test]
    fn every_transition_moves_one_count() {
        let test = Test::new()
            .given(vec![(E1, Event::Started {}), (E2, Event::Started {})])
            .given(vec![(E1, Event::Paused {})])
            .then_expect_row("execution-1", json!({"status": "paused"}))
            .then_expect_row("status-running", json!({"count": 1}))
            .then_expect_row("status-paused", json!({"count": 1}))
            .given(vec![(E1, Event::Resumed {}), (E1, Event::Interrupted {})])
            .then_expect_row("execution-1", json!({"status": "interrupted"}))
            .then_expect_row("status-paused", json!({"count": 0}))
            .given(vec![(E1, Event::Retried {}), (E1, Event::Finished {})])
            .then_expect_row("execution-1", json!({"status": "finished"}))
            .given(vec![(E2, Event::Paused {}), (E2, Event::Cancelled {})])
            .then_expect_row("execution-2", json!({"status": "cancelled"}));
        assert_eq!(
            counts(&test),
            [
                ("status-cancelled".to_owned(), 1),
                ("status-finished".to_owned(), 1),
                ("status-interrupted".to_owned(), 0),
                ("status-paused".to_owned(), 0),
                ("status-running".to_owned(), 0),
            ]
        );
    }

    #[test]
    fn a_failure_records_its_error() {
        Test::new()
            .given(vec![(E1, Event::Started {})])
            .given_json(vec![(E1, "Failed", r#"{"error": "disk full"}"#)])
            .then_expect_row(
                "execution-1",
                json!({"status": "failed", "error": "disk full"}),
            )
            .then_expect_row("status-failed", json!({"count": 1}))
            .then_expect_row("status-running", json!({"count": 0}));
    }

    #[test]
    fn the_counts_add_up_to_the_executions_whatever_the_batches() {
        let script: [&[Event]; 4] = [
            &[Event::Started {}, Event::Finished {}],
            &[Event::Started {}, failed("x")],
            &[Event::Started {}, Event::Paused {}, Event::Resumed {}],
            &[Event::Started {}, Event::Interrupted {}],
        ];
        let mut events = Vec::new();
        // Interleave the executions' events.
        for step in 0..3 {
            for (i, history) in script.iter().enumerate() {
                if let Some(event) = history.get(step) {
                    events.push((format!("workflow_execution-{i}"), event.clone()));
                }
            }
        }
        fn as_given(events: &[(String, Event)]) -> Vec<(&str, Event)> {
            events
                .iter()
                .map(|(stream, event)| (stream.as_str(), event.clone()))
                .collect()
        }
        let one_batch = Test::new().given(as_given(&events));
        let mut one_by_one = Test::new();
        for event in events.chunks(1) {
            one_by_one = one_by_one.given(as_given(event));
        }
        assert_eq!(one_batch.rows(""), one_by_one.rows(""));
        let total: u64 = counts(&one_batch).iter().map(|(_, count)| count).sum();
        assert_eq!(total, 4);
        assert_eq!(one_batch.rows(EXECUTION_PREFIX).len(), 4);
        assert_eq!(
            counts(&one_batch),
            [
                ("status-failed".to_owned(), 1),
                ("status-finished".to_owned(), 1),
                ("status-interrupted".to_owned(), 1),
                ("status-paused".to_owned(), 0),
                ("status-running".to_owned(), 1),
            ]
        );
    }

    #[test]
    fn a_repeated_status_is_counted_once() {
        Test::new()
            .given(vec![(E1, Event::Started {}), (E1, Event::Started {})])
            .then_expect_row("status-running", json!({"count": 1}));
    }

    #[test]
    fn an_execution_without_a_start_gets_a_row() {
        Test::new()
            .given(vec![(E1, Event::Paused {})])
            .then_expect_row("execution-1", json!({"status": "paused"}))
            .then_expect_rows(STATUS_PREFIX, vec![("status-paused", json!({"count": 1}))]);
    }

    #[test]
    fn other_streams_are_ignored() {
        Test::new()
            .given_events(vec![
                TestEvent::json("deploy-1", "Started", r#"{"by": "ci"}"#),
                TestEvent::json("bank_account-1", "Opened", r#"{"owner": "ann"}"#),
            ])
            .then_expect_rows("", vec![]);
    }

    #[test]
    fn an_inconsistent_view_fails_the_batch() {
        let mut test = Test::new().with_rows(vec![("execution-1", json!({"status": "running"}))]);
        let error = test
            .handle_batch(vec![TestEvent::new(E1, &Event::Paused {})])
            .unwrap_err();
        assert!(
            error.contains("the count of `running` (0) cannot change by -1"),
            "{error}"
        );
        let error = test
            .handle_batch(vec![TestEvent::json(E1, "Failed", "{}")])
            .unwrap_err();
        assert!(error.contains("missing field `error`"), "{error}");
    }
}
