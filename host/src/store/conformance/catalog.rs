//! The plugin catalog: plugin versions stored once per hash, deployments
//! as a history.

use std::sync::Arc;

use crate::store::{DeployMode, EventStore, NewDeployment};

conformance! {
    stores: [plugin_deployments, plugin_removals],
    databases: [],
    clusters: [],
}

/// Plugin versions are stored once per hash; deployments are a history.
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

/// A removal is recorded once, as a copy of the latest deployment; a
/// deployment after it makes the name current again.
async fn plugin_removals(store: &dyn EventStore) {
    let deploy = |bytes: &[u8]| NewDeployment {
        name: "audit".into(),
        hash: format!("sha256:{}", hex::encode(bytes)),
        kind: "projection".into(),
        mode: DeployMode::Live,
        source: "upload".into(),
        bytes: Arc::new(bytes.to_vec()),
    };
    assert_eq!(
        store.record_removal("audit", "undeploy").await.unwrap(),
        None
    );
    store.record_deployment(deploy(b"v1")).await.unwrap();
    let live = store.record_deployment(deploy(b"v22")).await.unwrap();
    let removed = store
        .record_removal("audit", "undeploy")
        .await
        .unwrap()
        .expect("recorded");
    assert!(removed.id > live.id);
    assert_eq!(
        (removed.hash.as_str(), removed.kind.as_str(), removed.size),
        (live.hash.as_str(), "projection", 3)
    );
    assert_eq!(
        (removed.mode, removed.source.as_str()),
        (DeployMode::Removed, "undeploy")
    );
    // Removed already: nothing more is recorded.
    assert_eq!(
        store.record_removal("audit", "undeploy").await.unwrap(),
        None
    );
    let history = store.plugin_history("audit").await.unwrap();
    assert_eq!(history.len(), 3);
    assert_eq!(history[0], removed);
    assert_eq!(store.current_deployments().await.unwrap(), [removed]);
    // Deployed again: current again, and removable again.
    let back = store.record_deployment(deploy(b"v1")).await.unwrap();
    assert_eq!(store.current_deployments().await.unwrap(), [back]);
    assert!(
        store
            .record_removal("audit", "undeploy")
            .await
            .unwrap()
            .is_some()
    );
}
