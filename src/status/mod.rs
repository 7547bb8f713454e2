//! HTTP status of a node on `status_port`: `/status` (JSON) and `/metrics`
//! (Prometheus text format). The node builds a [`Snapshot`] of its figures
//! for each request (it implements [`SnapshotProvider`]); this module only
//! renders and serves it. Off unless `status_port` is set.
//!
//! # Layout
//! - [`metrics`]: the table of metric definitions `/metrics` walks.

// Being documented item by item; remove once `missing_docs` is clean here.
#![allow(missing_docs)]

pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::archive::ArchiverStats;
use crate::replication::registry::WalSenderStatus;
use crate::states::recovery::{StateKind, WalSource};
use crate::store::control::now_ms;
use crate::store::ClusterState;
use crate::wal::WalStats;
use crate::{Lsn, TimelineId};

pub use metrics::{metrics_text, Metric, MetricKind, METRICS};

/// The node's figures at one moment: what `/status` and `/metrics` show.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Accepting writes.
    pub primary: bool,
    pub system_identifier: u64,
    pub cluster_state: ClusterState,
    /// The control file's timeline.
    pub timeline: TimelineId,
    pub checkpoint_lsn: Lsn,
    pub redo_lsn: Lsn,
    /// The WAL writer, once one runs (a primary, or a promoted standby).
    pub wal: Option<WalSnapshot>,
    /// The archiver's counters, when one runs.
    pub archiver: Option<ArchiverStats>,
    /// A standby's recovery (kept after a promotion).
    pub recovery: Option<RecoverySnapshot>,
    /// Every connected walsender.
    pub walsenders: Vec<WalSenderStatus>,
    /// Synchronous replication.
    pub sync: SyncSnapshot,
}

/// The WAL writer's positions and counters.
#[derive(Debug, Clone)]
pub struct WalSnapshot {
    pub timeline: TimelineId,
    pub insert_lsn: Lsn,
    pub flush_lsn: Lsn,
    pub stats: WalStats,
}

/// A standby's recovery: the machine's state as last published, and the
/// positions redo and the walreceiver own.
#[derive(Debug, Clone)]
pub struct RecoverySnapshot {
    /// The machine's state; `None` before it handled its first event.
    pub state: Option<StateKind>,
    /// Where the WAL being replayed comes from.
    pub wal_source: Option<WalSource>,
    /// The walreceiver's flush position and its timeline.
    pub receive_lsn: Lsn,
    pub receive_tli: TimelineId,
    /// End of the last record replayed and its timeline.
    pub replay_lsn: Lsn,
    pub replay_tli: TimelineId,
    /// Records replayed since start.
    pub records_replayed: u64,
    /// Commit time of the last key-value record replayed (µs since the
    /// epoch; 0 before the first).
    pub last_commit_us: u64,
    /// The timeline recovery follows.
    pub target_tli: Option<TimelineId>,
    /// Replay reached the minimum recovery point.
    pub consistent: bool,
    /// The last notable transition ("from -> to on Event"), its cause and
    /// when (ms since the epoch).
    pub last_transition: Option<String>,
    pub last_transition_cause: Option<String>,
    pub last_transition_at_ms: u64,
    /// Notable transitions since start.
    pub transitions: u64,
}

/// Synchronous replication's configuration and waiters.
#[derive(Debug, Clone, Default)]
pub struct SyncSnapshot {
    /// `synchronous_standby_names`, normalised; `None` when empty.
    pub standby_names: Option<String>,
    /// Commits waiting for synchronous standbys.
    pub waiters: usize,
    /// How long the oldest has waited (ms).
    pub oldest_wait_ms: Option<u64>,
    /// Commits degrade to local (no synchronous standby within the timeout).
    pub degraded: bool,
}

/// Whoever can describe the node: the node itself, or a test double.
pub trait SnapshotProvider: Send + Sync + 'static {
    /// The figures now.
    fn snapshot(&self) -> Snapshot;
}

/// A running status server.
pub struct StatusServer {
    addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl StatusServer {
    /// Serve `provider`'s snapshots on `addr`.
    pub fn start(
        addr: SocketAddr,
        provider: Arc<dyn SnapshotProvider>,
    ) -> std::io::Result<StatusServer> {
        let server = Arc::new(
            tiny_http::Server::http(addr).map_err(|e| std::io::Error::other(e.to_string()))?,
        );
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("status server is not on an IP address"))?;
        let serving = server.clone();
        let thread = std::thread::Builder::new()
            .name("status-http".into())
            .spawn(move || {
                let _span = tracing::info_span!("status-http").entered();
                // Ends when `stop` unblocks the server.
                while let Ok(req) = serving.recv() {
                    respond(req, &*provider);
                }
            })?;
        Ok(StatusServer {
            addr,
            server,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn respond(req: tiny_http::Request, provider: &dyn SnapshotProvider) {
    let (body, kind, code) = match req.url() {
        "/status" => (status_json(&provider.snapshot()), "application/json", 200),
        "/metrics" => (
            metrics_text(&provider.snapshot()),
            "text/plain; version=0.0.4",
            200,
        ),
        _ => (
            "not found: try /status or /metrics\n".to_string(),
            "text/plain",
            404,
        ),
    };
    let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], kind.as_bytes())
        .expect("static header");
    let _ = req.respond(
        tiny_http::Response::from_string(body)
            .with_status_code(code)
            .with_header(header),
    );
}

/// `/status`: what `INFO replication` and `INFO persistence` say, as JSON.
pub fn status_json(s: &Snapshot) -> String {
    let wal = s.wal.as_ref().map(|w| {
        serde_json::json!({
            "timeline": w.timeline.0,
            "insert_lsn": w.insert_lsn.to_string(),
            "flush_lsn": w.flush_lsn.to_string(),
            "records": w.stats.records,
            "bytes": w.stats.bytes,
            "fsyncs": w.stats.fsyncs,
        })
    });
    let standbys: Vec<serde_json::Value> = s
        .walsenders
        .iter()
        .map(|w| {
            serde_json::json!({
                "application_name": w.application_name,
                "state": w.state.as_str(),
                "sent_lsn": w.sent_lsn.to_string(),
                "write_lsn": w.write_lsn.to_string(),
                "flush_lsn": w.flush_lsn.to_string(),
                "replay_lsn": w.apply_lsn.to_string(),
                "flush_lag_ms": w.flush_lag.map(|d| d.as_millis() as u64),
                "replay_lag_ms": w.apply_lag.map(|d| d.as_millis() as u64),
            })
        })
        .collect();
    let recovery = s.recovery.as_ref().and_then(|r| {
        let state = r.state?;
        Some(serde_json::json!({
            "state": state.to_string(),
            "wal_source": r.wal_source.map(|s| s.to_string()),
            "receive_lsn": r.receive_lsn.to_string(),
            "replay_lsn": r.replay_lsn.to_string(),
            "replay_tli": r.replay_tli.0,
            "target_timeline": r.target_tli.map(|t| t.0),
            "consistent": r.consistent,
            "last_transition": r.last_transition,
            "last_transition_cause": r.last_transition_cause,
            "last_transition_age_ms": now_ms().saturating_sub(r.last_transition_at_ms),
            "transitions": r.transitions,
        }))
    });
    serde_json::json!({
        "role": if s.primary { "primary" } else { "standby" },
        "system_identifier": s.system_identifier.to_string(),
        "cluster_state": s.cluster_state.describe(),
        "timeline": s.timeline.0,
        "checkpoint_lsn": s.checkpoint_lsn.to_string(),
        "redo_lsn": s.redo_lsn.to_string(),
        "wal": wal,
        "recovery": recovery,
        "standbys": standbys,
        "synchronous": {
            "standby_names": s.sync.standby_names,
            "waiters": s.sync.waiters,
            "oldest_wait_ms": s.sync.oldest_wait_ms,
            "degraded": s.sync.degraded,
        },
    })
    .to_string()
}
