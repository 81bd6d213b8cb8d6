//! A counter that cannot go above 10: a Kiln aggregate.
//!
//! - `cargo test`: the given/when/then tests below, natively.
//! - `cargo build --profile plugin --target wasm32-wasip2`: the component,
//!   `target/wasm32-wasip2/plugin/counter.wasm`.

use kiln_sdk::{Aggregate, CommandContext, Failure};
use serde::{Deserialize, Serialize};

/// The state of one counter (`Counter::default()` before its first event).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Counter {
    value: u32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Command {
    Increment { by: u32 },
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    Incremented { by: u32 },
}

impl Aggregate for Counter {
    type Command = Command;
    type Event = Event;

    fn handle(&self, command: Command, _ctx: &CommandContext) -> Result<Vec<Event>, Failure> {
        match command {
            Command::Increment { by: 0 } => Err(Failure::invalid("`by` must be positive")),
            Command::Increment { by } if self.value.saturating_add(by) > 10 => {
                Err(Failure::rejected("the counter cannot exceed 10").with_code("limit"))
            }
            Command::Increment { by } => Ok(vec![Event::Incremented { by }]),
        }
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Incremented { by } => self.value += by,
        }
    }
}

kiln_sdk::export_aggregate!(Counter);

#[cfg(test)]
mod tests {
    use kiln_sdk::testing::AggregateTest;

    use super::*;

    #[test]
    fn increments() {
        AggregateTest::<Counter>::given(vec![Event::Incremented { by: 2 }])
            .when(Command::Increment { by: 3 })
            .then_expect_events(vec![Event::Incremented { by: 3 }]);
    }

    #[test]
    fn refuses_to_go_above_ten() {
        AggregateTest::<Counter>::given(vec![Event::Incremented { by: 8 }])
            .when(Command::Increment { by: 3 })
            .then_expect_rejection("cannot exceed 10")
            .then_expect_rejection_code("limit");
    }
}
