//! walrep: PostgreSQL's physical streaming replication rebuilt in Rust, for a
//! replicated key-value database.
//!
//! The standby's recovery is the typed, IO-free state machine of the
//! `walrep-states` crate (re-exported as [`states`]); this crate is
//! everything that touches the world: files, sockets, threads and clocks.
//! The `walrep` binary is a thin product around it (command line,
//! benchmarks, demo); none of that is part of this library.
//!
//! # Layout (the public surface)
//!
//! - [`wal`]: segment files, the record format, the group-commit WAL writer,
//!   the validating reader, timeline history files.
//! - [`storage`]: the one IO seam every durable write goes through (create,
//!   write, fsync, rename, remove), its fault-injecting implementation for
//!   tests and the wrapper that stops all writing at the first failed fsync.
//! - [`store`]: the ordered key-value map the WAL is applied to, its
//!   visibility rules, checkpoints into `base/` and the control file.
//! - [`replication`]: PostgreSQL's replication protocol: codec, commands,
//!   walsender, client (walreceiver side), slots.
//! - [`standby`]: the standby runtime that drives the recovery machine:
//!   event sources and the action executor.
//! - [`node`]: one running node: opens its data directory, recovers, starts
//!   and stops its threads.
//! - [`ports`]: loopback ports reserved for the servers a demo, a bench or
//!   a test launches on one machine.
//! - [`archive`]: `archive_command` (the archiver) and `restore_command`.
//! - [`backup`]: base backups: BASE_BACKUP on a node, `walrep basebackup`.
//! - [`security`]: SCRAM verifiers, secret files, password files, TLS
//!   configurations and the TLS-capable stream both ports use.
//! - [`status`]: HTTP `/status` and `/metrics` of a node's [`status::Snapshot`],
//!   with the table of every metric.
//! - [`config`]: `walrep.toml`, its PostgreSQL-named parameters and `-c`
//!   overrides.
//! - [`watch`]: the one way a position that moved wakes the threads
//!   waiting for it (a value plus coalesced tokens on a channel).
//! - [`ha`]: automatic failover on etcd: the consensus-store trait, its etcd
//!   client, the HA loop.
//! - [`viz`]: diagrams of the state machines, explored from the code, and
//!   renderings of transition traces.
//! - [`history`] (feature `history`): the failure suite's operation
//!   histories and the checker that reads them after a fault run.
//! - [`states`]: the `walrep-states` crate.
//!
//! Internal modules: `datadir` (layout and lock file), `server` (the Redis
//! front end), `syncrep` (synchronous replication's wait queues), `util`.

#![warn(missing_docs)]

pub mod archive;
pub mod backup;
pub mod config;
pub(crate) mod datadir;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod ha;
#[cfg(feature = "history")]
pub mod history;
pub mod node;
pub mod ports;
pub mod rejoin;
pub mod replication;
pub mod security;
pub(crate) mod server;
pub mod standby;
pub mod status;
pub mod storage;
pub mod store;
pub(crate) mod syncrep;
pub(crate) mod util;
pub mod viz;
pub mod wal;
pub mod watch;

pub use walrep_states as states;
pub use walrep_states::{Lsn, SegNo, TimelineHistory, TimelineId, WalSegSize};
