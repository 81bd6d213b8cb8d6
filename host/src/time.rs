//! Time as Kiln writes it: one formatter for every timestamp shown or
//! recorded as text.

/// Microseconds since the Unix epoch as RFC 3339 in UTC with milliseconds,
/// e.g. `2026-11-22T10:00:00.123Z`.
pub fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_milliseconds() {
        assert_eq!(rfc3339(1_795_860_000_123_456), "2026-11-28T10:00:00.123Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    }
}
