//! The key-value store the WAL is applied to, its checkpoints under `base/`
//! and the control file (with its one owner in a running node).

// Being documented item by item; remove once `missing_docs` is clean here.
#![allow(missing_docs)]

mod apply;
pub mod checkpoint;
pub mod control;
mod control_owner;
pub mod map;
pub mod record;

pub use apply::ApplyError;
pub use control::{ClusterState, ControlFile};
pub use control_owner::ControlFileOwner;
pub use map::{Level, Store, Visibility};
