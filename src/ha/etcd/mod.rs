//! etcd v3 through its JSON gateway (`/v3/`), over a blocking HTTP client.
//!
//! etcd 3.4 (Debian's `etcd-server`) serves its v3 API as JSON on the client
//! port: every operation is one `POST` with a JSON body, so no gRPC stack
//! and no async runtime is needed. Patroni talks to etcd the same way.
//!
//! # Layout
//! - [`EtcdClient`] (client.rs): range, put, delete, txn (with nested txns),
//!   lease grant / keepalive / revoke / time-to-live; every call bounded by
//!   one deadline, endpoints tried in turn with counted, backed-off retries.
//! - [`EtcdDcs`] (dcs.rs): the HA loop's [`crate::ha::dcs::Dcs`] on etcd.
//! - [`leader`]: the leader key's acquire / update / release txns.
//! - wire.rs: the gateway's JSON (base64 bytes, int64 as strings, absent
//!   fields as zero), read without ever panicking on what comes back.
//! - [`EtcdError`]: what went wrong, mapped from the gateway's gRPC code and
//!   message (not the HTTP status, which differs between gateway versions).

mod client;
mod dcs;
pub mod leader;
mod wire;

use std::time::Duration;

pub use client::EtcdClient;
pub use dcs::{monotonic_now, EtcdDcs};
pub use wire::{
    prefix_range_end, Compare, CompareResult, CompareTarget, KeyValue, Lease, LeaseTimeToLive,
    RangeResponse, ResponseHeader, Txn, TxnOp, TxnOpResponse, TxnResponse,
};

/// Where etcd is and how long a call may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs of the members (`http://host:port`), tried in turn.
    pub endpoints: Vec<String>,
    /// The bound on one call, every retry included (`ha_retry_timeout`).
    pub timeout: Duration,
    /// Most attempts of one call over all endpoints (at least 1).
    pub max_attempts: u32,
}

impl EtcdConfig {
    /// `endpoints` with a 3 s bound (Patroni's least `retry_timeout`) and
    /// three attempts per endpoint.
    pub fn new(endpoints: Vec<String>) -> EtcdConfig {
        let max_attempts = (endpoints.len() as u32).saturating_mul(3).max(3);
        EtcdConfig {
            endpoints,
            timeout: Duration::from_secs(3),
            max_attempts,
        }
    }

    /// Endpoints from a comma-separated list (`ha_endpoints`, `--endpoints`).
    pub fn from_list(list: &str) -> EtcdConfig {
        EtcdConfig::new(
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        )
    }
}

/// What went wrong talking to etcd.
///
/// [`EtcdError::maybe_applied`] says whether a write that failed this way
/// may still have taken effect: such an outcome must be settled with a
/// linearizable read before anything is concluded from it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    /// The endpoint list is empty.
    #[error("no etcd endpoint given")]
    NoEndpoints,
    /// An endpoint is not `http://host:port`.
    #[error("bad etcd endpoint '{endpoint}': {why}")]
    BadEndpoint {
        /// The endpoint as given (cut to 80 characters).
        endpoint: String,
        /// What is wrong with it.
        why: String,
    },
    /// No endpoint could be connected to: the request was not sent.
    #[error("etcd is unreachable: {attempts} connection attempt(s) to {endpoints} failed (last: {last})")]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// How many connections were attempted.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// No answer within the bound: a write may or may not have been applied.
    #[error("etcd at {endpoint} did not answer within {timeout_ms} ms (a write may or may not have been applied)")]
    Timeout {
        /// The endpoint(s) waited on.
        endpoint: String,
        /// The bound that ran out.
        timeout_ms: u64,
    },
    /// The connection broke after the request went out: a write may or may
    /// not have been applied.
    #[error("the connection to etcd at {endpoint} broke during the request (a write may or may not have been applied): {why}")]
    ConnectionLost {
        /// The endpoint.
        endpoint: String,
        /// The transport's error.
        why: String,
    },
    /// The member has no etcd leader (no quorum): nothing was applied.
    #[error("etcd at {endpoint} has no leader (quorum lost?): {message}")]
    NoLeader {
        /// The last endpoint that said so.
        endpoint: String,
        /// etcd's message.
        message: String,
    },
    /// etcd could not complete the request in its own time (its raft did
    /// not commit: quorum lost, leader changed): a write may or may not have
    /// been applied.
    #[error("etcd at {endpoint} could not complete the request (a write may or may not have been applied): {message} (gRPC code {code})")]
    Unavailable {
        /// The endpoint.
        endpoint: String,
        /// The gRPC code (14 unavailable, 4 deadline exceeded, 2 unknown).
        code: i64,
        /// etcd's message.
        message: String,
    },
    /// The lease expired or was revoked.
    #[error("etcd lease {id} not found (it expired or was revoked)")]
    LeaseNotFound {
        /// The lease's id.
        id: i64,
    },
    /// etcd refused the request as such (bad argument, compacted revision,
    /// database full…): repeating it gives the same answer.
    #[error("etcd refused the request: {message} (gRPC code {code})")]
    Rejected {
        /// The gRPC code.
        code: i64,
        /// etcd's message.
        message: String,
    },
    /// The answer is not etcd's JSON (a wrong port, a proxy, a newer API).
    #[error("bad response from {endpoint} (HTTP status {status}): {why}")]
    BadResponse {
        /// The endpoint.
        endpoint: String,
        /// The HTTP status (0: none).
        status: u16,
        /// What could not be read.
        why: String,
    },
}

impl EtcdError {
    /// Whether a write that failed this way may still have been applied.
    pub fn maybe_applied(&self) -> bool {
        matches!(
            self,
            EtcdError::Timeout { .. }
                | EtcdError::ConnectionLost { .. }
                | EtcdError::Unavailable { .. }
        )
    }
}
