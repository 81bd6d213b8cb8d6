//! Integers a client names that the store keeps as SQL integers (positions,
//! versions, dead-letter ids): at most `i64::MAX`. A larger one is a bad
//! parameter (`400 invalid_request`), as the document says
//! (`maximum: 9223372036854775807`), rather than an empty page.

use serde::de::{Deserialize, Deserializer, Error};

/// The largest position, version or id there can be.
pub const STORED_INT_MAX: u64 = i64::MAX.unsigned_abs();

/// `#[serde(default, deserialize_with = "stored_int")]` for an
/// `Option<u64>` query parameter.
pub fn stored_int<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    match Option::<u64>::deserialize(deserializer)? {
        Some(n) if n > STORED_INT_MAX => Err(D::Error::custom(format_args!(
            "{n} is over {STORED_INT_MAX}, the largest position, version or id"
        ))),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize)]
    struct Q {
        #[serde(default, deserialize_with = "stored_int")]
        at: Option<u64>,
    }

    fn parse(query: &str) -> Result<Option<u64>, String> {
        let uri: axum::http::Uri = format!("/x?{query}").parse().expect("uri");
        axum::extract::Query::<Q>::try_from_uri(&uri)
            .map(|q| q.0.at)
            .map_err(|e| e.body_text())
    }

    #[test]
    fn stored_ints_stop_at_i64_max() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("at=0"), Ok(Some(0)));
        assert_eq!(parse("at=9223372036854775807"), Ok(Some(STORED_INT_MAX)));
        let over = parse("at=9223372036854775808").expect_err("over i64::MAX");
        assert!(over.contains("largest position"), "{over}");
        assert!(parse("at=-1").is_err());
    }
}
