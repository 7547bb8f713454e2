//! One running node: opens the data directory, starts its threads (WAL
//! writer, checkpointer, archiver, listeners) and stops them.
