//! What a command request must be, and what it becomes: ids and keys
//! checked, event types checked, the events' metadata, the request's
//! digest, the error of a refusal.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::error::CommandError;
use crate::runtime::bindings::WitFailure;
use crate::store::ExpectedVersion;

/// A command as the API received it.
#[derive(Debug, Clone)]
pub struct CommandRequest {
    pub aggregate: String,
    pub id: String,
    pub command_type: String,
    pub data: Value,
    pub metadata: Map<String, Value>,
    pub expected: ExpectedVersion,
    pub idempotency_key: Option<String>,
}

/// Longest aggregate id accepted.
pub const ID_CHARS_MAX: usize = 200;
/// Longest idempotency key accepted.
pub const IDEMPOTENCY_KEY_CHARS_MAX: usize = 200;

/// Longest event type a plugin may emit, in bytes.
pub const EVENT_TYPE_BYTES_MAX: usize = 256;

/// An event type is a name: not empty, at most [`EVENT_TYPE_BYTES_MAX`]
/// bytes, no control characters (which PostgreSQL cannot store as NUL, and
/// which no reader of the log expects).
pub(super) fn check_event_type(event_type: &str) -> Result<(), String> {
    if event_type.is_empty() {
        return Err("an event has an empty type".into());
    }
    if event_type.len() > EVENT_TYPE_BYTES_MAX {
        return Err(format!(
            "an event type is {} bytes long; the limit is {EVENT_TYPE_BYTES_MAX}",
            event_type.len()
        ));
    }
    if let Some(c) = event_type.chars().find(|c| c.is_control()) {
        return Err(format!(
            "event type {:?} contains the control character {:?}",
            event_type.escape_debug().to_string(),
            c
        ));
    }
    Ok(())
}

/// The error of a command the plugin refused.
pub(super) fn refusal(failure: WitFailure) -> CommandError {
    match failure {
        WitFailure::Rejected(r) => CommandError::Rejected {
            code: r.code,
            message: r.message,
        },
        WitFailure::Invalid(message) => CommandError::InvalidCommand(message),
    }
}

/// Metadata keys only the host writes: the saga manager's marks on the
/// commands it dispatches, by which a saga recognises the events of its own
/// commands. A client's copy would let it move saga instances.
pub const HOST_METADATA_KEYS: [&str; 3] = ["saga", "saga_instance", "saga_step"];

/// A client's metadata may not carry the keys the host gives meaning to.
/// (`correlation_id` and `causation_id` stay the client's to set: they
/// join a command to a flow the client follows, and give a saga nothing.)
pub fn check_client_metadata(fields: &Map<String, Value>) -> Result<(), CommandError> {
    match HOST_METADATA_KEYS.iter().find(|k| fields.contains_key(**k)) {
        Some(key) => Err(CommandError::InvalidRequest(format!(
            "metadata key {key:?} is reserved: only the host's saga manager sets it"
        ))),
        None => Ok(()),
    }
}

/// Metadata of the command's events: the caller's fields plus correlation
/// and causation ids (the caller's, or the command's own id).
pub(super) fn event_metadata(mut fields: Map<String, Value>, command_id: &str) -> String {
    for key in ["correlation_id", "causation_id"] {
        if !fields.get(key).is_some_and(Value::is_string) {
            fields.insert(key.to_string(), Value::String(command_id.to_string()));
        }
    }
    Value::Object(fields).to_string()
}

/// A digest of everything that makes two requests the same command.
pub(super) fn request_hash(r: &CommandRequest) -> String {
    let canonical = serde_json::json!({
        "aggregate": r.aggregate,
        "id": r.id,
        "type": r.command_type,
        "data": r.data,
        "metadata": r.metadata,
        "expected_version": r.expected.to_string(),
    });
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

pub(super) fn validate_id(id: &str) -> Result<(), CommandError> {
    if id.is_empty() || id.chars().count() > ID_CHARS_MAX || id.chars().any(char::is_control) {
        return Err(CommandError::InvalidRequest(format!(
            "invalid aggregate id {id:?}: use 1 to {ID_CHARS_MAX} characters, no control characters"
        )));
    }
    Ok(())
}

pub(super) fn validate_idempotency_key(key: &str) -> Result<(), CommandError> {
    if key.is_empty() || key.len() > IDEMPOTENCY_KEY_CHARS_MAX {
        return Err(CommandError::InvalidRequest(format!(
            "Idempotency-Key must have 1 to {IDEMPOTENCY_KEY_CHARS_MAX} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_cannot_write_the_saga_managers_metadata() {
        let mut fields = Map::new();
        fields.insert("user".into(), "ann".into());
        fields.insert("correlation_id".into(), "flow-1".into());
        assert!(check_client_metadata(&fields).is_ok());
        for key in HOST_METADATA_KEYS {
            let mut forged = fields.clone();
            forged.insert(key.into(), "transfer_saga".into());
            let err = check_client_metadata(&forged).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn event_types_are_names_without_control_characters() {
        assert!(check_event_type("Deposited").is_ok());
        assert!(check_event_type("Überweisung.v2 ✓").is_ok());
        assert!(check_event_type(&"x".repeat(EVENT_TYPE_BYTES_MAX)).is_ok());
        for bad in ["", "A\0B", "line\nbreak", "tab\there", "\u{7f}del"] {
            assert!(check_event_type(bad).is_err(), "{bad:?} accepted");
        }
        let long = check_event_type(&"x".repeat(EVENT_TYPE_BYTES_MAX + 1)).unwrap_err();
        assert!(long.contains("limit"), "{long}");
        let nul = check_event_type("A\0B").unwrap_err();
        assert!(nul.contains("control character"), "{nul}");
    }

    #[test]
    fn metadata_gets_correlation_and_causation() {
        let mut fields = Map::new();
        fields.insert("user".into(), "ann".into());
        let m: Value = serde_json::from_str(&event_metadata(fields, "c1")).unwrap_or_default();
        assert_eq!(m["user"], "ann");
        assert_eq!(m["correlation_id"], "c1");
        assert_eq!(m["causation_id"], "c1");
        let mut fields = Map::new();
        fields.insert("correlation_id".into(), "flow-7".into());
        let m: Value = serde_json::from_str(&event_metadata(fields, "c2")).unwrap_or_default();
        assert_eq!(m["correlation_id"], "flow-7");
        assert_eq!(m["causation_id"], "c2");
    }

    #[test]
    fn request_hash_tells_bodies_apart() {
        let r = CommandRequest {
            aggregate: "a".into(),
            id: "1".into(),
            command_type: "Deposit".into(),
            data: serde_json::json!({"amount": 5}),
            metadata: Map::new(),
            expected: ExpectedVersion::Any,
            idempotency_key: Some("k".into()),
        };
        let mut other = r.clone();
        other.data = serde_json::json!({"amount": 6});
        assert_eq!(request_hash(&r), request_hash(&r.clone()));
        assert_ne!(request_hash(&r), request_hash(&other));
    }

    #[test]
    fn ids_are_validated() {
        assert!(validate_id("42").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("a\nb").is_err());
        assert!(validate_id(&"x".repeat(ID_CHARS_MAX + 1)).is_err());
    }
}
