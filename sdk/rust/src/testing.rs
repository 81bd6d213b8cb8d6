//! Given/when/then tests for aggregates ([`AggregateTest`]), given/then
//! tests for projections ([`ProjectionTest`]) and given/when/then tests for
//! sagas ([`SagaTest`]), run natively without wasm or a host.
//!
//! The projection harness feeds batches of events through the
//! `handle-batch` export's code (decoding, the [`View`](crate::View) and its
//! per-batch cache) over rows kept in memory; see [`ProjectionTest`] and the
//! [crate documentation](crate#projections) for an example.
//!
//! The saga harness runs events, applied and refused commands, and timers
//! through the code of the `saga` world's exports, over instances kept in
//! memory as the host keeps them (state bytes, pending commands, timers);
//! see [`SagaTest`] and the [crate documentation](crate#sagas) for an
//! example.
//!
//! The aggregate harness goes through the same JSON mapping as the component's exports:
//! the given events are encoded the way `handle` encodes them and folded the
//! way the host's `apply` call folds them; the command is serialized and then
//! decoded from its type and data; the state travels between steps as the
//! JSON bytes the host would keep. A test that passes here therefore checks
//! what the host sees, serde attributes included.
//!
//! ```
//! # use kiln_sdk::{Aggregate, CommandContext, Failure};
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Default, Serialize, Deserialize)]
//! # struct Light { on: bool }
//! # #[derive(Serialize, Deserialize)]
//! # #[serde(tag = "type", content = "data")]
//! # enum Command { SwitchOn {} }
//! # #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! # #[serde(tag = "type", content = "data")]
//! # enum Event { SwitchedOn {} }
//! # impl Aggregate for Light {
//! #     type Command = Command;
//! #     type Event = Event;
//! #     fn handle(&self, _: Command, _: &CommandContext) -> Result<Vec<Event>, Failure> {
//! #         if self.on { Err(Failure::rejected("already on")) } else { Ok(vec![Event::SwitchedOn {}]) }
//! #     }
//! #     fn apply(&mut self, _: Event) { self.on = true; }
//! # }
//! use kiln_sdk::testing::{AggregateTest, json};
//!
//! AggregateTest::<Light>::given_no_previous_events()
//!     .when(Command::SwitchOn {})
//!     .then_expect_events(vec![Event::SwitchedOn {}])
//!     .then_expect_state_json(json!({"on": true}));
//!
//! AggregateTest::<Light>::given(vec![Event::SwitchedOn {}])
//!     .when_json("SwitchOn", "null")
//!     .then_expect_rejection("already on");
//!
//! AggregateTest::<Light>::given_no_previous_events()
//!     .when_json("SwitchOff", "{}")
//!     .then_expect_invalid_message("unknown variant `SwitchOff`");
//! ```

use std::fmt::Debug;
use std::marker::PhantomData;

use serde::Serialize;
use serde_json::Value;
pub use serde_json::json;

use crate::codec::{self, EncodedEvent};
use crate::{Aggregate, CommandContext, Failure};

mod projection;
mod saga;

pub use projection::{ProjectionTest, TestEvent};
pub use saga::{SagaTest, TestCommand, TestReaction};

/// The "given" step: an aggregate with some history, about to get a command.
#[must_use = "call `when` or `when_json` to run a command"]
pub struct AggregateTest<A: Aggregate> {
    state: Vec<u8>,
    context: CommandContext,
    aggregate: PhantomData<A>,
}

impl<A: Aggregate> AggregateTest<A> {
    /// A stream with no event: the state is the empty byte string, as the host
    /// passes it.
    pub fn given_no_previous_events() -> Self {
        Self {
            state: Vec::new(),
            context: CommandContext::default(),
            aggregate: PhantomData,
        }
    }

    /// A stream whose history is `events`: each is encoded as `handle` would
    /// encode it, then the batch is folded with the `apply` export's code.
    pub fn given(events: Vec<A::Event>) -> Self {
        let encoded: Vec<EncodedEvent> = events.iter().map(codec::encode_event).collect();
        let state = codec::apply::<A>(
            &[],
            encoded
                .iter()
                .map(|event| (event.event_type.as_str(), event.data.as_slice())),
        );
        Self {
            state,
            ..Self::given_no_previous_events()
        }
    }

    /// A stream whose folded state is `state` (serialized as the host keeps
    /// it).
    pub fn given_state(state: &A) -> Self {
        Self {
            state: codec::encode_state(state),
            ..Self::given_no_previous_events()
        }
    }

    /// Run the command with `context` instead of the default one (stream
    /// `test-1`, issued at 0, no metadata). Its command type is replaced by
    /// the command's.
    pub fn with_context(mut self, context: CommandContext) -> Self {
        self.context = context;
        self
    }

    /// The state before the command: the given history, folded.
    pub fn state(&self) -> A {
        codec::decode_state(&self.state)
    }

    /// The "when" step: serialize `command` to its type and data as a client
    /// would send it, then run it through the `handle` export's code.
    ///
    /// # Panics
    /// When the command enum does not serialize as
    /// `{"type": ..., "data": ...}`.
    pub fn when(self, command: A::Command) -> Outcome<A>
    where
        A::Command: Serialize,
    {
        let (command_type, data) = codec::encode_tagged(&command)
            .unwrap_or_else(|message| panic!("cannot serialize the command: {message}"));
        self.run(&command_type, &data)
    }

    /// The "when" step with the command as the host receives it: a type and a
    /// JSON payload (`""` for none). Use it to test malformed commands.
    pub fn when_json(self, command_type: &str, data: &str) -> Outcome<A> {
        self.run(command_type, data.as_bytes())
    }

    fn run(self, command_type: &str, data: &[u8]) -> Outcome<A> {
        let context = self.context.with_command_type(command_type);
        let result = codec::handle::<A>(&self.state, command_type, data, &context);
        let state = match &result {
            Ok(events) => codec::apply::<A>(
                &self.state,
                events
                    .iter()
                    .map(|event| (event.event_type.as_str(), event.data.as_slice())),
            ),
            Err(_) => self.state,
        };
        Outcome {
            command_type: command_type.to_owned(),
            result,
            state,
            aggregate: PhantomData,
        }
    }
}

/// The "then" step: what `handle` decided, and the state after applying it.
///
/// Every `then_*` method panics with a description when its expectation does
/// not hold, and returns the outcome so expectations chain.
pub struct Outcome<A: Aggregate> {
    command_type: String,
    result: Result<Vec<EncodedEvent>, Failure>,
    state: Vec<u8>,
    aggregate: PhantomData<A>,
}

impl<A: Aggregate> Outcome<A> {
    /// The decided events, decoded back from their JSON, or the failure.
    pub fn result(&self) -> Result<Vec<A::Event>, Failure> {
        match &self.result {
            Ok(events) => Ok(events
                .iter()
                .map(|event| codec::decode_event(&event.event_type, &event.data))
                .collect()),
            Err(failure) => Err(failure.clone()),
        }
    }

    /// The decided events as the host receives them: `(event-type, schema,
    /// data as a string)`.
    pub fn encoded_events(&self) -> Vec<(String, u32, String)> {
        self.result
            .as_ref()
            .map(|events| {
                events
                    .iter()
                    .map(|event| {
                        (
                            event.event_type.clone(),
                            event.schema,
                            String::from_utf8_lossy(&event.data).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The state after the decided events were applied (unchanged after a
    /// failure).
    pub fn state(&self) -> A {
        codec::decode_state(&self.state)
    }

    /// The state as the JSON the host stores (`null` for a stream that still
    /// has no event).
    pub fn state_json(&self) -> Value {
        if self.state.is_empty() {
            return Value::Null;
        }
        serde_json::from_slice(&self.state).unwrap_or_else(|error| {
            panic!("the state is not JSON: {error}");
        })
    }

    /// Expect `handle` to succeed with exactly `expected`, compared after the
    /// JSON round trip.
    pub fn then_expect_events(self, expected: Vec<A::Event>) -> Self
    where
        A::Event: PartialEq + Debug,
    {
        match self.result() {
            Ok(events) => assert_eq!(
                events, expected,
                "command `{}` decided other events than expected",
                self.command_type
            ),
            Err(failure) => panic!(
                "command `{}` failed ({failure}), expected events {expected:?}",
                self.command_type
            ),
        }
        self
    }

    /// Expect `handle` to succeed without events.
    pub fn then_expect_no_events(self) -> Self {
        match &self.result {
            Ok(events) if events.is_empty() => {}
            other => panic!(
                "command `{}`: expected no events, got {other:?}",
                self.command_type
            ),
        }
        self
    }

    /// Expect a rejection whose message contains `message_part`.
    pub fn then_expect_rejection(self, message_part: &str) -> Self {
        match &self.result {
            Err(Failure::Rejected { message, .. }) if message.contains(message_part) => {}
            other => panic!(
                "command `{}`: expected a rejection containing {message_part:?}, got {other:?}",
                self.command_type
            ),
        }
        self
    }

    /// Expect a rejection with the machine-readable `code`.
    pub fn then_expect_rejection_code(self, code: &str) -> Self {
        match &self.result {
            Err(Failure::Rejected { code: Some(c), .. }) if c == code => {}
            other => panic!(
                "command `{}`: expected a rejection with code {code:?}, got {other:?}",
                self.command_type
            ),
        }
        self
    }

    /// Expect the command to be invalid, whatever the message.
    pub fn then_expect_invalid(self) -> Self {
        match &self.result {
            Err(Failure::Invalid(_)) => {}
            other => panic!(
                "command `{}`: expected an invalid command, got {other:?}",
                self.command_type
            ),
        }
        self
    }

    /// Expect the command to be invalid with a message containing
    /// `message_part`.
    pub fn then_expect_invalid_message(self, message_part: &str) -> Self {
        match &self.result {
            Err(Failure::Invalid(message)) if message.contains(message_part) => {}
            other => panic!(
                "command `{}`: expected an invalid command containing {message_part:?}, got {other:?}",
                self.command_type
            ),
        }
        self
    }

    /// Run `check` on the state after the decided events were applied.
    pub fn then_expect_state(self, check: impl FnOnce(&A)) -> Self {
        check(&self.state());
        self
    }

    /// Expect the stored state to be exactly `expected` as JSON.
    pub fn then_expect_state_json(self, expected: Value) -> Self {
        assert_eq!(
            self.state_json(),
            expected,
            "state after command `{}`",
            self.command_type
        );
        self
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize)]
    struct Tally {
        count: u32,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "type", content = "data")]
    enum Command {
        Add { n: u32 },
        Noop,
        Stop {},
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type", content = "data")]
    enum Event {
        Added { n: u32 },
    }

    impl Aggregate for Tally {
        type Command = Command;
        type Event = Event;

        fn handle(&self, command: Command, ctx: &CommandContext) -> Result<Vec<Event>, Failure> {
            match command {
                Command::Add { n: 0 } => Err(Failure::invalid("n must be positive")),
                Command::Add { n } if self.count + n > 3 => {
                    Err(Failure::rejected("at most 3").with_code("too_many"))
                }
                Command::Add { n } => Ok(vec![Event::Added { n }]),
                Command::Noop => Ok(vec![]),
                Command::Stop {} => {
                    assert_eq!(ctx.command_type(), "Stop");
                    assert_eq!(ctx.stream_id(), "tally-9");
                    Err(Failure::rejected(format!("stop at {}", ctx.issued_at_ms())))
                }
            }
        }

        fn apply(&mut self, event: Event) {
            match event {
                Event::Added { n } => self.count += n,
            }
        }
    }

    #[test]
    fn given_when_then() {
        AggregateTest::<Tally>::given(vec![Event::Added { n: 1 }])
            .when(Command::Add { n: 2 })
            .then_expect_events(vec![Event::Added { n: 2 }])
            .then_expect_state(|tally| assert_eq!(tally.count, 3))
            .then_expect_state_json(json!({"count": 3}));
        AggregateTest::<Tally>::given(vec![Event::Added { n: 3 }])
            .when(Command::Add { n: 1 })
            .then_expect_rejection("at most")
            .then_expect_rejection_code("too_many")
            .then_expect_state_json(json!({"count": 3}));
        AggregateTest::<Tally>::given_no_previous_events()
            .when(Command::Add { n: 0 })
            .then_expect_invalid()
            .then_expect_state_json(Value::Null);
        AggregateTest::<Tally>::given_state(&Tally { count: 2 })
            .when(Command::Noop)
            .then_expect_no_events()
            .then_expect_state_json(json!({"count": 2}));
    }

    #[test]
    fn when_json_goes_through_the_host_mapping() {
        AggregateTest::<Tally>::given_no_previous_events()
            .when_json("Add", r#"{"n": -1}"#)
            .then_expect_invalid_message("invalid value: integer `-1`");
        AggregateTest::<Tally>::given_no_previous_events()
            .when_json("Noop", "")
            .then_expect_no_events();
        let outcome =
            AggregateTest::<Tally>::given_no_previous_events().when_json("Add", r#"{"n": 1}"#);
        assert_eq!(
            outcome.encoded_events(),
            vec![("Added".to_owned(), 1, r#"{"n":1}"#.to_owned())]
        );
    }

    #[test]
    fn context_reaches_handle() {
        AggregateTest::<Tally>::given_no_previous_events()
            .with_context(CommandContext::new("ignored", "tally-9", 42))
            .when_json("Stop", "null")
            .then_expect_rejection("stop at 42");
    }

    #[test]
    #[should_panic(expected = "expected a rejection")]
    fn a_failed_expectation_panics() {
        AggregateTest::<Tally>::given_no_previous_events()
            .when(Command::Add { n: 1 })
            .then_expect_rejection("anything");
    }
}
