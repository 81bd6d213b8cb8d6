//! Sagas: instances, their history and its purge, the outbox, timers,
//! dead letters, and batches fenced by their checkpoint.

use crate::store::{
    EventStore, ExpectedVersion, IdempotencyClaim, OutboxCommand, SagaCommit, SagaHistoryEntry,
    SagaInstanceRecord, SagaStatus, SagaTimerRecord, StoreError, now_us,
};

use super::{append, event};

conformance! {
    stores: [
        saga_state_outbox_and_dead_letters,
        saga_steps_keep_an_instances_history,
        saga_history_of_old_completed_instances_is_purged,
    ],
    databases: [],
    clusters: [],
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

pub(super) fn saga_instance(instance: &str, status: SagaStatus) -> SagaInstanceRecord {
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
