//! PostgreSQL's physical replication protocol: message codec, replication
//! commands, walsender, client (walreceiver side), slots and the
//! synchronous-replication wait queue.
