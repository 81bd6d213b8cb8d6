//! The event log: appends and their expected versions, reads and their
//! filters, snapshots, idempotency keys, the hash chain across reopening, and
//! commits seen live by other hosts (PostgreSQL).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::{TestDb, all, append, assert_chain_intact, committed, event, test_postgres_options};
use crate::store::hash_chain::{self, HashInput};
use crate::store::postgres::{PostgresOptions, PostgresStore};
use crate::store::{
    AppendOutcome, EventLog, EventStore, ExpectedVersion, IdempotencyClaim, RecordedEvent,
    Snapshot, StoreError, StreamQuery, now_us,
};

conformance! {
    stores: [
        append_and_read_back,
        expected_versions,
        idempotency_keys,
        filters_by_type_version_and_time,
        snapshots_are_keyed_by_plugin_hash,
        the_head_moves_before_an_append_answers,
    ],
    databases: [
        concurrent_appends_are_ordered_without_gaps,
        committed_events_survive_reopening_and_the_chain_continues,
        an_edited_row_breaks_the_chain,
        tailing_reader_sees_every_event_once_in_order,
        hosts_share_versions_and_keys,
    ],
    clusters: [
        other_hosts_commits_wake_this_one,
        other_hosts_versions_come_with_their_notifications,
        lost_connections_are_reopened,
    ],
}

async fn append_and_read_back(store: &dyn EventStore) {
    let (version, events) = committed(
        store
            .append(append(
                "acc-1",
                ExpectedVersion::NoStream,
                vec![
                    event("Opened", r#"{"owner":"ann"}"#),
                    event("Deposited", r#"{"amount":5}"#),
                ],
            ))
            .await
            .unwrap(),
    );
    assert_eq!(version, 2);
    assert_eq!(
        events.iter().map(|e| e.position).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(events.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2]);
    let read = store.read_stream(all("acc-1")).await.unwrap();
    assert_eq!(read, events, "read back exactly what was committed");
    assert_eq!(read[0].data, r#"{"owner":"ann"}"#);
    assert_eq!(store.stream_version("acc-1").await.unwrap(), 2);
    assert_eq!(store.stream_version("acc-2").await.unwrap(), 0);
    assert_eq!(store.head_position().await.unwrap(), 2);
    assert_eq!(*store.subscribe_head().borrow(), 2);
    assert_eq!(
        store.read_positions(2, 1).await.unwrap(),
        events[1..].to_vec()
    );
    // An empty append commits nothing and reports the version.
    let (version, events) = committed(
        store
            .append(append("acc-1", ExpectedVersion::Exact(2), vec![]))
            .await
            .unwrap(),
    );
    assert_eq!((version, events.len()), (2, 0));
    assert_chain_intact(store).await;
}

/// Read-your-writes for everything that follows the head watch (`/metrics`,
/// `/readyz`, live feeds): once an append has answered, the watch shows it.
async fn the_head_moves_before_an_append_answers(store: &dyn EventStore) {
    let head = store.subscribe_head();
    for n in 1..=200u64 {
        let (_, events) = committed(
            store
                .append(append(
                    &format!("head-{n}"),
                    ExpectedVersion::NoStream,
                    vec![event("Opened", "{}")],
                ))
                .await
                .unwrap(),
        );
        assert_eq!(*head.borrow(), events[0].position, "append {n}");
    }
}

async fn expected_versions(store: &dyn EventStore) {
    let one = || vec![event("E", "{}")];
    store
        .append(append("s-1", ExpectedVersion::NoStream, one()))
        .await
        .unwrap();
    let err = store
        .append(append("s-1", ExpectedVersion::NoStream, one()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::WrongExpectedVersion {
                actual: 1,
                expected: ExpectedVersion::NoStream,
                ..
            }
        ),
        "{err:?}"
    );
    let err = store
        .append(append("s-1", ExpectedVersion::Exact(3), one()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::WrongExpectedVersion { actual: 1, .. }),
        "{err:?}"
    );
    store
        .append(append("s-1", ExpectedVersion::Exact(1), one()))
        .await
        .unwrap();
    store
        .append(append("s-1", ExpectedVersion::Any, one()))
        .await
        .unwrap();
    assert_eq!(store.stream_version("s-1").await.unwrap(), 3);
    // A refused append wrote nothing.
    assert_eq!(store.head_position().await.unwrap(), 3);
}

async fn idempotency_keys(store: &dyn EventStore) {
    let mut request = append(
        "s-1",
        ExpectedVersion::Any,
        vec![event("A", "{}"), event("B", "{}")],
    );
    request.idempotency = Some(IdempotencyClaim {
        key: "k1".into(),
        request_hash: "h1".into(),
        window_start_us: 0,
    });
    let (_, first) = committed(store.append(request.clone()).await.unwrap());
    match store.append(request.clone()).await.unwrap() {
        AppendOutcome::AlreadyApplied(entry) => {
            assert_eq!(entry.first_position, Some(first[0].position));
            assert_eq!(entry.event_count, 2);
            assert_eq!(entry.version, 2);
            assert_eq!(entry.request_hash, "h1");
        }
        other => panic!("appended twice: {other:?}"),
    }
    assert_eq!(store.head_position().await.unwrap(), 2);
    // Once the window has passed, the key is free again.
    let mut later = request.clone();
    later.idempotency.as_mut().unwrap().window_start_us = now_us() + 1_000_000;
    later.idempotency.as_mut().unwrap().request_hash = "h2".into();
    let (_, again) = committed(store.append(later).await.unwrap());
    assert_eq!(again[0].position, 3);
    let found = store.find_idempotency("k1", 0).await.unwrap().unwrap();
    assert_eq!(
        (found.request_hash.as_str(), found.first_position),
        ("h2", Some(3))
    );
    let found = store.find_idempotency("k1", 0).await.unwrap().unwrap();
    assert_eq!(found.stream_id, "s-1");
    assert!(
        store
            .find_idempotency("k1", now_us() + 1_000_000)
            .await
            .unwrap()
            .is_none(),
        "outside the window"
    );
    assert_eq!(
        store.purge_idempotency(now_us() + 1_000_000).await.unwrap(),
        1
    );
    assert!(store.find_idempotency("k1", 0).await.unwrap().is_none());
}

async fn concurrent_appends_are_ordered_without_gaps(db: Arc<TestDb>) {
    let store = db.open().await;
    const WRITERS: usize = 32;
    const APPENDS: usize = 20;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..APPENDS {
                let expected = if i == 0 {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exact(i as u64)
                };
                store
                    .append(append(
                        &format!("w-{w}"),
                        expected,
                        vec![event("E", &format!(r#"{{"i":{i}}}"#))],
                    ))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        store.head_position().await.unwrap(),
        (WRITERS * APPENDS) as u64
    );
    for w in 0..WRITERS {
        let events = store.read_stream(all(&format!("w-{w}"))).await.unwrap();
        let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
        assert_eq!(versions, (1..=APPENDS as u64).collect::<Vec<_>>());
        assert!(events.windows(2).all(|p| p[0].position < p[1].position));
    }
    let log = store.read_all(1, 10_000, None).await.unwrap();
    assert!(
        log.windows(2)
            .all(|p| p[0].recorded_at_us <= p[1].recorded_at_us),
        "recorded_at follows positions"
    );
    assert_chain_intact(&*store).await;
    store.close().await;
}

async fn filters_by_type_version_and_time(store: &dyn EventStore) {
    store
        .append(append(
            "s-1",
            ExpectedVersion::Any,
            vec![event("A", "{}"), event("B", "{}")],
        ))
        .await
        .unwrap();
    let cut = store.read_stream(all("s-1")).await.unwrap()[1].recorded_at_us;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    store
        .append(append("s-1", ExpectedVersion::Any, vec![event("A", "{}")]))
        .await
        .unwrap();
    let only_a = store
        .read_all(1, 100, Some(&["A".to_string()]))
        .await
        .unwrap();
    assert_eq!(
        only_a.iter().map(|e| e.position).collect::<Vec<_>>(),
        [1, 3]
    );
    let until_2 = store
        .read_stream(StreamQuery {
            to_version: Some(2),
            ..all("s-1")
        })
        .await
        .unwrap();
    assert_eq!(until_2.len(), 2);
    let until_cut = store
        .read_stream(StreamQuery {
            recorded_until_us: Some(cut),
            ..all("s-1")
        })
        .await
        .unwrap();
    assert_eq!(until_cut.len(), 2);
    let page = store
        .read_stream(StreamQuery {
            from_version: 2,
            limit: 1,
            ..all("s-1")
        })
        .await
        .unwrap();
    assert_eq!(page.iter().map(|e| e.version).collect::<Vec<_>>(), [2]);
}

async fn snapshots_are_keyed_by_plugin_hash(store: &dyn EventStore) {
    let snap = |hash: &str, version: u64, state: &[u8]| Snapshot {
        stream_id: "s-1".into(),
        plugin_hash: hash.into(),
        version,
        state: state.to_vec(),
    };
    store
        .save_snapshot(snap("sha256:a", 10, b"ten"))
        .await
        .unwrap();
    store
        .save_snapshot(snap("sha256:b", 20, b"twenty"))
        .await
        .unwrap();
    // An older snapshot never replaces a newer one.
    store
        .save_snapshot(snap("sha256:a", 5, b"five"))
        .await
        .unwrap();
    assert_eq!(
        store.load_snapshot("s-1", "sha256:a").await.unwrap(),
        Some(snap("sha256:a", 10, b"ten"))
    );
    assert_eq!(
        store
            .load_snapshot("s-1", "sha256:b")
            .await
            .unwrap()
            .map(|s| s.version),
        Some(20)
    );
    assert_eq!(store.load_snapshot("s-1", "sha256:c").await.unwrap(), None);
}

async fn committed_events_survive_reopening_and_the_chain_continues(db: Arc<TestDb>) {
    let store = db.open().await;
    store
        .append(append(
            "s-1",
            ExpectedVersion::Any,
            vec![event("A", "{}"), event("B", "{}")],
        ))
        .await
        .unwrap();
    store.close().await;
    // Closed: writes are refused, not lost silently.
    let err = store
        .append(append("s-1", ExpectedVersion::Any, vec![event("C", "{}")]))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::ShuttingDown), "{err:?}");
    let store = db.open().await;
    assert_eq!(store.head_position().await.unwrap(), 2);
    assert_eq!(*store.subscribe_head().borrow(), 2);
    let (_, events) = committed(
        store
            .append(append(
                "s-1",
                ExpectedVersion::Exact(2),
                vec![event("C", "{}")],
            ))
            .await
            .unwrap(),
    );
    assert_eq!((events[0].position, events[0].version), (3, 3));
    assert_chain_intact(&*store).await;
    store.close().await;
}

async fn an_edited_row_breaks_the_chain(db: Arc<TestDb>) {
    let store = db.open().await;
    store
        .append(append(
            "s-1",
            ExpectedVersion::Any,
            vec![event("A", r#"{"n":1}"#), event("B", "{}")],
        ))
        .await
        .unwrap();
    let before = store.read_all(1, 10, None).await.unwrap();
    store.close().await;
    db.execute("UPDATE events SET data = '{\"n\":2}' WHERE position = 1")
        .await;
    let store = db.open().await;
    let after = store.read_all(1, 10, None).await.unwrap();
    let recomputed = hash_chain::event_hash(
        &hash_chain::GENESIS,
        &HashInput {
            position: 1,
            stream_id: &after[0].stream_id,
            version: 1,
            event_type: &after[0].event_type,
            schema: 1,
            data: &after[0].data,
            metadata: &after[0].metadata,
            recorded_at_us: after[0].recorded_at_us,
        },
    );
    assert_eq!(after[0].data, r#"{"n":2}"#);
    assert_eq!(
        after[0].hash, before[0].hash,
        "the stored hash is unchanged"
    );
    assert_ne!(recomputed, after[0].hash, "so the edit is detectable");
    store.close().await;
}

/// Several writers on separate store instances (on PostgreSQL: separate
/// connections, as separate hosts) append concurrently, with expected
/// versions, to their own streams and to streams they share, while a reader
/// tails the global log. The reader sees every event exactly once, in
/// position order, never a later position before an earlier one; versions
/// have no gaps and the chain holds across the writers.
async fn tailing_reader_sees_every_event_once_in_order(db: Arc<TestDb>) {
    const WRITERS: usize = 8;
    const ROUNDS: usize = 15;
    // Per round and writer: 1 event on the contended counter, 1 on the
    // shared stream, 2 on its own stream.
    const TOTAL: usize = WRITERS * ROUNDS * 4;
    let hosts = db.open_hosts(WRITERS + 1).await;
    let reader_store = hosts[WRITERS].clone();
    let reader = tokio::spawn(async move {
        let mut head = reader_store.subscribe_head();
        let mut seen: Vec<RecordedEvent> = Vec::with_capacity(TOTAL);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while seen.len() < TOTAL {
            let next = seen.len() as u64 + 1;
            let page = reader_store.read_all(next, 64, None).await.unwrap();
            for (i, e) in page.iter().enumerate() {
                assert_eq!(
                    e.position,
                    next + i as u64,
                    "the reader skipped from {} to {}",
                    next + i as u64 - 1,
                    e.position
                );
            }
            if page.is_empty() {
                assert!(tokio::time::Instant::now() < deadline, "the log stalled");
                let _ = tokio::time::timeout(Duration::from_millis(5), head.changed()).await;
            }
            seen.extend(page);
        }
        seen
    });
    let mut writers = Vec::new();
    for (w, store) in hosts[..WRITERS].iter().cloned().enumerate() {
        writers.push(tokio::spawn(async move {
            let data = |what: &str, r: usize, k: usize| {
                format!(r#"{{"w":{w},"r":{r},"k":{k},"on":"{what}"}}"#)
            };
            let mut counter_conflicts = 0u32;
            for r in 0..ROUNDS {
                // A read-modify-write from several hosts: a conflict is
                // reported, and the writer reads again and retries.
                loop {
                    let version = store.stream_version("counter").await.unwrap();
                    match store
                        .append(append(
                            "counter",
                            ExpectedVersion::Exact(version),
                            vec![event("Counted", &data("counter", r, 0))],
                        ))
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::WrongExpectedVersion { .. }) => counter_conflicts += 1,
                        Err(e) => panic!("counter: {e}"),
                    }
                }
                store
                    .append(append(
                        "shared",
                        ExpectedVersion::Any,
                        vec![event("Shared", &data("shared", r, 0))],
                    ))
                    .await
                    .unwrap();
                let own = format!("own-{w}");
                let expected = if r == 0 {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exact(2 * r as u64)
                };
                store
                    .append(append(
                        &own,
                        expected,
                        vec![
                            event("Own", &data("own", r, 0)),
                            event("Own", &data("own", r, 1)),
                        ],
                    ))
                    .await
                    .unwrap();
            }
            counter_conflicts
        }));
    }
    let mut conflicts = 0;
    for w in writers {
        conflicts += w.await.unwrap();
    }
    let seen = tokio::time::timeout(Duration::from_secs(120), reader)
        .await
        .expect("the reader caught up")
        .unwrap();
    eprintln!("{TOTAL} events; {conflicts} counter conflicts retried");
    assert_eq!(seen.len(), TOTAL);
    let mut payloads = HashSet::new();
    let mut versions: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for e in &seen {
        assert!(payloads.insert(e.data.as_str()), "{} twice", e.data);
        versions.entry(&e.stream_id).or_default().push(e.version);
    }
    let gap_free = |n: usize| (1..=n as u64).collect::<Vec<_>>();
    assert_eq!(versions["counter"], gap_free(WRITERS * ROUNDS));
    assert_eq!(versions["shared"], gap_free(WRITERS * ROUNDS));
    for w in 0..WRITERS {
        assert_eq!(versions[format!("own-{w}").as_str()], gap_free(2 * ROUNDS));
    }
    assert!(
        seen.windows(2)
            .all(|p| p[0].recorded_at_us <= p[1].recorded_at_us),
        "recorded_at follows positions"
    );
    assert_chain_intact(&*hosts[0]).await;
    for store in hosts {
        store.close().await;
    }
}

/// Two hosts on one database: each sees the other's versions (no stale
/// cache lets a conflict through) and idempotency keys. (On SQLite the two
/// are one store: a file has one writer.)
async fn hosts_share_versions_and_keys(db: Arc<TestDb>) {
    let hosts = db.open_hosts(2).await;
    let (a, b) = (&hosts[0], &hosts[1]);
    let one = || vec![event("E", "{}")];
    a.append(append("s-1", ExpectedVersion::NoStream, one()))
        .await
        .unwrap();
    b.append(append("s-1", ExpectedVersion::Exact(1), one()))
        .await
        .unwrap();
    let err = a
        .append(append("s-1", ExpectedVersion::Exact(1), one()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::WrongExpectedVersion { actual: 2, .. }),
        "{err:?}"
    );
    let (version, _) = committed(
        a.append(append("s-1", ExpectedVersion::Any, one()))
            .await
            .unwrap(),
    );
    assert_eq!(version, 3);
    let mut request = append("s-2", ExpectedVersion::Any, one());
    request.idempotency = Some(IdempotencyClaim {
        key: "k".into(),
        request_hash: "h".into(),
        window_start_us: 0,
    });
    committed(b.append(request.clone()).await.unwrap());
    assert!(matches!(
        a.append(request).await.unwrap(),
        AppendOutcome::AlreadyApplied(_)
    ));
    assert_chain_intact(&**a).await;
    for store in hosts {
        store.close().await;
    }
}

/// Wait (at most 20 s) until `store` listens for other hosts' commits.
async fn until_listening(store: &PostgresStore) {
    tokio::time::timeout(
        Duration::from_secs(20),
        store.listening().wait_for(|listening| *listening),
    )
    .await
    .expect("the listener listens in time")
    .expect("the store is open");
}

/// Another host's notifications carry the versions its commits left each
/// stream at, so a host following them reads nothing back from the log;
/// a commit touching more streams than a notification can list is read.
async fn other_hosts_versions_come_with_their_notifications(db: Arc<TestDb>) {
    let open = |options| PostgresStore::connect(db.postgres_options(), options);
    let a = open(test_postgres_options()).await.unwrap();
    let b = open(PostgresOptions {
        poll_interval: Duration::from_secs(3600),
        ..test_postgres_options()
    })
    .await
    .unwrap();
    // b's listener listens before a commits.
    until_listening(&b).await;
    let reads = b.version_reads();
    let mut head = b.subscribe_head();
    for (n, stream) in ["s-1", "s-2", "s-1"].into_iter().enumerate() {
        a.append(append(stream, ExpectedVersion::Any, vec![event("E", "{}")]))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), head.wait_for(|p| *p > n as u64))
            .await
            .expect("b sees a's commit")
            .unwrap();
    }
    assert!(b.newer_version_known("s-1", 1), "s-1 is at version 2");
    assert!(!b.newer_version_known("s-1", 2));
    assert!(b.newer_version_known("s-2", 0));
    assert_eq!(b.version_reads(), reads, "b read nothing back from the log");

    // Hundreds of streams with long names at once: at least one of a's
    // batches lists more than a notification can carry.
    let a = Arc::new(a);
    let long = |i: usize| format!("{i:04}-{}", "x".repeat(120));
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let a = a.clone();
            tokio::spawn(async move {
                a.append(append(
                    &long(i),
                    ExpectedVersion::Any,
                    vec![event("E", "{}")],
                ))
                .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    tokio::time::timeout(Duration::from_secs(5), head.wait_for(|p| *p >= 303))
        .await
        .expect("b sees every commit")
        .unwrap();
    for i in [0, 150, 299] {
        assert!(b.newer_version_known(&long(i), 0), "stream {i}");
    }
    assert!(
        b.version_reads() > reads,
        "the long list was read from the log"
    );
    a.close().await;
    b.close().await;
}

/// Another host's commits reach this host's head and live feed: through
/// NOTIFY (polling is slowed down to an hour), and through polling alone.
async fn other_hosts_commits_wake_this_one(db: Arc<TestDb>) {
    let slow_poll = PostgresOptions {
        poll_interval: Duration::from_secs(3600),
        ..test_postgres_options()
    };
    let polling_only = PostgresOptions {
        poll_interval: Duration::from_millis(50),
        listen: false,
        ..test_postgres_options()
    };
    let a = db.open_postgres(test_postgres_options()).await;
    let b = PostgresStore::connect(db.postgres_options(), slow_poll)
        .await
        .unwrap();
    // b's listener listens before a commits.
    until_listening(&b).await;
    let b: Arc<dyn EventStore> = Arc::new(b);
    let c = db.open_postgres(polling_only).await;
    let mut feed = b.subscribe_commits();
    assert!(!b.newer_version_known("s-1", 0), "nothing written yet");
    a.append(append(
        "s-1",
        ExpectedVersion::Any,
        vec![event("A", "{}"), event("B", "{}")],
    ))
    .await
    .unwrap();
    for (host, store) in [("notified", &b), ("polling", &c)] {
        let mut head = store.subscribe_head();
        tokio::time::timeout(Duration::from_secs(5), head.wait_for(|p| *p >= 2))
            .await
            .unwrap_or_else(|_| panic!("the {host} host did not see the commit"))
            .unwrap();
    }
    let batch = tokio::time::timeout(Duration::from_secs(5), feed.recv())
        .await
        .expect("the notified host's feed carried the commit")
        .unwrap();
    assert_eq!(batch.iter().map(|e| e.position).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(batch[0], a.read_positions(1, 1).await.unwrap()[0]);
    // The notified host knows how far the stream went (so its pipeline
    // brings a state cached at an older version up to date before deciding).
    assert!(b.newer_version_known("s-1", 1), "b follows a's commits");
    assert!(!b.newer_version_known("s-1", 2), "version 2 is the latest");
    assert!(!b.newer_version_known("s-2", 0), "an untouched stream");
    // Its own commit follows on in its feed, after the other host's.
    b.append(append(
        "s-1",
        ExpectedVersion::Exact(2),
        vec![event("C", "{}")],
    ))
    .await
    .unwrap();
    let batch = feed.recv().await.unwrap();
    assert_eq!(
        batch
            .iter()
            .map(|e| (e.position, e.version))
            .collect::<Vec<_>>(),
        [(3, 3)]
    );
    for store in [a, b, c] {
        store.close().await;
    }
}

/// The server drops every connection of the store (a restart, a proxy, an
/// operator): the store reconnects by itself, and a write that failed with
/// the connection is reported as unavailable, never as done.
async fn lost_connections_are_reopened(db: Arc<TestDb>) {
    let store = db.open().await;
    let mut head = store.subscribe_head();
    store
        .append(append("s-1", ExpectedVersion::Any, vec![event("A", "{}")]))
        .await
        .unwrap();
    db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .await;
    let mut appended = None;
    for _ in 0..20 {
        match store
            .append(append(
                "s-1",
                ExpectedVersion::Exact(1),
                vec![event("B", "{}")],
            ))
            .await
        {
            Ok(outcome) => {
                appended = Some(outcome);
                break;
            }
            Err(StoreError::Unavailable(_)) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let (version, _) = committed(appended.expect("the store reconnected"));
    assert_eq!(version, 2);
    assert_eq!(store.read_stream(all("s-1")).await.unwrap().len(), 2);
    tokio::time::timeout(Duration::from_secs(5), head.wait_for(|p| *p >= 2))
        .await
        .unwrap()
        .unwrap();
    store.ping().await.unwrap();
    assert_chain_intact(&*store).await;
    store.close().await;
}
