//! Leases: exclusive per name until they expire, renewed, released.

use std::time::Duration;

use crate::store::EventStore;

conformance! {
    stores: [leases_are_exclusive_until_they_expire],
    databases: [],
    clusters: [],
}

/// A lease is held by one holder at a time until it is released or expires;
/// its holder renews it; names are independent.
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
