//! The plugin catalog: plugin versions stored once per hash, deployments
//! as a history.

use std::sync::Arc;

use crate::store::{DeployMode, EventStore, NewDeployment};

conformance! {
    stores: [plugin_deployments],
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
