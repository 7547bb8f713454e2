//! HTTP status of a node on `status_port`: the live page (`/`, its
//! changing part at `/live`), `/status` (JSON), `/metrics` (Prometheus
//! text format) and the machine's diagram (`/machine.svg`). The node
//! builds a [`Snapshot`] of its figures for each request (it implements
//! [`SnapshotProvider`]); this module only renders and serves it. Off
//! unless `status_port` is set.
//!
//! # Layout
//! - [`metrics`]: the table of metric definitions `/metrics` walks.
//! - [`http`]: the bounded HTTP server (fixed workers, timeouts).
//! - `history`: the ring of samples the charts draw.
//! - `page`: the live page.
//! - [`cluster`]: the topology around the node.
//! - [`links`]: the status addresses nodes tell each other.
//! - [`mod@reference`]: docs/observability.md, generated.

pub mod cluster;
pub(crate) mod history;
pub mod http;
pub mod links;
pub mod metrics;
pub(crate) mod page;
pub mod reference;

use std::net::SocketAddr;
use std::sync::Arc;

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
    /// The control file's system identifier (`pg_control_system()`).
    pub system_identifier: u64,
    /// Random per start (`walrep_instance_id`): tells nodes apart where
    /// names and ports repeat, so `/cluster` draws each once.
    pub instance_id: u64,
    /// The control file's state (`in production`, `in archive recovery`, ...).
    pub cluster_state: ClusterState,
    /// The control file's timeline.
    pub timeline: TimelineId,
    /// The last checkpoint record's position.
    pub checkpoint_lsn: Lsn,
    /// Its redo point: where replay after a crash would start.
    pub redo_lsn: Lsn,
    /// The WAL writer, once one runs (a primary, or a promoted standby).
    pub wal: Option<WalSnapshot>,
    /// The archiver's counters, when one runs.
    pub archiver: Option<ArchiverStats>,
    /// A standby's recovery (kept after a promotion).
    pub recovery: Option<RecoverySnapshot>,
    /// Every connected walsender.
    pub walsenders: Vec<WalSenderStatus>,
    /// `pg_stat_replication.sync_state` of each walsender, in the same
    /// order (`async`, `potential`, `sync`, `quorum`).
    pub sync_states: Vec<&'static str>,
    /// Synchronous replication.
    pub sync: SyncSnapshot,
    /// The node's name on its pages: its data directory's name.
    pub node_name: String,
    /// The ports it listens on (0 = off).
    pub ports: PortsSnapshot,
    /// A standby's walreceiver and whom it streams from
    /// (`pg_stat_wal_receiver`); `None` on a node with no upstream.
    pub upstream: Option<UpstreamSnapshot>,
    /// Free space of the data directory's filesystem and what holds WAL
    /// on it; `None` where it could not be measured.
    pub disk: Option<crate::node::disk::DiskUsage>,
    /// Every replication slot (`pg_replication_slots`).
    pub slots: Vec<crate::replication::slots::SlotInfo>,
    /// Automatic failover, as the HA loop last found it; `None` with HA off.
    pub ha: Option<HaSnapshot>,
}

/// A node under automatic failover ([`crate::ha`]): its role as the HA
/// loop sees it, who leads, its write gate, and the loop's counters.
#[derive(Debug, Clone, Default)]
pub struct HaSnapshot {
    /// This member's name (`ha_name`).
    pub member: String,
    /// `leader` (primary, gate open), `fenced` (primary, gate closed),
    /// `promoting` or `replica`.
    pub role: &'static str,
    /// The member holding the leader key, as last read.
    pub leader: Option<String>,
    /// The write gate admits and acknowledges writes.
    pub gate_open: bool,
    /// How long the gate stays open without another lease renewal (ms).
    pub gate_remaining_ms: u64,
    /// The cluster is paused (`walrep ha pause`): no automatic action.
    pub paused: bool,
    /// What the last HA cycle did and why.
    pub last_cycle: String,
    /// Why the HA loop stopped for good, if it did.
    pub halted: Option<String>,
    /// The loop's counters since start.
    pub counters: crate::ha::status::HaCounters,
}

/// The ports a node listens on, so its pages can name its addresses.
#[derive(Debug, Clone, Copy, Default)]
pub struct PortsSnapshot {
    /// Redis protocol.
    pub redis: u16,
    /// Replication protocol.
    pub replication: u16,
    /// HTTP status (these pages).
    pub status: u16,
}

/// The walreceiver, as `pg_stat_wal_receiver` shows it.
#[derive(Debug, Clone)]
pub struct UpstreamSnapshot {
    /// `status`: stopped, starting, streaming, waiting, restarting, stopping.
    pub status: &'static str,
    /// `sender_host`: the upstream's host from primary_conninfo.
    pub sender_host: String,
    /// `sender_port`: the upstream's replication port.
    pub sender_port: u16,
    /// primary_conninfo with the password replaced.
    pub conninfo: String,
    /// primary_conninfo's application_name: what the upstream's
    /// `pg_stat_replication` calls this node.
    pub application_name: Option<String>,
    /// `slot_name` (primary_slot_name), if set.
    pub slot_name: Option<String>,
    /// WAL written to disk, maybe not flushed.
    pub written_lsn: Lsn,
    /// WAL flushed (`flushed_lsn`).
    pub flushed_lsn: Lsn,
    /// The timeline of the flushed WAL's files (`received_tli`).
    pub received_tli: TimelineId,
    /// The upstream's flush position as it last said (`latest_end_lsn`).
    pub latest_end_lsn: Lsn,
    /// The upstream's status address, when it is a walrep node that said
    /// ([`links`]): its page, linked from this one.
    pub status_url: Option<String>,
    /// The upstream's instance (`walrep_instance_id`); `None` from
    /// PostgreSQL.
    pub instance_id: Option<u64>,
    /// The instances above this node, nearest first (`a,b,...`; empty
    /// before the first connection): a cascade's shape from any node.
    pub upstream_chain: String,
}

/// The WAL writer's positions and counters.
#[derive(Debug, Clone)]
pub struct WalSnapshot {
    /// The timeline the writer writes.
    pub timeline: TimelineId,
    /// Where the next record goes (`pg_current_wal_insert_lsn()`).
    pub insert_lsn: Lsn,
    /// What is fsynced (`pg_current_wal_flush_lsn()`).
    pub flush_lsn: Lsn,
    /// Records, bytes and fsyncs since start (`pg_stat_wal`).
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
    /// The walreceiver's flush position (`pg_last_wal_receive_lsn()`).
    pub receive_lsn: Lsn,
    /// The timeline of `receive_lsn`.
    pub receive_tli: TimelineId,
    /// End of the last record replayed (`pg_last_wal_replay_lsn()`).
    pub replay_lsn: Lsn,
    /// The timeline of `replay_lsn`.
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
    /// The last notable transition ("from -> to on Event").
    pub last_transition: Option<String>,
    /// Why the machine took it (the trace's `cause`).
    pub last_transition_cause: Option<String>,
    /// When it happened (ms since the epoch; 0 before the first).
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

    /// Up to `max` of the recovery machine's latest notable transitions,
    /// oldest first; read only when a page asks.
    fn recent_transitions(&self, max: usize) -> Vec<crate::viz::swimlane::TraceRecord> {
        let _ = max;
        Vec::new()
    }
}

/// A running status server: the HTTP server and the chart sampler.
pub struct StatusServer {
    http: http::HttpServer,
    _sampler: history::Sampler,
}

/// Transitions the page reads from the node per request.
const PAGE_TRACE_RECORDS: usize = 200;

impl StatusServer {
    /// Serve `provider`'s snapshots on `addr`.
    pub fn start(
        addr: SocketAddr,
        provider: Arc<dyn SnapshotProvider>,
    ) -> std::io::Result<StatusServer> {
        let history = Arc::new(history::History::default());
        let sampler = history::Sampler::start(provider.clone(), history.clone())?;
        let handler = move |path: &str| respond(path, &*provider, &history);
        let http = http::HttpServer::start(addr, Arc::new(handler))?;
        Ok(StatusServer {
            http,
            _sampler: sampler,
        })
    }

    /// The address the server is bound to (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.http.local_addr()
    }

    /// The HTTP server's counters.
    pub fn http_stats(&self) -> &http::HttpStats {
        self.http.stats()
    }

    /// Stop serving and join the server's threads.
    pub fn stop(self) {
        self.http.stop();
    }
}

fn respond(
    path: &str,
    provider: &dyn SnapshotProvider,
    history: &history::History,
) -> http::Response {
    const HTML: &str = "text/html; charset=utf-8";
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let page = || {
        let snapshot = provider.snapshot();
        let transitions = provider.recent_transitions(PAGE_TRACE_RECORDS);
        let samples = history.samples();
        (snapshot, transitions, samples)
    };
    match path {
        "/" | "/live" => {
            let (snapshot, transitions, samples) = page();
            let data = page::PageData {
                snapshot: &snapshot,
                transitions: &transitions,
                samples: &samples,
            };
            let body = if path == "/" {
                page::node_page(&data)
            } else {
                page::live_fragment(&data)
            };
            http::Response::ok(HTML, body)
        }
        "/status" => http::Response::ok("application/json", status_json(&provider.snapshot())),
        "/cluster" => {
            let own = serde_json::from_str(&status_json(&provider.snapshot()))
                .unwrap_or(serde_json::Value::Null);
            http::Response::ok(HTML, cluster::cluster_page(own, &cluster::peers_of(query)))
        }
        "/metrics" => http::Response::ok(
            "text/plain; version=0.0.4",
            metrics_text(&provider.snapshot()),
        ),
        "/machine.svg" => http::Response::ok("image/svg+xml", crate::viz::STANDBY_SVG.to_string()),
        _ => http::Response::text(
            404,
            "not found: try /, /cluster, /status, /metrics or /machine.svg\n",
        ),
    }
}

/// One walsender as `/status` shows it: `pg_stat_replication`'s columns.
fn walsender_json(w: &WalSenderStatus, sync_state: &str) -> serde_json::Value {
    let ms = |d: Option<std::time::Duration>| d.map(|d| d.as_millis() as u64);
    let unix_ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    };
    serde_json::json!({
        "pid": w.id,
        "usename": w.user,
        "application_name": w.application_name,
        "client_addr": w.client_addr.map(|a| a.ip().to_string()),
        "client_port": w.client_addr.map(|a| a.port()),
        "backend_start_unix_ms": unix_ms(w.backend_start),
        "state": w.state.as_str(),
        "cascading": w.cascading,
        "slot_name": w.slot,
        "sent_lsn": w.sent_lsn.to_string(),
        "write_lsn": w.write_lsn.to_string(),
        "flush_lsn": w.flush_lsn.to_string(),
        "replay_lsn": w.apply_lsn.to_string(),
        "write_lag_ms": ms(w.write_lag),
        "flush_lag_ms": ms(w.flush_lag),
        "replay_lag_ms": ms(w.apply_lag),
        "sync_state": sync_state,
        "reply_time_unix_ms": w.reply_time.map(unix_ms),
        "status_url": w.status_url,
    })
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
        .enumerate()
        .map(|(i, w)| walsender_json(w, s.sync_states.get(i).copied().unwrap_or("async")))
        .collect();
    let upstream = s.upstream.as_ref().map(|u| {
        serde_json::json!({
            "status": u.status,
            "sender_host": u.sender_host,
            "sender_port": u.sender_port,
            "application_name": u.application_name,
            "conninfo": u.conninfo,
            "slot_name": u.slot_name,
            "written_lsn": u.written_lsn.to_string(),
            "flushed_lsn": u.flushed_lsn.to_string(),
            "received_tli": u.received_tli.0,
            "latest_end_lsn": u.latest_end_lsn.to_string(),
            "status_url": u.status_url,
            "instance_id": u.instance_id.map(crate::replication::server::format_instance_id),
            "upstream_chain": u.upstream_chain,
        })
    });
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
    let disk = s.disk.as_ref().map(|d| {
        let held: Vec<serde_json::Value> = d
            .holds
            .iter()
            .map(|h| serde_json::json!({ "reason": h.reason.key(), "bytes": h.bytes }))
            .collect();
        serde_json::json!({
            "free_bytes": d.free_bytes,
            "total_bytes": d.total_bytes,
            "wal_bytes": d.wal_bytes,
            "wal_held": held,
        })
    });
    let slots: Vec<serde_json::Value> = s.slots.iter().map(slot_json).collect();
    let ha = s.ha.as_ref().map(|h| {
        let c = &h.counters;
        serde_json::json!({
            "member": h.member,
            "role": h.role,
            "leader": h.leader,
            "gate": if h.gate_open { "open" } else { "closed" },
            "gate_remaining_ms": h.gate_remaining_ms,
            "paused": h.paused,
            "last_cycle": h.last_cycle,
            "halted": h.halted,
            "cycles": c.cycles,
            "failed_cycles": c.failed_cycles,
            "dcs_errors": c.dcs_errors,
            "leader_acquired": c.leader_acquired,
            "promotions": c.promotions,
            "demotions": c.demotions,
        })
    });
    serde_json::json!({
        "role": if s.primary { "primary" } else { "standby" },
        "system_identifier": s.system_identifier.to_string(),
        "instance_id": crate::replication::server::format_instance_id(s.instance_id),
        "cluster_state": s.cluster_state.describe(),
        "timeline": s.timeline.0,
        "checkpoint_lsn": s.checkpoint_lsn.to_string(),
        "redo_lsn": s.redo_lsn.to_string(),
        "wal": wal,
        "recovery": recovery,
        "standbys": standbys,
        "node": s.node_name,
        "ports": {
            "port": s.ports.redis,
            "replication_port": s.ports.replication,
            "status_port": s.ports.status,
        },
        "upstream": upstream,
        "synchronous": {
            "standby_names": s.sync.standby_names,
            "waiters": s.sync.waiters,
            "oldest_wait_ms": s.sync.oldest_wait_ms,
            "degraded": s.sync.degraded,
        },
        "disk": disk,
        "replication_slots": slots,
        "ha": ha,
    })
    .to_string()
}

/// One slot as `pg_replication_slots` shows it.
fn slot_json(slot: &crate::replication::slots::SlotInfo) -> serde_json::Value {
    let wal_status = if slot.invalidated {
        Some("lost")
    } else if slot.restart_lsn.is_valid() {
        Some("reserved")
    } else {
        None
    };
    serde_json::json!({
        "slot_name": slot.name,
        "slot_type": "physical",
        "temporary": slot.temporary,
        "active": slot.active_pid.is_some(),
        "active_pid": slot.active_pid,
        "restart_lsn": Some(slot.restart_lsn).filter(|l| l.is_valid()).map(|l| l.to_string()),
        "wal_status": wal_status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::registry::WalSenderState;
    use crate::states::recovery::StateKind;

    /// A snapshot with every optional part present, so `/status` prints
    /// every field it can.
    fn full() -> Snapshot {
        let w = WalSenderStatus {
            id: 1,
            application_name: "s1".into(),
            user: "walrep".into(),
            client_addr: Some("127.0.0.1:5000".parse().unwrap()),
            state: WalSenderState::Streaming,
            slot: Some("s1".into()),
            cascading: false,
            sent_lsn: Lsn(10),
            write_lsn: Lsn(10),
            flush_lsn: Lsn(10),
            apply_lsn: Lsn(10),
            write_lag: Some(std::time::Duration::from_millis(1)),
            flush_lag: Some(std::time::Duration::from_millis(2)),
            apply_lag: Some(std::time::Duration::from_millis(3)),
            reply_time: Some(std::time::SystemTime::now()),
            feedback: None,
            backend_start: std::time::SystemTime::now(),
            status_url: Some("http://127.0.0.1:9188/".into()),
        };
        Snapshot {
            primary: false,
            system_identifier: 7,
            instance_id: 1,
            cluster_state: ClusterState::InArchiveRecovery,
            timeline: TimelineId(1),
            checkpoint_lsn: Lsn(1),
            redo_lsn: Lsn(1),
            wal: Some(WalSnapshot {
                timeline: TimelineId(1),
                insert_lsn: Lsn(2),
                flush_lsn: Lsn(2),
                stats: WalStats::default(),
            }),
            archiver: None,
            recovery: Some(RecoverySnapshot {
                state: Some(StateKind::Streaming),
                wal_source: None,
                receive_lsn: Lsn(3),
                receive_tli: TimelineId(1),
                replay_lsn: Lsn(3),
                replay_tli: TimelineId(1),
                records_replayed: 1,
                last_commit_us: 0,
                target_tli: Some(TimelineId(1)),
                consistent: true,
                last_transition: None,
                last_transition_cause: None,
                last_transition_at_ms: 0,
                transitions: 1,
            }),
            walsenders: vec![w],
            sync_states: vec!["sync"],
            sync: SyncSnapshot::default(),
            node_name: "n".into(),
            ports: PortsSnapshot::default(),
            upstream: Some(UpstreamSnapshot {
                status: "streaming",
                sender_host: "h".into(),
                sender_port: 1,
                application_name: Some("n".into()),
                conninfo: "host=h".into(),
                slot_name: None,
                written_lsn: Lsn(3),
                flushed_lsn: Lsn(3),
                received_tli: TimelineId(1),
                latest_end_lsn: Lsn(3),
                status_url: Some("http://h:9187/".into()),
                instance_id: Some(2),
                upstream_chain: "00000000000000AB".into(),
            }),
            disk: Some(crate::node::disk::DiskUsage {
                free_bytes: 10,
                total_bytes: 20,
                wal_bytes: 5,
                holds: vec![crate::node::disk::WalHold {
                    reason: crate::node::disk::HoldReason::WalKeepSize,
                    bytes: 4,
                }],
            }),
            slots: vec![crate::replication::slots::SlotInfo {
                name: "s1".into(),
                temporary: false,
                restart_lsn: Lsn(10),
                active_pid: Some(1),
                invalidated: false,
                xmin: 0,
                catalog_xmin: 0,
            }],
            ha: Some(HaSnapshot {
                member: "n".into(),
                role: "replica",
                leader: Some("n1".into()),
                gate_open: false,
                gate_remaining_ms: 0,
                paused: false,
                last_cycle: "following n1".into(),
                halted: None,
                counters: Default::default(),
            }),
        }
    }

    fn paths(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, child) in map {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    out.push(path.clone());
                    paths(&path, child, out);
                }
            }
            serde_json::Value::Array(items) => {
                if let Some(first) = items.first() {
                    paths(&format!("{prefix}[]"), first, out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn every_status_field_is_documented_and_every_documented_field_exists() {
        let v: serde_json::Value = serde_json::from_str(&status_json(&full())).unwrap();
        let mut printed = Vec::new();
        paths("", &v, &mut printed);
        printed.sort();
        let mut documented: Vec<String> = reference::STATUS_FIELDS
            .iter()
            .map(|(p, _)| p.to_string())
            .collect();
        documented.sort();
        assert_eq!(printed, documented);
    }

    #[test]
    fn slots_and_ha_show_as_pg_replication_slots_and_the_ha_loop_say() {
        let mut s = full();
        s.slots.push(crate::replication::slots::SlotInfo {
            name: "gone".into(),
            temporary: false,
            restart_lsn: Lsn::INVALID,
            active_pid: None,
            invalidated: true,
            xmin: 0,
            catalog_xmin: 0,
        });
        let v: serde_json::Value = serde_json::from_str(&status_json(&s)).unwrap();
        let slots = v["replication_slots"].as_array().unwrap();
        assert_eq!(slots[0]["slot_name"], "s1");
        assert_eq!(slots[0]["active"], true);
        assert_eq!(slots[0]["restart_lsn"], "0/A");
        assert_eq!(slots[0]["wal_status"], "reserved");
        assert_eq!(slots[1]["wal_status"], "lost");
        assert_eq!(slots[1]["restart_lsn"], serde_json::Value::Null);
        assert_eq!(v["ha"]["leader"], "n1");
        assert_eq!(v["ha"]["gate"], "closed");
        s.ha = None;
        let v: serde_json::Value = serde_json::from_str(&status_json(&s)).unwrap();
        assert_eq!(v["ha"], serde_json::Value::Null);
    }
}
