//! Executing one outbox command through the command pipeline, and what its
//! result means for the saga.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::command::{CommandError, CommandRequest, Pipeline};
use crate::runtime::bindings::{WitFailure, WitRejection};
use crate::store::{ExpectedVersion, OutboxCommand, Position, SAGA_IDEMPOTENCY_PREFIX};

/// How a dispatched command ended.
#[derive(Debug)]
pub enum Outcome {
    /// Applied (or applied before: an idempotent replay).
    Applied {
        /// The last event it produced, or the head when it produced none.
        position: Position,
        version: u64,
        events: usize,
        replayed: bool,
    },
    /// The aggregate refused it: the saga is told (`on-failure`).
    Refused(WitFailure),
    /// It may work later (conflict, timeout, store or plugin unavailable,
    /// a trap, an aggregate not deployed yet): retried with backoff.
    Transient { code: &'static str, message: String },
}

/// The idempotency key of a saga command, fixed when it is decided: one per
/// saga, instance and step, so that dispatching it again after a crash has
/// exactly one effect. The time it was decided comes before the instance
/// (zero-padded, so keys sort by it): the keys written at the same time are
/// then neighbours in the store's key index, and a batch of commands of
/// unrelated instances updates a few of its pages rather than one each.
/// Commands decided before this scheme keep the key they were stored with
/// (`{prefix}{saga}/{instance}/{step}`, set by the migrations).
pub fn idempotency_key(saga: &str, instance: &str, step: u64, decided_at_us: i64) -> String {
    format!("{SAGA_IDEMPOTENCY_PREFIX}{saga}/{decided_at_us:020}/{instance}/{step}")
}

/// Run `command` through the pipeline.
pub async fn execute(pipeline: &Pipeline, command: &OutboxCommand) -> Outcome {
    let data = serde_json::from_str(&command.data).unwrap_or(Value::Null);
    let metadata = match serde_json::from_str::<Value>(&command.metadata) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    let request = CommandRequest {
        aggregate: command.aggregate.clone(),
        id: command.aggregate_id.clone(),
        command_type: command.command_type.clone(),
        data,
        metadata,
        expected: ExpectedVersion::Any,
        idempotency_key: Some(command.idempotency_key.clone()),
    };
    match pipeline.execute(request).await {
        Ok(outcome) => Outcome::Applied {
            position: outcome.position,
            version: outcome.version,
            events: outcome.events.len(),
            replayed: outcome.replayed,
        },
        Err(CommandError::Rejected { code, message }) => {
            Outcome::Refused(WitFailure::Rejected(WitRejection { code, message }))
        }
        Err(CommandError::InvalidCommand(message)) | Err(CommandError::InvalidRequest(message)) => {
            Outcome::Refused(WitFailure::Invalid(message))
        }
        Err(e) => Outcome::Transient {
            code: e.code(),
            message: e.to_string(),
        },
    }
}

/// The delay before attempt `attempts + 1`: the base doubled per attempt,
/// capped, with up to a quarter of jitter either way so that commands that
/// failed together do not retry together.
pub fn backoff(attempts: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    let capped = exp.min(max);
    let quarter = capped.as_millis() as u64 / 4;
    if quarter == 0 {
        return capped;
    }
    let jitter = jitter_seed() % (2 * quarter + 1);
    Duration::from_millis(capped.as_millis() as u64 - quarter + jitter)
}

fn jitter_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::UNIX_EPOCH
            .elapsed()
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_and_is_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_millis(1000);
        for _ in 0..50 {
            let first = backoff(1, base, max).as_millis();
            assert!((75..=125).contains(&first), "{first}");
            let third = backoff(3, base, max).as_millis();
            assert!((300..=500).contains(&third), "{third}");
            let late = backoff(30, base, max).as_millis();
            assert!((750..=1250).contains(&late), "{late}");
        }
    }

    #[test]
    fn keys_name_saga_instance_and_step_and_sort_by_decision_time() {
        assert_eq!(
            idempotency_key("transfer_saga", "t1", 3, 1_700_000_000_000_000),
            "kiln-saga/transfer_saga/00001700000000000000/t1/3"
        );
        // Later decisions sort after earlier ones, whatever the instance.
        let early = idempotency_key("s", "zz", 1, 999_999);
        let late = idempotency_key("s", "aa", 1, 1_000_000);
        assert!(early < late);
        assert_ne!(
            idempotency_key("s", "a", 1, 5),
            idempotency_key("s", "a", 2, 5)
        );
    }
}
