//! The standby runtime: drives the recovery machine of `walrep-states` with
//! events from its watchers and executes its actions.

pub mod receiver;
pub mod trigger;
