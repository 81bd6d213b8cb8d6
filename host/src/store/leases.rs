//! Leases: which host runs a projection or saga, when several share a
//! database.

use async_trait::async_trait;
use serde::Serialize;

use super::StoreError;

/// A lease as stored: which host runs a projection or saga, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseRecord {
    /// `projection:<name>` or `saga:<name>`.
    pub name: String,
    /// The holding host's id.
    pub holder: String,
    /// Microseconds since the Unix epoch (by the database's clock on
    /// PostgreSQL); past it, any host may take the lease.
    pub expires_at_us: i64,
}

/// Lease rows. What the lease manager needs.
#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Take or renew the lease `name` for `holder` for `ttl_us` from now:
    /// true when `holder` holds it afterwards (it was free, expired, or
    /// already held by `holder`), false when another holder's lease is live.
    async fn try_lease(&self, name: &str, holder: &str, ttl_us: i64) -> Result<bool, StoreError>;

    /// Give up a lease `holder` holds (nothing when another holds it).
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;

    /// Every lease row, live or expired, by name.
    async fn leases(&self) -> Result<Vec<LeaseRecord>, StoreError>;
}
