//! What a saga runner records in a commit besides instance states: history
//! entries and outbox removals.

use serde_json::{Value, json};

use crate::runtime::bindings::WitFailure;
use crate::store::{SagaCommit, SagaHistoryEntry, now_us};

/// A history entry of `instance`, stamped now.
pub(super) fn history(instance: &str, entry: Value) -> SagaHistoryEntry {
    SagaHistoryEntry {
        instance: instance.to_string(),
        at_us: now_us(),
        entry,
    }
}

/// A refusal as a history entry records it.
pub(super) fn failure_json(failure: &WitFailure) -> Value {
    match failure {
        WitFailure::Rejected(r) => {
            json!({"code": "rejected", "reason": r.code, "message": r.message})
        }
        WitFailure::Invalid(m) => json!({"code": "invalid_command", "message": m}),
    }
}

/// Remove an outbox command in `commit`, and any write of it the same
/// commit holds (a retry's new attempt count), so that the row cannot come
/// back whatever order a backend applies them in.
pub(super) fn drop_from_outbox(commit: &mut SagaCommit, instance: &str, step: u64) {
    commit
        .outbox_put
        .retain(|c| !(c.instance == instance && c.step == step));
    commit.outbox_delete.push((instance.to_string(), step));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::OutboxCommand;

    #[test]
    fn a_dropped_command_is_not_written_back_by_the_same_commit() {
        let command = OutboxCommand {
            saga: "s".into(),
            instance: "i".into(),
            step: 2,
            aggregate: "bank_account".into(),
            aggregate_id: "a".into(),
            command_type: "Deposit".into(),
            data: "{}".into(),
            metadata: "{}".into(),
            compensating: false,
            attempts: 1,
            errors: vec![],
            created_at_us: 0,
            idempotency_key: "k".into(),
        };
        let mut other = command.clone();
        other.step = 3;
        let mut commit = SagaCommit {
            outbox_put: vec![command, other],
            ..SagaCommit::default()
        };
        drop_from_outbox(&mut commit, "i", 2);
        assert_eq!(
            commit.outbox_put.iter().map(|c| c.step).collect::<Vec<_>>(),
            vec![3]
        );
        assert_eq!(commit.outbox_delete, vec![("i".to_string(), 2)]);
    }
}
