//! Automatic failover on etcd, as Patroni does it for PostgreSQL: a leader
//! key held under a lease by the primary, member keys, and a key naming the
//! synchronous standbys the primary waits for, so that only a standby that
//! holds every acknowledged synchronous write may take over.
//!
//! # Layout
//! - [`dcs`]: what the HA loop needs from a consensus store (the
//!   distributed configuration store, in Patroni's words), as a trait.
//! - [`etcd`]: that trait on etcd 3.4+ through its JSON gateway, over a
//!   blocking HTTP client.
//! - [`control`]: the HA loop's hands on the local node (its state, the
//!   write gate, promote, follow, demote).
//! - [`run`]: the HA thread, one cycle per `ha_loop_wait`.
//! - [`start`]: the loop `walrep start` runs, on etcd.
//! - [`slots`]: the leader's replication slots for the other members.
//! - [`status`]: what the last cycle found, for INFO, /status and /metrics.
//! - [`supervisor`]: `walrep start` under HA: the node and its HA thread
//!   in one process; a demotion stops, rejoins and restarts the node.
//!
//! The decisions themselves are pure and live in `walrep_states::ha`.

pub mod control;
pub mod dcs;
pub mod etcd;
pub mod run;
pub mod slots;
pub mod start;
pub mod status;
pub mod supervisor;
