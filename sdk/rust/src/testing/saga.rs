//! Given/when/then tests for sagas.

use std::collections::{BTreeMap, VecDeque};
use std::marker::PhantomData;

use serde::Serialize;
use serde_json::{Value, json};

use super::TestEvent;
use crate::codec::{self, EVENT_SCHEMA};
use crate::projection::RawEvent;
use crate::saga::{self, EncodedCommand, EncodedReaction};
use crate::{FailedCommand, Failure, Saga, Timer};

/// A command as a saga dispatched it, its data decoded as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct TestCommand {
    /// The aggregate (plugin name) it is addressed to.
    pub aggregate: String,
    /// The aggregate instance id.
    pub id: String,
    /// The command's type.
    pub command_type: String,
    /// The command's data (`null` when it is not JSON).
    pub data: Value,
}

impl From<&EncodedCommand> for TestCommand {
    fn from(command: &EncodedCommand) -> Self {
        Self {
            aggregate: command.aggregate.clone(),
            id: command.id.clone(),
            command_type: command.command_type.clone(),
            data: saga::command_data(&command.data),
        }
    }
}

impl From<(&str, &str, &str, Value)> for TestCommand {
    fn from((aggregate, id, command_type, data): (&str, &str, &str, Value)) -> Self {
        Self {
            aggregate: aggregate.to_owned(),
            id: id.to_owned(),
            command_type: command_type.to_owned(),
            data,
        }
    }
}

/// A reaction as the host receives it, besides the state.
#[derive(Debug, Clone, PartialEq)]
pub struct TestReaction {
    /// The commands to dispatch, in order.
    pub commands: Vec<TestCommand>,
    /// The timer to set, if any.
    pub timer: Option<Timer>,
    /// The instance is done once its commands are applied.
    pub done: bool,
    /// The commands undo earlier steps.
    pub compensating: bool,
    /// The instance's commands not applied yet are dropped.
    pub cancel_pending: bool,
}

impl From<&EncodedReaction> for TestReaction {
    fn from(reaction: &EncodedReaction) -> Self {
        Self {
            commands: reaction.commands.iter().map(TestCommand::from).collect(),
            timer: reaction.timer.clone(),
            done: reaction.done,
            compensating: reaction.compensating,
            cancel_pending: reaction.cancel_pending,
        }
    }
}

/// A saga run the way the host runs it, over instances kept in memory.
///
/// Each step goes through the code of the component's exports, on the JSON
/// bytes the host would pass:
///
/// - **`given*`** feeds a committed event: an event whose type is not among
///   a non-empty [`Saga::SUBSCRIPTIONS`] is not delivered; the others go
///   through `correlate` and, when they belong to an instance, `react` with
///   that instance's state (empty bytes for a new instance).
/// - **[`SagaTest::when_applied`]** says the next command of the instance
///   (the oldest one dispatched and not applied yet: the host applies an
///   instance's commands in order, one at a time) was applied and produced
///   the given events. They are fed like given events, on the command's
///   stream, with the metadata the host gives them: `correlation_id`,
///   `causation_id`, `saga` (the name given to [`SagaTest::new`]),
///   `saga_instance` and `saga_step`.
/// - **[`SagaTest::when_rejected`]** / **[`SagaTest::when_failed`]** say
///   the next command of the instance was refused: it leaves the instance's
///   pending commands and `on_failure` is called.
///   [`SagaTest::when_command_failed`] names the command instead.
/// - **[`SagaTest::when_timer`]** fires a timer of the instance: it goes
///   and `on_timer` is called at its `fire_at_ms`.
///
/// "The instance" is the instance of the latest step that had one: the
/// instance the latest correlated event belongs to, or whose command failed,
/// or whose timer fired. Events that belong to no instance leave it as it
/// is.
///
/// As in the host: a reaction's `cancel_pending` drops the instance's
/// pending commands before its own commands are added to them. Once a
/// reaction said `done`, the instance gets no more events (failures of its
/// pending commands and its timers still reach it), and it drops its timers
/// once it has no pending command. An `Err` reaction changes nothing.
///
/// Time: the first step happens at 1000 ms and each step 1000 ms after the
/// one before, unless [`SagaTest::at`] or [`TestEvent::recorded_at`] says
/// otherwise; a timer fires at its own time. Events get the next global
/// position (1, 2, …) and the next version of their stream.
///
/// The `then_*` methods check the last step and panic with a description
/// when their expectation does not hold; they return the test so that
/// steps chain.
pub struct SagaTest<S: Saga> {
    name: String,
    clock_ms: i64,
    next_at: Option<i64>,
    position: u64,
    versions: BTreeMap<String, u64>,
    instances: BTreeMap<String, Instance>,
    current: Option<String>,
    last: Option<Step>,
    saga: PhantomData<S>,
}

/// A saga instance as the host keeps it.
#[derive(Default)]
struct Instance {
    state: Vec<u8>,
    pending: VecDeque<Pending>,
    timers: BTreeMap<String, i64>,
    steps: u64,
    done: bool,
}

/// A dispatched command that has not been applied yet.
struct Pending {
    step: u64,
    causation_id: String,
    command: EncodedCommand,
}

impl Pending {
    fn describe(&self) -> String {
        format!(
            "step {} (`{}` to `{}-{}`)",
            self.step, self.command.command_type, self.command.aggregate, self.command.id
        )
    }
}

/// What the last step did.
struct Step {
    what: String,
    instance: Option<String>,
    outcome: Outcome,
}

enum Outcome {
    /// The event's type is not subscribed to.
    NotDelivered,
    /// `correlate` returned `None`.
    Uncorrelated,
    /// The event belongs to an instance that is done.
    InstanceDone,
    /// A command was applied without producing events.
    NoEvents,
    /// `react`, `on_failure` or `on_timer` ran.
    Reacted(Result<EncodedReaction, String>),
}

impl<S: Saga> SagaTest<S> {
    /// A saga with no instance yet, deployed under the plugin name
    /// `saga_name` (the name the events of its own commands carry in their
    /// `saga` metadata field).
    pub fn new(saga_name: impl Into<String>) -> Self {
        Self {
            name: saga_name.into(),
            clock_ms: 0,
            next_at: None,
            position: 0,
            versions: BTreeMap::new(),
            instances: BTreeMap::new(),
            current: None,
            last: None,
            saga: PhantomData,
        }
    }

    /// The next step (an event without its own recording time, or a
    /// failure) happens at `now_ms`.
    pub fn at(mut self, now_ms: i64) -> Self {
        self.next_at = Some(now_ms);
        self
    }

    /// Feed `event` (a value that serializes as `{"type": ..., "data":
    /// ...}`, such as an aggregate's event enum) committed on `stream_id`.
    ///
    /// # Panics
    /// When `event` does not serialize that way.
    pub fn given_event<E: Serialize>(self, stream_id: &str, event: E) -> Self {
        self.given(TestEvent::new(stream_id, &event))
    }

    /// Feed an event as the host stores it: a type and a JSON payload.
    pub fn given_json(self, stream_id: &str, event_type: &str, data: &str) -> Self {
        self.given(TestEvent::json(stream_id, event_type, data))
    }

    /// Feed `event`, with its metadata and recording time if it has them.
    pub fn given(mut self, event: TestEvent) -> Self {
        self.feed(event);
        self
    }

    /// The next command of the instance was applied and produced `events`
    /// (values that serialize as `{"type": ..., "data": ...}`) on its
    /// stream, with the saga's metadata; they are fed in order.
    ///
    /// # Panics
    /// When the instance has no pending command, or an event does not
    /// serialize that way.
    pub fn when_applied<E: Serialize>(self, events: Vec<E>) -> Self {
        let events = events
            .iter()
            .map(|event| TestEvent::new("", event))
            .collect();
        self.apply_next(events)
    }

    /// [`SagaTest::when_applied`] with the events as the host stores them:
    /// `(event type, JSON data)`.
    ///
    /// # Panics
    /// When the instance has no pending command.
    pub fn when_applied_json(self, events: Vec<(&str, &str)>) -> Self {
        let events = events
            .into_iter()
            .map(|(event_type, data)| TestEvent::json("", event_type, data))
            .collect();
        self.apply_next(events)
    }

    /// The next command of the instance was rejected with `message` and,
    /// if given, `code`: `on_failure` runs.
    ///
    /// # Panics
    /// When the instance has no pending command.
    pub fn when_rejected(self, message: &str, code: Option<&str>) -> Self {
        let failure = Failure::rejected(message);
        self.when_failed(match code {
            Some(code) => failure.with_code(code),
            None => failure,
        })
    }

    /// The next command of the instance failed with `failure`: `on_failure`
    /// runs.
    ///
    /// # Panics
    /// When the instance has no pending command.
    pub fn when_failed(mut self, failure: Failure) -> Self {
        let instance = self.current_instance().to_owned();
        let pending = self
            .instances
            .get_mut(&instance)
            .and_then(|state| state.pending.pop_front())
            .unwrap_or_else(|| panic!("instance `{instance}` has no pending command to fail"));
        self.fail(&instance, &pending, failure);
        self
    }

    /// The first pending command (of the current instance, else of any
    /// instance) addressed to `aggregate` instance `id` with the type
    /// `command_type` failed with `failure`: it leaves the pending commands
    /// and `on_failure` runs for its instance.
    ///
    /// # Panics
    /// When no pending command matches.
    pub fn when_command_failed(
        mut self,
        aggregate: &str,
        id: &str,
        command_type: &str,
        failure: Failure,
    ) -> Self {
        let matches = |pending: &Pending| {
            pending.command.aggregate == aggregate
                && pending.command.id == id
                && pending.command.command_type == command_type
        };
        let mut order: Vec<String> = self.current.iter().cloned().collect();
        order.extend(self.instances.keys().cloned());
        let found = order.into_iter().find_map(|instance| {
            let index = self
                .instances
                .get(&instance)?
                .pending
                .iter()
                .position(matches)?;
            Some((instance, index))
        });
        let Some((instance, index)) = found else {
            panic!(
                "no pending command `{command_type}` to `{aggregate}-{id}`; pending: {:?}",
                self.all_pending()
            );
        };
        let pending = self
            .instances
            .get_mut(&instance)
            .and_then(|state| state.pending.remove(index))
            .unwrap_or_else(|| unreachable!("the command was just found"));
        self.fail(&instance, &pending, failure);
        self
    }

    /// The instance's timer `name` fires: `on_timer` runs at its
    /// `fire_at_ms`.
    ///
    /// # Panics
    /// When the instance has no timer of that name.
    pub fn when_timer(mut self, name: &str) -> Self {
        let instance = self.current_instance().to_owned();
        let state = self.instances.entry(instance.clone()).or_default();
        let Some(fire_at_ms) = state.timers.remove(name) else {
            panic!(
                "instance `{instance}` has no timer `{name}` (its timers: {:?})",
                state.timers
            );
        };
        self.clock_ms = self.clock_ms.max(fire_at_ms);
        let timer = Timer::new(name, fire_at_ms);
        let result = saga::on_timer::<S>(&state.state, &timer);
        self.record(
            format!("timer `{name}` of instance `{instance}` at {fire_at_ms}"),
            &instance,
            &format!("timer:{name}"),
            result,
        );
        self
    }

    /// The state of the current instance.
    ///
    /// # Panics
    /// When there is no instance yet.
    pub fn state(&self) -> S {
        let instance = self.current_instance();
        codec::decode_state(
            self.instances
                .get(instance)
                .map(|state| state.state.as_slice())
                .unwrap_or_default(),
        )
    }

    /// The current instance's commands dispatched and not applied yet, in
    /// the order the host would apply them.
    pub fn pending(&self) -> Vec<TestCommand> {
        self.current
            .as_ref()
            .and_then(|instance| self.instances.get(instance))
            .map(|state| {
                state
                    .pending
                    .iter()
                    .map(|pending| TestCommand::from(&pending.command))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The current instance's timers: name and `fire_at_ms`.
    pub fn timers(&self) -> BTreeMap<String, i64> {
        self.current
            .as_ref()
            .and_then(|instance| self.instances.get(instance))
            .map(|state| state.timers.clone())
            .unwrap_or_default()
    }

    /// What the last step's reaction decided, or its error; `None` when the
    /// last step reacted to nothing.
    pub fn last_reaction(&self) -> Option<Result<TestReaction, String>> {
        match &self.last.as_ref()?.outcome {
            Outcome::Reacted(result) => Some(
                result
                    .as_ref()
                    .map(TestReaction::from)
                    .map_err(Clone::clone),
            ),
            _ => None,
        }
    }

    /// Expect the last event to have been delivered and correlated to
    /// `instance`.
    pub fn then_expect_instance(self, instance: &str) -> Self {
        let step = self.last_step();
        match (&step.outcome, &step.instance) {
            (Outcome::NotDelivered, _) => panic!(
                "{}: expected instance `{instance}`, the event was not delivered (not \
                 subscribed)",
                step.what
            ),
            (Outcome::Uncorrelated, _) => panic!(
                "{}: expected instance `{instance}`, correlate returned None",
                step.what
            ),
            (_, Some(actual)) => assert_eq!(actual, instance, "{}: instance", step.what),
            (_, None) => panic!("{}: expected instance `{instance}`, got none", step.what),
        }
        self
    }

    /// Expect the last event to have caused no reaction: not subscribed to,
    /// `correlate` returned `None`, or its instance is done.
    pub fn then_expect_ignored(self) -> Self {
        let step = self.last_step();
        match &step.outcome {
            Outcome::NotDelivered | Outcome::Uncorrelated | Outcome::InstanceDone => {}
            _ => panic!(
                "{}: expected the event to be ignored, it went to instance {:?}",
                step.what, step.instance
            ),
        }
        self
    }

    /// Expect the last reaction to dispatch exactly `expected`: `(aggregate,
    /// id, command type, data)`, in order.
    pub fn then_expect_commands(self, expected: Vec<(&str, &str, &str, Value)>) -> Self {
        let expected: Vec<TestCommand> = expected.into_iter().map(TestCommand::from).collect();
        let reaction = self.reaction();
        assert_eq!(
            reaction.commands,
            expected,
            "{}: dispatched commands",
            self.last_step().what
        );
        self
    }

    /// Expect the last reaction to dispatch nothing.
    pub fn then_expect_no_commands(self) -> Self {
        self.then_expect_commands(Vec::new())
    }

    /// Expect the current instance's pending commands (dispatched, not
    /// applied yet) to be exactly `expected`, in order.
    pub fn then_expect_pending(self, expected: Vec<(&str, &str, &str, Value)>) -> Self {
        let expected: Vec<TestCommand> = expected.into_iter().map(TestCommand::from).collect();
        assert_eq!(
            self.pending(),
            expected,
            "{}: pending commands",
            self.last_step().what
        );
        self
    }

    /// Expect the last reaction to set the timer `name` at `fire_at_ms`.
    pub fn then_expect_timer(self, name: &str, fire_at_ms: i64) -> Self {
        let reaction = self.reaction();
        assert_eq!(
            reaction.timer,
            Some(Timer::new(name, fire_at_ms)),
            "{}: timer",
            self.last_step().what
        );
        self
    }

    /// Expect the last reaction to set no timer.
    pub fn then_expect_no_timer(self) -> Self {
        let reaction = self.reaction();
        assert_eq!(reaction.timer, None, "{}: timer", self.last_step().what);
        self
    }

    /// Expect the last reaction to complete the instance.
    pub fn then_expect_done(self) -> Self {
        self.expect_flag("done", |reaction| reaction.done, true)
    }

    /// Expect the last reaction not to complete the instance.
    pub fn then_expect_not_done(self) -> Self {
        self.expect_flag("done", |reaction| reaction.done, false)
    }

    /// Expect the last reaction to compensate.
    pub fn then_expect_compensating(self) -> Self {
        self.expect_flag("compensating", |reaction| reaction.compensating, true)
    }

    /// Expect the last reaction not to compensate.
    pub fn then_expect_not_compensating(self) -> Self {
        self.expect_flag("compensating", |reaction| reaction.compensating, false)
    }

    /// Expect the last reaction to cancel the instance's pending commands.
    pub fn then_expect_cancel_pending(self) -> Self {
        self.expect_flag("cancel_pending", |reaction| reaction.cancel_pending, true)
    }

    /// Run `check` on everything the last reaction decided but the state.
    pub fn then_expect_reaction(self, check: impl FnOnce(&TestReaction)) -> Self {
        check(&self.reaction());
        self
    }

    /// Expect the last step to fail with an error containing
    /// `message_part`.
    pub fn then_expect_error(self, message_part: &str) -> Self {
        let step = self.last_step();
        match &step.outcome {
            Outcome::Reacted(Err(message)) if message.contains(message_part) => {}
            Outcome::Reacted(Err(message)) => panic!(
                "{}: expected an error containing {message_part:?}, got {message:?}",
                step.what
            ),
            _ => panic!(
                "{}: expected an error containing {message_part:?}, the step succeeded",
                step.what
            ),
        }
        self
    }

    /// Run `check` on the current instance's state.
    pub fn then_expect_state(self, check: impl FnOnce(&S)) -> Self {
        check(&self.state());
        self
    }

    /// Expect the current instance's stored state to be exactly `expected`
    /// as JSON (`null` while it is empty).
    pub fn then_expect_state_json(self, expected: Value) -> Self {
        let instance = self.current_instance();
        let bytes = self
            .instances
            .get(instance)
            .map(|state| state.state.as_slice())
            .unwrap_or_default();
        let actual = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(bytes)
                .unwrap_or_else(|error| panic!("the state is not JSON: {error}"))
        };
        assert_eq!(
            actual,
            expected,
            "{}: state of instance `{instance}`",
            self.last_step().what
        );
        self
    }

    fn expect_flag(self, flag: &str, get: impl Fn(&TestReaction) -> bool, expected: bool) -> Self {
        let actual = get(&self.reaction());
        assert_eq!(actual, expected, "{}: {flag}", self.last_step().what);
        self
    }

    fn last_step(&self) -> &Step {
        self.last
            .as_ref()
            .unwrap_or_else(|| panic!("no step yet: give an event first"))
    }

    /// The last step's successful reaction.
    fn reaction(&self) -> TestReaction {
        let step = self.last_step();
        match &step.outcome {
            Outcome::Reacted(Ok(reaction)) => TestReaction::from(reaction),
            Outcome::Reacted(Err(message)) => {
                panic!("{}: the saga failed: {message}", step.what)
            }
            Outcome::NotDelivered => panic!(
                "{}: no reaction, the event was not delivered (not subscribed)",
                step.what
            ),
            Outcome::Uncorrelated => {
                panic!("{}: no reaction, correlate returned None", step.what)
            }
            Outcome::InstanceDone => panic!(
                "{}: no reaction, the instance {:?} is done: it gets no more events",
                step.what, step.instance
            ),
            Outcome::NoEvents => {
                panic!("{}: no reaction, the command produced no event", step.what)
            }
        }
    }

    fn current_instance(&self) -> &str {
        self.current
            .as_deref()
            .unwrap_or_else(|| panic!("no saga instance yet: give an event that correlates to one"))
    }

    fn all_pending(&self) -> Vec<(String, TestCommand)> {
        self.instances
            .iter()
            .flat_map(|(instance, state)| {
                state
                    .pending
                    .iter()
                    .map(|pending| (instance.clone(), TestCommand::from(&pending.command)))
            })
            .collect()
    }

    /// The time of the next step: `explicit`, else the time given to
    /// [`SagaTest::at`], else a second after the last step.
    fn tick(&mut self, explicit: Option<i64>) -> i64 {
        let at = explicit
            .or_else(|| self.next_at.take())
            .unwrap_or(self.clock_ms.saturating_add(1000));
        self.clock_ms = self.clock_ms.max(at);
        at
    }

    fn feed(&mut self, event: TestEvent) {
        self.position += 1;
        let version = self.versions.entry(event.stream_id.clone()).or_insert(0);
        *version += 1;
        let raw = RawEvent {
            position: self.position,
            version: *version,
            recorded_at_ms: self.tick(event.recorded_at_ms),
            stream_id: event.stream_id,
            event_type: event.event_type,
            schema: EVENT_SCHEMA,
            data: event.data,
            metadata: event.metadata,
        };
        let what = raw.describe();
        if !saga::subscribes::<S>(&raw.event_type) {
            self.last = Some(Step {
                what,
                instance: None,
                outcome: Outcome::NotDelivered,
            });
            return;
        }
        let Some(instance) = saga::correlate::<S>(raw.clone()) else {
            self.last = Some(Step {
                what,
                instance: None,
                outcome: Outcome::Uncorrelated,
            });
            return;
        };
        let state = self.instances.entry(instance.clone()).or_default();
        if state.done {
            self.current = Some(instance.clone());
            self.last = Some(Step {
                what,
                instance: Some(instance),
                outcome: Outcome::InstanceDone,
            });
            return;
        }
        let causation_id = raw.position.to_string();
        let result = saga::react::<S>(&state.state, raw);
        self.record(what, &instance, &causation_id, result);
    }

    fn apply_next(mut self, events: Vec<TestEvent>) -> Self {
        let instance = self.current_instance().to_owned();
        let state = self.instances.entry(instance.clone()).or_default();
        let Some(pending) = state.pending.pop_front() else {
            panic!("instance `{instance}` has no pending command to apply");
        };
        if state.done && state.pending.is_empty() {
            state.timers.clear();
        }
        let what = format!("{} of instance `{instance}`", pending.describe());
        if events.is_empty() {
            self.current = Some(instance.clone());
            self.last = Some(Step {
                what: format!("{what} applied without events"),
                instance: Some(instance),
                outcome: Outcome::NoEvents,
            });
            return self;
        }
        let metadata = json!({
            "correlation_id": instance,
            "causation_id": pending.causation_id,
            "saga": self.name,
            "saga_instance": instance,
            "saga_step": pending.step,
        });
        let stream_id = format!("{}-{}", pending.command.aggregate, pending.command.id);
        for mut event in events {
            event.stream_id.clone_from(&stream_id);
            self.feed(event.with_metadata(&metadata));
        }
        self
    }

    fn fail(&mut self, instance: &str, pending: &Pending, failure: Failure) {
        let now_ms = self.tick(None);
        let command = TestCommand::from(&pending.command);
        let failed = FailedCommand::new(
            command.aggregate,
            command.id,
            command.command_type,
            command.data,
            failure,
        );
        let state = self.instances.entry(instance.to_owned()).or_default();
        let result = saga::on_failure::<S>(&state.state, &failed, now_ms);
        self.record(
            format!(
                "failure of {} of instance `{instance}` ({})",
                pending.describe(),
                failed.failure
            ),
            instance,
            &format!("command:{}", pending.step),
            result,
        );
    }

    /// Apply a reaction's result to `instance` as the host would, and make
    /// it the last step.
    fn record(
        &mut self,
        what: String,
        instance: &str,
        causation_id: &str,
        result: Result<EncodedReaction, String>,
    ) {
        let state = self.instances.entry(instance.to_owned()).or_default();
        if let Ok(reaction) = &result {
            if reaction.cancel_pending {
                state.pending.clear();
            }
            for command in &reaction.commands {
                state.steps += 1;
                state.pending.push_back(Pending {
                    step: state.steps,
                    causation_id: causation_id.to_owned(),
                    command: command.clone(),
                });
            }
            if let Some(timer) = &reaction.timer {
                state.timers.insert(timer.name.clone(), timer.fire_at_ms);
            }
            state.state.clone_from(&reaction.state);
            state.done |= reaction.done;
            if state.done && state.pending.is_empty() {
                state.timers.clear();
            }
        }
        self.current = Some(instance.to_owned());
        self.last = Some(Step {
            what,
            instance: Some(instance.to_owned()),
            outcome: Outcome::Reacted(result),
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use std::panic::{AssertUnwindSafe, catch_unwind};

    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::{Envelope, SagaContext};

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "type", content = "data")]
    enum Event {
        Booked { hotel: String, nights: u32 },
        Reserved {},
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type", content = "data")]
    enum Command {
        Reserve { night: u32 },
        Release { nights: u32 },
        Confirm {},
    }

    /// Books a trip: one `Reserve` per night at the hotel, then `Confirm`
    /// once every night is reserved; releases what was reserved when a
    /// command fails; expires at a deadline. `log` records what it saw.
    #[derive(Debug, Default, Serialize, Deserialize)]
    struct Trip {
        trip: String,
        nights: u32,
        reserved: u32,
        log: Vec<String>,
    }

    impl Saga for Trip {
        type Event = Event;
        const SUBSCRIPTIONS: &'static [&'static str] = &["Booked", "Reserved"];

        fn correlate(event: &Envelope<Event>) -> Option<String> {
            match event.event {
                Event::Booked { .. } => Some(event.aggregate_id().to_owned()),
                Event::Reserved {} => event.saga_instance("trip"),
            }
        }

        fn react(&mut self, event: &Envelope<Event>, ctx: &mut SagaContext) -> Result<(), String> {
            match &event.event {
                Event::Booked { nights: 0, .. } => return Err("a trip needs nights".into()),
                Event::Booked { hotel, nights } => {
                    self.trip = event.aggregate_id().to_owned();
                    self.nights = *nights;
                    for night in 1..=*nights {
                        ctx.dispatch("hotel", hotel, &Command::Reserve { night });
                    }
                    ctx.set_timer("deadline", ctx.now_ms() + 10_000);
                    self.log.push(format!("booked at {}", ctx.now_ms()));
                }
                Event::Reserved {} => {
                    self.reserved += 1;
                    self.log.push(format!(
                        "reserved on {} at {}: step {:?}, cause {:?}, correlation {:?}",
                        event.stream_id,
                        ctx.now_ms(),
                        event.saga_step("trip"),
                        event.causation_id(),
                        event.correlation_id()
                    ));
                    if self.reserved == self.nights {
                        ctx.dispatch("trip", &self.trip, &Command::Confirm {});
                        ctx.complete();
                    }
                }
            }
            Ok(())
        }

        fn on_failure(
            &mut self,
            failed: &FailedCommand,
            ctx: &mut SagaContext,
        ) -> Result<(), String> {
            self.log.push(format!(
                "{} to {}-{} failed at {}: {} {:?} {:?} {:?}",
                failed.command_type,
                failed.aggregate,
                failed.id,
                ctx.now_ms(),
                failed.data,
                failed.code(),
                failed.message(),
                failed.command::<Command>()
            ));
            if failed.command_type == "Confirm" {
                return Err("cannot confirm".into());
            }
            ctx.cancel_pending();
            ctx.compensating();
            ctx.dispatch_json(
                failed.aggregate.clone(),
                failed.id.clone(),
                "Release",
                json!({"nights": self.reserved}),
            );
            ctx.complete();
            Ok(())
        }

        fn on_timer(&mut self, timer: &Timer, ctx: &mut SagaContext) -> Result<(), String> {
            self.log
                .push(format!("timer {} at {}", timer.name, ctx.now_ms()));
            ctx.cancel_pending();
            ctx.dispatch_json("trip", &self.trip, "Expire", Value::Null);
            ctx.complete();
            Ok(())
        }
    }

    fn booked(nights: u32) -> Event {
        Event::Booked {
            hotel: "ritz".into(),
            nights,
        }
    }

    fn reserve(night: u32) -> (&'static str, &'static str, &'static str, Value) {
        ("hotel", "ritz", "Reserve", json!({"night": night}))
    }

    #[test]
    fn an_event_starts_an_instance_that_dispatches_in_order() {
        SagaTest::<Trip>::new("trip")
            .given_event("trip-t1", booked(2))
            .then_expect_instance("t1")
            .then_expect_commands(vec![reserve(1), reserve(2)])
            .then_expect_pending(vec![reserve(1), reserve(2)])
            .then_expect_timer("deadline", 11_000)
            .then_expect_not_done()
            .then_expect_not_compensating()
            .then_expect_state(|trip| assert_eq!(trip.log, ["booked at 1000"]))
            .then_expect_state_json(json!({
                "trip": "t1", "nights": 2, "reserved": 0, "log": ["booked at 1000"]
            }));
    }

    #[test]
    fn applied_commands_feed_their_events_with_the_saga_metadata() {
        let test = SagaTest::<Trip>::new("trip")
            .given_event("trip-t1", booked(2))
            .when_applied(vec![Event::Reserved {}])
            .then_expect_instance("t1")
            .then_expect_no_commands()
            .then_expect_pending(vec![reserve(2)])
            .at(5_000)
            .when_applied_json(vec![("Reserved", "{}")])
            .then_expect_commands(vec![("trip", "t1", "Confirm", json!({}))])
            .then_expect_done()
            .then_expect_pending(vec![("trip", "t1", "Confirm", json!({}))]);
        assert_eq!(
            test.state().log[1..],
            [
                r#"reserved on hotel-ritz at 2000: step Some(1), cause Some("1"), correlation Some("t1")"#,
                r#"reserved on hotel-ritz at 5000: step Some(2), cause Some("1"), correlation Some("t1")"#,
            ]
        );
        // Done, but the timer stays until the last command is applied.
        assert_eq!(test.timers(), BTreeMap::from([("deadline".into(), 11_000)]));
        let test = test.when_applied(Vec::<Event>::new());
        assert!(test.timers().is_empty());
        assert!(test.pending().is_empty());
        assert_eq!(test.last_reaction(), None);
    }

    #[test]
    fn the_same_event_from_elsewhere_is_ignored() {
        SagaTest::<Trip>::new("trip")
            .given_event("hotel-ritz", Event::Reserved {})
            .then_expect_ignored()
            // Another saga's command.
            .given(
                TestEvent::new("hotel-ritz", &Event::Reserved {})
                    .with_metadata(&json!({"saga": "other", "saga_instance": "t1"})),
            )
            .then_expect_ignored()
            // Not subscribed to.
            .given_json("trip-t1", "Cancelled", "{}")
            .then_expect_ignored();
    }

    #[test]
    fn a_rejection_goes_to_on_failure() {
        let test = SagaTest::<Trip>::new("trip")
            .given_event("trip-t1", booked(3))
            .when_applied(vec![Event::Reserved {}])
            .at(7_000)
            .when_rejected("no room on night 2", Some("full"))
            .then_expect_instance("t1")
            .then_expect_cancel_pending()
            .then_expect_compensating()
            .then_expect_done()
            .then_expect_no_timer()
            .then_expect_commands(vec![("hotel", "ritz", "Release", json!({"nights": 1}))])
            // Night 3 was cancelled; the release is what is left.
            .then_expect_pending(vec![("hotel", "ritz", "Release", json!({"nights": 1}))])
            // Done: the instance gets no more events.
            .given(
                TestEvent::new("hotel-ritz", &Event::Reserved {})
                    .with_metadata(&json!({"saga": "trip", "saga_instance": "t1"})),
            )
            .then_expect_instance("t1")
            .then_expect_ignored();
        assert_eq!(
            test.state().log.last().unwrap(),
            r#"Reserve to hotel-ritz failed at 7000: {"night":2} Some("full") "no room on night 2" Ok(Reserve { night: 2 })"#
        );
    }

    #[test]
    fn a_given_command_can_fail_and_errors_change_nothing() {
        SagaTest::<Trip>::new("trip")
            .given_event("trip-t1", booked(1))
            .when_applied(vec![Event::Reserved {}])
            .then_expect_pending(vec![("trip", "t1", "Confirm", json!({}))])
            .when_command_failed("trip", "t1", "Confirm", Failure::invalid("no such trip"))
            .then_expect_error("cannot confirm")
            .then_expect_state(|trip| {
                assert_eq!(trip.reserved, 1);
                assert_eq!(trip.log.len(), 2, "{:?}", trip.log);
            })
            .given_event("trip-t2", booked(0))
            .then_expect_error("a trip needs nights")
            .then_expect_state_json(Value::Null);
    }

    #[test]
    fn a_timer_fires_at_its_time() {
        let test = SagaTest::<Trip>::new("trip")
            .given_event("trip-t1", booked(2))
            .when_timer("deadline")
            .then_expect_cancel_pending()
            .then_expect_commands(vec![("trip", "t1", "Expire", Value::Null)])
            .then_expect_pending(vec![("trip", "t1", "Expire", Value::Null)])
            .then_expect_reaction(|reaction| {
                assert!(reaction.done);
                assert!(!reaction.compensating);
            });
        assert_eq!(test.state().log.last().unwrap(), "timer deadline at 11000");
        // The clock moved to the timer's time.
        let test = test.given_event("trip-t2", booked(1));
        assert_eq!(test.state().log, ["booked at 12000"]);
    }

    /// Subscribes to everything, knows only `Booked`.
    #[derive(Debug, Default, Serialize, Deserialize)]
    struct Everything {
        seen: u32,
    }

    impl Saga for Everything {
        type Event = Event;
        const SUBSCRIPTIONS: &'static [&'static str] = &[];

        fn correlate(event: &Envelope<Event>) -> Option<String> {
            Some(event.stream_id.clone())
        }

        fn react(
            &mut self,
            _event: &Envelope<Event>,
            _ctx: &mut SagaContext,
        ) -> Result<(), String> {
            self.seen += 1;
            Ok(())
        }

        fn on_failure(&mut self, _: &FailedCommand, _: &mut SagaContext) -> Result<(), String> {
            Ok(())
        }
    }

    #[test]
    fn unknown_types_belong_to_no_instance_when_subscribed_to_all() {
        SagaTest::<Everything>::new("everything")
            .given_json("x-1", "Renamed", r#"{"to": "y"}"#)
            .then_expect_ignored()
            .given_event("x-1", booked(1))
            .then_expect_instance("x-1")
            .then_expect_state_json(json!({"seen": 1}));
    }

    /// Subscribes by name to a type its enum lacks.
    #[derive(Debug, Default, Serialize, Deserialize)]
    struct Mistaken;

    impl Saga for Mistaken {
        type Event = Event;
        const SUBSCRIPTIONS: &'static [&'static str] = &["Booked", "Renamed"];

        fn correlate(_: &Envelope<Event>) -> Option<String> {
            Some("one".into())
        }

        fn react(&mut self, _: &Envelope<Event>, _: &mut SagaContext) -> Result<(), String> {
            Ok(())
        }

        fn on_failure(&mut self, _: &FailedCommand, _: &mut SagaContext) -> Result<(), String> {
            Ok(())
        }
    }

    #[test]
    #[should_panic(
        expected = "subscribes to [\"Booked\", \"Renamed\"] but its event type has \
                               no variant `Renamed`"
    )]
    fn a_subscribed_type_without_a_variant_panics() {
        let _ = SagaTest::<Mistaken>::new("mistaken").given_json("x-1", "Renamed", "{}");
    }

    #[test]
    #[should_panic(
        expected = "cannot correlate event 1 (`Booked` on `trip-1`): cannot decode \
                               its data: missing field `nights`"
    )]
    fn undecodable_data_panics() {
        let _ = SagaTest::<Trip>::new("trip").given_json("trip-1", "Booked", r#"{"hotel": "x"}"#);
    }

    /// Every expectation must be able to fail.
    #[test]
    fn every_expectation_can_fail() {
        fn started() -> SagaTest<Trip> {
            SagaTest::<Trip>::new("trip").given_event("trip-t1", booked(1))
        }
        /// What is checked, part of the expected message, the check.
        type Failing = (&'static str, &'static str, Box<dyn Fn()>);
        let failing: Vec<Failing> = vec![
            (
                "instance",
                "instance\n  left: \"t1\"",
                Box::new(|| drop(started().then_expect_instance("t2"))),
            ),
            (
                "ignored",
                "expected the event to be ignored",
                Box::new(|| drop(started().then_expect_ignored())),
            ),
            (
                "reaction of an event of a done instance",
                "is done: it gets no more events",
                Box::new(|| {
                    drop(
                        started()
                            .when_applied(vec![Event::Reserved {}])
                            .given(
                                TestEvent::new("hotel-ritz", &Event::Reserved {})
                                    .with_metadata(&json!({"saga": "trip", "saga_instance": "t1"})),
                            )
                            .then_expect_no_commands(),
                    );
                }),
            ),
            (
                "instance of an ignored event",
                "the event was not delivered",
                Box::new(|| {
                    drop(
                        started()
                            .given_json("trip-t1", "Other", "{}")
                            .then_expect_instance("t1"),
                    );
                }),
            ),
            (
                "commands",
                "dispatched commands",
                Box::new(|| drop(started().then_expect_commands(vec![reserve(2)]))),
            ),
            (
                "no commands",
                "dispatched commands",
                Box::new(|| drop(started().then_expect_no_commands())),
            ),
            (
                "pending",
                "pending commands",
                Box::new(|| drop(started().then_expect_pending(vec![]))),
            ),
            (
                "timer",
                "): timer",
                Box::new(|| drop(started().then_expect_timer("deadline", 1))),
            ),
            (
                "no timer",
                "): timer",
                Box::new(|| drop(started().then_expect_no_timer())),
            ),
            (
                "done",
                "): done",
                Box::new(|| drop(started().then_expect_done())),
            ),
            (
                "not done",
                "): done",
                Box::new(|| {
                    drop(
                        started()
                            .when_applied(vec![Event::Reserved {}])
                            .then_expect_not_done(),
                    );
                }),
            ),
            (
                "compensating",
                "): compensating",
                Box::new(|| drop(started().then_expect_compensating())),
            ),
            (
                "not compensating",
                "): compensating",
                Box::new(|| {
                    drop(
                        started()
                            .when_rejected("y", Some("x"))
                            .then_expect_not_compensating(),
                    );
                }),
            ),
            (
                "cancel pending",
                "): cancel_pending",
                Box::new(|| drop(started().then_expect_cancel_pending())),
            ),
            (
                "error",
                "the step succeeded",
                Box::new(|| drop(started().then_expect_error(""))),
            ),
            (
                "error message",
                "got \"a trip needs nights\"",
                Box::new(|| {
                    drop(
                        SagaTest::<Trip>::new("trip")
                            .given_event("trip-t1", booked(0))
                            .then_expect_error("other"),
                    );
                }),
            ),
            (
                "state",
                "left: 1",
                Box::new(|| drop(started().then_expect_state(|trip| assert_eq!(trip.nights, 2)))),
            ),
            (
                "state json",
                "state of instance `t1`",
                Box::new(|| drop(started().then_expect_state_json(json!({})))),
            ),
            (
                "reaction of a failed step",
                "the saga failed: a trip needs nights",
                Box::new(|| {
                    drop(
                        SagaTest::<Trip>::new("trip")
                            .given_event("trip-t1", booked(0))
                            .then_expect_no_commands(),
                    );
                }),
            ),
            (
                "reaction",
                "r.done",
                Box::new(|| drop(started().then_expect_reaction(|r| assert!(r.done)))),
            ),
            (
                "no step",
                "no step yet",
                Box::new(|| drop(SagaTest::<Trip>::new("trip").then_expect_done())),
            ),
            (
                "nothing to apply",
                "has no pending command to apply",
                Box::new(|| {
                    drop(
                        SagaTest::<Trip>::new("trip")
                            .given_event("trip-t1", booked(0))
                            .when_applied(vec![Event::Reserved {}]),
                    );
                }),
            ),
            (
                "no such timer",
                "has no timer `other`",
                Box::new(|| drop(started().when_timer("other"))),
            ),
            (
                "no such command",
                "no pending command `Confirm` to `hotel-ritz`",
                Box::new(|| {
                    drop(started().when_command_failed(
                        "hotel",
                        "ritz",
                        "Confirm",
                        Failure::invalid("x"),
                    ));
                }),
            ),
        ];
        for (name, expected, check) in failing {
            let Err(payload) = catch_unwind(AssertUnwindSafe(check)) else {
                panic!("the expectation `{name}` did not fail");
            };
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or_default();
            assert!(
                message.contains(expected),
                "the expectation `{name}` failed with {message:?}, expected {expected:?}"
            );
        }
    }
}
