//! The HA loop `walrep start` runs beside a node with `ha_enabled`: it
//! waits for the node's first start (its real ports are known then),
//! builds the decision state and the etcd store from the configuration,
//! and runs cycles until the supervisor stops it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use walrep_states::ha::HaState;

use super::control::NodeSlot;
use super::dcs::{cluster_prefix, Dcs, DcsError};
use super::etcd::{monotonic_now, EtcdClient, EtcdConfig, EtcdDcs};
use super::run::HaStore;
use super::supervisor::HaLoop;
use crate::config::Config;

/// How often the loop looks for the node's first start.
const ATTACH_POLL: Duration = Duration::from_millis(50);

/// The HA loop's clock: the etcd store's, so lease times and fence
/// deadlines compare.
pub fn clock() -> walrep_states::Millis {
    monotonic_now()
}

/// The loop for `walrep start` (configuration errors are logged and leave
/// the node fenced: a node that cannot take part never writes).
pub fn ha_loop() -> HaLoop {
    Box::new(move |slot: Arc<NodeSlot>, stop: Arc<AtomicBool>| {
        let node = loop {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            if let Some(node) = slot.node() {
                break node;
            }
            std::thread::sleep(ATTACH_POLL);
        };
        let config = crate::server::Backend::config(&*node);
        if config.ha_use_slots.0 {
            let ttl_ms = config
                .ha_member_slots_ttl
                .get()
                .map_or(u64::MAX, |d| d.as_millis() as u64);
            let managed = super::slots::load_managed(&node.dir.root);
            slot.set_member_slots(super::slots::MemberSlots::new(
                &config.ha_member_name().unwrap_or_default(),
                ttl_ms,
                managed,
            ));
        }
        drop(node);
        let ha = super::run::ha_config(&config, (config.port, config.replication_port));
        let state = match HaState::new(ha) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("HA cannot start, the node stays fenced: {e}");
                return;
            }
        };
        let store = match store(&config) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("HA cannot start, the node stays fenced: {e}");
                return;
            }
        };
        if config.ha_allow_async_failover.0 {
            tracing::warn!("ha_allow_async_failover is on: an asynchronous standby may take over when no synchronous standby is alive, and writes acknowledged by the old primary may then be lost");
        }
        super::run::run(state, store, slot, stop);
    })
}

/// The etcd store of this member.
fn store(config: &Config) -> Result<EtcdDcs, String> {
    let mut etcd = EtcdConfig::new(config.ha_endpoint_list()?);
    etcd.timeout = config
        .ha_retry_timeout
        .get()
        .unwrap_or(Duration::from_secs(3));
    let client = EtcdClient::new(&etcd).map_err(|e| e.to_string())?;
    let name = config.ha_member_name().unwrap_or_default();
    let ttl = config.ha_ttl.get().unwrap_or(Duration::from_secs(10));
    Ok(EtcdDcs::new(
        client,
        &cluster_prefix(&config.ha_namespace, &config.ha_cluster_name),
        &name,
        ttl,
    ))
}

impl<D: Dcs + Send> HaStore for D {
    type Error = DcsError;
    fn load(&mut self) -> Result<walrep_states::ha::ClusterView, DcsError> {
        Dcs::load(self)
    }
    fn keepalive(&mut self) -> Result<walrep_states::ha::Lease, DcsError> {
        Dcs::keepalive(self)
    }
    fn acquire_leader(&mut self) -> Result<bool, DcsError> {
        Dcs::acquire_leader(self)
    }
    fn update_leader(&mut self) -> Result<bool, DcsError> {
        Dcs::update_leader(self)
    }
    fn release_leader(&mut self) -> Result<bool, DcsError> {
        Dcs::release_leader(self)
    }
    fn publish_member(&mut self, r: &walrep_states::ha::MemberRecord) -> Result<(), DcsError> {
        Dcs::publish_member(self, r)
    }
    fn write_sync(
        &mut self,
        r: &walrep_states::ha::SyncRecord,
        rev: i64,
    ) -> Result<bool, DcsError> {
        Dcs::write_sync(self, r, rev)
    }
    fn write_failover(
        &mut self,
        r: Option<&walrep_states::ha::FailoverRecord>,
        rev: i64,
    ) -> Result<bool, DcsError> {
        Dcs::write_failover(self, r, rev)
    }
    fn append_history(
        &mut self,
        e: &walrep_states::ha::HistoryEntry,
        rev: i64,
    ) -> Result<bool, DcsError> {
        Dcs::append_history(self, e, rev)
    }
    fn initialize(&mut self, id: u64) -> Result<bool, DcsError> {
        Dcs::initialize(self, id)
    }
}
