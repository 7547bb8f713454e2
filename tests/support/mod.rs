//! The support of walrep's integration tests, one module for all of them:
//! every test file has `mod support;` and takes what it needs from
//!
//! - [`node`]: `walrep` processes on loopback (and nodes run in the test's
//!   own process), the CLI, all stopped by the test;
//! - [`process`]: child processes killed and reaped when dropped, bounded
//!   waits for an exit, processes the tests did not start themselves;
//! - [`tools`]: the external tools (PostgreSQL's, Redis's) and the one rule
//!   for a missing one (WALREP_SKIP_EXTERNAL);
//! - [`wal`]: a small test system's WAL, and the WAL files of a directory;
//! - [`fake`]: a replication server over the in-memory source;
//! - [`cluster`]: primaries and standbys built as an operator builds them;
//! - [`keyspace`]: keys of every Redis type written, and a node's keyspace
//!   dumped, to compare nodes;
//! - [`proxy`]: a fault proxy between a walreceiver and a walsender;
//! - [`tls`]: a test CA and server certificate made inside the test;
//! - [`netns`]: network namespaces with veth pairs and nftables faults,
//!   nodes inside them; [`delay`]: a delaying relay (no `tc netem` here);
//! - [`resp`]: a minimal RESP client that tells refusals from no answer;
//! - [`workload`]: clients recording a history for walrep's checker;
//! - [`crash`]: what the power-loss image tests share (crash points,
//!   scratch directories, the `CRASH_*` knobs);
//! - [`backup`]: what the base-backup tests share (data size, a load
//!   during the copy);
//! - [`etcd`]: a real etcd cluster on loopback for the HA tests;
//! - [`ha`]: three `walrep start` nodes under HA on that etcd, and a write
//!   load recording every acknowledgement (node, time);
//! - [`ports`]: loopback ports reserved outside the ephemeral range, so a
//!   node restarted on its ports gets them back;
//! - [`url`]: Redis clients by URL, for nodes run in the test's process;
//!
//! and here, waiting for a condition, listing a directory and a free port.

// Each test binary compiles this module on its own and uses part of it.
#![allow(dead_code)]

pub mod backup;
pub mod cluster;
pub mod crash;
pub mod delay;
pub mod etcd;
pub mod fake;
pub mod ha;
pub mod keyspace;
pub mod netns;
pub mod node;
pub mod ports;
pub mod process;
pub mod proxy;
pub mod resp;
pub mod tls;
pub mod tools;
pub mod url;
pub mod wal;
pub mod workload;

use std::path::Path;
use std::time::{Duration, Instant};

/// Generous bound on a wait whose caller names no other.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// How often a condition is polled: cheap enough for a condition that costs
/// a connection (INFO), quick enough not to slow a test down.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Poll `f` until it returns `Some`, or fail with `what` after `deadline`.
pub fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Poll `cond` until it holds, or fail with `what` after [`DEADLINE`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    wait_for(what, DEADLINE, || cond().then_some(()));
}

/// Names of the files in `dir`, sorted (none when it cannot be read).
pub fn file_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A loopback port for a server that must be told its port before it
/// starts: reserved for this test process, outside the ephemeral range, so
/// only an explicit bind elsewhere can take it before it is used.
pub fn free_port() -> u16 {
    ports::reserve_port()
}

/// GET `path` from an HTTP server on 127.0.0.1:`port` (the status port):
/// the status code and the body. Bounded by a 10 s read timeout.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The number after `label` in a `walrep bench` report's summary.
pub fn report_figure(out: &str, label: &str) -> u64 {
    out.lines()
        .find_map(|l| l.strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in the report:\n{out}"))
}
