use super::*;
use std::sync::Arc;

use crate::store::{
    ExpectedVersion, NewEvent, SagaCommit, SagaHistoryEntry, SagaInstanceRecord, SagaStatus,
    SagaStore,
};

async fn open_store(dir: &tempfile::TempDir) -> Arc<SqliteStore> {
    let url = format!("sqlite://{}", dir.path().join("kiln.db").display());
    Arc::new(
        SqliteStore::open(&url, SqliteOptions::default())
            .await
            .expect("open"),
    )
}

/// Hold the writer inside a job until `release` is sent, so that what is
/// queued meanwhile is written as one batch.
async fn hold_writer(
    store: &Arc<SqliteStore>,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), StoreError>>,
) {
    let (release, held) = oneshot::channel::<()>();
    let (entered_tx, entered) = oneshot::channel::<()>();
    let blocker = {
        let store = store.clone();
        tokio::spawn(async move {
            let job: JobFn<()> = Box::new(move |_conn| {
                Box::pin(async move {
                    let _ = entered_tx.send(());
                    let _ = held.await;
                    Ok(Ok(()))
                })
            });
            store.run_job_with(job, true).await
        })
    };
    entered.await.expect("the writer runs the blocking job");
    (release, blocker)
}

/// Wait (at most 20 s) until `n` requests wait in the writer's queue (the
/// writer held: they then go in one batch).
async fn until_queued(store: &SqliteStore, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while store.writer.max_capacity() - store.writer.capacity() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} requests were not queued in time"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn one_event_append(stream: &str) -> AppendRequest {
    AppendRequest {
        stream_id: stream.into(),
        expected: ExpectedVersion::Any,
        events: vec![NewEvent {
            event_type: "E".into(),
            schema: 1,
            data: "{}".into(),
            metadata: "{}".into(),
        }],
        idempotency: None,
    }
}

/// A saga commit whose checkpoint moved is refused alone: the commits
/// and appends of its batch around it are written, and nothing of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_saga_commit_is_refused_alone_in_its_batch() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = open_store(&dir).await;
    let (release, blocker) = hold_writer(&store).await;
    let instance = |name: &str| SagaInstanceRecord {
        saga: "s".into(),
        instance: name.into(),
        state: b"{}".to_vec(),
        status: SagaStatus::Running,
        done: false,
        next_step: 1,
        awaited_position: 0,
        created_at_us: 1,
        updated_at_us: 1,
    };
    let mut tasks = Vec::new();
    for (from, to, name) in [(0, 1, "first"), (0, 2, "stale"), (1, 3, "third")] {
        let store = store.clone();
        let commit = SagaCommit {
            saga: "s".into(),
            checkpoint: Some((from, to)),
            instances: vec![instance(name)],
            ..SagaCommit::default()
        };
        let (ordered_tx, ordered) = oneshot::channel();
        tasks.push(tokio::spawn(async move {
            store.commit_saga_ordered(commit, ordered_tx).await
        }));
        ordered.await.expect("queued in order");
    }
    let append = {
        let store = store.clone();
        tokio::spawn(async move { store.append(one_event_append("a")).await })
    };
    let _ = release.send(());
    blocker.await.expect("join").expect("blocking job");
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("join"));
    }
    assert!(outcomes[0].is_ok(), "{outcomes:?}");
    assert!(
        matches!(
            outcomes[1],
            Err(StoreError::CheckpointMoved {
                expected: 0,
                actual: Some(1),
                ..
            })
        ),
        "{outcomes:?}"
    );
    assert!(outcomes[2].is_ok(), "{outcomes:?}");
    assert!(append.await.expect("join").is_ok());
    let loaded = store.saga_load("s").await.expect("load");
    assert_eq!(loaded.checkpoint, Some(3));
    let mut names: Vec<_> = loaded
        .instances
        .iter()
        .map(|i| i.instance.as_str())
        .collect();
    names.sort();
    assert_eq!(names, vec!["first", "third"]);
    assert_eq!(store.head_position().await.expect("head"), 1);
    store.close().await;
}

/// A saga commit is reported ordered as soon as the writer has it queued,
/// before it is written; an append asked for afterwards is written with
/// it or after it, never before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_commit_is_ordered_once_queued_and_later_appends_follow_it() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = open_store(&dir).await;
    assert!(store.orders_writes_as_queued());
    let (release, blocker) = hold_writer(&store).await;
    let (ordered_tx, ordered) = oneshot::channel();
    let commit = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .commit_saga_ordered(
                    SagaCommit {
                        saga: "s".into(),
                        checkpoint: Some((0, 1)),
                        ..SagaCommit::default()
                    },
                    ordered_tx,
                )
                .await
        })
    };
    tokio::time::timeout(Duration::from_secs(5), ordered)
        .await
        .expect("ordered while the writer is still busy")
        .expect("ordered is told");
    assert!(!commit.is_finished(), "the commit cannot be written yet");
    let append = {
        let store = store.clone();
        tokio::spawn(async move { store.append(one_event_append("a")).await })
    };
    let _ = release.send(());
    blocker.await.expect("join").expect("blocking job");
    let appended = append.await.expect("join");
    // The append's answer comes after its batch committed: the saga
    // commit queued before it is visible by then.
    assert!(appended.is_ok(), "{appended:?}");
    let loaded = store.saga_load("s").await.expect("load");
    assert_eq!(loaded.checkpoint, Some(1));
    commit.await.expect("join").expect("saga commit");
    store.close().await;
}

/// A batch that fails — in the writer's direct statements or in a job
/// run through sqlx — writes nothing of any of its requests, answers
/// each with the failure, and the writer goes on from the same tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_writes_nothing_and_the_writer_goes_on() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = open_store(&dir).await;
    store
        .append(one_event_append("a"))
        .await
        .expect("first append");
    let saga_commit = |store: Arc<SqliteStore>| {
        tokio::spawn(async move {
            store
                .commit_saga(SagaCommit {
                    saga: "s".into(),
                    checkpoint: Some((0, 1)),
                    ..SagaCommit::default()
                })
                .await
        })
    };
    let append = |store: Arc<SqliteStore>, stream: &'static str| {
        tokio::spawn(async move { store.append(one_event_append(stream)).await })
    };
    let failing_job = |store: Arc<SqliteStore>, sql: &'static str| {
        tokio::spawn(async move {
            let job: JobFn<()> = Box::new(move |conn| {
                Box::pin(async move {
                    sqlx::query(sql).execute(&mut *conn).await?;
                    Ok(Ok(()))
                })
            });
            store.run_job_with(job, true).await
        })
    };
    // A job through sqlx fails after the batch's direct statements ran:
    // the append and the saga commit before it are rolled back.
    let (release, blocker) = hold_writer(&store).await;
    let b = append(store.clone(), "b");
    let commit = saga_commit(store.clone());
    let job = failing_job(store.clone(), "INSERT INTO no_such_table VALUES (1)");
    until_queued(&store, 3).await;
    let _ = release.send(());
    blocker.await.expect("join").expect("blocking job");
    assert!(
        b.await.expect("join").is_err(),
        "the append failed with its batch"
    );
    assert!(commit.await.expect("join").is_err());
    assert!(job.await.expect("join").is_err());
    // A direct statement fails (its table is gone): the append queued
    // with it is rolled back too.
    store
        .run_job_with(
            Box::new(|conn| {
                Box::pin(async move {
                    sqlx::query("DROP TABLE saga_checkpoints")
                        .execute(&mut *conn)
                        .await?;
                    Ok(Ok(()))
                })
            }),
            true,
        )
        .await
        .expect("table dropped");
    let (release, blocker) = hold_writer(&store).await;
    let c = append(store.clone(), "c");
    let commit = saga_commit(store.clone());
    until_queued(&store, 2).await;
    let _ = release.send(());
    blocker.await.expect("join").expect("blocking job");
    let refused = c.await.expect("join");
    assert!(
        matches!(&refused, Err(e @ StoreError::Internal { .. }) if e.to_string().contains("saga_checkpoints")),
        "{refused:?}"
    );
    assert!(commit.await.expect("join").is_err());
    for stream in ["b", "c"] {
        assert_eq!(store.stream_version(stream).await.expect("version"), 0);
    }
    // The writer goes on from the tail the failed batches left alone.
    let Ok(AppendOutcome::Committed { events, .. }) = store.append(one_event_append("d")).await
    else {
        panic!("the next append commits");
    };
    assert_eq!(events[0].position, 2);
    crate::store::conformance::assert_chain_intact(store.as_ref()).await;
    store.close().await;
}

/// A batch that needs no fsync runs at `synchronous = NORMAL`; when it
/// fails, in a job through sqlx or in a direct statement, the next
/// durable batch still switches back to FULL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_batch_after_a_failed_one_is_synced_in_full() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = open_store(&dir).await;
    let run_sql = |sql: &'static str, fsync| {
        let job: JobFn<()> = Box::new(move |conn| {
            Box::pin(async move {
                sqlx::query(sql).execute(&mut *conn).await?;
                Ok(Ok(()))
            })
        });
        store.run_job_with(job, fsync)
    };
    assert!(
        run_sql("INSERT INTO no_such_table VALUES (1)", false)
            .await
            .is_err()
    );
    // A saga commit that is not durable fails in its direct statements.
    run_sql("DROP TABLE saga_checkpoints", true)
        .await
        .expect("table dropped");
    let stale = store
        .commit_saga(SagaCommit {
            saga: "s".into(),
            checkpoint: Some((0, 1)),
            durable: false,
            ..SagaCommit::default()
        })
        .await;
    assert!(stale.is_err(), "{stale:?}");
    let setting = |fsync| {
        let job: JobFn<i64> = Box::new(|conn| {
            Box::pin(async move {
                Ok(Ok(sqlx::query_scalar("PRAGMA synchronous")
                    .fetch_one(&mut *conn)
                    .await?))
            })
        });
        store.run_job_with(job, fsync)
    };
    // SQLite's values: 1 is NORMAL, 2 is FULL.
    assert_eq!(setting(true).await.expect("durable batch"), 2);
    assert_eq!(setting(false).await.expect("batch without fsync"), 1);
    assert_eq!(setting(true).await.expect("durable batch"), 2);
    store.close().await;
}

/// A database whose saga rows were written before migration 0005 (rows
/// keyed by instance name) keeps its instances and their history, and
/// later steps add to that history; its saga commands keep the
/// idempotency key they were dispatched with (migration 0007).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_rows_written_before_the_creation_order_layout_are_kept() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}", dir.path().join("kiln.db").display());
    let all = sqlx::migrate!("../migrations/sqlite");
    let before = sqlx::migrate::Migrator {
        migrations: all
            .migrations
            .iter()
            .filter(|m| m.version < 5)
            .cloned()
            .collect::<Vec<_>>()
            .into(),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    let mut conn = SqliteConnection::connect_with(&connect_options(&url).expect("options"))
        .await
        .expect("connect");
    before.run(&mut conn).await.expect("migrations 1-4");
    sqlx::raw_sql(
        "INSERT INTO saga_instances VALUES \
           ('s', 'late', x'7b7d', 'running', 0, 2, 0, 20, 21), \
           ('s', 'early', x'7b7d', 'completed', 1, 3, 0, 10, 11); \
         INSERT INTO saga_history (saga, instance, at, entry) VALUES \
           ('s', 'early', 1, '{\"n\":1}'), ('s', 'late', 2, '{\"n\":2}'), \
           ('s', 'early', 3, '{\"n\":3}'); \
         INSERT INTO saga_outbox VALUES \
           ('s', 'late', 2, 'bank_account', 'a', 'Deposit', '{}', '{}', 0, 0, '[]', 20); \
         INSERT INTO saga_dead_letters VALUES \
           (7, 's', 'early', 1, 'bank_account', 'b', 'Deposit', '{}', '{}', 1, 10, '[]', 10, 11);",
    )
    .execute(&mut conn)
    .await
    .expect("old rows");
    conn.close().await.expect("close");

    let store = SqliteStore::open(&url, SqliteOptions::default())
        .await
        .expect("open and migrate");
    let early = store
        .saga_instance("s", "early")
        .await
        .expect("read")
        .expect("instance kept");
    assert_eq!(
        (early.status, early.next_step, early.created_at_us),
        (SagaStatus::Completed, 3, 10)
    );
    let outbox = store.saga_outbox("s", "late").await.expect("outbox");
    assert_eq!(
        outbox
            .iter()
            .map(|c| c.idempotency_key.as_str())
            .collect::<Vec<_>>(),
        vec!["kiln-saga/s/late/2"]
    );
    let letter = store
        .dead_letter(7)
        .await
        .expect("read")
        .expect("dead letter kept");
    assert_eq!(letter.command.idempotency_key, "kiln-saga/s/early/1");
    let at = |entries: Vec<SagaHistoryEntry>| entries.iter().map(|e| e.at_us).collect::<Vec<_>>();
    assert_eq!(
        at(store.saga_history("s", "early", 10).await.expect("history")),
        vec![1, 3]
    );
    assert_eq!(
        at(store.saga_history("s", "late", 10).await.expect("history")),
        vec![2]
    );
    // Numbered in creation order.
    let seqs: Vec<(String, i64)> =
        sqlx::query_as("SELECT instance, seq FROM saga_instances ORDER BY seq")
            .fetch_all(&store.readers)
            .await
            .expect("seq");
    assert_eq!(
        seqs.iter().map(|(i, _)| i.as_str()).collect::<Vec<_>>(),
        vec!["early", "late"]
    );
    store
        .commit_saga(SagaCommit {
            saga: "s".into(),
            instances: vec![SagaInstanceRecord {
                saga: "s".into(),
                instance: "late".into(),
                state: b"{}".to_vec(),
                status: SagaStatus::Completed,
                done: true,
                next_step: 3,
                awaited_position: 0,
                created_at_us: 20,
                updated_at_us: 30,
            }],
            history: vec![SagaHistoryEntry {
                instance: "late".into(),
                at_us: 4,
                entry: serde_json::json!({"n": 4}),
            }],
            ..SagaCommit::default()
        })
        .await
        .expect("a later step");
    assert_eq!(
        at(store.saga_history("s", "late", 10).await.expect("history")),
        vec![2, 4]
    );
    store.close().await;
}
