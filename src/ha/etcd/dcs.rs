//! [`Dcs`] on etcd: one node's reads and writes of its cluster's keys,
//! over [`EtcdClient`], with the node's one lease (Patroni's layout).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use walrep_states::ha::{keys, ClusterView, HistoryEntry, Lease, MemberRecord};
use walrep_states::Millis;

use super::{leader, Compare, CompareTarget, EtcdClient, EtcdError, Txn, TxnOp};
use crate::ha::dcs::{history_appended, to_json, view_from_keys, Dcs, DcsError, RawKey};

/// A monotonic clock as [`Millis`] since the first call in this process:
/// the default clock of [`EtcdDcs`] (the HA loop's own clock must be the
/// same one, as lease deadlines are compared with it).
pub fn monotonic_now() -> Millis {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    Millis(start.elapsed().as_millis() as u64)
}

/// One node's store on etcd: its cluster prefix, its name and its lease.
pub struct EtcdDcs {
    client: EtcdClient,
    prefix: String,
    name: String,
    ttl: Duration,
    clock: fn() -> Millis,
    /// The node's lease, once granted.
    lease: Option<Lease>,
}

impl std::fmt::Debug for EtcdDcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdDcs")
            .field("prefix", &self.prefix)
            .field("name", &self.name)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl EtcdDcs {
    /// Node `name` of the cluster under `prefix`
    /// ([`crate::ha::dcs::cluster_prefix`]) with leases of `ttl` (etcd
    /// raises a TTL under its minimum, 2 s by default), timed by
    /// [`monotonic_now`].
    pub fn new(client: EtcdClient, prefix: &str, name: &str, ttl: Duration) -> EtcdDcs {
        EtcdDcs {
            client,
            prefix: prefix.to_string(),
            name: name.to_string(),
            ttl,
            clock: monotonic_now,
            lease: None,
        }
    }

    /// Use another monotonic clock for `sent_at` (the HA loop's).
    pub fn with_clock(mut self, clock: fn() -> Millis) -> EtcdDcs {
        self.clock = clock;
        self
    }

    /// The client underneath (for reads of the CLI).
    pub fn client(&self) -> &EtcdClient {
        &self.client
    }

    /// The node's lease, as last granted or renewed.
    pub fn lease(&self) -> Option<Lease> {
        self.lease
    }

    /// Revoke the node's lease (a clean stop: its member key and, if it
    /// still holds it, the leader key go at once).
    pub fn revoke_lease(&mut self) -> Result<(), DcsError> {
        if let Some(lease) = self.lease.take() {
            match self.client.lease_revoke(lease.id) {
                Ok(()) | Err(EtcdError::LeaseNotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn key(&self, relative: &str) -> Vec<u8> {
        format!("{}{relative}", self.prefix).into_bytes()
    }

    fn lease_id(&self) -> Result<i64, DcsError> {
        self.lease
            .map(|l| l.id)
            .ok_or_else(|| DcsError::LeaseLost(format!("member {} holds no lease yet", self.name)))
    }

    /// Put `relative` = `value` (or delete it) if its mod_revision is still
    /// `expected` (0: the key must be absent).
    fn cas(&self, relative: &str, value: Option<Vec<u8>>, expected: i64) -> Result<bool, DcsError> {
        let key = self.key(relative);
        let guard = if expected == 0 {
            Compare::absent(&key)
        } else {
            Compare::equal(&key, CompareTarget::Mod(expected))
        };
        let op = match value {
            Some(v) => TxnOp::put(&key, &v, 0),
            None if expected == 0 => return Ok(false),
            None => TxnOp::delete(&key),
        };
        let txn = Txn {
            compare: vec![guard],
            success: vec![op],
            failure: vec![],
        };
        Ok(self.client.txn(&txn)?.succeeded)
    }

    fn grant(&mut self) -> Result<Lease, DcsError> {
        let sent_at = (self.clock)();
        let granted = self.client.lease_grant(self.ttl.as_secs().max(1) as i64)?;
        let lease = Lease {
            id: granted.id,
            sent_at,
            ttl_ms: granted.ttl_s.max(0) as u64 * 1000,
        };
        self.lease = Some(lease);
        Ok(lease)
    }
}

impl Dcs for EtcdDcs {
    fn load(&mut self) -> Result<ClusterView, DcsError> {
        let r = self.client.range_prefix(self.prefix.as_bytes())?;
        let raw = r
            .kvs
            .into_iter()
            .map(|kv| {
                let full = String::from_utf8_lossy(&kv.key).into_owned();
                RawKey {
                    key: full.strip_prefix(&self.prefix).unwrap_or(&full).to_string(),
                    value: kv.value,
                    mod_revision: kv.mod_revision,
                    lease: kv.lease,
                }
            })
            .collect();
        Ok(view_from_keys(raw, r.header.revision))
    }

    fn keepalive(&mut self) -> Result<Lease, DcsError> {
        let Some(lease) = self.lease else {
            return self.grant();
        };
        let sent_at = (self.clock)();
        match self.client.lease_keepalive(lease.id) {
            Ok(ttl_s) => {
                let renewed = Lease {
                    id: lease.id,
                    sent_at,
                    ttl_ms: ttl_s as u64 * 1000,
                };
                self.lease = Some(renewed);
                Ok(renewed)
            }
            Err(EtcdError::LeaseNotFound { .. }) => {
                tracing::warn!(member = %self.name, lease = lease.id, "the lease expired; granting a new one");
                self.grant()
            }
            Err(e) => Err(e.into()),
        }
    }

    fn acquire_leader(&mut self) -> Result<bool, DcsError> {
        let lease = self.lease_id()?;
        let key = self.key(keys::LEADER);
        Ok(leader::acquire(&self.client, &key, self.name.as_bytes(), lease)?.held())
    }

    fn update_leader(&mut self) -> Result<bool, DcsError> {
        let lease = self.lease_id()?;
        let key = self.key(keys::LEADER);
        Ok(leader::update(&self.client, &key, self.name.as_bytes(), lease)?.held())
    }

    fn release_leader(&mut self) -> Result<bool, DcsError> {
        let key = self.key(keys::LEADER);
        Ok(leader::release(&self.client, &key, self.name.as_bytes())?)
    }

    fn publish_member(&mut self, record: &MemberRecord) -> Result<(), DcsError> {
        let lease = self.lease_id()?;
        let key = self.key(&format!("{}{}", keys::MEMBERS_PREFIX, self.name));
        self.client.put(&key, &to_json(record), lease)?;
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
        let current = self.client.get(&self.key(keys::HISTORY))?;
        if current.as_ref().map_or(0, |kv| kv.mod_revision) != expected {
            return Ok(false);
        }
        let appended = history_appended(current.as_ref().map(|kv| kv.value.as_slice()), entry)?;
        self.cas(keys::HISTORY, Some(appended), expected)
    }

    fn initialize(&mut self, system_identifier: u64) -> Result<bool, DcsError> {
        let key = self.key(keys::INITIALIZE);
        let txn = Txn {
            compare: vec![Compare::absent(&key)],
            success: vec![TxnOp::put(
                &key,
                system_identifier.to_string().as_bytes(),
                0,
            )],
            failure: vec![],
        };
        Ok(self.client.txn(&txn)?.succeeded)
    }
}
