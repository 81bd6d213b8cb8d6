//! The [`Saga`] trait, the [`SagaContext`] its methods decide through, the
//! types they see ([`FailedCommand`], [`Timer`]), and the mapping between
//! them and the `saga` world's encoded calls, which the component's exports
//! and the native test harness share.

use std::any::type_name;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::codec;
use crate::projection::RawEvent;
use crate::{Envelope, Failure};

/// A saga (process manager): turns events into commands for other
/// aggregates, and undoes earlier steps when a later one is refused.
///
/// A saga has **instances**, one per flow it coordinates (e.g. one per money
/// transfer). The value of `Self` is the state of one instance: the host
/// keeps it as the JSON `serde_json` makes of it, and an instance that has
/// seen nothing yet starts from [`Default::default()`].
///
/// For every committed event of a type in [`Saga::SUBSCRIPTIONS`], the host
/// calls [`Saga::correlate`] to learn which instance it belongs to, then
/// [`Saga::react`] with that instance's state. The reaction is what the
/// method leaves in `self` (the new state) and what it asks of the
/// [`SagaContext`]:
///
/// - [`SagaContext::dispatch`] commands. The host dispatches an instance's
///   commands in order, one at a time (the next once the previous one has
///   been applied), through the normal command pipeline, each with an
///   idempotency key of its own. A transient failure is retried; a command
///   the target aggregate rejects (or finds invalid) is handed to
///   [`Saga::on_failure`].
/// - [`SagaContext::set_timer`]: [`Saga::on_timer`] is called when it fires.
/// - [`SagaContext::complete`]: the instance is done: it gets no more
///   events, and the host completes it (and drops its timers) once its
///   commands have been applied. Until then a refused command still goes to
///   `on_failure` and a timer still fires.
/// - [`SagaContext::compensating`]: the commands undo earlier steps (the
///   instance shows `compensating` until it is done).
/// - [`SagaContext::cancel_pending`]: drop the commands dispatched earlier
///   that have not been applied yet.
///
/// `on_failure` and `on_timer` are called only when no command of the
/// instance is executing, and after the instance has been given (through
/// `react`) the events its applied commands produced, so the state is up to
/// date with what happened.
///
/// # The results of the saga's own commands
///
/// Every command the host dispatches for a saga carries metadata that the
/// events it produces inherit: `correlation_id` and `saga_instance` (the
/// instance id), `saga` (the saga's plugin name), `saga_step` (the step
/// number) and `causation_id`. So a saga that subscribes to the events its
/// commands produce correlates them with [`Envelope::saga_instance`], which
/// also tells them apart from the same events caused by anyone else.
///
/// # Which events reach `correlate` and `react`
///
/// Events decode exactly like a projection's: `{"type": <event-type>,
/// "data": <data>}` is deserialized into [`Saga::Event`], usually an enum
/// with `#[serde(tag = "type", content = "data")]`. An event whose type is
/// not a variant of that enum belongs to no instance when the saga
/// subscribes to every event (empty [`Saga::SUBSCRIPTIONS`]); when the saga
/// subscribed to that type by name, it is a bug and the plugin panics with a
/// message naming the type (the host shows the trap). An event of a known
/// type whose data does not decode panics in `correlate` too.
///
/// # Time and determinism
///
/// A saga must be deterministic: the same events, failures and timers give
/// the same reactions. Read the time from [`SagaContext::now_ms`]: the
/// event's recording time in `react`, the timer's `fire_at_ms` in
/// `on_timer`, and the time the failure was recorded in `on_failure`.
///
/// Returning `Err` from a method refuses to react: the state stays as it
/// was, nothing is dispatched, and the host reports the message (it becomes
/// the WIT error string as is). A panic is a trap.
///
/// See the [crate documentation](crate#sagas) for an example.
pub trait Saga: Default + Serialize + DeserializeOwned {
    /// The events this saga decodes; see the trait's documentation.
    type Event: DeserializeOwned;

    /// The event types to receive (the `subscriptions` export). Empty means
    /// every event of the log; then the types [`Saga::Event`] has no variant
    /// for belong to no instance.
    const SUBSCRIPTIONS: &'static [&'static str];

    /// The instance `event` belongs to, or `None` to ignore it. Called for
    /// every event the saga receives, without any state.
    fn correlate(event: &Envelope<Self::Event>) -> Option<String>;

    /// React to an event of this instance: update `self`, and dispatch
    /// commands, set a timer or complete through `ctx`.
    ///
    /// # Errors
    /// Refuses to react; the host reports the message.
    fn react(&mut self, event: &Envelope<Self::Event>, ctx: &mut SagaContext)
    -> Result<(), String>;

    /// A command this instance dispatched was refused (rejected, or invalid):
    /// compensate, give up or try something else.
    ///
    /// # Errors
    /// Refuses to react; the host reports the message.
    fn on_failure(&mut self, failed: &FailedCommand, ctx: &mut SagaContext) -> Result<(), String>;

    /// A timer of this instance fired; [`SagaContext::now_ms`] is its
    /// `fire_at_ms`. The default does nothing.
    ///
    /// # Errors
    /// Refuses to react; the host reports the message.
    fn on_timer(&mut self, timer: &Timer, ctx: &mut SagaContext) -> Result<(), String> {
        let _ = (timer, ctx);
        Ok(())
    }
}

/// A durable timer of a saga instance (the WIT `timer`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Timer {
    /// The name the saga gave it; a new timer of the same name replaces it.
    pub name: String,
    /// When it fires, in milliseconds since the Unix epoch.
    pub fire_at_ms: i64,
}

impl Timer {
    /// The timer `name`, firing at `fire_at_ms`.
    pub fn new(name: impl Into<String>, fire_at_ms: i64) -> Self {
        Self {
            name: name.into(),
            fire_at_ms,
        }
    }
}

/// A command a saga instance dispatched, which the target aggregate refused
/// (the WIT `failed-command`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FailedCommand {
    /// The aggregate (plugin name) the command was addressed to.
    pub aggregate: String,
    /// The aggregate instance id; the stream is `{aggregate}-{id}`.
    pub id: String,
    /// The command's type, e.g. `Withdraw`.
    pub command_type: String,
    /// The command's data as the saga dispatched it (`null` when it was not
    /// JSON).
    pub data: Value,
    /// Why it failed: [`Failure::Rejected`] by a business rule, or
    /// [`Failure::Invalid`].
    pub failure: Failure,
}

impl FailedCommand {
    /// The command `command_type` with `data`, addressed to `aggregate`
    /// instance `id`, refused with `failure`.
    pub fn new(
        aggregate: impl Into<String>,
        id: impl Into<String>,
        command_type: impl Into<String>,
        data: Value,
        failure: Failure,
    ) -> Self {
        Self {
            aggregate: aggregate.into(),
            id: id.into(),
            command_type: command_type.into(),
            data,
            failure,
        }
    }

    /// The failure's human-readable message, rejection or invalid.
    pub fn message(&self) -> &str {
        self.failure.message()
    }

    /// The rejection's machine-readable code, if it has one.
    pub fn code(&self) -> Option<&str> {
        match &self.failure {
            Failure::Rejected { code, .. } => code.as_deref(),
            Failure::Invalid(_) => None,
        }
    }

    /// The command decoded back into `C`, an enum tagged with
    /// `#[serde(tag = "type", content = "data")]` (typically the one the saga
    /// dispatched it from).
    ///
    /// # Errors
    /// serde's message when it does not decode as a `C`.
    pub fn command<C: DeserializeOwned>(&self) -> Result<C, String> {
        let data = serde_json::to_vec(&self.data).map_err(|error| error.to_string())?;
        codec::try_decode_event(&self.command_type, &data)
            .map_err(|message| format!("command `{}`: {message}", self.command_type))
    }
}

/// What a saga method decides besides the instance's new state: the
/// commands to dispatch, a timer, and whether the instance is done.
///
/// The SDK makes a fresh one for every call.
#[derive(Debug)]
pub struct SagaContext {
    now_ms: i64,
    commands: Vec<EncodedCommand>,
    timer: Option<Timer>,
    done: bool,
    compensating: bool,
    cancel_pending: bool,
}

impl SagaContext {
    pub(crate) fn new(now_ms: i64) -> Self {
        Self {
            now_ms,
            commands: Vec::new(),
            timer: None,
            done: false,
            compensating: false,
            cancel_pending: false,
        }
    }

    /// The time inside the saga, in milliseconds since the Unix epoch: the
    /// event's `recorded_at_ms` in `react`, the timer's `fire_at_ms` in
    /// `on_timer`, the time the failure was recorded in `on_failure`. Use it
    /// instead of a clock, so that reactions replay.
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    /// Dispatch `command` to the instance `id` of the aggregate `aggregate`
    /// (its plugin name; the stream is `{aggregate}-{id}`). `command`
    /// serializes as `{"type": <command-type>, "data": <data>}`: a variant
    /// of an enum with `#[serde(tag = "type", content = "data")]`, like an
    /// aggregate's command enum. Commands are dispatched in the order of the
    /// calls, after the ones dispatched by earlier reactions.
    ///
    /// # Panics
    /// When `command` does not serialize that way (a bug in the saga).
    pub fn dispatch<C: Serialize>(
        &mut self,
        aggregate: impl Into<String>,
        id: impl Into<String>,
        command: &C,
    ) {
        let (command_type, data) = codec::encode_tagged(command).unwrap_or_else(|message| {
            panic!(
                "kiln-sdk: cannot dispatch a command of {}: {message}",
                type_name::<C>()
            )
        });
        self.commands.push(EncodedCommand {
            aggregate: aggregate.into(),
            id: id.into(),
            command_type,
            data,
        });
    }

    /// Dispatch the command `command_type` with the JSON `data` to the
    /// instance `id` of the aggregate `aggregate`.
    pub fn dispatch_json(
        &mut self,
        aggregate: impl Into<String>,
        id: impl Into<String>,
        command_type: impl Into<String>,
        data: Value,
    ) {
        self.commands.push(EncodedCommand {
            aggregate: aggregate.into(),
            id: id.into(),
            command_type: command_type.into(),
            data: data.to_string().into_bytes(),
        });
    }

    /// Set the timer `name` to fire at `fire_at_ms` (replacing a timer of
    /// the instance with the same name). A reaction sets at most one timer:
    /// setting the same name again replaces it.
    ///
    /// # Panics
    /// When this reaction already set a timer with another name.
    pub fn set_timer(&mut self, name: impl Into<String>, fire_at_ms: i64) {
        let timer = Timer::new(name, fire_at_ms);
        if let Some(set) = &self.timer
            && set.name != timer.name
        {
            panic!(
                "kiln-sdk: a reaction sets at most one timer; this one already set `{}` \
                 and now sets `{}`",
                set.name, timer.name
            );
        }
        self.timer = Some(timer);
    }

    /// The instance has finished its work: it gets no more events, and the
    /// host completes it once the commands dispatched so far (this
    /// reaction's included) have been applied, and drops its timers. Until
    /// then a refused command still goes to [`Saga::on_failure`] and a timer
    /// still fires.
    pub fn complete(&mut self) {
        self.done = true;
    }

    /// This reaction's commands undo earlier steps: the instance shows
    /// `compensating` until it is done.
    pub fn compensating(&mut self) {
        self.compensating = true;
    }

    /// Drop the commands this instance dispatched earlier that have not been
    /// applied yet (a command being executed is never cut off). This
    /// reaction's own commands are dispatched.
    pub fn cancel_pending(&mut self) {
        self.cancel_pending = true;
    }

    fn into_reaction(self, state: Vec<u8>) -> EncodedReaction {
        EncodedReaction {
            state,
            commands: self.commands,
            timer: self.timer,
            done: self.done,
            compensating: self.compensating,
            cancel_pending: self.cancel_pending,
        }
    }
}

/// A command to dispatch, encoded for the host (the WIT `outgoing-command`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EncodedCommand {
    pub(crate) aggregate: String,
    pub(crate) id: String,
    pub(crate) command_type: String,
    pub(crate) data: Vec<u8>,
}

/// A reaction encoded for the host (the WIT `reaction`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EncodedReaction {
    pub(crate) state: Vec<u8>,
    pub(crate) commands: Vec<EncodedCommand>,
    pub(crate) timer: Option<Timer>,
    pub(crate) done: bool,
    pub(crate) compensating: bool,
    pub(crate) cancel_pending: bool,
}

impl EncodedReaction {
    /// The reaction to an event that belongs to no variant: nothing changes.
    fn none(state: &[u8]) -> Self {
        SagaContext::new(0).into_reaction(state.to_vec())
    }
}

/// Whether `S` receives events of `event_type`, as the host filters them.
pub(crate) fn subscribes<S: Saga>(event_type: &str) -> bool {
    S::SUBSCRIPTIONS.is_empty() || S::SUBSCRIPTIONS.contains(&event_type)
}

/// `raw` decoded for `S`; `None` for a type `S::Event` has no variant for
/// while subscribed to every event.
///
/// # Panics
/// When `S` subscribed to the type by name but has no variant for it.
fn decode<S: Saga>(raw: RawEvent) -> Option<Result<Envelope<S::Event>, String>> {
    if let Some(known) = raw.unknown_to::<S::Event>() {
        assert!(
            S::SUBSCRIPTIONS.is_empty(),
            "kiln-sdk: {}: the saga {} subscribes to {:?} but its event type has no variant \
             `{}` (it knows {known:?})",
            raw.describe(),
            type_name::<S>(),
            S::SUBSCRIPTIONS,
            raw.event_type,
        );
        return None;
    }
    Some(raw.decode())
}

/// `correlate` as the host calls it.
///
/// # Panics
/// When the event's type is subscribed to by name but unknown to
/// `S::Event`, or its data does not decode.
pub(crate) fn correlate<S: Saga>(raw: RawEvent) -> Option<String> {
    let envelope = decode::<S>(raw)?.unwrap_or_else(|message| {
        panic!(
            "kiln-sdk: the saga {} cannot correlate {message}",
            type_name::<S>()
        )
    });
    S::correlate(&envelope)
}

/// `react` as the host calls it: the event's recording time is the saga's
/// "now".
pub(crate) fn react<S: Saga>(state: &[u8], raw: RawEvent) -> Result<EncodedReaction, String> {
    let Some(envelope) = decode::<S>(raw) else {
        return Ok(EncodedReaction::none(state));
    };
    let envelope = envelope?;
    run::<S>(state, envelope.recorded_at_ms, |saga, ctx| {
        saga.react(&envelope, ctx)
    })
}

/// `on-failure` as the host calls it, at `now_ms`.
pub(crate) fn on_failure<S: Saga>(
    state: &[u8],
    failed: &FailedCommand,
    now_ms: i64,
) -> Result<EncodedReaction, String> {
    run::<S>(state, now_ms, |saga, ctx| saga.on_failure(failed, ctx))
}

/// `on-timer` as the host calls it: the timer's time is the saga's "now".
pub(crate) fn on_timer<S: Saga>(state: &[u8], timer: &Timer) -> Result<EncodedReaction, String> {
    run::<S>(state, timer.fire_at_ms, |saga, ctx| {
        saga.on_timer(timer, ctx)
    })
}

fn run<S: Saga>(
    state: &[u8],
    now_ms: i64,
    method: impl FnOnce(&mut S, &mut SagaContext) -> Result<(), String>,
) -> Result<EncodedReaction, String> {
    let mut saga: S = codec::decode_state(state);
    let mut ctx = SagaContext::new(now_ms);
    method(&mut saga, &mut ctx)?;
    Ok(ctx.into_reaction(codec::encode_state(&saga)))
}

/// The data of a command as the host passed it back, as JSON.
pub(crate) fn command_data(data: &[u8]) -> Value {
    serde_json::from_slice(data).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "type", content = "data")]
    enum Event {
        Started { n: u32 },
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type", content = "data")]
    enum Command {
        Go { n: u32 },
        Stop,
    }

    /// Subscribes to everything; dispatches `Go` for `Started`.
    #[derive(Debug, Default, Serialize, Deserialize)]
    struct Counter {
        started: u32,
    }

    impl Saga for Counter {
        type Event = Event;
        const SUBSCRIPTIONS: &'static [&'static str] = &[];

        fn correlate(event: &Envelope<Event>) -> Option<String> {
            Some(event.aggregate_id().to_owned())
        }

        fn react(&mut self, event: &Envelope<Event>, ctx: &mut SagaContext) -> Result<(), String> {
            let Event::Started { n } = event.event;
            self.started += 1;
            ctx.dispatch("counter", "1", &Command::Go { n });
            ctx.dispatch("counter", "1", &Command::Stop);
            Ok(())
        }

        fn on_failure(
            &mut self,
            failed: &FailedCommand,
            _: &mut SagaContext,
        ) -> Result<(), String> {
            Err(format!("{} failed", failed.command_type))
        }
    }

    fn raw(event_type: &str, data: &str) -> RawEvent {
        RawEvent {
            position: 3,
            stream_id: "c-7".into(),
            version: 1,
            event_type: event_type.into(),
            schema: 1,
            data: data.as_bytes().to_vec(),
            metadata: Vec::new(),
            recorded_at_ms: 42,
        }
    }

    #[test]
    fn react_encodes_the_state_and_the_commands() {
        let reaction = react::<Counter>(b"", raw("Started", r#"{"n": 2}"#)).unwrap();
        assert_eq!(reaction.state, br#"{"started":1}"#);
        let commands: Vec<(&str, &str, &str, &[u8])> = reaction
            .commands
            .iter()
            .map(|c| {
                (
                    c.aggregate.as_str(),
                    c.id.as_str(),
                    c.command_type.as_str(),
                    c.data.as_slice(),
                )
            })
            .collect();
        assert_eq!(
            commands,
            [
                ("counter", "1", "Go", &br#"{"n":2}"#[..]),
                ("counter", "1", "Stop", &b"{}"[..]),
            ]
        );
        assert!(!reaction.done && !reaction.compensating && !reaction.cancel_pending);
        assert_eq!(reaction.timer, None);
    }

    #[test]
    fn unknown_types_change_nothing_when_subscribed_to_all() {
        assert_eq!(correlate::<Counter>(raw("Other", "{}")), None);
        let reaction = react::<Counter>(br#"{"started":5}"#, raw("Other", "{}")).unwrap();
        assert_eq!(reaction, EncodedReaction::none(br#"{"started":5}"#));
    }

    #[test]
    fn data_that_does_not_decode_is_an_error_in_react() {
        let error = react::<Counter>(b"", raw("Started", r#"{"n": "x"}"#)).unwrap_err();
        assert!(
            error.starts_with("event 3 (`Started` on `c-7`): cannot decode its data: invalid type"),
            "{error}"
        );
    }

    #[test]
    fn errors_are_passed_on_as_they_are() {
        let failed =
            FailedCommand::new("counter", "1", "Go", json!({"n": 1}), Failure::invalid("x"));
        assert_eq!(
            on_failure::<Counter>(b"", &failed, 0),
            Err("Go failed".to_owned())
        );
        // The default `on_timer` does nothing, and keeps the state.
        let reaction = on_timer::<Counter>(br#"{"started":2}"#, &Timer::new("t", 9)).unwrap();
        assert_eq!(reaction.state, br#"{"started":2}"#);
        assert!(reaction.commands.is_empty());
    }

    #[test]
    fn a_failed_command_decodes_back() {
        let failed = FailedCommand::new(
            "counter",
            "1",
            "Go",
            json!({"n": 4}),
            Failure::rejected("try later").with_code("busy"),
        );
        assert_eq!(failed.command::<Command>(), Ok(Command::Go { n: 4 }));
        assert_eq!(failed.code(), Some("busy"));
        assert_eq!(failed.message(), "try later");
        let stop = FailedCommand::new("counter", "1", "Stop", json!({}), Failure::invalid("no"));
        assert_eq!(stop.command::<Command>(), Ok(Command::Stop));
        assert_eq!(stop.code(), None);
        assert_eq!(stop.message(), "no");
        let other = FailedCommand::new("counter", "1", "Jump", json!({}), Failure::invalid("no"));
        let error = other.command::<Command>().unwrap_err();
        assert!(error.contains("unknown variant `Jump`"), "{error}");
    }

    #[test]
    fn a_reaction_sets_one_timer() {
        let mut ctx = SagaContext::new(5);
        ctx.set_timer("a", 10);
        ctx.set_timer("a", 20);
        ctx.complete();
        ctx.compensating();
        ctx.cancel_pending();
        ctx.dispatch_json("x", "1", "Do", json!(null));
        let reaction = ctx.into_reaction(b"{}".to_vec());
        assert_eq!(reaction.timer, Some(Timer::new("a", 20)));
        assert!(reaction.done && reaction.compensating && reaction.cancel_pending);
        assert_eq!(reaction.commands[0].data, b"null");
    }

    #[test]
    #[should_panic(
        expected = "a reaction sets at most one timer; this one already set `a` and \
                               now sets `b`"
    )]
    fn a_second_timer_panics() {
        let mut ctx = SagaContext::new(0);
        ctx.set_timer("a", 1);
        ctx.set_timer("b", 1);
    }

    #[test]
    #[should_panic(expected = "cannot dispatch a command of u32")]
    fn an_untagged_command_panics() {
        SagaContext::new(0).dispatch("x", "1", &7_u32);
    }
}
