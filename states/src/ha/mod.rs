//! Automatic failover decisions: what one node does in one HA cycle, as a pure function of what it reads from the consensus store and of its own state.
