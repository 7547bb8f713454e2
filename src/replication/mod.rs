//! PostgreSQL's physical replication protocol: message codec, replication
//! commands, walsender, client (walreceiver side), slots and the registry of
//! connected standbys that synchronous replication listens to.
//!
//! # Layout
//!
//! - [`pgwire`]: protocol v3 messages as typed enums, incremental framing.
//! - [`sqlstate`]: the errors we send, with PostgreSQL's SQLSTATEs.
//! - SCRAM-SHA-256 (server and client, PostgreSQL's flavour) is
//!   [`crate::security::scram`]; connection strings are
//!   [`crate::config::conninfo`].
//! - [`command`]: the replication command grammar, parsed into an enum.
//! - [`source`]: [`source::ReplicationSource`], what a node must provide to
//!   serve WAL; `fake` (feature `test-util`) is an in-memory one for tests.
//! - [`registry`]: connected walsenders, their standbys' reports and lag.
//! - [`slots`]: persistent physical replication slots.
//! - [`server`]: the replication listener, sessions and walsenders.
//! - [`client`]: conninfo parsing and a replication client for walreceivers.

pub mod client;
pub mod command;
#[cfg(any(test, feature = "test-util"))]
pub mod fake;
pub mod pgwire;
pub mod registry;
pub mod server;
pub mod slots;
pub mod source;
pub mod sqlstate;
