//! The adapters between the generated WIT bindings and [`Aggregate`],
//! [`Projection`] and [`Saga`].

use std::marker::PhantomData;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::bindings::aggregate::Guest;
use crate::bindings::aggregate::kiln::plugin::types as wit;
use crate::bindings::projection as projection_world;
use crate::bindings::saga as saga_world;
use crate::codec::{self, EncodedEvent};
use crate::projection::{self, RawEvent};
use crate::saga::{self, EncodedCommand, EncodedReaction};
use crate::{Aggregate, CommandContext, FailedCommand, Failure, Projection, Saga, Timer, View};

/// Implements the `aggregate` world's exports for `A`.
///
/// [`crate::export_aggregate!`] names this type for the export macro that
/// wit-bindgen generates; plugins never use it directly.
pub struct AggregateExport<A>(PhantomData<A>);

impl<A: Aggregate> Guest for AggregateExport<A> {
    fn apply(state: wit::State, events: Vec<wit::Event>) -> wit::State {
        codec::apply::<A>(
            &state,
            events
                .iter()
                .map(|event| (event.event_type.as_str(), event.data.as_slice())),
        )
    }

    fn handle(
        state: wit::State,
        command: wit::Command,
    ) -> Result<Vec<wit::NewEvent>, wit::Failure> {
        let wit::Command {
            command_type,
            data,
            metadata,
            stream_id,
            issued_at_ms,
        } = command;
        let ctx =
            CommandContext::new(command_type, stream_id, issued_at_ms).with_metadata(metadata);
        match codec::handle::<A>(&state, ctx.command_type(), &data, &ctx) {
            Ok(events) => Ok(events.into_iter().map(wit::NewEvent::from).collect()),
            Err(failure) => Err(failure.into()),
        }
    }
}

impl From<EncodedEvent> for wit::NewEvent {
    fn from(event: EncodedEvent) -> Self {
        Self {
            event_type: event.event_type,
            schema: event.schema,
            data: event.data,
        }
    }
}

impl From<Failure> for wit::Failure {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Rejected { code, message } => Self::Rejected(wit::Rejection { code, message }),
            Failure::Invalid(message) => Self::Invalid(message),
        }
    }
}

/// Implements the `projection` world's exports for `P`.
///
/// [`crate::export_projection!`] names this type for the export macro that
/// wit-bindgen generates; plugins never use it directly.
pub struct ProjectionExport<P>(PhantomData<P>);

impl<P: Projection> projection_world::Guest for ProjectionExport<P> {
    fn subscriptions() -> Vec<String> {
        P::SUBSCRIPTIONS
            .iter()
            .map(|event_type| (*event_type).to_owned())
            .collect()
    }

    fn handle_batch(
        events: Vec<projection_world::kiln::plugin::types::Event>,
    ) -> Result<(), String> {
        let mut view = View::host();
        projection::handle_batch::<P>(&mut view, events.into_iter().map(RawEvent::from))
    }
}

impl From<projection_world::kiln::plugin::types::Event> for RawEvent {
    fn from(event: projection_world::kiln::plugin::types::Event) -> Self {
        Self {
            position: event.position,
            stream_id: event.stream_id,
            version: event.version,
            event_type: event.event_type,
            schema: event.schema,
            data: event.data,
            metadata: event.metadata,
            recorded_at_ms: event.recorded_at_ms,
        }
    }
}

/// Implements the `saga` world's exports for `S`.
///
/// [`crate::export_saga!`] names this type for the export macro that
/// wit-bindgen generates; plugins never use it directly.
pub struct SagaExport<S>(PhantomData<S>);

impl<S: Saga> saga_world::Guest for SagaExport<S> {
    fn subscriptions() -> Vec<String> {
        S::SUBSCRIPTIONS
            .iter()
            .map(|event_type| (*event_type).to_owned())
            .collect()
    }

    fn correlate(event: wit::Event) -> Option<String> {
        saga::correlate::<S>(RawEvent::from(event))
    }

    fn react(state: wit::State, event: wit::Event) -> Result<wit::Reaction, String> {
        saga::react::<S>(&state, RawEvent::from(event)).map(wit::Reaction::from)
    }

    fn on_failure(state: wit::State, failed: wit::FailedCommand) -> Result<wit::Reaction, String> {
        let wit::FailedCommand { command, failure } = failed;
        let failed = FailedCommand::new(
            command.aggregate,
            command.id,
            command.command_type,
            saga::command_data(&command.data),
            failure.into(),
        );
        saga::on_failure::<S>(&state, &failed, wall_clock_ms()).map(wit::Reaction::from)
    }

    fn on_timer(state: wit::State, timer: wit::Timer) -> Result<wit::Reaction, String> {
        let timer = Timer::new(timer.name, timer.fire_at_ms);
        saga::on_timer::<S>(&state, &timer).map(wit::Reaction::from)
    }
}

/// The time the host's clock reads: in a sandbox, the time of the unit of
/// work (for `on-failure`, when the failure was recorded).
fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

impl From<wit::Event> for RawEvent {
    fn from(event: wit::Event) -> Self {
        Self {
            position: event.position,
            stream_id: event.stream_id,
            version: event.version,
            event_type: event.event_type,
            schema: event.schema,
            data: event.data,
            metadata: event.metadata,
            recorded_at_ms: event.recorded_at_ms,
        }
    }
}

impl From<wit::Failure> for Failure {
    fn from(failure: wit::Failure) -> Self {
        match failure {
            wit::Failure::Rejected(wit::Rejection { code, message }) => {
                Self::Rejected { code, message }
            }
            wit::Failure::Invalid(message) => Self::Invalid(message),
        }
    }
}

impl From<EncodedReaction> for wit::Reaction {
    fn from(reaction: EncodedReaction) -> Self {
        Self {
            state: reaction.state,
            commands: reaction
                .commands
                .into_iter()
                .map(wit::OutgoingCommand::from)
                .collect(),
            timer: reaction.timer.map(|timer| wit::Timer {
                name: timer.name,
                fire_at_ms: timer.fire_at_ms,
            }),
            done: reaction.done,
            compensating: reaction.compensating,
            cancel_pending: reaction.cancel_pending,
        }
    }
}

impl From<EncodedCommand> for wit::OutgoingCommand {
    fn from(command: EncodedCommand) -> Self {
        Self {
            aggregate: command.aggregate,
            id: command.id,
            command_type: command.command_type,
            data: command.data,
        }
    }
}
