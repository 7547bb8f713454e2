//! The key-value store the WAL is applied to, its checkpoints under `base/`
//! and the control file.

mod apply;
pub mod checkpoint;
pub mod control;
pub mod map;
pub mod record;

pub use apply::ApplyError;
pub use control::{ClusterState, ControlFile};
pub use map::{Level, Store, Visibility};
