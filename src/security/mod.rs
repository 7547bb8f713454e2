//! What keeps secrets secret and strangers out, shared by both ports:
//! SCRAM-SHA-256 verifiers in PostgreSQL's format (never a clear
//! password), files that hold secrets (0600), libpq's password file, and
//! TLS with rustls (server and client configuration, and a blocking TLS
//! stream a reader thread and a writer can share).
//!
//! # Layout
//! - [`scram`]: SCRAM-SHA-256 as PostgreSQL speaks it (server and client),
//!   for the replication port's authentication.
//! - [`verifier`]: `SCRAM-SHA-256$iter:salt$StoredKey:ServerKey`: make one,
//!   parse one, check a clear password against one (Redis's AUTH).
//! - [`secret_file`]: write a file only its owner can read.
//! - [`roles`]: the roles of both ports, parsed once from the configuration.
//! - [`passfile`]: PostgreSQL's password file (`~/.pgpass` format).
//! - [`tls`]: certificates and keys loaded into rustls configurations, with
//!   start-up errors that name the file.
//! - [`stream`]: [`stream::NetStream`], a TCP connection with or without
//!   TLS, cloneable so one thread reads while another writes.

pub mod passfile;
pub mod roles;
pub mod scram;
pub mod secret_file;
pub mod stream;
pub mod tls;
pub mod verifier;

pub use stream::NetStream;

/// Shown in place of a secret.
pub const REDACTED: &str = "********";
pub use verifier::{ScramVerifier, VerifierError};
