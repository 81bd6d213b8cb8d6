//! The adapters between the generated WIT bindings and [`Aggregate`] and
//! [`Projection`].

use std::marker::PhantomData;

use crate::bindings::aggregate::Guest;
use crate::bindings::aggregate::kiln::plugin::types as wit;
use crate::bindings::projection as projection_world;
use crate::codec::{self, EncodedEvent};
use crate::projection::{self, RawEvent};
use crate::{Aggregate, CommandContext, Failure, Projection, View};

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
