//! The blocking etcd v3 client: one POST per operation to the JSON
//! gateway, every call bounded by one deadline, endpoints tried in turn.
//!
//! # Retries
//! A call has one budget (`EtcdConfig::timeout`) and a counted number of
//! attempts. An attempt that never reached etcd (connection refused, no
//! route, connect timeout), or that etcd refused at once because its member
//! has no leader, is tried on the next endpoint after a short back-off.
//! An attempt that may have been applied (no answer in time, connection
//! broken after the request went out, etcd's own "request timed out") is
//! retried only for operations that are safe to repeat (reads, keepalive,
//! revoke); for a write it ends the call with an error whose
//! [`EtcdError::maybe_applied`] is true, and the caller settles the outcome
//! with a linearizable read (every write of the HA loop is a CAS, so that is
//! always possible).

use std::io::Read as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::wire::{self, GrpcError, WireError};
use super::{
    EtcdConfig, EtcdError, Lease, LeaseTimeToLive, RangeResponse, ResponseHeader, Txn, TxnResponse,
};

/// Most bytes of a response read: a range of a whole cluster prefix is a
/// few kB; anything near this is not etcd's answer to us.
const MAX_RESPONSE_BYTES: u64 = 16 << 20;

/// The first back-off between attempts; it doubles up to
/// [`MAX_BACKOFF`], and never runs past the call's deadline.
const FIRST_BACKOFF: Duration = Duration::from_millis(25);
const MAX_BACKOFF: Duration = Duration::from_millis(400);

/// The least time one attempt of a repeatable call gets, so that splitting
/// the budget between endpoints leaves each a real chance.
const MIN_ATTEMPT: Duration = Duration::from_millis(500);

/// How many bytes of an unreadable body an error quotes.
const QUOTE_BYTES: usize = 160;

/// Whether repeating an operation after it may have been applied is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Reads, keepalive, revoke: the same effect however often.
    Safe,
    /// Writes: a repeat could apply twice; stop at "maybe applied".
    Unsafe,
}

/// How one attempt ended when it did not succeed.
enum Failure {
    /// Never reached etcd, or refused before anything was proposed.
    NotApplied(EtcdError),
    /// May have been applied.
    Maybe(EtcdError),
    /// A definite answer: no retry changes it.
    Final(EtcdError),
}

/// A blocking client of etcd's v3 JSON gateway; cheap to share between
/// threads (`&self` everywhere).
pub struct EtcdClient {
    /// Base URLs (`http://host:port`), validated.
    endpoints: Vec<String>,
    /// Index of the endpoint that answered last: tried first next time.
    preferred: AtomicUsize,
    agent: ureq::Agent,
    timeout: Duration,
    max_attempts: u32,
    /// Attempts beyond each call's first, since the client was made.
    retries_total: AtomicU64,
}

impl std::fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdClient")
            .field("endpoints", &self.endpoints)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Check one endpoint: `http://host:port`, nothing after it but a slash.
fn validate_endpoint(raw: &str) -> Result<String, EtcdError> {
    let bad = |why: &str| EtcdError::BadEndpoint {
        endpoint: raw.chars().take(80).collect(),
        why: why.to_string(),
    };
    let trimmed = raw.trim().trim_end_matches('/');
    if trimmed.starts_with("https://") {
        return Err(bad("TLS to etcd is not supported yet: use http://"));
    }
    let Some(authority) = trimmed.strip_prefix("http://") else {
        return Err(bad("expected http://host:port"));
    };
    let Some((host, port)) = authority.rsplit_once(':') else {
        return Err(bad("expected http://host:port (the port is missing)"));
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.[]:_".contains(c));
    if !host_ok {
        return Err(bad("the host is not a host name or an IP address"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(format!("http://{authority}")),
        _ => Err(bad("the port is not a number from 1 to 65535")),
    }
}

impl EtcdClient {
    /// A client of the endpoints in `config`; fails on an empty or
    /// malformed endpoint list (nothing is contacted yet).
    pub fn new(config: &EtcdConfig) -> Result<EtcdClient, EtcdError> {
        let endpoints = config
            .endpoints
            .iter()
            .map(|e| validate_endpoint(e))
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // A fresh connection per request: a pooled one that etcd closed
            // would make a write look "maybe applied" when it never left.
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .user_agent("walrep-etcd")
            .build()
            .into();
        Ok(EtcdClient {
            endpoints,
            preferred: AtomicUsize::new(0),
            agent,
            timeout: config.timeout,
            max_attempts: config.max_attempts.max(1),
            retries_total: AtomicU64::new(0),
        })
    }

    /// The validated endpoints.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The bound on every call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Attempts beyond the first of each call, since the client was made.
    pub fn retries_total(&self) -> u64 {
        self.retries_total.load(Ordering::Relaxed)
    }

    /// Linearizable read of one key (`range_end` empty) or of the range
    /// [`key`, `range_end`).
    pub fn range(&self, key: &[u8], range_end: &[u8]) -> Result<RangeResponse, EtcdError> {
        let body = wire::range_request(key, range_end);
        self.call("/v3/kv/range", &body, Repeat::Safe, wire::range_response)
    }

    /// Linearizable read of one key: the key, if it exists.
    pub fn get(&self, key: &[u8]) -> Result<Option<super::KeyValue>, EtcdError> {
        Ok(self.range(key, &[])?.kvs.into_iter().next())
    }

    /// Linearizable read of every key starting with `prefix`.
    pub fn range_prefix(&self, prefix: &[u8]) -> Result<RangeResponse, EtcdError> {
        self.range(prefix, &wire::prefix_range_end(prefix))
    }

    /// Write `key` = `value` unconditionally, attached to `lease` (0: none).
    pub fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<ResponseHeader, EtcdError> {
        let body = wire::put_request(key, value, lease);
        self.call("/v3/kv/put", &body, Repeat::Unsafe, wire::header)
    }

    /// Delete `key` (with `range_end`: the range); how many keys went.
    pub fn delete(&self, key: &[u8], range_end: &[u8]) -> Result<i64, EtcdError> {
        let body = wire::range_request(key, range_end);
        self.call("/v3/kv/deleterange", &body, Repeat::Unsafe, wire::deleted)
    }

    /// Run a transaction (compare, then the success or failure branch).
    pub fn txn(&self, txn: &Txn) -> Result<TxnResponse, EtcdError> {
        let body = wire::txn_request(txn);
        self.call("/v3/kv/txn", &body, Repeat::Unsafe, wire::txn_response)
    }

    /// Grant a lease of `ttl_s` seconds (etcd may raise a short TTL to its
    /// minimum, 1.5 × its election timeout).
    pub fn lease_grant(&self, ttl_s: i64) -> Result<Lease, EtcdError> {
        let body = serde_json::json!({ "TTL": ttl_s.to_string() });
        self.call("/v3/lease/grant", &body, Repeat::Unsafe, wire::lease_grant)
    }

    /// Renew lease `id` once; its new TTL in seconds.
    /// [`EtcdError::LeaseNotFound`] when it expired or was revoked.
    pub fn lease_keepalive(&self, id: i64) -> Result<i64, EtcdError> {
        let body = wire::lease_id_request(id);
        let ttl_s = self
            .call(
                "/v3/lease/keepalive",
                &body,
                Repeat::Safe,
                wire::keepalive_result,
            )
            .map_err(|e| with_lease(e, id))?;
        if ttl_s <= 0 {
            return Err(EtcdError::LeaseNotFound { id });
        }
        Ok(ttl_s)
    }

    /// Revoke lease `id`, deleting every key attached to it.
    pub fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        let body = wire::lease_id_request(id);
        self.call("/v3/lease/revoke", &body, Repeat::Safe, wire::header)
            .map(|_| ())
            .map_err(|e| with_lease(e, id))
    }

    /// Lease `id`'s remaining time and its keys (`ttl_s` -1: gone).
    pub fn lease_time_to_live(&self, id: i64) -> Result<LeaseTimeToLive, EtcdError> {
        let body = serde_json::json!({ "ID": id.to_string(), "keys": true });
        self.call(
            "/v3/lease/timetolive",
            &body,
            Repeat::Safe,
            wire::time_to_live,
        )
        .map_err(|e| with_lease(e, id))
    }

    /// One call: attempts over the endpoints until one answers, the
    /// attempts run out, or the deadline passes.
    fn call<T>(
        &self,
        path: &str,
        body: &Value,
        repeat: Repeat,
        decode: fn(&Map<String, Value>) -> Result<T, WireError>,
    ) -> Result<T, EtcdError> {
        let body = body.to_string();
        let deadline = Instant::now() + self.timeout;
        let n = self.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut backoff = FIRST_BACKOFF;
        let mut last: Option<EtcdError> = None;
        let mut connect_failures = 0u32;
        for attempt in 0..self.max_attempts {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if attempt > 0 {
                self.retries_total.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(backoff.min(deadline - now));
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            let index = (first + attempt as usize) % n;
            let budget = self.attempt_budget(deadline, repeat, n - (attempt as usize % n));
            if budget.is_zero() {
                break;
            }
            match self.attempt(index, path, &body, budget, decode) {
                Ok(v) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Maybe(e)) if repeat == Repeat::Unsafe => return Err(e),
                Err(Failure::NotApplied(e)) => {
                    if matches!(e, EtcdError::Unreachable { .. }) {
                        connect_failures += 1;
                    }
                    tracing::debug!(endpoint = %self.endpoints[index], error = %e, "etcd attempt failed; trying the next endpoint");
                    // An answer ("no leader") says more than a refused
                    // connection: keep it for the error.
                    let informative = |l: &EtcdError| !matches!(l, EtcdError::Unreachable { .. });
                    if informative(&e) || !last.as_ref().is_some_and(informative) {
                        last = Some(e);
                    }
                }
                Err(Failure::Maybe(e)) => {
                    tracing::debug!(endpoint = %self.endpoints[index], error = %e, "etcd read attempt failed; trying the next endpoint");
                    last = Some(e);
                }
            }
        }
        Err(self.exhausted(last, connect_failures))
    }

    /// The error of a call whose attempts all failed.
    fn exhausted(&self, last: Option<EtcdError>, connect_failures: u32) -> EtcdError {
        match last {
            Some(EtcdError::Unreachable { last, .. }) => EtcdError::Unreachable {
                endpoints: self.endpoints.join(","),
                attempts: connect_failures,
                last,
            },
            Some(e) => e,
            None => EtcdError::Timeout {
                endpoint: self.endpoints.join(","),
                timeout_ms: self.timeout.as_millis() as u64,
            },
        }
    }

    /// Time for one attempt: all that is left for a write (it is not
    /// repeated after it may have been sent); for a repeatable call, a
    /// share of what is left, so one stalled endpoint leaves time for the
    /// others.
    fn attempt_budget(&self, deadline: Instant, repeat: Repeat, untried: usize) -> Duration {
        let left = deadline.saturating_duration_since(Instant::now());
        match repeat {
            Repeat::Unsafe => left,
            Repeat::Safe => (left / untried.max(1) as u32).max(MIN_ATTEMPT.min(left)),
        }
    }

    fn attempt<T>(
        &self,
        index: usize,
        path: &str,
        body: &str,
        budget: Duration,
        decode: fn(&Map<String, Value>) -> Result<T, WireError>,
    ) -> Result<T, Failure> {
        let endpoint = &self.endpoints[index];
        let url = format!("{endpoint}{path}");
        let sent = self
            .agent
            .post(&url)
            .config()
            .timeout_global(Some(budget))
            .build()
            .header("Content-Type", "application/json")
            // Fail at once on a member without a leader, instead of
            // waiting out etcd's own request timeout.
            .header("Grpc-Metadata-hasleader", "true")
            .send(body);
        let mut response = sent.map_err(|e| transport_failure(endpoint, budget, e))?;
        let status = response.status().as_u16();
        let mut bytes = Vec::new();
        response
            .body_mut()
            .as_reader()
            .take(MAX_RESPONSE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| body_failure(endpoint, budget, e))?;
        if bytes.len() as u64 > MAX_RESPONSE_BYTES {
            return Err(Failure::Final(bad_response(
                endpoint,
                status,
                format!("more than {MAX_RESPONSE_BYTES} bytes"),
            )));
        }
        decode_response(endpoint, status, &bytes, decode)
    }
}

/// A "lease not found" error naming the lease asked about.
fn with_lease(e: EtcdError, id: i64) -> EtcdError {
    match e {
        EtcdError::LeaseNotFound { .. } => EtcdError::LeaseNotFound { id },
        other => other,
    }
}

/// Read a response body: an error body by its gRPC code (not the HTTP
/// status, which differs between gateway versions), else the decoder.
fn decode_response<T>(
    endpoint: &str,
    status: u16,
    bytes: &[u8],
    decode: fn(&Map<String, Value>) -> Result<T, WireError>,
) -> Result<T, Failure> {
    // A stream answer (keepalive) is one object per line: the first counts.
    let first_line = bytes
        .split(|&b| b == b'\n')
        .find(|l| !l.iter().all(u8::is_ascii_whitespace))
        .unwrap_or(&[]);
    let object = match wire::parse_object(first_line) {
        Ok(m) => m,
        Err(WireError(why)) => {
            let why = format!("{why}; body: {}", quote(bytes));
            return Err(Failure::Final(bad_response(endpoint, status, why)));
        }
    };
    if let Some(e) = wire::grpc_error(&object) {
        return Err(grpc_failure(endpoint, e));
    }
    if status != 200 {
        let why = format!("unexpected status; body: {}", quote(bytes));
        return Err(Failure::Final(bad_response(endpoint, status, why)));
    }
    decode(&object).map_err(|WireError(why)| Failure::Final(bad_response(endpoint, status, why)))
}

fn bad_response(endpoint: &str, status: u16, why: String) -> EtcdError {
    EtcdError::BadResponse {
        endpoint: endpoint.to_string(),
        status,
        why,
    }
}

/// The start of a body, printable, for an error message.
fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(QUOTE_BYTES)]);
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if bytes.len() > QUOTE_BYTES {
        out.push('…');
    }
    out
}

/// gRPC codes of the gateway's error bodies.
mod code {
    pub const UNKNOWN: i64 = 2;
    pub const DEADLINE_EXCEEDED: i64 = 4;
    pub const NOT_FOUND: i64 = 5;
    pub const UNAVAILABLE: i64 = 14;
}

/// An error body by code and message.
fn grpc_failure(endpoint: &str, e: GrpcError) -> Failure {
    let msg = e.message.as_str();
    let unavailable = || EtcdError::Unavailable {
        endpoint: endpoint.to_string(),
        code: e.code,
        message: e.message.clone(),
    };
    match e.code {
        code::NOT_FOUND if msg.contains("lease not found") => {
            Failure::Final(EtcdError::LeaseNotFound { id: 0 })
        }
        code::UNAVAILABLE if msg.contains("no leader") => {
            Failure::NotApplied(EtcdError::NoLeader {
                endpoint: endpoint.to_string(),
                message: e.message,
            })
        }
        // A member that just lost etcd leadership: renewals go to the new
        // leader, through another member.
        code::UNKNOWN if msg.contains("not a primary lessor") => Failure::NotApplied(unavailable()),
        // etcd gave up waiting for its own raft: the proposal may be
        // applied later ("request timed out", "leader changed", "context
        // deadline exceeded").
        code::UNAVAILABLE | code::DEADLINE_EXCEEDED | code::UNKNOWN => {
            Failure::Maybe(unavailable())
        }
        _ => Failure::Final(EtcdError::Rejected {
            code: e.code,
            message: e.message,
        }),
    }
}

/// A transport error before any response: connect failures were not sent.
fn transport_failure(endpoint: &str, budget: Duration, e: ureq::Error) -> Failure {
    use std::io::ErrorKind;
    let unreachable = |why: String| {
        Failure::NotApplied(EtcdError::Unreachable {
            endpoints: endpoint.to_string(),
            attempts: 1,
            last: format!("{endpoint}: {why}"),
        })
    };
    match e {
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => unreachable(e.to_string()),
        ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve) => {
            unreachable(format!("no connection within {} ms", budget.as_millis()))
        }
        ureq::Error::Io(ref io)
            if matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::AddrNotAvailable
                    | ErrorKind::NetworkUnreachable
                    | ErrorKind::HostUnreachable
            ) =>
        {
            unreachable(e.to_string())
        }
        ureq::Error::Timeout(_) => Failure::Maybe(EtcdError::Timeout {
            endpoint: endpoint.to_string(),
            timeout_ms: budget.as_millis() as u64,
        }),
        ureq::Error::Io(_) => Failure::Maybe(EtcdError::ConnectionLost {
            endpoint: endpoint.to_string(),
            why: e.to_string(),
        }),
        other => Failure::Final(bad_response(endpoint, 0, other.to_string())),
    }
}

/// An error while reading the body: the request was served, or is being.
fn body_failure(endpoint: &str, budget: Duration, e: std::io::Error) -> Failure {
    let timed_out = e.kind() == std::io::ErrorKind::TimedOut
        || e.get_ref()
            .and_then(|inner| inner.downcast_ref::<ureq::Error>())
            .is_some_and(|u| matches!(u, ureq::Error::Timeout(_)));
    if timed_out {
        return Failure::Maybe(EtcdError::Timeout {
            endpoint: endpoint.to_string(),
            timeout_ms: budget.as_millis() as u64,
        });
    }
    Failure::Maybe(EtcdError::ConnectionLost {
        endpoint: endpoint.to_string(),
        why: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn endpoints_are_checked() {
        assert_eq!(
            validate_endpoint("http://127.0.0.1:2379/").unwrap(),
            "http://127.0.0.1:2379"
        );
        assert!(validate_endpoint("http://[::1]:2379").is_ok());
        for bad in [
            "",
            "127.0.0.1:2379",
            "http://",
            "http://host",
            "http://h:0",
            "http://h:99999",
            "https://h:2379",
            "http://h o:1",
            "ftp://h:1",
        ] {
            assert!(
                matches!(validate_endpoint(bad), Err(EtcdError::BadEndpoint { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn errors_map_by_code_not_status() {
        let f = decode_response(
            "e",
            412,
            br#"{"error":"etcdserver: lease already exists","code":9}"#,
            wire::header,
        );
        assert!(matches!(
            f,
            Err(Failure::Final(EtcdError::Rejected { code: 9, .. }))
        ));
        let f = decode_response(
            "e",
            503,
            br#"{"error":"etcdserver: no leader","code":14}"#,
            wire::header,
        );
        assert!(matches!(
            f,
            Err(Failure::NotApplied(EtcdError::NoLeader { .. }))
        ));
        let f = decode_response(
            "e",
            500,
            br#"{"error":"context deadline exceeded","code":2}"#,
            wire::header,
        );
        assert!(matches!(f, Err(Failure::Maybe(ref e)) if e.maybe_applied()));
        let f = decode_response(
            "e",
            200,
            b"{\"error\":{\"grpc_code\":5,\"message\":\"etcdserver: requested lease not found\"}}\n",
            wire::keepalive_result,
        );
        assert!(matches!(
            f,
            Err(Failure::Final(EtcdError::LeaseNotFound { .. }))
        ));
    }

    #[test]
    fn a_stream_answer_reads_its_first_line() {
        let body = b"{\"result\":{\"ID\":\"1\",\"TTL\":\"10\"}}\n{\"result\":{}}\n";
        assert!(matches!(
            decode_response("e", 200, body, wire::keepalive_result),
            Ok(10)
        ));
    }

    proptest! {
        #[test]
        fn garbage_bodies_give_errors_not_panics(
            status in 0u16..600,
            body in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            let _ = decode_response("e", status, &body, wire::range_response);
            let _ = decode_response("e", status, &body, wire::txn_response);
            let _ = decode_response("e", status, &body, wire::keepalive_result);
            let _ = decode_response("e", status, &body, wire::time_to_live);
        }
    }
}
