//! What the HA decision is given each cycle: the node's HA settings, its own
//! state, its lease and the cluster view read from the store.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::view::ClusterView;
use crate::{Lsn, Millis, TimelineId};

/// etcd refuses leases shorter than this (ceil(1.5 × the default 1 s
/// election timeout)); a shorter `ha_ttl` would silently be raised.
pub const MIN_TTL_MS: u64 = 2_000;

/// The node's HA settings (the `ha_*` parameters), fixed for its run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaConfig {
    /// This member's name (`ha_name`): the leader key's value and the
    /// `members/{name}` key.
    pub name: String,
    /// Lease TTL (`ha_ttl`): how long the leader key outlives the last
    /// renewal.
    pub ttl_ms: u64,
    /// Pause between HA cycles (`ha_loop_wait`); the leader renews at least
    /// this often.
    pub loop_wait_ms: u64,
    /// Bound on each store request (`ha_retry_timeout`).
    pub retry_timeout_ms: u64,
    /// How long before the lease can expire the primary fences itself
    /// (`ha_fence_margin`): covers clock-rate error and a stalled loop.
    pub fence_margin_ms: u64,
    /// An asynchronous standby may promote when no synchronous one is alive
    /// (`ha_allow_async_failover`); acknowledged writes may be lost.
    pub allow_async_failover: bool,
    /// Never take the leader key automatically (`ha_nofailover`).
    pub nofailover: bool,
    /// `host:port` others stream from (`ha_repl_address`).
    pub repl_addr: String,
    /// `host:port` of the client port (`ha_client_address`).
    pub client_addr: String,
    /// Status endpoint published in the member key, if any.
    pub status_url: Option<String>,
    /// The walrep version published in the member key.
    pub version: String,
}

/// Why an [`HaConfig`] cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HaConfigError {
    /// The member name is empty or contains `/` (it is part of a key).
    BadName {
        /// The rejected name.
        name: String,
    },
    /// `ha_ttl` is below what etcd grants.
    TtlTooShort {
        /// The configured TTL.
        ttl_ms: u64,
    },
    /// `ha_loop_wait` or `ha_retry_timeout` is zero.
    ZeroInterval {
        /// The parameter's name.
        name: &'static str,
    },
    /// `ha_loop_wait + 2 * ha_retry_timeout > ha_ttl`: the leader could lose
    /// its key while still retrying one renewal.
    TimingRule {
        /// `ha_loop_wait`.
        loop_wait_ms: u64,
        /// `ha_retry_timeout`.
        retry_timeout_ms: u64,
        /// `ha_ttl`.
        ttl_ms: u64,
    },
    /// `ha_fence_margin` leaves no time to hold the gate open.
    MarginTooLarge {
        /// `ha_fence_margin`.
        fence_margin_ms: u64,
        /// `ha_ttl`.
        ttl_ms: u64,
    },
}

impl fmt::Display for HaConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HaConfigError::BadName { name } => {
                write!(f, "ha_name {name:?} must be non-empty and contain no '/'")
            }
            HaConfigError::TtlTooShort { ttl_ms } => write!(
                f,
                "ha_ttl {ttl_ms}ms is below etcd's minimum lease of {MIN_TTL_MS}ms"
            ),
            HaConfigError::ZeroInterval { name } => write!(f, "{name} must be greater than 0"),
            HaConfigError::TimingRule {
                loop_wait_ms,
                retry_timeout_ms,
                ttl_ms,
            } => write!(
                f,
                "ha_loop_wait ({loop_wait_ms}ms) + 2 * ha_retry_timeout ({retry_timeout_ms}ms) \
                 must not exceed ha_ttl ({ttl_ms}ms), or the leader can lose its key while \
                 still retrying a renewal"
            ),
            HaConfigError::MarginTooLarge {
                fence_margin_ms,
                ttl_ms,
            } => write!(
                f,
                "ha_fence_margin ({fence_margin_ms}ms) must be less than ha_ttl ({ttl_ms}ms)"
            ),
        }
    }
}

impl std::error::Error for HaConfigError {}

impl HaConfig {
    /// Checks the settings against each other (Patroni's timing rule).
    pub fn validate(&self) -> Result<(), HaConfigError> {
        if self.name.is_empty() || self.name.contains('/') {
            return Err(HaConfigError::BadName {
                name: self.name.clone(),
            });
        }
        if self.ttl_ms < MIN_TTL_MS {
            return Err(HaConfigError::TtlTooShort {
                ttl_ms: self.ttl_ms,
            });
        }
        for (name, value) in [
            ("ha_loop_wait", self.loop_wait_ms),
            ("ha_retry_timeout", self.retry_timeout_ms),
        ] {
            if value == 0 {
                return Err(HaConfigError::ZeroInterval { name });
            }
        }
        let needed = self
            .loop_wait_ms
            .saturating_add(self.retry_timeout_ms.saturating_mul(2));
        if needed > self.ttl_ms {
            return Err(HaConfigError::TimingRule {
                loop_wait_ms: self.loop_wait_ms,
                retry_timeout_ms: self.retry_timeout_ms,
                ttl_ms: self.ttl_ms,
            });
        }
        if self.fence_margin_ms >= self.ttl_ms {
            return Err(HaConfigError::MarginTooLarge {
                fence_margin_ms: self.fence_margin_ms,
                ttl_ms: self.ttl_ms,
            });
        }
        Ok(())
    }

    /// The defaults of the `ha_*` parameters for member `name`.
    pub fn with_defaults(name: &str) -> HaConfig {
        HaConfig {
            name: name.to_string(),
            ttl_ms: 10_000,
            loop_wait_ms: 1_000,
            retry_timeout_ms: 3_000,
            fence_margin_ms: 2_000,
            allow_async_failover: false,
            nofailover: false,
            repl_addr: String::new(),
            client_addr: String::new(),
            status_url: None,
            version: String::new(),
        }
    }
}

/// What the local node is running as, as the node reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalRole {
    /// A primary (its write gate may be open or closed).
    Primary,
    /// A standby, streaming or recovering.
    Standby,
    /// Promotion requested and still running.
    Promoting,
    /// Stopping the primary and rejoining as a standby.
    Demoting,
    /// Starting or stopped: nothing to decide about yet.
    Starting,
}

/// `sync_state` of one walsender as `synchronous_standby_names` alone ranks
/// it (ignoring which standbys the HA layer lets syncrep count).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaSyncState {
    /// One of the synchronous standbys.
    Sync,
    /// Would become synchronous if a synchronous one left.
    Potential,
    /// Counted in an `ANY n` quorum (not used for HA: refused).
    Quorum,
    /// Not synchronous.
    Async,
}

/// One standby connected to this primary (pg_stat_replication's view).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaProgress {
    /// The standby's `application_name` (its member name).
    pub name: String,
    /// Its rank under `synchronous_standby_names`.
    pub sync_state: ReplicaSyncState,
    /// The WAL it has confirmed flushed.
    pub flush_lsn: Lsn,
}

/// The node's own state, read by the runtime at the start of a cycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalState {
    /// What the node runs as.
    pub role: LocalRole,
    /// The data directory's system identifier.
    pub system_identifier: u64,
    /// The timeline written (primary) or replayed (standby).
    pub timeline: TimelineId,
    /// Where `timeline` branched from its parent (0/0 on timeline 1).
    pub timeline_start_lsn: Lsn,
    /// Primary: flushed WAL. Standby: received and flushed WAL.
    pub flush_lsn: Lsn,
    /// Replayed WAL (standby) or flushed (primary).
    pub replay_lsn: Lsn,
    /// Recovery runs normally (standby) or the node serves (primary).
    pub healthy: bool,
    /// The member the standby currently streams from (its HA
    /// `primary_conninfo`), if any.
    pub following: Option<String>,
    /// Primary only: the connected standbys.
    pub replicas: Vec<ReplicaProgress>,
    /// The number of synchronous standbys `synchronous_standby_names` asks
    /// for (`FIRST n`); 0 when replication is asynchronous.
    pub sync_count: usize,
    /// `ANY n` is configured: the HA layer refuses quorum commit.
    pub sync_any: bool,
    /// The standbys syncrep currently counts (what the last
    /// [`super::HaAction::SetSyncAllowed`] set), sorted.
    pub sync_allowed: Vec<String>,
    /// Whether the node's write gate is open right now.
    pub gate_open: bool,
}

/// The node's lease as of its last successful keepalive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The lease id (`leader` and `members/{name}` are attached to it).
    pub id: i64,
    /// When the last successful keepalive (or the grant) was *sent*, on the
    /// node's monotonic clock: etcd extended the lease no earlier than that.
    pub sent_at: Millis,
    /// The TTL etcd granted.
    pub ttl_ms: u64,
}

/// A failed read of the cluster view: the store could not answer
/// linearizably within the bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DcsReadError {
    /// What failed, for the log.
    pub message: String,
}

/// Everything one HA cycle decides from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaInput {
    /// Now, on the node's monotonic clock (the clock of [`Lease::sent_at`]
    /// and of the write gate's deadline).
    pub now: Millis,
    /// Now on the wall clock, milliseconds since the Unix epoch (only for
    /// timestamps written into records).
    pub wall_clock_ms: u64,
    /// The node's lease after this cycle's keepalive: the last successful
    /// one (None if no lease was ever granted).
    pub lease: Option<Lease>,
    /// The cluster as read after the keepalive, or why the read failed.
    pub view: Result<ClusterView, DcsReadError>,
    /// The node's own state.
    pub local: LocalState,
}
