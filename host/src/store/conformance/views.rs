//! Projection views: rows and checkpoints committed together and fenced
//! (also across hosts), scans in byte order, generations, skips.

use std::sync::Arc;

use super::TestDb;
use super::sagas::saga_instance;
use crate::store::{
    EventStore, GenerationRecord, GenerationRole, RowWrite, SagaCommit, SagaStatus, SkipRecord,
    StoreError, ViewCommit, ViewId,
};

conformance! {
    stores: [projection_views_and_checkpoints],
    databases: [view_and_saga_commits_are_fenced_across_hosts],
    clusters: [],
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
