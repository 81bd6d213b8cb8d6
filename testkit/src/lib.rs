//! Support for kiln's tests and benchmarks that needs nothing of kiln
//! itself: a PostgreSQL database made for one test (or one benchmark phase)
//! and dropped after it, on every path.
//!
//! Tests find their server through `KILN_TEST_DATABASE_URL` (a role that
//! may create databases; `source .ci/postgres.sh` starts a local server and
//! sets it). Without it a PostgreSQL test says so and passes, unless
//! `KILN_REQUIRE_POSTGRES=1` (CI), where it fails.
//!
//! This crate must not depend on `kiln`: it is a dev-dependency of `kiln`,
//! and a kiln type here would be a second, incompatible copy there.

mod scratch;

pub use scratch::ScratchDatabase;

/// The admin URL of the server tests create their databases on.
pub const DATABASE_URL_VAR: &str = "KILN_TEST_DATABASE_URL";
/// `1`: a PostgreSQL test without a server fails instead of being skipped.
pub const REQUIRE_POSTGRES_VAR: &str = "KILN_REQUIRE_POSTGRES";

/// The admin URL of the test server, or `None` (after saying that `test` is
/// skipped) when none is configured.
///
/// # Panics
/// When no server is configured and `KILN_REQUIRE_POSTGRES=1`.
pub fn test_server(test: &str) -> Option<String> {
    let url = std::env::var(DATABASE_URL_VAR).ok();
    let require = std::env::var(REQUIRE_POSTGRES_VAR).ok();
    match TestServer::from_settings(url, require.as_deref()) {
        TestServer::At(url) => Some(url),
        TestServer::Skip => {
            eprintln!(
                "skipped {test}: {DATABASE_URL_VAR} is not set \
                 (`source .ci/postgres.sh` starts a local server and sets it)"
            );
            None
        }
        TestServer::Missing => panic!(
            "{REQUIRE_POSTGRES_VAR}=1 but {DATABASE_URL_VAR} is not set \
             (`source .ci/postgres.sh` sets it)"
        ),
    }
}

/// What the two variables say about the test server.
#[derive(Debug, PartialEq, Eq)]
enum TestServer {
    At(String),
    /// None configured: PostgreSQL tests are skipped.
    Skip,
    /// None configured, but one is required.
    Missing,
}

impl TestServer {
    fn from_settings(url: Option<String>, require: Option<&str>) -> Self {
        match url {
            Some(url) if !url.is_empty() => TestServer::At(url),
            _ if require == Some("1") => TestServer::Missing,
            _ => TestServer::Skip,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TestServer;

    #[test]
    fn a_set_url_is_used_whether_or_not_a_server_is_required() {
        let url = || Some("postgres://u@h/d".to_string());
        for require in [None, Some("1"), Some("0")] {
            assert_eq!(
                TestServer::from_settings(url(), require),
                TestServer::At("postgres://u@h/d".into())
            );
        }
    }

    #[test]
    fn without_a_url_tests_skip_unless_a_server_is_required() {
        for url in [None, Some(String::new())] {
            assert_eq!(
                TestServer::from_settings(url.clone(), None),
                TestServer::Skip
            );
            assert_eq!(
                TestServer::from_settings(url.clone(), Some("0")),
                TestServer::Skip
            );
            assert_eq!(
                TestServer::from_settings(url, Some("1")),
                TestServer::Missing
            );
        }
    }
}
