//! The key-value store the WAL is applied to, its checkpoints under `base/`
//! and the control file.
