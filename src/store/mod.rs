//! The key-value store the WAL is applied to, its checkpoints under `base/`
//! and the control file (with its one owner in a running node).
//!
//! # Layout
//! - [`value`]: what a key holds (string, hash, list, set; its expiry) and
//!   how each WAL operation changes it.
//! - [`record`]: the key-value WAL record and its operations.
//! - [`map`]: the ordered map of keys to versions, with visibility by
//!   durability level.
//! - [`txn`]: reading it (released states) and writing it (one record per
//!   command or transaction).
//! - [`replay`]: applying replayed WAL, exactly once over a fuzzy snapshot.
//! - [`checkpoint`]: snapshots under `base/`; [`control`]: the control file,
//!   serialised by its one owner in a running node (`ControlFileOwner`).
//! - `codec` (internal): the byte codec records and snapshots share.

pub mod apply;
pub mod checkpoint;
pub(crate) mod codec;
pub mod control;
mod control_owner;
pub mod map;
pub mod record;
pub mod replay;
pub mod txn;
pub mod value;

pub use control::{ClusterState, ControlFile};
pub use control_owner::{history_id_of, ControlFileOwner};
pub use map::{Level, Store, Visibility};
pub use replay::ApplyError;
pub use txn::{ReadView, Reader, Stamp, Stepping, WriteTxn};
pub use value::{Kind, Slot, Value};
