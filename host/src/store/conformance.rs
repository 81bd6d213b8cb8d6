//! Behaviour every backend must have, written once against the store's
//! trait and run against each backend: every check of a role module runs
//! as `<role>::sqlite_backend::<check>` and `<role>::postgres_backend::<check>`.
//! Each test takes a fresh, empty database (`database.rs`): a temporary
//! SQLite file, or a PostgreSQL database created for it and dropped at its
//! end, whether it passes or fails.
//!
//! The PostgreSQL tests connect through `KILN_TEST_DATABASE_URL` (a role that
//! may create databases; `source .ci/postgres.sh` sets one up). Without it
//! they say so and pass, unless `KILN_REQUIRE_POSTGRES=1` (CI), where they
//! fail.

/// The same tests for each backend. `stores`: tests of one store on a fresh
/// database; `databases`: tests that open stores themselves; `clusters`:
/// tests of several hosts on one database, PostgreSQL only.
macro_rules! conformance {
    (
        stores: [$($store_test:ident),* $(,)?],
        databases: [$($db_test:ident),* $(,)?],
        clusters: [$($cluster_test:ident),* $(,)?] $(,)?
    ) => {
        mod sqlite_backend {
            use $crate::store::conformance::TestDb;

            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $store_test() {
                    let db = TestDb::sqlite();
                    let store = db.open().await;
                    super::$store_test(&*store).await;
                    store.close().await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $db_test() {
                    super::$db_test(::std::sync::Arc::new(TestDb::sqlite())).await;
                }
            )*
        }

        mod postgres_backend {
            use $crate::store::conformance::TestDb;

            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $store_test() {
                    let Some(db) = TestDb::postgres(concat!(module_path!(), "::", stringify!($store_test))).await else {
                        return;
                    };
                    let store = db.open().await;
                    super::$store_test(&*store).await;
                    store.close().await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $db_test() {
                    let Some(db) = TestDb::postgres(concat!(module_path!(), "::", stringify!($db_test))).await else {
                        return;
                    };
                    super::$db_test(::std::sync::Arc::new(db)).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $cluster_test() {
                    let Some(db) = TestDb::postgres(concat!(module_path!(), "::", stringify!($cluster_test))).await else {
                        return;
                    };
                    super::$cluster_test(::std::sync::Arc::new(db)).await;
                }
            )*
        }
    };
}

mod catalog;
mod database;
mod leases;
mod log;
mod sagas;
mod throughput;
mod views;

pub(crate) use database::TestDb;
use database::test_postgres_options;

use super::hash_chain;
use super::{
    AppendOutcome, AppendRequest, EventStore, ExpectedVersion, NewEvent, RecordedEvent, StreamQuery,
};

fn event(t: &str, data: &str) -> NewEvent {
    NewEvent {
        event_type: t.to_string(),
        schema: 1,
        data: data.to_string(),
        metadata: r#"{"correlation_id":"c"}"#.to_string(),
    }
}

fn append(stream: &str, expected: ExpectedVersion, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest {
        stream_id: stream.to_string(),
        expected,
        events,
        idempotency: None,
    }
}

fn committed(outcome: AppendOutcome) -> (u64, Vec<RecordedEvent>) {
    match outcome {
        AppendOutcome::Committed { version, events } => (version, events),
        AppendOutcome::AlreadyApplied(e) => panic!("unexpected idempotent replay {e:?}"),
    }
}

fn all(stream_id: &str) -> StreamQuery<'_> {
    StreamQuery {
        stream_id,
        from_version: 1,
        to_version: None,
        recorded_until_us: None,
        limit: 1000,
    }
}

/// Recompute the hash chain over the whole log.
pub(crate) async fn assert_chain_intact(store: &dyn EventStore) {
    let events = store.read_all(1, 100_000, None).await.unwrap();
    let mut previous = hash_chain::GENESIS;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.position, i as u64 + 1, "gap before {}", e.position);
        let expected = hash_chain::recorded_hash(&previous, e);
        assert_eq!(e.hash, expected, "hash of position {}", e.position);
        previous = e.hash;
    }
}
