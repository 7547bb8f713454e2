//! Base backups: BASE_BACKUP served by a running primary or standby, and
//! `walrep basebackup`, the client that turns the stream into a data
//! directory a standby (or a copy) starts from.
//!
//! # Layout
//!
//! - `pin`: what a running backup pins (snapshot, WAL from its redo point).
//! - `label`: `backup_label`, PostgreSQL's fields.
//! - `crc32c`: the manifest's checksum, on the CPU's own instruction.
//! - `manifest`: `backup_manifest` (PostgreSQL's format) for pg_verifybackup:
//!   built by the server for pg_basebackup and by `walrep basebackup` for
//!   its copies, read back and checked against a copy.
//! - `written`: the files `walrep basebackup` wrote, with their checksums
//!   (the copy's manifest, journaled for `--resume`).
//! - [`tarstream`]: tar members into CopyData messages (progress, MAX_RATE).
//! - [`server`]: the node's BASE_BACKUP.
//! - [`standby_backup`]: the end of a backup taken from a standby.
//! - [`extract`]: safe extraction of the archive stream into a directory.
//! - `earlycheck`: each large file read back as soon as it is written,
//!   while the other jobs copy.
//! - `endcheck`: the copy checked against its manifest before it is
//!   marked complete (each file read back unless checked early and
//!   unchanged since).
//! - [`verify`]: checks of a copied data directory.
//! - [`standby_config`]: `standby.signal` and `primary_conninfo` (`-R`).
//! - `walfetch`: a parallel backup's WAL, by WAL_RANGE during the copy.
//! - [`resume`]: what an interrupted copy keeps when it is resumed.
//! - [`client`]: `walrep basebackup`.

pub mod client;
pub(crate) mod crc32c;
pub(crate) mod earlycheck;
pub(crate) mod endcheck;
pub mod error;
pub mod extract;
pub(crate) mod label;
pub(crate) mod manifest;
pub(crate) mod pin;
pub mod resume;
pub mod server;
pub mod source;
pub mod standby_backup;
pub mod standby_config;
pub mod tarstream;
pub mod verify;
pub(crate) mod walfetch;
pub(crate) mod written;
