//! The event types an event enum knows, read from what serde's derive
//! declares, so that a projection can skip the events it has no variant for
//! without confusing them with events whose data is broken.

use std::fmt;

use serde::de::value::StrDeserializer;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};

/// A tag no event has: the probe asks `T` to decode it, and `T`'s derived
/// code answers with the list of tags it knows.
const PROBE_TAG: &str = "\u{0}kiln-sdk: probe for the known variants";

/// The variant names (event types) of `T`, an enum tagged with
/// `#[serde(tag = "type", content = "data")]`, `#[serde(tag = "type")]` or
/// externally tagged; `None` when `T` accepts every type: a struct with a
/// `type` field, `serde_json::Value`, an untagged enum or an enum with a
/// `#[serde(other)]` variant.
pub(crate) fn variant_names<T: DeserializeOwned>() -> Option<&'static [&'static str]> {
    match T::deserialize(Probe) {
        Err(ProbeError(Some(variants))) => Some(variants),
        _ => None,
    }
}

/// The error the probe's deserializer reports: the expected variants when
/// `T` refused an unknown one, nothing otherwise.
#[derive(Debug)]
struct ProbeError(Option<&'static [&'static str]>);

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("kiln-sdk variant probe")
    }
}

impl std::error::Error for ProbeError {}

impl de::Error for ProbeError {
    fn custom<T: fmt::Display>(_message: T) -> Self {
        Self(None)
    }

    fn unknown_variant(_variant: &str, expected: &'static [&'static str]) -> Self {
        Self(Some(expected))
    }
}

/// A document `{"type": PROBE_TAG}`, or an externally tagged enum asked for
/// directly.
struct Probe;

impl<'de> de::Deserializer<'de> for Probe {
    type Error = ProbeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_map(ProbeMap { done: false })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, ProbeError> {
        Err(ProbeError(Some(variants)))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

/// The one entry of the probe document.
struct ProbeMap {
    done: bool,
}

impl<'de> MapAccess<'de> for ProbeMap {
    type Error = ProbeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ProbeError> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        let key: StrDeserializer<'_, ProbeError> = "type".into_deserializer();
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, ProbeError> {
        let value: StrDeserializer<'_, ProbeError> = PROBE_TAG.into_deserializer();
        seed.deserialize(value)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::Value;

    use super::*;

    #[derive(Deserialize)]
    #[serde(tag = "type", content = "data")]
    #[expect(dead_code, reason = "only the variant names matter")]
    enum Adjacent {
        Opened { owner: String },
        Closed {},
        Pinged,
        Renamed(String),
    }

    #[derive(Deserialize)]
    #[serde(tag = "type")]
    #[expect(dead_code, reason = "only the variant names matter")]
    enum Internal {
        A { x: u32 },
        B,
    }

    #[derive(Deserialize)]
    #[expect(dead_code, reason = "only the variant names matter")]
    enum External {
        X(u32),
        Y,
    }

    #[derive(Deserialize)]
    #[serde(tag = "type", content = "data")]
    enum WithOther {
        Known {},
        #[serde(other)]
        Other,
    }

    #[derive(Deserialize)]
    #[expect(dead_code, reason = "only the variant names matter")]
    struct AnyEvent {
        #[serde(rename = "type")]
        event_type: String,
        #[serde(default)]
        data: Value,
    }

    #[test]
    fn tagged_enums_list_their_variants() {
        assert_eq!(
            variant_names::<Adjacent>(),
            Some(&["Opened", "Closed", "Pinged", "Renamed"][..])
        );
        assert_eq!(variant_names::<Internal>(), Some(&["A", "B"][..]));
        assert_eq!(variant_names::<External>(), Some(&["X", "Y"][..]));
    }

    #[test]
    fn types_that_accept_every_event_list_nothing() {
        assert_eq!(variant_names::<WithOther>(), None);
        assert_eq!(variant_names::<AnyEvent>(), None);
        assert_eq!(variant_names::<Value>(), None);
        assert_eq!(variant_names::<String>(), None);
    }
}
