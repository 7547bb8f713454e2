//! walrep-states: the typed state machines of walrep and the value types the
//! runtime shares with them.
//!
//! # Contract
//!
//! This crate is deterministic and does no IO: no files, sockets, threads,
//! clocks, sleeping or randomness. Time is always an argument; a machine tells
//! its caller what to do next through actions and when it next needs to be
//! woken through `poll_timeout`. `states/clippy.toml` enforces the list of
//! forbidden APIs and CI runs clippy on this crate with `-D warnings`.
//! That is what makes every transition drawable, snapshot-testable and
//! explorable by a seeded simulator long before a socket is opened.
//!
//! # Layout
//!
//! - [`lsn`]: WAL positions (`Lsn`, printed `X/X` as PostgreSQL does),
//!   timeline ids, segment numbers and PostgreSQL-style WAL file names.
//! - [`ha`]: automatic failover decisions (leader key, sync key, who may
//!   promote), pure.
//! - [`history`]: timeline history (`TTTTTTTT.history` text) as data.
//! - [`time`]: [`Millis`], time as a value.
//! - [`recovery`]: the standby's recovery machine ([`Recovery`]): events in,
//!   actions out; its exploration, trace records and invariants.

#![warn(missing_docs)]

pub mod ha;
pub mod history;
pub mod lsn;
pub mod recovery;
pub mod time;

pub use history::{HistoryError, TimelineHistory, TimelineSpan};
pub use lsn::{Lsn, ParseLsnError, SegNo, TimelineId, WalSegSize, WalSegSizeError};
pub use recovery::{Action, Event, Recovery, RecoveryConfig, StateKind, Transition};
pub use time::Millis;
