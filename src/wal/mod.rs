//! The write-ahead log: segment files named like PostgreSQL's, the record
//! format (see docs/wal-format.md), the group-commit WAL writer, the
//! validating reader and timeline history files.
