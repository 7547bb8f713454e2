//! The product around the library: what only the `walrep` binary needs.
//!
//! # Layout
//! - [`cli`]: the `walrep` command line (clap) and each subcommand.
//! - [`bench`]: `walrep bench`, figures beside the disk, PostgreSQL and Redis
//!   measured in the same run.
//! - [`demo`]: `walrep demo`, the main job on loopback.
//! - [`ha_cli`]: `walrep ha`, the HA cluster's members and requests on etcd.
//! - [`logging`]: the tracing subscriber.
//! - [`progress`]: progress bars and lines of `walrep basebackup`.

pub mod bench;
pub mod cli;
pub mod demo;
pub mod ha_cli;
pub mod logging;
pub mod password;
pub mod progress;
