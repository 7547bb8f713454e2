//! The consensus store the HA loop uses, as a trait.
