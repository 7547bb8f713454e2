//! walrep: PostgreSQL's physical streaming replication rebuilt in Rust, for a
//! replicated key-value database.
//!
//! The standby's recovery is the typed, IO-free state machine of the
//! `walrep-states` crate; this crate is everything that touches the world:
//! files, sockets, threads and clocks.
//!
//! # Layout
//!
//! - [`datadir`]: the data directory's layout, creation and lock file.
//! - [`config`]: `walrep.toml`, its PostgreSQL-named parameters and `-c` overrides.
//! - [`wal`]: segment files, the record format, the group-commit WAL writer,
//!   the validating reader and timeline history files.
//! - [`store`]: the ordered key-value map the WAL is applied to, its
//!   visibility rules, checkpoints into `base/` and the control file.
//! - [`server`]: the Redis-protocol (RESP2) front end and its sessions.
//! - [`replication`]: PostgreSQL's replication protocol: codec, walsender,
//!   client (walreceiver side), slots, synchronous-replication wait queue.
//! - [`syncrep`]: synchronous replication: `synchronous_standby_names`, the
//!   LSN-ordered wait queues and their release from standby replies.
//! - [`archive`]: `archive_command` (the archiver) and `restore_command`.
//! - [`backup`]: base backups: BASE_BACKUP on a node, `walrep basebackup`.
//! - [`standby`]: drives the recovery machine: event sources and the action executor.
//! - [`status`]: HTTP `/status` (JSON) and `/metrics` (Prometheus).
//! - [`node`]: one running node: starts and stops its threads.
//! - [`viz`]: diagrams of the state machines and transition traces.
//! - [`mod@bench`]: `walrep bench`, commits/s and latency beside the disk's
//!   fdatasync rate and PostgreSQL's and Redis's figures.
//! - [`demo`]: `walrep demo`, the main job on loopback.
//! - [`cli`]: the `walrep` command line.

pub mod archive;
pub mod backup;
pub mod bench;
pub mod cli;
pub mod config;
pub mod datadir;
pub mod demo;
pub mod logging;
pub mod node;
pub mod replication;
pub mod server;
pub mod standby;
pub mod status;
pub mod store;
pub mod syncrep;
pub mod util;
pub mod viz;
pub mod wal;

pub use walrep_states as states;
pub use walrep_states::{Lsn, SegNo, TimelineHistory, TimelineId, WalSegSize};
