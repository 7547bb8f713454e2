//! What one linearizable read of the cluster's keys shows: every parsed value
//! with its revision and lease, and the keys that did not parse.

use serde::{Deserialize, Serialize};

use super::records::{ClusterConfigRecord, FailoverRecord, HistoryEntry, MemberRecord, SyncRecord};

/// A value read from the store with the metadata compare-and-swap needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned<T> {
    /// The parsed value.
    pub value: T,
    /// The key's `mod_revision`: what a CAS on MOD compares against.
    pub mod_revision: i64,
    /// The lease the key is attached to, 0 if none.
    pub lease: i64,
}

/// The key names under the cluster prefix, as [`ClusterView::unparsed`]
/// reports them.
pub mod keys {
    /// The leader key.
    pub const LEADER: &str = "leader";
    /// The synchronous-standby record.
    pub const SYNC: &str = "sync";
    /// An operator's switchover or failover request.
    pub const FAILOVER: &str = "failover";
    /// Cluster-wide settings (pause).
    pub const CONFIG: &str = "config";
    /// The promotion history.
    pub const HISTORY: &str = "history";
    /// The system identifier of the cluster.
    pub const INITIALIZE: &str = "initialize";
    /// The prefix of the member keys (`members/{name}`).
    pub const MEMBERS_PREFIX: &str = "members/";
}

/// One consistent snapshot of the cluster's keys (one linearizable range of
/// the prefix at `revision`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// `leader`: the member holding leadership, on its lease.
    pub leader: Option<Versioned<String>>,
    /// `members/*` that parsed, sorted by name.
    pub members: Vec<Versioned<MemberRecord>>,
    /// `sync`.
    pub sync: Option<Versioned<SyncRecord>>,
    /// `failover`.
    pub failover: Option<Versioned<FailoverRecord>>,
    /// `config`.
    pub config: Option<Versioned<ClusterConfigRecord>>,
    /// `history`.
    pub history: Option<Versioned<Vec<HistoryEntry>>>,
    /// `initialize`: the cluster's system identifier.
    pub initialize: Option<Versioned<u64>>,
    /// Keys under the prefix that are not ours or whose value did not parse:
    /// (key relative to the prefix, e.g. `sync` or `members/n1`, why). They
    /// are reported and never acted on; an unparsable `leader`, `sync`,
    /// `initialize` or `history` blocks every promotion.
    pub unparsed: Vec<(String, String)>,
    /// The store revision the snapshot was read at.
    pub revision: i64,
}

impl ClusterView {
    /// The member record of `name`, if it is present and parsed.
    pub fn member(&self, name: &str) -> Option<&Versioned<MemberRecord>> {
        self.members.iter().find(|m| m.value.name == name)
    }

    /// The leader's name, if a leader key exists.
    pub fn leader_name(&self) -> Option<&str> {
        self.leader.as_ref().map(|l| l.value.as_str())
    }

    /// Whether `config.paused` is set.
    pub fn paused(&self) -> bool {
        self.config.as_ref().is_some_and(|c| c.value.paused)
    }

    /// The newest timeline recorded in `history`, if any.
    pub fn last_history_timeline(&self) -> Option<crate::TimelineId> {
        self.history
            .as_ref()
            .and_then(|h| h.value.iter().map(|e| e.timeline).max())
    }

    /// The first unparsed key that makes promotion unsafe (a value of ours
    /// that someone else wrote, or a corrupt one), with its reason.
    pub fn blocking_unparsed(&self) -> Option<&(String, String)> {
        self.unparsed.iter().find(|(key, _)| {
            [
                keys::LEADER,
                keys::SYNC,
                keys::INITIALIZE,
                keys::HISTORY,
                keys::CONFIG,
            ]
            .contains(&key.as_str())
        })
    }
}
