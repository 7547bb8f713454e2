//! HTTP status of a node on `status_port`: `/status` (JSON) and `/metrics`
//! (Prometheus text format), built from the node's state at request time.
//! Off unless `status_port` is set.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::node::Node;
use crate::store::control::now_ms;

/// How often the server looks at its stop flag between requests.
const POLL: Duration = Duration::from_millis(200);

/// A running status server.
pub struct StatusServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StatusServer {
    pub fn start(addr: SocketAddr, node: Arc<Node>) -> std::io::Result<StatusServer> {
        let server =
            tiny_http::Server::http(addr).map_err(|e| std::io::Error::other(e.to_string()))?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("status server is not on an IP address"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("status-http".into())
            .spawn(move || {
                let _span = tracing::info_span!("status-http").entered();
                while !flag.load(Ordering::Relaxed) {
                    let Ok(Some(req)) = server.recv_timeout(POLL) else {
                        continue;
                    };
                    let (body, kind, code) = match req.url() {
                        "/status" => (status_json(&node), "application/json", 200),
                        "/metrics" => (metrics_text(&node), "text/plain; version=0.0.4", 200),
                        _ => (
                            "not found: try /status or /metrics\n".to_string(),
                            "text/plain",
                            404,
                        ),
                    };
                    let header =
                        tiny_http::Header::from_bytes(&b"Content-Type"[..], kind.as_bytes())
                            .expect("static header");
                    let _ = req.respond(
                        tiny_http::Response::from_string(body)
                            .with_status_code(code)
                            .with_header(header),
                    );
                }
            })?;
        Ok(StatusServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `/status`: what `INFO replication` and `INFO persistence` say, as JSON.
pub fn status_json(node: &Node) -> String {
    let c = node.control().clone();
    let st = &node.standby;
    let view = st.status();
    let wal = node.wal().map(|w| {
        let s = w.stats();
        serde_json::json!({
            "timeline": w.timeline().0,
            "insert_lsn": w.inserted().to_string(),
            "flush_lsn": w.flushed().to_string(),
            "records": s.records,
            "bytes": s.bytes,
            "fsyncs": s.fsyncs,
        })
    });
    let standbys: Vec<serde_json::Value> = node
        .registry()
        .map(|r| r.snapshot())
        .unwrap_or_default()
        .into_iter()
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
    let (waiters, oldest) = node.syncrep.waiters();
    serde_json::json!({
        "role": if node.is_primary() { "primary" } else { "standby" },
        "system_identifier": c.system_identifier.to_string(),
        "cluster_state": c.state.describe(),
        "timeline": c.timeline.0,
        "checkpoint_lsn": c.checkpoint_lsn.to_string(),
        "redo_lsn": c.redo_lsn.to_string(),
        "wal": wal,
        "recovery": view.state.map(|s| serde_json::json!({
            "state": s.to_string(),
            "wal_source": view.source.map(|s| s.to_string()),
            "receive_lsn": st.receive_lsn().to_string(),
            "replay_lsn": st.replay_lsn().to_string(),
            "replay_tli": st.replay_tli().0,
            "target_timeline": view.target_tli.map(|t| t.0),
            "consistent": view.consistent_at.is_some(),
            "last_transition": view.last_transition,
            "last_transition_cause": view.last_transition_cause,
            "last_transition_age_ms": now_ms().saturating_sub(view.last_transition_at_ms),
            "transitions": view.transitions,
        })),
        "standbys": standbys,
        "synchronous": {
            "standby_names": node.syncrep.config().map(|c| c.to_string()),
            "waiters": waiters,
            "oldest_wait_ms": oldest.map(|d| d.as_millis() as u64),
            "degraded": node.syncrep.is_degraded(),
        },
    })
    .to_string()
}

fn gauge(r: &mut Registry, name: &str, help: &str, v: i64) {
    r.register(name, help, ConstGauge::new(v));
}

fn counter(r: &mut Registry, name: &str, help: &str, v: u64) {
    r.register(name, help, ConstCounter::new(v));
}

/// `/metrics`: the node's figures in Prometheus's text format.
pub fn metrics_text(node: &Node) -> String {
    let mut r = Registry::with_prefix("walrep");
    gauge(
        &mut r,
        "primary",
        "1 on a primary, 0 on a standby",
        node.is_primary() as i64,
    );
    gauge(
        &mut r,
        "timeline",
        "The node's timeline",
        node.control().timeline.0 as i64,
    );
    if let Some(w) = node.wal() {
        let s = w.stats();
        gauge(
            &mut r,
            "wal_insert_lsn_bytes",
            "WAL insert position",
            w.inserted().0 as i64,
        );
        gauge(
            &mut r,
            "wal_flush_lsn_bytes",
            "WAL flushed position",
            w.flushed().0 as i64,
        );
        counter(&mut r, "wal_records", "WAL records inserted", s.records);
        counter(&mut r, "wal_write_bytes", "WAL bytes inserted", s.bytes);
        counter(
            &mut r,
            "wal_fsyncs",
            "fdatasync calls on WAL segments",
            s.fsyncs,
        );
        counter(
            &mut r,
            "wal_segments_completed",
            "WAL segments completed",
            s.segments_completed,
        );
    }
    if let Some(a) = node.archiver_stats() {
        let a = a.snapshot();
        counter(
            &mut r,
            "archiver_archived",
            "Files archive_command archived",
            a.archived_count,
        );
        counter(
            &mut r,
            "archiver_failed",
            "archive_command failures",
            a.failed_count,
        );
    }
    let st = &node.standby;
    if let Some(state) = st.status().state {
        gauge(
            &mut r,
            "standby_receive_lsn_bytes",
            "WAL received by the walreceiver",
            st.receive_lsn().0 as i64,
        );
        gauge(
            &mut r,
            "standby_replay_lsn_bytes",
            "WAL replayed",
            st.replay_lsn().0 as i64,
        );
        gauge(
            &mut r,
            "standby_replay_lag_bytes",
            "WAL received but not replayed",
            st.receive_lsn().saturating_sub(st.replay_lsn()) as i64,
        );
        counter(
            &mut r,
            "recovery_transitions",
            "Notable recovery transitions",
            st.status().transitions,
        );
        counter(
            &mut r,
            "recovery_records_replayed",
            "Records replayed since start",
            st.records_replayed.load(Ordering::Relaxed),
        );
        let state_name = state.to_string();
        for s in [
            "ArchiveRecovery",
            "RetryingArchive",
            "Streaming",
            "Promoting",
            "Promoted",
        ] {
            gauge(
                &mut r,
                &format!("recovery_state_{}", snake(s)),
                "1 when the recovery machine is in this state",
                (s == state_name) as i64,
            );
        }
    }
    let standbys = node.registry().map(|r| r.snapshot()).unwrap_or_default();
    gauge(
        &mut r,
        "walsenders",
        "Connected walsenders",
        standbys.len() as i64,
    );
    let flush = node.wal().map(|w| w.flushed()).unwrap_or(st.replay_lsn());
    let worst = standbys
        .iter()
        .map(|w| flush.saturating_sub(w.flush_lsn))
        .max()
        .unwrap_or(0);
    gauge(
        &mut r,
        "standby_max_flush_lag_bytes",
        "Largest flush lag of a connected standby",
        worst as i64,
    );
    let (waiters, _) = node.syncrep.waiters();
    gauge(
        &mut r,
        "sync_waiters",
        "Commits waiting for synchronous standbys",
        waiters as i64,
    );
    gauge(
        &mut r,
        "sync_degraded",
        "1 while commits degrade to local",
        node.syncrep.is_degraded() as i64,
    );
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &r).is_err() {
        let _ = writeln!(out, "# encoding failed");
    }
    out
}

fn snake(s: &str) -> String {
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}
