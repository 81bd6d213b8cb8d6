//! Behaviour every backend must have, written once against the trait. Each
//! test takes a fresh, empty store.

use std::sync::Arc;

use super::hash_chain::{self, HashInput};
use super::sqlite::{SqliteOptions, SqliteStore};
use super::*;

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
async fn assert_chain_intact(store: &dyn EventStore) {
    let events = store.read_all(1, 100_000, None).await.unwrap();
    let mut previous = hash_chain::GENESIS;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.position, i as u64 + 1, "gap before {}", e.position);
        let expected = hash_chain::recorded_hash(&previous, e);
        assert_eq!(e.hash, expected, "hash of position {}", e.position);
        previous = e.hash;
    }
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

async fn concurrent_appends_are_ordered_without_gaps(store: Arc<dyn EventStore>) {
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

fn saga_command(instance: &str, step: u64) -> OutboxCommand {
    OutboxCommand {
        saga: "s".into(),
        instance: instance.into(),
        step,
        aggregate: "bank_account".into(),
        aggregate_id: "a".into(),
        command_type: "Deposit".into(),
        data: r#"{"amount":1}"#.into(),
        metadata: r#"{"saga":"s"}"#.into(),
        compensating: false,
        attempts: 0,
        errors: vec![],
        created_at_us: 1,
    }
}

fn saga_instance(instance: &str, status: SagaStatus) -> SagaInstanceRecord {
    SagaInstanceRecord {
        saga: "s".into(),
        instance: instance.into(),
        state: br#"{"step":1}"#.to_vec(),
        status,
        done: false,
        next_step: 3,
        awaited_position: 7,
        created_at_us: 1,
        updated_at_us: 2,
    }
}

/// A saga batch commits whole and fenced by its checkpoint; a runner
/// resumes from exactly what was committed; dead letters move out of the
/// outbox and back.
async fn saga_state_outbox_and_dead_letters(store: &dyn EventStore) {
    assert_eq!(store.saga_load("s").await.unwrap().checkpoint, None);
    store
        .commit_saga(SagaCommit {
            saga: "s".into(),
            checkpoint: Some((0, 10)),
            instances: vec![
                saga_instance("i1", SagaStatus::Running),
                saga_instance("done", SagaStatus::Completed),
            ],
            outbox_put: vec![saga_command("i1", 1), saga_command("i1", 2)],
            timers_put: vec![SagaTimerRecord {
                instance: "i1".into(),
                name: "timeout".into(),
                fire_at_ms: 99,
            }],
            history: vec![SagaHistoryEntry {
                instance: "i1".into(),
                at_us: 5,
                entry: serde_json::json!({"kind": "event"}),
            }],
            ..SagaCommit::default()
        })
        .await
        .unwrap();
    // A stale checkpoint is refused and changes nothing.
    let stale = store
        .commit_saga(SagaCommit {
            saga: "s".into(),
            checkpoint: Some((3, 12)),
            outbox_delete: vec![("i1".into(), 1)],
            ..SagaCommit::default()
        })
        .await;
    assert!(matches!(stale, Err(StoreError::CheckpointMoved { .. })), "{stale:?}");
    let loaded = store.saga_load("s").await.unwrap();
    assert_eq!(loaded.checkpoint, Some(10));
    assert_eq!(loaded.instances, vec![saga_instance("i1", SagaStatus::Running)]);
    assert_eq!(loaded.outbox.iter().map(|c| c.step).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(loaded.timers.len(), 1);
    assert_eq!(
        store.saga_instance("s", "done").await.unwrap().map(|i| i.status),
        Some(SagaStatus::Completed)
    );
    assert_eq!(store.saga_history("s", "i1", 10).await.unwrap().len(), 1);

    // Step 1 applied, step 2 exhausted its attempts.
    let mut failed = saga_command("i1", 2);
    failed.attempts = 3;
    failed.errors = vec![serde_json::json!({"message": "boom"})];
    store
        .commit_saga(SagaCommit {
            saga: "s".into(),
            instances: vec![saga_instance("i1", SagaStatus::Failed)],
            outbox_delete: vec![("i1".into(), 1)],
            dead_letters: vec![failed.clone()],
            timers_delete: vec![("i1".into(), None)],
            ..SagaCommit::default()
        })
        .await
        .unwrap();
    assert!(store.saga_outbox("s", "i1").await.unwrap().is_empty());
    let letters = store.dead_letters(0, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].command, failed);
    let counts = store.saga_counts("s").await.unwrap();
    assert_eq!((counts.failed, counts.completed, counts.outbox, counts.dead_letters), (1, 1, 0, 1));
    assert!(store.saga_load("s").await.unwrap().timers.is_empty());

    // Retried: back in the outbox, out of the dead-letter list.
    let id = letters[0].id;
    assert_eq!(store.dead_letter(id).await.unwrap().map(|d| d.id), Some(id));
    store
        .commit_saga(SagaCommit {
            saga: "s".into(),
            outbox_put: vec![saga_command("i1", 2)],
            dead_letters_delete: vec![id],
            ..SagaCommit::default()
        })
        .await
        .unwrap();
    assert_eq!(store.dead_letter(id).await.unwrap(), None);
    assert_eq!(store.saga_outbox("s", "i1").await.unwrap(), vec![saga_command("i1", 2)]);

    // The saga manager's idempotency keys outlive the clients' window.
    for (stream, key) in [("x-1", "kiln-saga/s/i1/1"), ("x-2", "client-key")] {
        let mut request = append(stream, ExpectedVersion::Any, vec![event("E", "{}")]);
        request.idempotency = Some(IdempotencyClaim {
            key: key.into(),
            request_hash: "h".into(),
            window_start_us: 0,
        });
        store.append(request).await.unwrap();
    }
    assert_eq!(store.purge_idempotency(now_us() + 1_000_000).await.unwrap(), 1);
    assert!(store.find_idempotency("kiln-saga/s/i1/1", 0).await.unwrap().is_some());
    assert!(store.find_idempotency("client-key", 0).await.unwrap().is_none());
}

// ---- SQLite ----

async fn sqlite(dir: &tempfile::TempDir) -> Arc<dyn EventStore> {
    let url = format!("sqlite://{}", dir.path().join("kiln.db").display());
    Arc::new(
        SqliteStore::open(&url, SqliteOptions::default())
            .await
            .unwrap(),
    )
}

macro_rules! sqlite_tests {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let dir = tempfile::tempdir().unwrap();
            let store = sqlite(&dir).await;
            super::$name(&*store).await;
            store.close().await;
        }
    )*};
}

mod sqlite_backend {
    use super::*;

    sqlite_tests!(
        append_and_read_back,
        expected_versions,
        idempotency_keys,
        filters_by_type_version_and_time,
        snapshots_are_keyed_by_plugin_hash,
        saga_state_outbox_and_dead_letters,
    );

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_are_ordered_without_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite(&dir).await;
        super::concurrent_appends_are_ordered_without_gaps(store.clone()).await;
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committed_events_survive_reopening_and_the_chain_continues() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite(&dir).await;
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
        let store = sqlite(&dir).await;
        assert_eq!(store.head_position().await.unwrap(), 2);
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_edited_row_breaks_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite(&dir).await;
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
        let url = format!("sqlite://{}", dir.path().join("kiln.db").display());
        let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
            .await
            .unwrap();
        sqlx::query("UPDATE events SET data = '{\"n\":2}' WHERE position = 1")
            .execute(&mut conn)
            .await
            .unwrap();
        let store = sqlite(&dir).await;
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
        assert_eq!(
            after[0].hash, before[0].hash,
            "the stored hash is unchanged"
        );
        assert_ne!(recomputed, after[0].hash, "so the edit is detectable");
        store.close().await;
    }
}
