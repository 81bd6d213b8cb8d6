//! Leases: when several hosts share one database, each projection and each
//! saga runs on exactly one of them at a time.
//!
//! Every host has a random id. For each projection (`projection:<name>`)
//! and saga (`saga:<name>`) it knows, its lease manager tries every
//! `ttl / 3` to take or renew the lease in the store's `leases` table. A
//! host starts a projection's runners (from the stored checkpoints) or a
//! saga's runner when it gets the lease, and stops them when it loses it:
//! when another host holds it, or when no renewal succeeded for `2/3` of the
//! ttl, so they are stopped before the lease can expire. A host that dies
//! stops renewing; another one takes the lease once it expired, within one
//! ttl and one round. Commits are fenced by their checkpoints besides (see
//! `ViewCommit::from_position`), so even two runners that overlap for a
//! moment never both write.
//!
//! On SQLite (one host per database file) leases are off: every name is
//! always held here.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinHandle;

use crate::store::{LeaseRecord, LeaseStore, StoreError, now_us};

/// Default lease time, milliseconds.
pub const LEASE_TTL_MS_DEFAULT: u64 = 5_000;
/// Prefix of a projection's lease name.
pub const PROJECTION_PREFIX: &str = "projection:";
/// Prefix of a saga's lease name.
pub const SAGA_PREFIX: &str = "saga:";

/// A lease as `GET /cluster` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LeaseView {
    pub name: String,
    pub holder: String,
    /// Microseconds since the Unix epoch.
    pub expires_at_us: i64,
    /// RFC 3339.
    pub expires_at: String,
    /// Expired by this host's clock: any host may take it.
    pub expired: bool,
    /// Held by this host.
    pub mine: bool,
}

/// What runs under leases (projections, sagas): told when this host takes
/// or loses the lease of one of its names. The lease manager knows nothing
/// else of them.
#[async_trait]
pub trait LeaseHolder: Send + Sync {
    /// The prefix of its lease names ([`PROJECTION_PREFIX`], [`SAGA_PREFIX`]).
    fn lease_prefix(&self) -> &'static str;

    /// This host took the lease of `name` (without the prefix): start it.
    async fn take_over(&self, name: &str);

    /// This host lost the lease of `name`: stop it.
    async fn let_go(&self, name: &str);
}

/// This host's leases.
pub struct Leases {
    store: Arc<dyn LeaseStore>,
    holder: String,
    ttl: Duration,
    enabled: bool,
    /// Names this host wants to run.
    wanted: Mutex<BTreeSet<String>>,
    /// Names this host holds, with the instant the last successful renewal
    /// started (the lease lasts at least `ttl` from then).
    held: Mutex<HashMap<String, Instant>>,
    /// Serialises a manager round with a claim, so that one transition is
    /// decided by one of them.
    round: tokio::sync::Mutex<()>,
}

impl Leases {
    /// `enabled` false: every name counts as held here (one host per database).
    pub fn new(store: Arc<dyn LeaseStore>, ttl: Duration, enabled: bool) -> Arc<Self> {
        Arc::new(Self {
            store,
            holder: host_id(),
            ttl: ttl.max(Duration::from_millis(30)),
            enabled,
            wanted: Mutex::new(BTreeSet::new()),
            held: Mutex::new(HashMap::new()),
            round: tokio::sync::Mutex::new(()),
        })
    }

    /// This host's id, as lease rows name it.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether this host holds the lease `name` (always, when leases are off).
    pub fn holds(&self, name: &str) -> bool {
        !self.enabled || self.held_lock().contains_key(name)
    }

    /// Want `name` from now on and try to take it at once: true when this
    /// host holds it. The manager keeps trying when it is refused.
    pub async fn claim(&self, name: &str) -> bool {
        if !self.enabled {
            return true;
        }
        let _round = self.round.lock().await;
        self.wanted_lock().insert(name.to_string());
        if self.holds(name) {
            return true;
        }
        let started = Instant::now();
        match self.try_lease(name).await {
            Ok(true) => {
                self.held_lock().insert(name.to_string(), started);
                tracing::info!(lease = name, holder = %self.holder, "lease taken");
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(lease = name, error = %e, "could not take a lease; will retry");
                false
            }
        }
    }

    /// Stop wanting `name` and give up its lease if this host holds it
    /// (what it names was undeployed).
    pub async fn forget(&self, name: &str) {
        if !self.enabled {
            return;
        }
        let _round = self.round.lock().await;
        self.wanted_lock().remove(name);
        if self.held_lock().remove(name).is_some()
            && let Err(e) = self.store.release_lease(name, &self.holder).await
        {
            tracing::warn!(lease = name, error = %e, "could not release a lease; it expires by itself");
        }
    }

    async fn try_lease(&self, name: &str) -> Result<bool, StoreError> {
        let ttl_us = self.ttl.as_micros() as i64;
        match tokio::time::timeout(
            self.ttl / 3,
            self.store.try_lease(name, &self.holder, ttl_us),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable("lease renewal timed out".into())),
        }
    }

    /// Every lease row, for display.
    pub async fn views(&self) -> Result<Vec<LeaseView>, StoreError> {
        let now = now_us();
        let records: Vec<LeaseRecord> = self.store.leases().await?;
        Ok(records
            .into_iter()
            .map(|r| LeaseView {
                expired: r.expires_at_us <= now,
                mine: r.holder == self.holder,
                expires_at: crate::time::rfc3339(r.expires_at_us),
                name: r.name,
                holder: r.holder,
                expires_at_us: r.expires_at_us,
            })
            .collect())
    }

    /// The host that holds a live lease `name`, if any.
    pub async fn holder_of(&self, name: &str) -> Option<String> {
        let now = now_us();
        self.store
            .leases()
            .await
            .ok()?
            .into_iter()
            .find(|r| r.name == name && r.expires_at_us > now)
            .map(|r| r.holder)
    }

    /// Start the manager: every `ttl / 3` it renews what this host holds and
    /// tries to take what it wants, and starts or stops runners accordingly.
    pub fn spawn(self: &Arc<Self>, holders: Vec<Weak<dyn LeaseHolder>>) -> Option<JoinHandle<()>> {
        if !self.enabled {
            return None;
        }
        let leases = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(leases.ttl / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (taken, lost) = leases.round().await;
                let Some(holders) = holders
                    .iter()
                    .map(Weak::upgrade)
                    .collect::<Option<Vec<_>>>()
                else {
                    break;
                };
                for name in lost {
                    if let Some((holder, name)) = holder_of_name(&holders, &name) {
                        holder.let_go(name).await;
                    }
                }
                for name in taken {
                    if let Some((holder, name)) = holder_of_name(&holders, &name) {
                        holder.take_over(name).await;
                    }
                }
            }
        }))
    }

    /// One round: renew or take every wanted lease. Returns the names taken
    /// and the names lost in it.
    async fn round(&self) -> (Vec<String>, Vec<String>) {
        let _round = self.round.lock().await;
        let wanted: Vec<String> = self.wanted_lock().iter().cloned().collect();
        let mut taken = Vec::new();
        let mut lost = Vec::new();
        for name in wanted {
            let started = Instant::now();
            let had = self.held_lock().contains_key(&name);
            match self.try_lease(&name).await {
                Ok(true) => {
                    self.held_lock().insert(name.clone(), started);
                    if !had {
                        tracing::info!(lease = %name, holder = %self.holder, "lease taken");
                        taken.push(name);
                    }
                }
                Ok(false) => {
                    if self.held_lock().remove(&name).is_some() {
                        tracing::warn!(lease = %name, "lease lost to another host");
                        lost.push(name);
                    }
                }
                Err(e) => {
                    // The database is slow or away: the others would time
                    // out too, and the round must end in time for the
                    // check below.
                    tracing::warn!(lease = %name, error = %e, "could not renew a lease");
                    break;
                }
            }
        }
        // Stop what could not be renewed in time, before the lease expires.
        let limit = self.ttl * 2 / 3;
        self.held_lock().retain(|name, renewed| {
            let fresh = renewed.elapsed() < limit;
            if !fresh {
                tracing::warn!(lease = %name, "lease not renewed in time; stopping its runners");
                lost.push(name.clone());
            }
            fresh
        });
        (taken, lost)
    }

    /// Give up every lease this host holds (at shutdown, after its runners
    /// stopped), so that another host takes over without waiting.
    pub async fn release_all(&self) {
        if !self.enabled {
            return;
        }
        let _round = self.round.lock().await;
        let held: Vec<String> = self.held_lock().drain().map(|(name, _)| name).collect();
        for name in held {
            if let Err(e) = self.store.release_lease(&name, &self.holder).await {
                tracing::warn!(lease = %name, error = %e, "could not release a lease; it expires by itself");
            }
        }
    }

    fn wanted_lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.wanted.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn held_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The holder whose prefix `lease` has, and the name without the prefix.
fn holder_of_name<'a>(
    holders: &'a [Arc<dyn LeaseHolder>],
    lease: &'a str,
) -> Option<(&'a Arc<dyn LeaseHolder>, &'a str)> {
    holders.iter().find_map(|holder| {
        lease
            .strip_prefix(holder.lease_prefix())
            .map(|name| (holder, name))
    })
}

/// `<hostname>-<pid>-<8 hex digits>`: unique per process.
fn host_id() -> String {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_string());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{hostname}-{}-{}", std::process::id(), &random[..8])
}
