//! The hash chain over the global order.
//!
//! Every event's hash covers its content and the hash of the event before it
//! in the global order, so editing, inserting, removing or reordering a row
//! breaks the chain from that position on (`kiln verify` walks it). Each field
//! is length-prefixed so that moving bytes between fields changes the hash.

use sha2::{Digest, Sha256};

/// The `previous hash` of the first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// The fields of an event that its hash covers.
pub struct HashInput<'a> {
    pub position: u64,
    pub stream_id: &'a str,
    pub version: u64,
    pub event_type: &'a str,
    pub schema: u32,
    pub data: &'a str,
    pub metadata: &'a str,
    pub recorded_at_us: i64,
}

/// The hash of an event given the hash of its predecessor.
pub fn event_hash(previous: &[u8; 32], event: &HashInput<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(previous);
    h.update(event.position.to_be_bytes());
    field(&mut h, event.stream_id.as_bytes());
    h.update(event.version.to_be_bytes());
    field(&mut h, event.event_type.as_bytes());
    h.update(event.schema.to_be_bytes());
    field(&mut h, event.data.as_bytes());
    field(&mut h, event.metadata.as_bytes());
    h.update(event.recorded_at_us.to_be_bytes());
    h.finalize().into()
}

/// The hash a committed event should carry, given its predecessor's: what
/// `kiln verify` and the store's tests recompute.
pub fn recorded_hash(previous: &[u8; 32], e: &crate::store::RecordedEvent) -> [u8; 32] {
    event_hash(
        previous,
        &HashInput {
            position: e.position,
            stream_id: &e.stream_id,
            version: e.version,
            event_type: &e.event_type,
            schema: e.schema,
            data: &e.data,
            metadata: &e.metadata,
            recorded_at_us: e.recorded_at_us,
        },
    )
}

fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(data: &'a str, stream_id: &'a str) -> HashInput<'a> {
        HashInput {
            position: 1,
            stream_id,
            version: 1,
            event_type: "Opened",
            schema: 1,
            data,
            metadata: "{}",
            recorded_at_us: 5,
        }
    }

    #[test]
    fn hash_depends_on_content_and_predecessor() {
        let a = event_hash(&GENESIS, &input("{}", "s-1"));
        assert_eq!(a, event_hash(&GENESIS, &input("{}", "s-1")));
        assert_ne!(a, event_hash(&GENESIS, &input("{ }", "s-1")));
        assert_ne!(a, event_hash(&[1; 32], &input("{}", "s-1")));
    }

    #[test]
    fn moving_bytes_between_fields_changes_the_hash() {
        let a = event_hash(&GENESIS, &input("x{}", "s-1"));
        let b = event_hash(&GENESIS, &input("{}", "s-1x"));
        assert_ne!(a, b);
    }
}
