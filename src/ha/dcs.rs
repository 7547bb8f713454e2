//! The consensus store the HA loop uses, as a trait: [`Dcs`], what one node
//! reads and writes in it (Patroni's "distributed configuration store"),
//! with one error type, [`DcsError`], for every store.
//!
//! Two stores implement it: [`crate::ha::etcd::EtcdDcs`] on a real etcd,
//! and [`MemoryDcs`] here, in memory with the same compare-and-swap and
//! lease rules on an injected clock, for the HA loop's unit tests (several
//! nodes share one [`MemoryStore`]).
//!
//! Keys live under `{ha_namespace}/{ha_cluster_name}/` ([`cluster_prefix`]);
//! [`view_from_keys`] turns one read of that prefix into the
//! [`ClusterView`] the decisions take, reporting what does not parse.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use walrep_states::ha::{
    keys, ClusterConfigRecord, ClusterView, FailoverRecord, HistoryEntry, Lease, MemberRecord,
    SyncRecord, Versioned,
};
use walrep_states::Millis;

use super::etcd::EtcdError;

/// What a store could not do. A lost compare-and-swap is not an error: the
/// writes return `Ok(false)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DcsError {
    /// No member of the store could be reached: nothing was written.
    #[error("the consensus store is unreachable: {0}")]
    Unreachable(String),
    /// The store has no leader (no quorum): nothing was written.
    #[error("the consensus store has no quorum: {0}")]
    NoQuorum(String),
    /// No answer in time, or the connection broke: a write may or may not
    /// have been applied; read again before concluding anything.
    #[error("the consensus store did not confirm in time (a write may or may not have been applied): {0}")]
    MaybeApplied(String),
    /// The node's lease is gone (expired or revoked): renew first.
    #[error("the node's lease is gone: {0}")]
    LeaseLost(String),
    /// The store refused the request or answered something unreadable.
    #[error("the consensus store refused or garbled the request: {0}")]
    Failed(String),
}

impl DcsError {
    /// Whether a write that failed this way may still have been applied.
    pub fn maybe_applied(&self) -> bool {
        matches!(self, DcsError::MaybeApplied(_))
    }
}

impl From<EtcdError> for DcsError {
    fn from(e: EtcdError) -> DcsError {
        let text = e.to_string();
        match e {
            EtcdError::Unreachable { .. } => DcsError::Unreachable(text),
            EtcdError::NoLeader { .. } => DcsError::NoQuorum(text),
            EtcdError::Timeout { .. }
            | EtcdError::ConnectionLost { .. }
            | EtcdError::Unavailable { .. } => DcsError::MaybeApplied(text),
            EtcdError::LeaseNotFound { .. } => DcsError::LeaseLost(text),
            EtcdError::NoEndpoints
            | EtcdError::BadEndpoint { .. }
            | EtcdError::Rejected { .. }
            | EtcdError::BadResponse { .. } => DcsError::Failed(text),
        }
    }
}

/// What the HA loop needs from a consensus store, for one node (its name
/// and lease are the store's own state). Every call is bounded; every
/// compare-and-swap returns `Ok(false)` when it lost.
pub trait Dcs {
    /// One linearizable read of every key of the cluster.
    fn load(&mut self) -> Result<ClusterView, DcsError>;
    /// Renew the node's lease (one keepalive), or grant a new one when the
    /// old is gone; `sent_at` is when the request was sent, on the clock the
    /// store was given.
    fn keepalive(&mut self) -> Result<Lease, DcsError>;
    /// Take the leader key if nobody holds it (CREATE == 0).
    fn acquire_leader(&mut self) -> Result<bool, DcsError>;
    /// Keep the leader key on the current lease (VALUE == own name, else
    /// CREATE == 0); `false` when another member holds it.
    fn update_leader(&mut self) -> Result<bool, DcsError>;
    /// Delete the leader key if it still names this node.
    fn release_leader(&mut self) -> Result<bool, DcsError>;
    /// Put `members/{name}` under the node's lease.
    fn publish_member(&mut self, record: &MemberRecord) -> Result<(), DcsError>;
    /// Put the permanent key `relative` = `value` (`None`: delete it) if
    /// its mod_revision is still `expected_mod_revision` (0: the key must
    /// be absent); `false` when it changed since it was read.
    fn write_if_unchanged(
        &mut self,
        relative: &str,
        value: Option<Vec<u8>>,
        expected_mod_revision: i64,
    ) -> Result<bool, DcsError>;
    /// CAS-write `sync` (MOD == `expected_mod_revision`, 0: must be absent).
    fn write_sync(
        &mut self,
        record: &SyncRecord,
        expected_mod_revision: i64,
    ) -> Result<bool, DcsError> {
        self.write_if_unchanged(keys::SYNC, Some(to_json(record)), expected_mod_revision)
    }
    /// CAS-write `failover` (`None`: delete it) against its mod_revision.
    fn write_failover(
        &mut self,
        record: Option<&FailoverRecord>,
        expected_mod_revision: i64,
    ) -> Result<bool, DcsError> {
        self.write_if_unchanged(keys::FAILOVER, record.map(to_json), expected_mod_revision)
    }
    /// CAS-write `config` against its mod_revision.
    fn write_config(
        &mut self,
        record: &ClusterConfigRecord,
        expected_mod_revision: i64,
    ) -> Result<bool, DcsError> {
        self.write_if_unchanged(keys::CONFIG, Some(to_json(record)), expected_mod_revision)
    }
    /// Append `entry` to `history` if it is still at
    /// `expected_mod_revision` (0: absent).
    fn append_history(
        &mut self,
        entry: &HistoryEntry,
        expected_mod_revision: i64,
    ) -> Result<bool, DcsError>;
    /// Write `initialize` = `system_identifier` if absent (CREATE == 0);
    /// `false` when it already exists (compare it from [`Dcs::load`]).
    fn initialize(&mut self, system_identifier: u64) -> Result<bool, DcsError>;
}

/// The prefix of a cluster's keys: `{namespace}/{cluster}/`, with one
/// leading slash and no doubled ones (`/walrep` + `main` → `/walrep/main/`).
pub fn cluster_prefix(namespace: &str, cluster: &str) -> String {
    let ns = namespace.trim().trim_matches('/');
    let cluster = cluster.trim().trim_matches('/');
    if ns.is_empty() {
        format!("/{cluster}/")
    } else {
        format!("/{ns}/{cluster}/")
    }
}

/// One key read under a cluster's prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawKey {
    /// The key relative to the prefix (`leader`, `members/n1`).
    pub key: String,
    /// The value's bytes.
    pub value: Vec<u8>,
    /// The key's mod_revision.
    pub mod_revision: i64,
    /// The key's lease (0: none).
    pub lease: i64,
}

/// The [`ClusterView`] of one read of a prefix at `revision`: every key of
/// ours that parses in its field; every other key, and every value that
/// does not parse, in `unparsed` with the reason (never acted on).
pub fn view_from_keys(raw: Vec<RawKey>, revision: i64) -> ClusterView {
    let mut view = ClusterView {
        revision,
        ..ClusterView::default()
    };
    for k in raw {
        if let Err(why) = place(&mut view, &k) {
            view.unparsed.push((k.key, why));
        }
    }
    view.members.sort_by(|a, b| a.value.name.cmp(&b.value.name));
    view
}

/// The failover history key's new value: `current` (a JSON list, or no key
/// yet) with `entry` appended. Both stores then write it with a
/// compare-and-swap on the key's revision.
pub(crate) fn history_appended(
    current: Option<&[u8]>,
    entry: &HistoryEntry,
) -> Result<Vec<u8>, DcsError> {
    let mut entries: Vec<HistoryEntry> = match current {
        Some(bytes) => serde_json::from_slice(bytes)
            .map_err(|e| DcsError::Failed(format!("history does not parse: {e}")))?,
        None => Vec::new(),
    };
    entries.push(entry.clone());
    Ok(to_json(&entries))
}

fn versioned<T>(k: &RawKey, value: T) -> Option<Versioned<T>> {
    Some(Versioned {
        value,
        mod_revision: k.mod_revision,
        lease: k.lease,
    })
}

fn json<T: serde::de::DeserializeOwned>(k: &RawKey) -> Result<T, String> {
    serde_json::from_slice(&k.value).map_err(|e| format!("not a valid {} record: {e}", k.key))
}

/// Put one key into the view, or say why it does not belong there.
fn place(view: &mut ClusterView, k: &RawKey) -> Result<(), String> {
    match k.key.as_str() {
        keys::LEADER => {
            let name = std::str::from_utf8(&k.value)
                .map_err(|_| "the leader's name is not UTF-8".to_string())?;
            if name.is_empty() {
                return Err("the leader key is empty".into());
            }
            view.leader = versioned(k, name.to_string());
        }
        keys::SYNC => view.sync = versioned(k, json(k)?),
        keys::FAILOVER => view.failover = versioned(k, json(k)?),
        keys::CONFIG => view.config = versioned(k, json(k)?),
        keys::HISTORY => view.history = versioned(k, json(k)?),
        keys::INITIALIZE => {
            let text = std::str::from_utf8(&k.value).unwrap_or("");
            let id = text
                .trim()
                .parse()
                .map_err(|_| "initialize is not a decimal system identifier".to_string())?;
            view.initialize = versioned(k, id);
        }
        other => {
            let Some(name) = other.strip_prefix(keys::MEMBERS_PREFIX) else {
                return Err("not a walrep HA key".into());
            };
            let record: MemberRecord = json(k)?;
            if record.name != name {
                return Err(format!(
                    "the record names member '{}', not '{name}'",
                    record.name
                ));
            }
            view.members.extend(versioned(k, record));
        }
    }
    Ok(())
}

/// JSON of a record (these records always serialize).
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

// ---- in memory ----

/// One key of the in-memory store.
#[derive(Debug, Clone)]
struct Entry {
    value: Vec<u8>,
    mod_revision: i64,
    lease: i64,
}

#[derive(Debug, Default)]
struct MemoryState {
    keys: BTreeMap<String, Entry>,
    /// Lease id → expiry on the store's clock.
    leases: BTreeMap<i64, Millis>,
    revision: i64,
    next_lease: i64,
    unavailable: Option<DcsError>,
}

impl MemoryState {
    /// Drop expired leases and their keys, as etcd's lessor does.
    fn expire(&mut self, now: Millis) {
        let dead: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, &until)| until <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in dead {
            self.revoke(id);
        }
    }

    fn revoke(&mut self, id: i64) {
        self.leases.remove(&id);
        let before = self.keys.len();
        self.keys.retain(|_, e| e.lease != id);
        if self.keys.len() != before {
            self.revision += 1;
        }
    }

    fn mod_revision(&self, key: &str) -> i64 {
        self.keys.get(key).map_or(0, |e| e.mod_revision)
    }

    fn put(&mut self, key: &str, value: Vec<u8>, lease: i64) {
        self.revision += 1;
        let entry = Entry {
            value,
            mod_revision: self.revision,
            lease,
        };
        self.keys.insert(key.to_string(), entry);
    }

    fn delete(&mut self, key: &str) {
        if self.keys.remove(key).is_some() {
            self.revision += 1;
        }
    }
}

/// An in-memory store shared by several [`MemoryDcs`] (one per node), on a
/// clock the test moves ([`MemoryStore::advance_ms`]). Keys, revisions and
/// leases behave as etcd's: a lease not renewed within its TTL expires and
/// takes its keys with it.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<MemoryState>>,
    now_ms: Arc<AtomicU64>,
}

impl MemoryStore {
    /// An empty store at time 0.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// The store's clock now.
    pub fn now(&self) -> Millis {
        Millis(self.now_ms.load(Ordering::SeqCst))
    }

    /// Move the clock forward.
    pub fn advance_ms(&self, delta_ms: u64) {
        self.now_ms.fetch_add(delta_ms, Ordering::SeqCst);
    }

    /// Make every call fail with `error` (`None`: work again), to model a
    /// store without quorum or out of reach.
    pub fn set_unavailable(&self, error: Option<DcsError>) {
        self.lock().unavailable = error;
    }

    /// The value of a key (relative to any prefix: the full key), if any.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let now = self.now();
        let mut s = self.lock();
        s.expire(now);
        s.keys.get(key).map(|e| e.value.clone())
    }

    /// Put a key unconditionally without a lease (a test planting a value).
    pub fn put_raw(&self, key: &str, value: &[u8]) {
        self.lock().put(key, value.to_vec(), 0);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lock, fail if unavailable, expire leases: the start of every call.
    fn enter(&self) -> Result<std::sync::MutexGuard<'_, MemoryState>, DcsError> {
        let now = self.now();
        let mut s = self.lock();
        if let Some(e) = &s.unavailable {
            return Err(e.clone());
        }
        s.expire(now);
        Ok(s)
    }
}

/// One node's view of a [`MemoryStore`]: its name, prefix and lease.
#[derive(Debug, Clone)]
pub struct MemoryDcs {
    store: MemoryStore,
    prefix: String,
    name: String,
    ttl_ms: u64,
    lease: Option<i64>,
}

impl MemoryDcs {
    /// Node `name` of the cluster under `prefix` ([`cluster_prefix`]), with
    /// leases of `ttl_ms`.
    pub fn new(store: &MemoryStore, prefix: &str, name: &str, ttl_ms: u64) -> MemoryDcs {
        MemoryDcs {
            store: store.clone(),
            prefix: prefix.to_string(),
            name: name.to_string(),
            ttl_ms,
            lease: None,
        }
    }

    fn key(&self, relative: &str) -> String {
        format!("{}{relative}", self.prefix)
    }

    /// The node's live lease, or LeaseLost.
    fn live_lease(&self, s: &MemoryState) -> Result<i64, DcsError> {
        match self.lease {
            Some(id) if s.leases.contains_key(&id) => Ok(id),
            _ => Err(DcsError::LeaseLost(format!(
                "member {} holds no live lease",
                self.name
            ))),
        }
    }

    /// CAS-put a permanent key against its mod_revision.
    fn cas(
        &mut self,
        relative: &str,
        value: Option<Vec<u8>>,
        expected: i64,
    ) -> Result<bool, DcsError> {
        let key = self.key(relative);
        let mut s = self.store.enter()?;
        if s.mod_revision(&key) != expected {
            return Ok(false);
        }
        match value {
            Some(v) => s.put(&key, v, 0),
            None if expected == 0 => return Ok(false),
            None => s.delete(&key),
        }
        Ok(true)
    }
}

impl Dcs for MemoryDcs {
    fn load(&mut self) -> Result<ClusterView, DcsError> {
        let s = self.store.enter()?;
        let raw = s
            .keys
            .iter()
            .filter_map(|(k, e)| {
                Some(RawKey {
                    key: k.strip_prefix(&self.prefix)?.to_string(),
                    value: e.value.clone(),
                    mod_revision: e.mod_revision,
                    lease: e.lease,
                })
            })
            .collect();
        Ok(view_from_keys(raw, s.revision))
    }

    fn keepalive(&mut self) -> Result<Lease, DcsError> {
        let now = self.store.now();
        let mut s = self.store.enter()?;
        let id = match self.lease.filter(|id| s.leases.contains_key(id)) {
            Some(id) => id,
            None => {
                s.next_lease += 1;
                s.next_lease
            }
        };
        s.leases.insert(id, now.after_ms(self.ttl_ms));
        self.lease = Some(id);
        Ok(Lease {
            id,
            sent_at: now,
            ttl_ms: self.ttl_ms,
        })
    }

    fn acquire_leader(&mut self) -> Result<bool, DcsError> {
        let key = self.key(keys::LEADER);
        let mut s = self.store.enter()?;
        let lease = self.live_lease(&s)?;
        if s.keys.contains_key(&key) {
            return Ok(false);
        }
        s.put(&key, self.name.as_bytes().to_vec(), lease);
        Ok(true)
    }

    fn update_leader(&mut self) -> Result<bool, DcsError> {
        let key = self.key(keys::LEADER);
        let mut s = self.store.enter()?;
        let lease = self.live_lease(&s)?;
        match s.keys.get(&key) {
            Some(e) if e.value != self.name.as_bytes() => Ok(false),
            Some(e) if e.lease == lease => Ok(true),
            _ => {
                s.put(&key, self.name.as_bytes().to_vec(), lease);
                Ok(true)
            }
        }
    }

    fn release_leader(&mut self) -> Result<bool, DcsError> {
        let key = self.key(keys::LEADER);
        let mut s = self.store.enter()?;
        if s.keys
            .get(&key)
            .is_some_and(|e| e.value == self.name.as_bytes())
        {
            s.delete(&key);
            return Ok(true);
        }
        Ok(false)
    }

    fn publish_member(&mut self, record: &MemberRecord) -> Result<(), DcsError> {
        let key = self.key(&format!("{}{}", keys::MEMBERS_PREFIX, self.name));
        let mut s = self.store.enter()?;
        let lease = self.live_lease(&s)?;
        s.put(&key, to_json(record), lease);
        Ok(())
    }

    fn write_if_unchanged(
        &mut self,
        relative: &str,
        value: Option<Vec<u8>>,
        expected: i64,
    ) -> Result<bool, DcsError> {
        self.cas(relative, value, expected)
    }

    fn append_history(&mut self, entry: &HistoryEntry, expected: i64) -> Result<bool, DcsError> {
        let key = self.key(keys::HISTORY);
        let current = {
            let s = self.store.enter()?;
            s.keys.get(&key).map(|e| e.value.clone())
        };
        let appended = history_appended(current.as_deref(), entry)?;
        self.cas(keys::HISTORY, Some(appended), expected)
    }

    fn initialize(&mut self, system_identifier: u64) -> Result<bool, DcsError> {
        let key = self.key(keys::INITIALIZE);
        let mut s = self.store.enter()?;
        if s.keys.contains_key(&key) {
            return Ok(false);
        }
        s.put(&key, system_identifier.to_string().into_bytes(), 0);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walrep_states::ha::{FailoverKind, MemberRole};
    use walrep_states::{Lsn, TimelineId};

    const PREFIX: &str = "/walrep/main/";

    fn member(name: &str) -> MemberRecord {
        MemberRecord {
            name: name.into(),
            role: MemberRole::Standby,
            system_identifier: 7,
            timeline: TimelineId(1),
            flush_lsn: Lsn(0x100),
            replay_lsn: Lsn(0x80),
            repl_addr: "127.0.0.1:5433".into(),
            client_addr: "127.0.0.1:6380".into(),
            status_url: None,
            nofailover: false,
            healthy: true,
            ha_paused_seen: false,
            version: "0.1.0".into(),
        }
    }

    #[test]
    fn prefixes_are_normalised() {
        assert_eq!(cluster_prefix("/walrep", "main"), "/walrep/main/");
        assert_eq!(cluster_prefix("walrep/", "/main/"), "/walrep/main/");
        assert_eq!(cluster_prefix("", "main"), "/main/");
    }

    #[test]
    fn leader_key_cas_and_lease_expiry() {
        let store = MemoryStore::new();
        let mut n1 = MemoryDcs::new(&store, PREFIX, "n1", 10_000);
        let mut n2 = MemoryDcs::new(&store, PREFIX, "n2", 10_000);
        assert!(matches!(n1.acquire_leader(), Err(DcsError::LeaseLost(_))));
        let l1 = n1.keepalive().unwrap();
        assert_eq!((l1.sent_at, l1.ttl_ms), (Millis(0), 10_000));
        n2.keepalive().unwrap();
        assert!(n1.acquire_leader().unwrap());
        assert!(!n2.acquire_leader().unwrap());
        assert!(!n2.update_leader().unwrap());
        assert!(!n2.release_leader().unwrap());
        assert!(n1.update_leader().unwrap());
        let view = n2.load().unwrap();
        assert_eq!(view.leader_name(), Some("n1"));
        assert_eq!(view.leader.as_ref().unwrap().lease, l1.id);

        // n1 stops renewing: its key goes with its lease at the TTL, not
        // before; n2 renewed in between and takes over.
        store.advance_ms(9_999);
        n2.keepalive().unwrap();
        assert_eq!(n2.load().unwrap().leader_name(), Some("n1"));
        store.advance_ms(1);
        assert_eq!(n2.load().unwrap().leader, None);
        assert!(n2.acquire_leader().unwrap());
        // n1 comes back: a new lease, and the key is not its any more.
        let l1b = n1.keepalive().unwrap();
        assert_ne!(l1b.id, l1.id);
        assert!(!n1.update_leader().unwrap());
        assert!(n2.release_leader().unwrap());
        assert!(n1.update_leader().unwrap());
    }

    #[test]
    fn permanent_keys_are_compare_and_swap() {
        let store = MemoryStore::new();
        let mut n1 = MemoryDcs::new(&store, PREFIX, "n1", 10_000);
        n1.keepalive().unwrap();
        let sync = SyncRecord {
            leader: "n1".into(),
            sync_standbys: vec!["n2".into()],
        };
        assert!(!n1.write_sync(&sync, 5).unwrap());
        assert!(n1.write_sync(&sync, 0).unwrap());
        let rev = n1.load().unwrap().sync.unwrap().mod_revision;
        assert!(!n1.write_sync(&sync, 0).unwrap());
        assert!(n1.write_sync(&sync, rev).unwrap());

        let request = FailoverRecord {
            leader: Some("n1".into()),
            candidate: Some("n2".into()),
            kind: FailoverKind::Switchover,
            requested_at_ms: 1,
        };
        assert!(n1.write_failover(Some(&request), 0).unwrap());
        let f = n1.load().unwrap().failover.unwrap();
        assert_eq!(f.value, request);
        assert!(!n1.write_failover(None, f.mod_revision - 1).unwrap());
        assert!(n1.write_failover(None, f.mod_revision).unwrap());
        assert_eq!(n1.load().unwrap().failover, None);

        let entry = |tl| HistoryEntry {
            timeline: TimelineId(tl),
            switch_lsn: Lsn(0x200),
            leader: "n1".into(),
            at_ms: 2,
        };
        assert!(n1.append_history(&entry(2), 0).unwrap());
        let h = n1.load().unwrap().history.unwrap();
        assert!(!n1.append_history(&entry(3), 0).unwrap());
        assert!(n1.append_history(&entry(3), h.mod_revision).unwrap());
        assert_eq!(
            n1.load().unwrap().last_history_timeline(),
            Some(TimelineId(3))
        );

        assert!(n1.initialize(42).unwrap());
        assert!(!n1.initialize(43).unwrap());
        assert_eq!(n1.load().unwrap().initialize.unwrap().value, 42);

        assert!(n1
            .write_config(&ClusterConfigRecord { paused: true }, 0)
            .unwrap());
        assert!(n1.load().unwrap().paused());
    }

    #[test]
    fn members_and_strangers_in_the_view() {
        let store = MemoryStore::new();
        let mut n1 = MemoryDcs::new(&store, PREFIX, "n1", 10_000);
        n1.keepalive().unwrap();
        n1.publish_member(&member("n1")).unwrap();
        store.put_raw("/walrep/main/members/n9", &to_json(&member("n2")));
        store.put_raw("/walrep/main/sync", b"{not json");
        store.put_raw("/walrep/main/foo", b"bar");
        store.put_raw("/walrep/other/leader", b"x");
        let view = n1.load().unwrap();
        assert_eq!(view.members.len(), 1);
        assert_eq!(view.member("n1").unwrap().value, member("n1"));
        let unparsed: Vec<&str> = view.unparsed.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(unparsed, vec!["foo", "members/n9", "sync"]);
        assert!(view.blocking_unparsed().is_some());
        assert_eq!(view.leader, None);
        // The member key lives on the lease.
        store.advance_ms(10_000);
        assert!(n1.load().unwrap().members.is_empty());
        assert!(matches!(
            n1.publish_member(&member("n1")),
            Err(DcsError::LeaseLost(_))
        ));
    }

    #[test]
    fn an_unavailable_store_fails_every_call() {
        let store = MemoryStore::new();
        let mut n1 = MemoryDcs::new(&store, PREFIX, "n1", 10_000);
        n1.keepalive().unwrap();
        store.set_unavailable(Some(DcsError::NoQuorum("test".into())));
        assert!(matches!(n1.load(), Err(DcsError::NoQuorum(_))));
        assert!(matches!(n1.keepalive(), Err(DcsError::NoQuorum(_))));
        assert!(matches!(n1.acquire_leader(), Err(DcsError::NoQuorum(_))));
        store.set_unavailable(None);
        assert!(n1.acquire_leader().unwrap());
    }
}
