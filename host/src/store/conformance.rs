//! Behaviour every backend must have, written once against the trait and
//! run against each backend (`sqlite_backend::*`, `postgres_backend::*`).
//! Each test takes a fresh, empty database: a temporary SQLite file, or a
//! PostgreSQL database created for it and dropped at its end.
//!
//! The PostgreSQL tests connect through `KILN_TEST_DATABASE_URL` (a role
//! that may create databases; `source .ci/postgres.sh` sets one up). Without
//! it they say so and pass, unless `KILN_REQUIRE_POSTGRES=1` (CI), where
//! they fail.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::PgConnectOptions;

use super::hash_chain::{self, HashInput};
use super::postgres::{PostgresOptions, PostgresStore};
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
        idempotency_key: format!("kiln-saga/s/1/{instance}/{step}"),
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

/// The history of instances completed before the cut-off goes, a chunk at a
/// time; their rows stay (completed, so late events are still ignored), and
/// the history of instances running, failed or completed later stays.
async fn saga_history_of_old_completed_instances_is_purged(store: &dyn EventStore) {
    let entry = |instance: &str, n: i64| SagaHistoryEntry {
        instance: instance.into(),
        at_us: n,
        entry: serde_json::json!({"kind": "event", "n": n}),
    };
    let with = |instance: &str, status: SagaStatus, updated_at_us: i64| SagaInstanceRecord {
        updated_at_us,
        ..saga_instance(instance, status)
    };
    let mut history = Vec::new();
    for instance in ["old", "recent", "running", "failed"] {
        history.extend((0..3).map(|n| entry(instance, n)));
    }
    store
        .commit_saga(SagaCommit {
            saga: "s".into(),
            instances: vec![
                with("old", SagaStatus::Completed, 100),
                with("recent", SagaStatus::Completed, 900),
                with("running", SagaStatus::Running, 100),
                with("failed", SagaStatus::Failed, 100),
            ],
            history,
            ..SagaCommit::default()
        })
        .await
        .unwrap();
    // Another saga's old completed instance goes too.
    store
        .commit_saga(SagaCommit {
            saga: "t".into(),
            instances: vec![SagaInstanceRecord {
                saga: "t".into(),
                ..with("old", SagaStatus::Completed, 100)
            }],
            history: vec![entry("old", 0)],
            ..SagaCommit::default()
        })
        .await
        .unwrap();
    // A limit of 2 takes two entries per call.
    assert_eq!(store.purge_saga_history(500, 2).await.unwrap(), 2);
    assert_eq!(store.purge_saga_history(500, 2).await.unwrap(), 2);
    assert_eq!(store.purge_saga_history(500, 2).await.unwrap(), 0);
    assert!(store.saga_history("s", "old", 10).await.unwrap().is_empty());
    assert!(store.saga_history("t", "old", 10).await.unwrap().is_empty());
    for instance in ["recent", "running", "failed"] {
        assert_eq!(
            store.saga_history("s", instance, 10).await.unwrap().len(),
            3,
            "{instance}"
        );
    }
    assert_eq!(
        store
            .saga_instance("s", "old")
            .await
            .unwrap()
            .map(|i| i.status),
        Some(SagaStatus::Completed)
    );
}

/// An instance's later steps update it and add to its history: the
/// entries of every earlier step stay readable, in order, whichever other
/// instances were created in between.
async fn saga_steps_keep_an_instances_history(store: &dyn EventStore) {
    let entry = |instance: &str, n: i64| SagaHistoryEntry {
        instance: instance.into(),
        at_us: n,
        entry: serde_json::json!({"step": n}),
    };
    for (checkpoint, step) in (0..3).enumerate() {
        let checkpoint = checkpoint as u64;
        let mut instances = vec![SagaInstanceRecord {
            state: format!("{{\"step\":{step}}}").into_bytes(),
            next_step: step as u64 + 1,
            updated_at_us: 10 + step,
            ..saga_instance("a", SagaStatus::Running)
        }];
        // Another instance created at each step, so that "a" is no longer
        // the newest.
        let other = format!("b{step}");
        instances.push(saga_instance(&other, SagaStatus::Running));
        store
            .commit_saga(SagaCommit {
                saga: "s".into(),
                checkpoint: Some((checkpoint, checkpoint + 1)),
                instances,
                history: vec![entry("a", step), entry(&other, 100 + step)],
                ..SagaCommit::default()
            })
            .await
            .unwrap();
    }
    let a = store
        .saga_instance("s", "a")
        .await
        .unwrap()
        .expect("instance a");
    assert_eq!(a.state, br#"{"step":2}"#.to_vec());
    assert_eq!((a.next_step, a.created_at_us, a.updated_at_us), (3, 1, 12));
    let history = store.saga_history("s", "a", 10).await.unwrap();
    assert_eq!(
        history.iter().map(|h| h.at_us).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(history[2].entry, serde_json::json!({"step": 2}));
    let b1 = store.saga_history("s", "b1", 10).await.unwrap();
    assert_eq!(b1.iter().map(|h| h.at_us).collect::<Vec<_>>(), vec![101]);
    // The limit keeps the latest entries.
    let latest = store.saga_history("s", "a", 2).await.unwrap();
    assert_eq!(
        latest.iter().map(|h| h.at_us).collect::<Vec<_>>(),
        vec![1, 2]
    );
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
    assert!(
        matches!(stale, Err(StoreError::CheckpointMoved { .. })),
        "{stale:?}"
    );
    let loaded = store.saga_load("s").await.unwrap();
    assert_eq!(loaded.checkpoint, Some(10));
    assert_eq!(
        loaded.instances,
        vec![saga_instance("i1", SagaStatus::Running)]
    );
    assert_eq!(
        loaded.outbox.iter().map(|c| c.step).collect::<Vec<_>>(),
        vec![1, 2]
    );
    // Every column comes back, the command's idempotency key included.
    assert_eq!(loaded.outbox[0], saga_command("i1", 1));
    assert_eq!(loaded.timers.len(), 1);
    assert_eq!(
        store
            .saga_instance("s", "done")
            .await
            .unwrap()
            .map(|i| i.status),
        Some(SagaStatus::Completed)
    );
    let mut some = store
        .saga_instances("s", &["done".into(), "i1".into(), "nope".into()])
        .await
        .unwrap();
    some.sort_by(|a, b| a.instance.cmp(&b.instance));
    assert_eq!(
        some.iter().map(|i| i.instance.as_str()).collect::<Vec<_>>(),
        vec!["done", "i1"]
    );
    assert!(
        store
            .saga_instances("other", &["i1".into()])
            .await
            .unwrap()
            .is_empty()
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
    assert_eq!(
        (
            counts.failed,
            counts.completed,
            counts.outbox,
            counts.dead_letters
        ),
        (1, 1, 0, 1)
    );
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
    assert_eq!(
        store.saga_outbox("s", "i1").await.unwrap(),
        vec![saga_command("i1", 2)]
    );

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
    assert_eq!(
        store.purge_idempotency(now_us() + 1_000_000).await.unwrap(),
        1
    );
    assert!(
        store
            .find_idempotency("kiln-saga/s/i1/1", 0)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .find_idempotency("client-key", 0)
            .await
            .unwrap()
            .is_none()
    );
}

/// View rows and checkpoints commit together and are fenced; scans follow
/// byte order; generations switch and drop; skips are recorded.
async fn projection_views_and_checkpoints(store: &dyn EventStore) {
    let view = ViewId {
        projection: "balances",
        generation: 1,
    };
    let generation = |role, position| GenerationRecord {
        name: "balances".into(),
        generation: 1,
        plugin_hash: "sha256:a".into(),
        role,
        position,
    };
    let put = |key: &str, value: &str| (key.to_string(), RowWrite::Put(value.as_bytes().to_vec()));
    let commit = |from, to, writes| ViewCommit {
        projection: "balances".into(),
        generation: 1,
        from_position: from,
        to_position: to,
        writes,
        skip: None,
    };
    // No generation yet: nothing to commit to.
    let err = store.commit_view(commit(0, 1, vec![])).await.unwrap_err();
    assert!(
        matches!(err, StoreError::CheckpointMoved { actual: None, .. }),
        "{err:?}"
    );
    store
        .save_generation(generation(GenerationRole::Building, 0))
        .await
        .unwrap();
    store
        .commit_view(commit(
            0,
            5,
            vec![
                put("acc-b", "2"),
                put("acc-a", "1"),
                put("acc-\u{e9}", "3"),
                put("acc-Z", "4"),
                put("other", "5"),
            ],
        ))
        .await
        .unwrap();
    // A runner that started from an old checkpoint writes nothing.
    let err = store
        .commit_view(commit(0, 6, vec![put("acc-a", "stale")]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::CheckpointMoved {
                expected: 0,
                actual: Some(5),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        store.view_get(view, "acc-a").await.unwrap(),
        Some(b"1".to_vec())
    );
    assert_eq!(store.view_get(view, "acc-x").await.unwrap(), None);
    let keys = |rows: Vec<(String, Vec<u8>)>| rows.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    // Byte order: upper case before lower case, non-ASCII last.
    assert_eq!(
        keys(store.view_scan(view, "acc-", None, 10).await.unwrap()),
        ["acc-Z", "acc-a", "acc-b", "acc-\u{e9}"]
    );
    assert_eq!(
        keys(
            store
                .view_scan(view, "acc-", Some("acc-a"), 2)
                .await
                .unwrap()
        ),
        ["acc-b", "acc-\u{e9}"]
    );
    assert_eq!(
        keys(store.view_scan(view, "", None, 10).await.unwrap()).len(),
        5
    );
    store
        .commit_view(ViewCommit {
            skip: Some(SkipRecord {
                position: 6,
                stream_id: "acc-1".into(),
                event_type: "Poison".into(),
                reason: "operator".into(),
            }),
            ..commit(
                5,
                7,
                vec![("acc-b".into(), RowWrite::Delete), put("acc-a", "9")],
            )
        })
        .await
        .unwrap();
    assert_eq!(store.view_get(view, "acc-b").await.unwrap(), None);
    assert_eq!(
        store.view_get(view, "acc-a").await.unwrap(),
        Some(b"9".to_vec())
    );
    let skips = store.skips("balances").await.unwrap();
    assert_eq!(skips.len(), 1);
    assert_eq!((skips[0].0, skips[0].1.position), (1, 6));
    assert_eq!(
        store.generations().await.unwrap(),
        vec![generation(GenerationRole::Building, 7)]
    );

    // A second generation takes over; the first is retired and dropped.
    store
        .save_generation(GenerationRecord {
            generation: 2,
            plugin_hash: "sha256:b".into(),
            ..generation(GenerationRole::Building, 0)
        })
        .await
        .unwrap();
    store.promote_generation("balances", 1).await.unwrap();
    store.promote_generation("balances", 2).await.unwrap();
    let roles: Vec<(u64, GenerationRole)> = store
        .generations()
        .await
        .unwrap()
        .iter()
        .map(|g| (g.generation, g.role))
        .collect();
    assert_eq!(
        roles,
        [(1, GenerationRole::Retired), (2, GenerationRole::Active)]
    );
    assert!(store.promote_generation("balances", 9).await.is_err());
    assert_eq!(store.drop_generation(view, 3).await.unwrap(), 3);
    assert_eq!(store.drop_generation(view, 3).await.unwrap(), 1);
    assert_eq!(store.drop_generation(view, 3).await.unwrap(), 0);
    assert_eq!(
        store
            .generations()
            .await
            .unwrap()
            .iter()
            .map(|g| g.generation)
            .collect::<Vec<_>>(),
        [2]
    );
}

/// Plugin versions are stored once per hash; deployments are a history.
async fn leases_are_exclusive_until_they_expire(store: &dyn EventStore) {
    const TTL: i64 = 60_000_000;
    assert!(store.leases().await.unwrap().is_empty());
    // Acquire.
    assert!(store.try_lease("projection:p", "a", TTL).await.unwrap());
    // Refused while a's lease is live.
    assert!(!store.try_lease("projection:p", "b", TTL).await.unwrap());
    // Other names are independent.
    assert!(store.try_lease("saga:s", "b", TTL).await.unwrap());
    // Renewal moves the expiry on.
    let before = store.leases().await.unwrap();
    let first = before.iter().find(|l| l.name == "projection:p").unwrap();
    assert_eq!(first.holder, "a");
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(store.try_lease("projection:p", "a", TTL).await.unwrap());
    let after = store.leases().await.unwrap();
    let renewed = after.iter().find(|l| l.name == "projection:p").unwrap();
    assert_eq!(renewed.holder, "a");
    assert!(renewed.expires_at_us > first.expires_at_us);
    // Releasing another holder's lease does nothing; releasing one's own frees it.
    store.release_lease("projection:p", "b").await.unwrap();
    assert!(!store.try_lease("projection:p", "b", TTL).await.unwrap());
    store.release_lease("projection:p", "a").await.unwrap();
    assert!(store.try_lease("projection:p", "b", TTL).await.unwrap());
    // Taken over once it expires.
    assert!(store.try_lease("saga:t", "a", 50_000).await.unwrap());
    assert!(!store.try_lease("saga:t", "b", 50_000).await.unwrap());
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(store.try_lease("saga:t", "b", TTL).await.unwrap());
    assert!(!store.try_lease("saga:t", "a", TTL).await.unwrap());
    let leases = store.leases().await.unwrap();
    let holders: Vec<(&str, &str)> = leases
        .iter()
        .map(|l| (l.name.as_str(), l.holder.as_str()))
        .collect();
    assert_eq!(
        holders,
        [("projection:p", "b"), ("saga:s", "b"), ("saga:t", "b")]
    );
}

async fn plugin_deployments(store: &dyn EventStore) {
    let deploy = |name: &str, bytes: &[u8], mode| NewDeployment {
        name: name.into(),
        hash: format!("sha256:{}", hex::encode(bytes)),
        kind: "aggregate".into(),
        mode,
        source: "upload".into(),
        bytes: Arc::new(bytes.to_vec()),
    };
    let first = store
        .record_deployment(deploy("bank", b"v1", DeployMode::Live))
        .await
        .unwrap();
    let second = store
        .record_deployment(deploy("bank", b"v2", DeployMode::Live))
        .await
        .unwrap();
    let back = store
        .record_deployment(deploy("bank", b"v1", DeployMode::Rollback))
        .await
        .unwrap();
    store
        .record_deployment(deploy("audit", b"a1", DeployMode::Shadow))
        .await
        .unwrap();
    assert!(first.id < second.id && second.id < back.id);
    assert_eq!(first.size, 2);
    let history = store.plugin_history("bank").await.unwrap();
    assert_eq!(
        history.iter().map(|d| d.id).collect::<Vec<_>>(),
        [back.id, second.id, first.id]
    );
    assert_eq!(history[0], back);
    let current = store.current_deployments().await.unwrap();
    assert_eq!(
        current
            .iter()
            .map(|d| (d.name.as_str(), d.mode))
            .collect::<Vec<_>>(),
        [
            ("audit", DeployMode::Shadow),
            ("bank", DeployMode::Rollback)
        ]
    );
    assert_eq!(
        store.plugin_bytes(&first.hash).await.unwrap(),
        Some(b"v1".to_vec())
    );
    assert_eq!(store.plugin_bytes("sha256:none").await.unwrap(), None);
    assert!(store.plugin_history("none").await.unwrap().is_empty());
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

/// Another host's notifications carry the versions its commits left each
/// stream at, so a host following them reads nothing back from the log;
/// a commit touching more streams than a notification can list is read.
async fn other_hosts_versions_come_with_their_notifications(db: Arc<TestDb>) {
    let TestDb::Postgres(pg) = &*db else {
        panic!("a PostgreSQL-only test ran on SQLite");
    };
    let open = |options| PostgresStore::connect(pg.connect.clone(), options);
    let a = open(test_postgres_options()).await.unwrap();
    let b = open(PostgresOptions {
        poll_interval: Duration::from_secs(3600),
        ..test_postgres_options()
    })
    .await
    .unwrap();
    // Let b's listener start (and resync once) before a commits.
    tokio::time::sleep(Duration::from_millis(300)).await;
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
    let b = db.open_postgres(slow_poll).await;
    let c = db.open_postgres(polling_only).await;
    let mut feed = b.subscribe_commits();
    // Let b's listener start listening before a commits.
    tokio::time::sleep(Duration::from_millis(300)).await;
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

/// Two hosts committing the same projection batch or saga batch at once:
/// exactly one of them gets through. (On SQLite: two runners of one store.)
async fn view_and_saga_commits_are_fenced_across_hosts(db: Arc<TestDb>) {
    let hosts = db.open_hosts(2).await;
    hosts[0]
        .save_generation(GenerationRecord {
            name: "p".into(),
            generation: 1,
            plugin_hash: "sha256:a".into(),
            role: GenerationRole::Active,
            position: 0,
        })
        .await
        .unwrap();
    for round in 0..10u64 {
        let attempts = hosts.iter().enumerate().map(|(h, store)| {
            let store = store.clone();
            let key = format!("written-by-{h}");
            tokio::spawn(async move {
                let view = store.commit_view(ViewCommit {
                    projection: "p".into(),
                    generation: 1,
                    from_position: round,
                    to_position: round + 1,
                    writes: vec![(key, RowWrite::Put(vec![1]))],
                    skip: None,
                });
                let saga = store.commit_saga(SagaCommit {
                    saga: "s".into(),
                    checkpoint: Some((round, round + 1)),
                    instances: vec![saga_instance(
                        &format!("by-{h}-{round}"),
                        SagaStatus::Running,
                    )],
                    ..SagaCommit::default()
                });
                (view.await, saga.await)
            })
        });
        let mut views = 0;
        let mut sagas = 0;
        for attempt in attempts.collect::<Vec<_>>() {
            let (view, saga) = attempt.await.unwrap();
            match view {
                Ok(()) => views += 1,
                Err(StoreError::CheckpointMoved { .. }) => {}
                Err(e) => panic!("view commit: {e}"),
            }
            match saga {
                Ok(()) => sagas += 1,
                Err(StoreError::CheckpointMoved { .. }) => {}
                Err(e) => panic!("saga commit: {e}"),
            }
        }
        assert_eq!((views, sagas), (1, 1), "round {round}");
    }
    let saga = hosts[1].saga_load("s").await.unwrap();
    assert_eq!(saga.checkpoint, Some(10));
    assert_eq!(saga.instances.len(), 10, "only the winners' instances");
    for store in hosts {
        store.close().await;
    }
}

// ---- Backends ----

/// The database of one test.
pub(crate) enum TestDb {
    Sqlite(tempfile::TempDir),
    Postgres(Box<PostgresDb>),
}

/// A database created for one test on the server of
/// `KILN_TEST_DATABASE_URL`.
pub(crate) struct PostgresDb {
    /// The database named by the URL, from which test databases are created
    /// and dropped.
    admin: PgConnectOptions,
    name: String,
    connect: PgConnectOptions,
}

const DATABASE_URL_VAR: &str = "KILN_TEST_DATABASE_URL";
const REQUIRE_POSTGRES_VAR: &str = "KILN_REQUIRE_POSTGRES";

/// Small pools: tests run in parallel on one server.
fn test_postgres_options() -> PostgresOptions {
    PostgresOptions {
        read_connections: 3,
        poll_interval: Duration::from_millis(200),
        ..PostgresOptions::default()
    }
}

impl TestDb {
    pub(crate) fn sqlite() -> Self {
        TestDb::Sqlite(tempfile::tempdir().unwrap())
    }

    /// A fresh database, or `None` (after saying why) when no server is
    /// configured and none is required.
    pub(crate) async fn postgres(test: &str) -> Option<Self> {
        let url = match std::env::var(DATABASE_URL_VAR) {
            Ok(url) if !url.is_empty() => url,
            _ => {
                if std::env::var(REQUIRE_POSTGRES_VAR).is_ok_and(|v| v == "1") {
                    panic!(
                        "{REQUIRE_POSTGRES_VAR}=1 but {DATABASE_URL_VAR} is not set \
                         (`source .ci/postgres.sh` sets it)"
                    );
                }
                eprintln!(
                    "skipped postgres_backend::{test}: {DATABASE_URL_VAR} is not set \
                     (`source .ci/postgres.sh` starts a local server and sets it)"
                );
                return None;
            }
        };
        let admin = PgConnectOptions::from_str(&url)
            .unwrap_or_else(|e| panic!("{DATABASE_URL_VAR} is not a PostgreSQL URL: {e}"));
        let name = format!("kiln_t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect_with(&admin)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {DATABASE_URL_VAR}: {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("cannot create a test database: {e}"));
        let _ = conn.close().await;
        Some(TestDb::Postgres(Box::new(PostgresDb {
            connect: admin.clone().database(&name),
            admin,
            name,
        })))
    }

    /// A store on this database: on PostgreSQL, a new instance each time,
    /// with connections of its own, as another host would have.
    pub(crate) async fn open(&self) -> Arc<dyn EventStore> {
        match self {
            TestDb::Sqlite(dir) => {
                let url = format!("sqlite://{}", dir.path().join("kiln.db").display());
                Arc::new(
                    SqliteStore::open(&url, SqliteOptions::default())
                        .await
                        .unwrap(),
                )
            }
            TestDb::Postgres(_) => self.open_postgres(test_postgres_options()).await,
        }
    }

    async fn open_postgres(&self, options: PostgresOptions) -> Arc<dyn EventStore> {
        match self {
            TestDb::Postgres(db) => Arc::new(
                PostgresStore::connect(db.connect.clone(), options)
                    .await
                    .unwrap(),
            ),
            TestDb::Sqlite(_) => panic!("a PostgreSQL-only test ran on SQLite"),
        }
    }

    /// `n` stores standing for `n` hosts. A SQLite file has one writer by
    /// design, so there they are one store shared.
    async fn open_hosts(&self, n: usize) -> Vec<Arc<dyn EventStore>> {
        match self {
            TestDb::Sqlite(_) => {
                let store = self.open().await;
                vec![store; n]
            }
            TestDb::Postgres(_) => {
                let mut stores = Vec::with_capacity(n);
                for _ in 0..n {
                    stores.push(self.open().await);
                }
                stores
            }
        }
    }

    /// Run SQL on the database directly, past the store.
    pub(crate) async fn execute(&self, sql: &str) {
        match self {
            TestDb::Sqlite(dir) => {
                let url = format!("sqlite://{}", dir.path().join("kiln.db").display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
                let _ = conn.close().await;
            }
            TestDb::Postgres(db) => {
                let mut conn = sqlx::PgConnection::connect_with(&db.connect).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
                let _ = conn.close().await;
            }
        }
    }
}

impl Drop for PostgresDb {
    /// Drop the database, also when the test failed (this runs while its
    /// panic unwinds). Drop cannot wait for the test's runtime, so this runs
    /// on a thread of its own with a runtime of its own.
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = std::mem::take(&mut self.name);
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(drop_database(&admin, &name))
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop a test database: {e}"),
            Err(_) => eprintln!("could not drop a test database: the thread panicked"),
        }
    }
}

/// Disconnect the stores a failed test left open, then drop the database.
/// Not `WITH (FORCE)`: that also wants to end the server's autovacuum worker,
/// which a role that is not a superuser may not; a plain DROP makes the
/// worker give way. Retried: a store may be reconnecting meanwhile.
async fn drop_database(
    admin: &PgConnectOptions,
    name: &str,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut conn = sqlx::PgConnection::connect_with(admin).await?;
    let mut attempt = 0;
    loop {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND usename = current_user AND pid <> pg_backend_pid()",
        )
        .bind(name)
        .execute(&mut conn)
        .await?;
        match sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
            .execute(&mut conn)
            .await
        {
            Ok(_) => break,
            Err(_) if attempt < 20 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    conn.close().await?;
    Ok(())
}

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
            use super::*;
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
                    super::$db_test(Arc::new(TestDb::sqlite())).await;
                }
            )*
        }

        mod postgres_backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $store_test() {
                    let Some(db) = TestDb::postgres(stringify!($store_test)).await else {
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
                    let Some(db) = TestDb::postgres(stringify!($db_test)).await else {
                        return;
                    };
                    super::$db_test(Arc::new(db)).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $cluster_test() {
                    let Some(db) = TestDb::postgres(stringify!($cluster_test)).await else {
                        return;
                    };
                    super::$cluster_test(Arc::new(db)).await;
                }
            )*
        }
    };
}

conformance! {
    stores: [
        append_and_read_back,
        expected_versions,
        idempotency_keys,
        filters_by_type_version_and_time,
        snapshots_are_keyed_by_plugin_hash,
        saga_state_outbox_and_dead_letters,
        saga_steps_keep_an_instances_history,
        saga_history_of_old_completed_instances_is_purged,
        projection_views_and_checkpoints,
        plugin_deployments,
        leases_are_exclusive_until_they_expire,
    ],
    databases: [
        concurrent_appends_are_ordered_without_gaps,
        committed_events_survive_reopening_and_the_chain_continues,
        an_edited_row_breaks_the_chain,
        tailing_reader_sees_every_event_once_in_order,
        hosts_share_versions_and_keys,
        view_and_saga_commits_are_fenced_across_hosts,
    ],
    clusters: [
        other_hosts_commits_wake_this_one,
        other_hosts_versions_come_with_their_notifications,
        lost_connections_are_reopened,
    ],
}

/// Not a conformance test: appends per second through the store API, with
/// 64 concurrent appenders spread over 1, 2 and 3 store instances (hosts),
/// each append one event on its own stream with an expected version. Run by
/// hand:
///
/// ```sh
/// source .ci/postgres.sh
/// cargo test -p kiln --lib store::conformance::throughput -- --ignored --nocapture
/// ```
mod throughput {
    use super::*;

    const APPENDERS: usize = 64;
    const RUN: Duration = Duration::from_secs(5);

    /// Appends per second over `RUN`.
    async fn measure(hosts: &[Arc<dyn EventStore>]) -> f64 {
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        for a in 0..APPENDERS {
            let store = hosts[a % hosts.len()].clone();
            tasks.push(tokio::spawn(async move {
                let stream = format!("bench-{a}-{}", uuid::Uuid::new_v4().simple());
                let mut version = 0;
                while start.elapsed() < RUN {
                    store
                        .append(append(
                            &stream,
                            ExpectedVersion::Exact(version),
                            vec![event("Deposited", r#"{"amount":1}"#)],
                        ))
                        .await
                        .unwrap();
                    version += 1;
                }
                version
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        total as f64 / start.elapsed().as_secs_f64()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a benchmark, run by hand"]
    async fn appends_per_second() {
        let sqlite = TestDb::sqlite();
        let store = sqlite.open().await;
        eprintln!(
            "sqlite, 1 host: {:.0} appends/s",
            measure(std::slice::from_ref(&store)).await
        );
        store.close().await;
        let Some(db) = TestDb::postgres("throughput").await else {
            return;
        };
        for n in 1..=3 {
            let hosts = db.open_hosts(n).await;
            let rate = measure(&hosts).await;
            eprintln!("postgres, {n} host(s): {rate:.0} appends/s");
            for store in hosts {
                store.close().await;
            }
        }
    }
}
