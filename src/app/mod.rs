//! The product around the library: what only the `walrep` binary needs.
//!
//! # Layout
//! - [`cli`]: the `walrep` command line (clap) and each subcommand.
//! - [`bench`]: `walrep bench`, figures beside the disk, PostgreSQL and Redis
//!   measured in the same run.
//! - [`demo`]: `walrep demo`, the main job on loopback.
//! - [`logging`]: the tracing subscriber.
//! - [`progress`]: progress bars and lines of `walrep basebackup`.

pub mod bench;
pub mod cli;
pub mod demo;
pub mod logging;
pub mod password;
pub mod progress;
