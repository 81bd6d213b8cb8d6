//! The adapter between the generated WIT bindings and [`Aggregate`].

use std::marker::PhantomData;

use crate::bindings::Guest;
use crate::bindings::kiln::plugin::types as wit;
use crate::codec::{self, EncodedEvent};
use crate::{Aggregate, CommandContext, Failure};

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
