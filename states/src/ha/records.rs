//! The values of the HA keys in the consensus store (etcd): what each key
//! holds, as JSON through serde, so every writer and reader agrees on one
//! encoding.
//!
//! The `leader` key holds the owner's member name as plain UTF-8 and
//! `initialize` the system identifier in decimal; every other key holds one
//! of the records below. LSNs are written `X/X` as PostgreSQL prints them.

use serde::{Deserialize, Serialize};

use crate::{Lsn, TimelineId};

/// What a member says it is doing, in its `members/{name}` key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    /// Running as the primary with its write gate open.
    Primary,
    /// Running as a standby (streaming or recovering).
    Standby,
    /// Running with a primary's data but its write gate closed: it holds no
    /// confirmed leadership (just started, lost the key, or handing over).
    Fenced,
    /// Starting up; no role yet.
    Starting,
    /// Not running.
    Stopped,
    /// Leaving the primary role to rejoin as a standby.
    Demoting,
    /// Promotion requested and running.
    Promoting,
}

impl MemberRole {
    /// The name used in JSON and in `walrep ha list`.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Primary => "primary",
            MemberRole::Standby => "standby",
            MemberRole::Fenced => "fenced",
            MemberRole::Starting => "starting",
            MemberRole::Stopped => "stopped",
            MemberRole::Demoting => "demoting",
            MemberRole::Promoting => "promoting",
        }
    }
}

/// The value of `members/{name}`: one node's self-description, kept under the
/// node's own lease so it disappears when the node stops renewing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The member name (the key's last component; `ha_name`).
    pub name: String,
    /// What the node is doing.
    pub role: MemberRole,
    /// The data directory's system identifier (as `IDENTIFY_SYSTEM` shows).
    pub system_identifier: u64,
    /// The timeline the node writes (primary) or replays (standby).
    pub timeline: TimelineId,
    /// Primary: flushed WAL. Standby: received and flushed WAL. The
    /// healthiest-candidate comparison uses it.
    pub flush_lsn: Lsn,
    /// WAL replayed (standby) or flushed (primary).
    pub replay_lsn: Lsn,
    /// `host:port` other nodes stream from (the replication port).
    pub repl_addr: String,
    /// `host:port` of the Redis-protocol client port.
    pub client_addr: String,
    /// URL of the node's status endpoint, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_url: Option<String>,
    /// The node never takes the leader key automatically (`ha_nofailover`).
    #[serde(default)]
    pub nofailover: bool,
    /// Its recovery runs normally (standby) or it serves (primary); an
    /// unhealthy member is never a candidate.
    #[serde(default)]
    pub healthy: bool,
    /// The node has seen `config.paused` and stopped automatic actions.
    #[serde(default)]
    pub ha_paused_seen: bool,
    /// The walrep version the node runs.
    #[serde(default)]
    pub version: String,
}

/// The value of `sync`: the leader and the standbys that hold every write it
/// acknowledged, so the only ones that may take over without loss.
///
/// The primary counts a standby's confirmations only once a write of this
/// record naming it succeeded, and stops counting it before writing it out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRecord {
    /// The member that was primary when the record was written.
    pub leader: String,
    /// The confirmed synchronous standbys, sorted by name.
    #[serde(default)]
    pub sync_standbys: Vec<String>,
}

impl SyncRecord {
    /// Whether `name` may promote under this record: a listed standby, or the
    /// leader itself (the old primary coming back).
    pub fn allows(&self, name: &str) -> bool {
        self.leader == name || self.sync_standbys.iter().any(|s| s == name)
    }
}

/// Which kind of operator request a `failover` key carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverKind {
    /// Planned hand-over from a healthy leader, without loss.
    Switchover,
    /// Forced: the candidate may take over with no leader, even if it is not
    /// a confirmed synchronous standby; acknowledged writes may be lost.
    Failover,
}

/// The value of `failover`: an operator's switchover or failover request,
/// cleared by the member that takes the leader key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverRecord {
    /// The leader the request was made against (a switchover is void if
    /// another member leads by the time it is seen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The member that should take over; none lets the leader pick the
    /// healthiest synchronous standby.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
    /// Switchover or forced failover.
    pub kind: FailoverKind,
    /// Wall-clock time of the request, milliseconds since the Unix epoch.
    pub requested_at_ms: u64,
}

/// The value of `config`: cluster-wide HA settings changed at run time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfigRecord {
    /// No automatic action while set (`walrep ha pause` / `resume`).
    #[serde(default)]
    pub paused: bool,
}

/// One entry of `history`: a promotion, appended by the new leader once it
/// runs on its new timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The timeline the new leader started.
    pub timeline: TimelineId,
    /// Where that timeline branched off its parent.
    pub switch_lsn: Lsn,
    /// The member that promoted.
    pub leader: String,
    /// Wall-clock time of the promotion, milliseconds since the Unix epoch.
    pub at_ms: u64,
}
