//! Parsing JSON that refuses a key given twice in one object, at any depth,
//! in the same pass that builds the value.
//!
//! serde_json keeps the last of two equal keys (`{"amount":1,"amount":2}`
//! reads as 2), and its authors prefer to keep it so. Two parsers that
//! disagree on which one counts are a known way to smuggle a value past a
//! check, so the API refuses such bodies. [`from_slice`] wraps serde_json's
//! deserializer: every object it reads (the body's own fields, and free
//! JSON such as a command's `data`) keeps the set of keys seen so far, and a
//! key already in it is an error naming it. Keys are compared after
//! unescaping (`"a"` and `"\u0061"` are the same key), and borrowed from the
//! input when they need no unescaping. The document is read once and not
//! copied.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{
    self, Deserialize, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

/// `T` from JSON text, refusing duplicate keys anywhere in it and anything
/// but whitespace after the value.
pub fn from_slice<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> serde_json::Result<T> {
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let value = T::deserialize(UniqueKeys(&mut json))?;
    json.end()?;
    Ok(value)
}

/// The keys an object has had so far: a list while it is short (most
/// objects are, and a list beats hashing them), a set past
/// [`FEW_KEYS_MAX`] (so a wide object costs O(n), not O(n²)).
enum Seen<'de> {
    Few(Vec<Cow<'de, str>>),
    Many(HashSet<Cow<'de, str>>),
}

const FEW_KEYS_MAX: usize = 16;

impl<'de> Seen<'de> {
    fn new() -> Self {
        Seen::Few(Vec::new())
    }

    fn contains(&self, key: &str) -> bool {
        match self {
            Seen::Few(keys) => keys.iter().any(|k| k == key),
            Seen::Many(set) => set.contains(key),
        }
    }

    /// Record `key`, which is not in yet.
    fn add(&mut self, key: Cow<'de, str>) {
        match self {
            Seen::Few(keys) if keys.len() < FEW_KEYS_MAX => keys.push(key),
            Seen::Few(keys) => {
                let mut set: HashSet<_> = keys.drain(..).collect();
                set.insert(key);
                *self = Seen::Many(set);
            }
            Seen::Many(set) => {
                set.insert(key);
            }
        }
    }
}

/// A deserializer whose objects refuse duplicate keys.
struct UniqueKeys<D>(D);

/// A visitor whose objects (and those nested in what it visits) refuse
/// duplicate keys.
struct Checked<V>(V);

/// A seed that deserializes through [`UniqueKeys`].
struct CheckedSeed<S>(S);

struct CheckedSeq<A>(A);

struct CheckedMap<'de, A> {
    inner: A,
    seen: Seen<'de>,
}

struct CheckedEnum<A>(A);

struct CheckedVariant<A>(A);

/// The seed of one key of an object: records the key in `seen`.
struct KeySeed<'a, 'de, S> {
    inner: S,
    seen: &'a mut Seen<'de>,
}

struct KeyDeserializer<'a, 'de, D> {
    inner: D,
    seen: &'a mut Seen<'de>,
}

struct KeyVisitor<'a, 'de, V> {
    inner: V,
    seen: &'a mut Seen<'de>,
}

/// Every `deserialize_*` of a wrapping deserializer: the same call on the
/// wrapped one, with the visitor wrapped.
macro_rules! forward_deserializer {
    (|$this:ident, $visitor:ident| ($inner:expr, $wrapped:expr)) => {
        forward_deserializer!(@ |$this, $visitor| ($inner, $wrapped);
            deserialize_any() deserialize_bool() deserialize_i8() deserialize_i16()
            deserialize_i32() deserialize_i64() deserialize_i128() deserialize_u8()
            deserialize_u16() deserialize_u32() deserialize_u64() deserialize_u128()
            deserialize_f32() deserialize_f64() deserialize_char() deserialize_str()
            deserialize_string() deserialize_bytes() deserialize_byte_buf()
            deserialize_option() deserialize_unit() deserialize_seq() deserialize_map()
            deserialize_identifier() deserialize_ignored_any()
            deserialize_unit_struct(name: &'static str)
            deserialize_newtype_struct(name: &'static str)
            deserialize_tuple(len: usize)
            deserialize_tuple_struct(name: &'static str, len: usize)
            deserialize_struct(name: &'static str, fields: &'static [&'static str])
            deserialize_enum(name: &'static str, variants: &'static [&'static str]));
    };
    (@ |$this:ident, $visitor:ident| ($inner:expr, $wrapped:expr);
        $($method:ident($($arg:ident: $ty:ty),*))*) => {
        $(
            fn $method<V: Visitor<'de>>(
                self,
                $($arg: $ty,)*
                $visitor: V,
            ) -> Result<V::Value, Self::Error> {
                let $this = self;
                $inner.$method($($arg,)* $wrapped)
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for UniqueKeys<D> {
    type Error = D::Error;

    forward_deserializer!(|this, visitor| (this.0, Checked(visitor)));

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

impl<'a, 'de, D: Deserializer<'de>> Deserializer<'de> for KeyDeserializer<'a, 'de, D> {
    type Error = D::Error;

    forward_deserializer!(|this, visitor| (
        this.inner,
        KeyVisitor {
            inner: visitor,
            seen: this.seen,
        }
    ));

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// The `visit_*` of plain values: the same call on the wrapped visitor.
macro_rules! forward_plain_visits {
    ($($method:ident($ty:ty))*) => {
        $(
            fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
                self.0.$method(v)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Checked<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.expecting(f)
    }

    forward_plain_visits!(
        visit_bool(bool) visit_i8(i8) visit_i16(i16) visit_i32(i32) visit_i64(i64)
        visit_i128(i128) visit_u8(u8) visit_u16(u16) visit_u32(u32) visit_u64(u64)
        visit_u128(u128) visit_f32(f32) visit_f64(f64) visit_char(char) visit_str(&str)
        visit_borrowed_str(&'de str) visit_string(String) visit_bytes(&[u8])
        visit_borrowed_bytes(&'de [u8]) visit_byte_buf(Vec<u8>)
    );

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.0.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.0.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.visit_some(UniqueKeys(d))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.visit_newtype_struct(UniqueKeys(d))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.0.visit_seq(CheckedSeq(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.0.visit_map(CheckedMap {
            inner: map,
            seen: Seen::new(),
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.0.visit_enum(CheckedEnum(data))
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for CheckedSeed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(UniqueKeys(d))
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for CheckedSeq<A> {
    type Error = A::Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, A::Error> {
        self.0.next_element_seed(CheckedSeed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for CheckedMap<'de, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.inner.next_key_seed(KeySeed {
            inner: seed,
            seen: &mut self.seen,
        })
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        self.inner.next_value_seed(CheckedSeed(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for CheckedEnum<A> {
    type Error = A::Error;
    type Variant = CheckedVariant<A::Variant>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), A::Error> {
        let (value, variant) = self.0.variant_seed(seed)?;
        Ok((value, CheckedVariant(variant)))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for CheckedVariant<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.0.unit_variant()
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, A::Error> {
        self.0.newtype_variant_seed(CheckedSeed(seed))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.0.tuple_variant(len, Checked(visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.0.struct_variant(fields, Checked(visitor))
    }
}

impl<'a, 'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for KeySeed<'a, 'de, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(KeyDeserializer {
            inner: d,
            seen: self.seen,
        })
    }
}

/// Record `key`, or refuse it if the object already had it.
fn record<'de, E: de::Error>(seen: &mut Seen<'de>, key: Cow<'de, str>) -> Result<(), E> {
    if seen.contains(&key) {
        return Err(E::custom(format_args!("duplicate key {:?}", &*key)));
    }
    seen.add(key);
    Ok(())
}

/// The `visit_*` of a key read as a value other than a string (serde_json
/// reads `{"1": …}` as a number for a map keyed by numbers): recorded as
/// text, then the same call on the wrapped visitor.
macro_rules! record_plain_keys {
    ($($method:ident($ty:ty))*) => {
        $(
            fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
                record(self.seen, Cow::Owned(v.to_string()))?;
                self.inner.$method(v)
            }
        )*
    };
}

impl<'a, 'de, V: Visitor<'de>> Visitor<'de> for KeyVisitor<'a, 'de, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.inner.expecting(f)
    }

    record_plain_keys!(
        visit_bool(bool) visit_i8(i8) visit_i16(i16) visit_i32(i32) visit_i64(i64)
        visit_i128(i128) visit_u8(u8) visit_u16(u16) visit_u32(u32) visit_u64(u64)
        visit_u128(u128) visit_f32(f32) visit_f64(f64) visit_char(char)
    );

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        record(self.seen, Cow::Borrowed(v))?;
        self.inner.visit_borrowed_str(v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        record(self.seen, Cow::Owned(v.to_owned()))?;
        self.inner.visit_str(v)
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        record(self.seen, Cow::Owned(v.clone()))?;
        self.inner.visit_string(v)
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
        record(self.seen, String::from_utf8_lossy(v))?;
        self.inner.visit_borrowed_bytes(v)
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        record(
            self.seen,
            Cow::Owned(String::from_utf8_lossy(v).into_owned()),
        )?;
        self.inner.visit_bytes(v)
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
        record(
            self.seen,
            Cow::Owned(String::from_utf8_lossy(&v).into_owned()),
        )?;
        self.inner.visit_byte_buf(v)
    }

    // A key is a string: the rest cannot be one, and forwards unrecorded.
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner.visit_some(KeyDeserializer {
            inner: d,
            seen: self.seen,
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner.visit_newtype_struct(KeyDeserializer {
            inner: d,
            seen: self.seen,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_seq(CheckedSeq(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_map(CheckedMap {
            inner: map,
            seen: Seen::new(),
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_enum(CheckedEnum(data))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fmt;

    use serde::Deserialize;
    use serde_json::{Value, json};

    use super::from_slice;

    fn error<'de, T: Deserialize<'de> + fmt::Debug>(text: &'de str) -> String {
        match from_slice::<T>(text.as_bytes()) {
            Ok(v) => panic!("{text} was accepted as {v:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        for (text, key) in [
            (r#"{"a":1,"a":2}"#, "a"),
            (r#"{"data":{"amount":1,"amount":2}}"#, "amount"),
            (r#"[{"x":[{"k":1,"k":1}]}]"#, "k"),
            (r#"{"a":1,"\u0061":2}"#, "a"),
            (r#"{"é":1,"\u00e9":2}"#, "é"),
        ] {
            let message = error::<Value>(text);
            assert!(
                message.starts_with(&format!("duplicate key {key:?}")),
                "{text}: {message}"
            );
            assert!(message.contains("line 1 column"), "{message}");
        }
    }

    #[test]
    fn wide_objects_are_checked_past_the_short_list() {
        for width in [super::FEW_KEYS_MAX, super::FEW_KEYS_MAX + 1, 1000] {
            let keys: Vec<String> = (0..width).map(|i| format!("\"k{i}\":{i}")).collect();
            let text = format!("{{{}}}", keys.join(","));
            let value: Value = from_slice(text.as_bytes()).expect("distinct keys");
            assert_eq!(value.as_object().map(|m| m.len()), Some(width));
            for again in [0, width - 1] {
                let text = format!("{{{},\"k{again}\":0}}", keys.join(","));
                let message = error::<Value>(&text);
                assert!(
                    message.contains(&format!("duplicate key \"k{again}\"")),
                    "{message}"
                );
            }
        }
    }

    #[test]
    fn equal_keys_in_different_objects_are_not_duplicates() {
        let text = r#"{"a":{"a":1,"b":[{"a":2},{"a":3}]},"b":{"a":4}}"#;
        let value: Value = from_slice(text.as_bytes()).expect("accepted");
        assert_eq!(value, serde_json::from_str::<Value>(text).expect("json"));
        assert_eq!(value["a"]["b"][1]["a"], 3);
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code, reason = "read only through Debug")]
    struct Body {
        #[serde(rename = "type")]
        kind: String,
        data: Option<Value>,
        list: Option<Vec<BTreeMap<u32, bool>>>,
        tagged: Option<Tagged>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code, reason = "read only through Debug")]
    enum Tagged {
        Pair { left: Value, right: Value },
    }

    #[test]
    fn typed_bodies_are_checked_through_fields_maps_and_enums() {
        let ok: Body = from_slice(
            br#"{"type":"T","data":{"x":[1,{"y":null}]},"list":[{"1":true,"2":false}],"tagged":{"Pair":{"left":1,"right":{"z":1}}}}"#,
        )
        .expect("accepted");
        assert_eq!(ok.kind, "T");
        assert!(error::<Body>(r#"{"type":"T","type":"U"}"#).contains("duplicate key \"type\""));
        assert!(
            error::<Body>(r#"{"type":"T","list":[{"1":true,"1":false}]}"#)
                .contains("duplicate key \"1\"")
        );
        assert!(
            error::<Body>(r#"{"type":"T","tagged":{"Pair":{"left":{"q":1,"q":2},"right":1}}}"#)
                .contains("duplicate key \"q\"")
        );
    }

    #[test]
    fn what_serde_json_refuses_is_still_refused() {
        for text in [r#"{"a":1} x"#, r#"{"a":1"#, "", r#"{"a":}"#] {
            let mine = from_slice::<Value>(text.as_bytes()).map_err(|e| e.to_string());
            let theirs = serde_json::from_str::<Value>(text).map_err(|e| e.to_string());
            assert!(mine.is_err(), "{text}");
            assert_eq!(mine, theirs, "{text}");
        }
        let deep = json!({"a": [1, 2.5, -3, "s", true, null, {"b": {}}]});
        let text = deep.to_string();
        assert_eq!(from_slice::<Value>(text.as_bytes()).expect("ok"), deep);
    }
}
