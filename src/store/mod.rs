//! The key-value store the WAL is applied to, its checkpoints under `base/`
//! and the control file.

pub mod checkpoint;
pub mod control;
pub mod map;
pub mod record;

pub use control::{ClusterState, ControlFile};
pub use map::{Level, Store, Visibility};
