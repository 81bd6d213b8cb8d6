//! Example Kiln aggregate: the state machine of one workflow execution.
//!
//! ```text
//! NOT_STARTED --Start--> RUNNING --Finish--> COMPLETED
//!                        RUNNING --Fail {"error"}--> FAILED
//!                        RUNNING --Pause--> PAUSED --Resume--> RUNNING
//!                                           PAUSED --Cancel--> CANCELLED
//!                        RUNNING --Interrupt--> INTERRUPTED --Retry--> RUNNING
//! ```
//!
//! Commands `Start`, `Pause`, `Resume`, `Finish`, `Interrupt`, `Retry` and
//! `Cancel` take no data (`{}`, `null` or none); `Fail` takes
//! `{"error": string}`. Each legal command produces the matching event in
//! the past tense (`Started`, `Paused`, `Resumed`, `Finished`, `Failed
//! {"error"}`, `Interrupted`, `Retried`, `Cancelled`); any other command is
//! rejected with a message naming the command and the current status, e.g.
//! "cannot Finish a workflow execution in status PAUSED".
//!
//! State: `{"status": "NOT_STARTED"|"RUNNING"|"PAUSED"|"INTERRUPTED"|
//! "COMPLETED"|"FAILED"|"CANCELLED", "error": string|null, "attempts": int}`,
//! where `error` is the error of `Fail` (set once FAILED) and `attempts`
//! counts the runs: 1 after `Start`, one more after each `Retry`.

use std::fmt;

use kiln_sdk::{Aggregate, CommandContext, Failure};
use serde::{Deserialize, Serialize};

/// The state of one execution, exactly as the host stores it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowExecution {
    /// Where the execution is in its life.
    pub status: Status,
    /// Why it failed; `None` unless the status is FAILED.
    pub error: Option<String>,
    /// How many times it was started: 1 after `Start`, +1 per `Retry`.
    pub attempts: u32,
}

/// The states of an execution; COMPLETED, FAILED and CANCELLED are final.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// No event yet.
    #[default]
    NotStarted,
    /// Started, resumed or retried, not yet finished.
    Running,
    /// Paused by an operator; can resume or be cancelled.
    Paused,
    /// Interrupted (e.g. its worker died); can be retried.
    Interrupted,
    /// Finished successfully.
    Completed,
    /// Failed with an error.
    Failed,
    /// Cancelled while paused.
    Cancelled,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotStarted => "NOT_STARTED",
            Self::Running => "RUNNING",
            Self::Paused => "PAUSED",
            Self::Interrupted => "INTERRUPTED",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
        })
    }
}

/// The commands an execution understands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Command {
    /// NOT_STARTED → RUNNING.
    Start {},
    /// RUNNING → PAUSED.
    Pause {},
    /// PAUSED → RUNNING.
    Resume {},
    /// RUNNING → COMPLETED.
    Finish {},
    /// RUNNING → FAILED.
    Fail {
        /// What went wrong.
        error: String,
    },
    /// RUNNING → INTERRUPTED.
    Interrupt {},
    /// INTERRUPTED → RUNNING.
    Retry {},
    /// PAUSED → CANCELLED.
    Cancel {},
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Self::Start {} => "Start",
            Self::Pause {} => "Pause",
            Self::Resume {} => "Resume",
            Self::Finish {} => "Finish",
            Self::Fail { .. } => "Fail",
            Self::Interrupt {} => "Interrupt",
            Self::Retry {} => "Retry",
            Self::Cancel {} => "Cancel",
        }
    }
}

/// What happened to an execution.
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

impl Aggregate for WorkflowExecution {
    type Command = Command;
    type Event = Event;

    fn handle(&self, command: Command, _ctx: &CommandContext) -> Result<Vec<Event>, Failure> {
        use Command as C;
        use Status as S;
        let event = match (self.status, command) {
            (S::NotStarted, C::Start {}) => Event::Started {},
            (S::Running, C::Pause {}) => Event::Paused {},
            (S::Paused, C::Resume {}) => Event::Resumed {},
            (S::Running, C::Finish {}) => Event::Finished {},
            (S::Running, C::Fail { error }) => Event::Failed { error },
            (S::Running, C::Interrupt {}) => Event::Interrupted {},
            (S::Interrupted, C::Retry {}) => Event::Retried {},
            (S::Paused, C::Cancel {}) => Event::Cancelled {},
            (status, command) => {
                return Err(Failure::rejected(format!(
                    "cannot {} a workflow execution in status {status}",
                    command.name()
                ))
                .with_code("illegal_transition"));
            }
        };
        Ok(vec![event])
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Started {} => {
                self.status = Status::Running;
                self.attempts = 1;
            }
            Event::Paused {} => self.status = Status::Paused,
            Event::Resumed {} => self.status = Status::Running,
            Event::Finished {} => self.status = Status::Completed,
            Event::Failed { error } => {
                self.status = Status::Failed;
                self.error = Some(error);
            }
            Event::Interrupted {} => self.status = Status::Interrupted,
            Event::Retried {} => {
                self.status = Status::Running;
                self.attempts = self.attempts.saturating_add(1);
            }
            Event::Cancelled {} => self.status = Status::Cancelled,
        }
    }
}

kiln_sdk::export_aggregate!(WorkflowExecution);

#[cfg(test)]
mod tests {
    use kiln_sdk::testing::{AggregateTest, json};

    use super::*;

    type Test = AggregateTest<WorkflowExecution>;

    fn all_commands() -> Vec<Command> {
        vec![
            Command::Start {},
            Command::Pause {},
            Command::Resume {},
            Command::Finish {},
            Command::Fail {
                error: "boom".into(),
            },
            Command::Interrupt {},
            Command::Retry {},
            Command::Cancel {},
        ]
    }

    /// A history that leads to each status.
    fn history(status: Status) -> Vec<Event> {
        let mut events = Vec::new();
        if status != Status::NotStarted {
            events.push(Event::Started {});
        }
        match status {
            Status::NotStarted | Status::Running => {}
            Status::Paused => events.push(Event::Paused {}),
            Status::Interrupted => events.push(Event::Interrupted {}),
            Status::Completed => events.push(Event::Finished {}),
            Status::Failed => events.push(Event::Failed {
                error: "boom".into(),
            }),
            Status::Cancelled => events.extend([Event::Paused {}, Event::Cancelled {}]),
        }
        events
    }

    const ALL_STATUSES: [Status; 7] = [
        Status::NotStarted,
        Status::Running,
        Status::Paused,
        Status::Interrupted,
        Status::Completed,
        Status::Failed,
        Status::Cancelled,
    ];

    /// The legal transitions: (from, command, event, to).
    fn legal() -> Vec<(Status, Command, Event, Status)> {
        use Status as S;
        vec![
            (
                S::NotStarted,
                Command::Start {},
                Event::Started {},
                S::Running,
            ),
            (S::Running, Command::Pause {}, Event::Paused {}, S::Paused),
            (S::Paused, Command::Resume {}, Event::Resumed {}, S::Running),
            (
                S::Running,
                Command::Finish {},
                Event::Finished {},
                S::Completed,
            ),
            (
                S::Running,
                Command::Fail {
                    error: "boom".into(),
                },
                Event::Failed {
                    error: "boom".into(),
                },
                S::Failed,
            ),
            (
                S::Running,
                Command::Interrupt {},
                Event::Interrupted {},
                S::Interrupted,
            ),
            (
                S::Interrupted,
                Command::Retry {},
                Event::Retried {},
                S::Running,
            ),
            (
                S::Paused,
                Command::Cancel {},
                Event::Cancelled {},
                S::Cancelled,
            ),
        ]
    }

    #[test]
    fn the_history_helper_reaches_each_status() {
        for status in ALL_STATUSES {
            assert_eq!(Test::given(history(status)).state().status, status);
        }
    }

    #[test]
    fn start() {
        Test::given_no_previous_events()
            .when(Command::Start {})
            .then_expect_events(vec![Event::Started {}])
            .then_expect_state_json(json!({"status": "RUNNING", "error": null, "attempts": 1}));
    }

    #[test]
    fn pause_and_resume() {
        Test::given(history(Status::Running))
            .when(Command::Pause {})
            .then_expect_events(vec![Event::Paused {}])
            .then_expect_state(|e| assert_eq!(e.status, Status::Paused));
        Test::given(history(Status::Paused))
            .when(Command::Resume {})
            .then_expect_events(vec![Event::Resumed {}])
            .then_expect_state(|e| assert_eq!(e.status, Status::Running));
    }

    #[test]
    fn finish() {
        Test::given(history(Status::Running))
            .when_json("Finish", "")
            .then_expect_events(vec![Event::Finished {}])
            .then_expect_state_json(json!({"status": "COMPLETED", "error": null, "attempts": 1}));
    }

    #[test]
    fn fail_records_the_error() {
        Test::given(history(Status::Running))
            .when_json("Fail", r#"{"error": "disk full"}"#)
            .then_expect_events(vec![Event::Failed {
                error: "disk full".into(),
            }])
            .then_expect_state_json(json!({
                "status": "FAILED", "error": "disk full", "attempts": 1
            }));
    }

    #[test]
    fn fail_needs_an_error() {
        Test::given(history(Status::Running))
            .when_json("Fail", "{}")
            .then_expect_invalid_message("missing field `error`");
        Test::given(history(Status::Running))
            .when_json("Fail", "")
            .then_expect_invalid_message("missing field `error`");
    }

    #[test]
    fn interrupt_and_retry_count_attempts() {
        Test::given(history(Status::Running))
            .when(Command::Interrupt {})
            .then_expect_events(vec![Event::Interrupted {}])
            .then_expect_state(|e| assert_eq!(e.status, Status::Interrupted));
        Test::given(vec![
            Event::Started {},
            Event::Interrupted {},
            Event::Retried {},
            Event::Interrupted {},
        ])
        .when(Command::Retry {})
        .then_expect_events(vec![Event::Retried {}])
        .then_expect_state_json(json!({"status": "RUNNING", "error": null, "attempts": 3}));
    }

    #[test]
    fn cancel_a_paused_execution() {
        Test::given(history(Status::Paused))
            .when_json("Cancel", "null")
            .then_expect_events(vec![Event::Cancelled {}])
            .then_expect_state(|e| assert_eq!(e.status, Status::Cancelled));
    }

    #[test]
    fn every_legal_transition() {
        for (from, command, event, to) in legal() {
            Test::given(history(from))
                .when(command)
                .then_expect_events(vec![event])
                .then_expect_state(|e| assert_eq!(e.status, to, "from {from}"));
        }
    }

    /// Every (status, command) pair that is not a legal transition is
    /// rejected, naming both, and changes nothing.
    #[test]
    fn every_illegal_transition_is_rejected() {
        let legal = legal();
        let mut rejected = 0;
        for status in ALL_STATUSES {
            for command in all_commands() {
                if legal
                    .iter()
                    .any(|(from, c, _, _)| *from == status && c.name() == command.name())
                {
                    continue;
                }
                let name = command.name();
                Test::given(history(status))
                    .when(command)
                    .then_expect_rejection(&format!(
                        "cannot {name} a workflow execution in status {status}"
                    ))
                    .then_expect_rejection_code("illegal_transition")
                    .then_expect_state(|e| assert_eq!(e.status, status));
                rejected += 1;
            }
        }
        // 7 statuses × 8 commands, less the 8 legal transitions.
        assert_eq!(rejected, 7 * 8 - 8);
    }

    #[test]
    fn examples_of_illegal_transition_messages() {
        Test::given(history(Status::Paused))
            .when(Command::Finish {})
            .then_expect_rejection("cannot Finish a workflow execution in status PAUSED");
        Test::given_no_previous_events()
            .when(Command::Resume {})
            .then_expect_rejection("cannot Resume a workflow execution in status NOT_STARTED");
        Test::given(history(Status::Completed))
            .when(Command::Start {})
            .then_expect_rejection("cannot Start a workflow execution in status COMPLETED");
    }

    #[test]
    fn unknown_commands_are_invalid() {
        Test::given_no_previous_events()
            .when_json("Explode", "{}")
            .then_expect_invalid_message("unknown variant `Explode`");
    }
}
