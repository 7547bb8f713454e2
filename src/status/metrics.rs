//! Every metric `/metrics` exposes, as one table of definitions (name,
//! help, type, unit, how to read it from a [`Snapshot`]), so the endpoint
//! and a generated reference page walk the same list and cannot drift.

use std::fmt::Write as _;

use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::{RecoverySnapshot, Snapshot};
use crate::states::recovery::StateKind;

/// Every name is exposed with this prefix (`walrep_primary`).
pub const PREFIX: &str = "walrep";

/// Prometheus's metric types used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// A value that goes up and down.
    Gauge,
    /// A total since start (exposed with `_total`).
    Counter,
}

impl MetricKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            MetricKind::Gauge => "gauge",
            MetricKind::Counter => "counter",
        }
    }
}

/// One metric: what it is called and means, and how to read it.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// The name after [`PREFIX`] (counters get `_total` on the wire).
    pub name: &'static str,
    /// One line for `# HELP`.
    pub help: &'static str,
    /// Gauge or counter: the `# TYPE` line, and whether the name gets `_total`.
    pub kind: MetricKind,
    /// The unit, for people and the reference page ("bytes", "1" for a
    /// count or a flag); the name already says it where it matters.
    pub unit: &'static str,
    /// The value, or `None` when it does not apply to this node (no WAL
    /// writer on a standby, no recovery on a primary...): then it is left
    /// out.
    pub read: fn(&Snapshot) -> Option<i64>,
}

/// The recovery figures, for a node whose machine has a state.
fn recovery(s: &Snapshot) -> Option<&RecoverySnapshot> {
    s.recovery.as_ref().filter(|r| r.state.is_some())
}

fn in_state(s: &Snapshot, state: StateKind) -> Option<i64> {
    recovery(s).map(|r| (r.state == Some(state)) as i64)
}

/// Largest distance between this node's durable WAL (its replay position
/// on a standby) and a connected standby's flush position.
fn max_flush_lag(s: &Snapshot) -> i64 {
    let flush = match (&s.wal, &s.recovery) {
        (Some(w), _) => w.flush_lsn,
        (None, Some(r)) => r.replay_lsn,
        (None, None) => crate::Lsn::INVALID,
    };
    s.walsenders
        .iter()
        .map(|w| flush.saturating_sub(w.flush_lsn))
        .max()
        .unwrap_or(0) as i64
}

/// Every metric, in the order `/metrics` lists them.
pub static METRICS: &[Metric] = &[
    Metric {
        name: "primary",
        help: "1 on a primary, 0 on a standby",
        kind: MetricKind::Gauge,
        unit: "1",
        read: |s| Some(s.primary as i64),
    },
    Metric {
        name: "timeline",
        help: "The node's timeline",
        kind: MetricKind::Gauge,
        unit: "1",
        read: |s| Some(s.timeline.0 as i64),
    },
    Metric {
        name: "wal_insert_lsn_bytes",
        help: "WAL insert position",
        kind: MetricKind::Gauge,
        unit: "bytes",
        read: |s| s.wal.as_ref().map(|w| w.insert_lsn.0 as i64),
    },
    Metric {
        name: "wal_flush_lsn_bytes",
        help: "WAL flushed position",
        kind: MetricKind::Gauge,
        unit: "bytes",
        read: |s| s.wal.as_ref().map(|w| w.flush_lsn.0 as i64),
    },
    Metric {
        name: "wal_records",
        help: "WAL records inserted",
        kind: MetricKind::Counter,
        unit: "1",
        read: |s| s.wal.as_ref().map(|w| w.stats.records as i64),
    },
    Metric {
        name: "wal_write_bytes",
        help: "WAL bytes inserted",
        kind: MetricKind::Counter,
        unit: "bytes",
        read: |s| s.wal.as_ref().map(|w| w.stats.bytes as i64),
    },
    Metric {
        name: "wal_fsyncs",
        help: "fdatasync calls on WAL segments",
        kind: MetricKind::Counter,
        unit: "1",
        read: |s| s.wal.as_ref().map(|w| w.stats.fsyncs as i64),
    },
    Metric {
        name: "wal_segments_completed",
        help: "WAL segments completed",
        kind: MetricKind::Counter,
        unit: "1",
        read: |s| s.wal.as_ref().map(|w| w.stats.segments_completed as i64),
    },
    Metric {
        name: "archiver_archived",
        help: "Files archive_command archived",
        kind: MetricKind::Counter,
        unit: "1",
        read: |s| s.archiver.as_ref().map(|a| a.archived_count as i64),
    },
    Metric {
        name: "archiver_failed",
        help: "archive_command failures",
        kind: MetricKind::Counter,
        unit: "1",
        read: |s| s.archiver.as_ref().map(|a| a.failed_count as i64),
    },
    Metric {
        name: "standby_receive_lsn_bytes",
        help: "WAL received by the walreceiver",
        kind: MetricKind::Gauge,
        unit: "bytes",
        read: |s| recovery(s).map(|r| r.receive_lsn.0 as i64),
    },
    Metric {
        name: "standby_replay_lsn_bytes",
        help: "WAL replayed",
        kind: MetricKind::Gauge,
        unit: "bytes",
        read: |s| recovery(s).map(|r| r.replay_lsn.0 as i64),
    },
    Metric {
        name: "standby_replay_lag_bytes",
        help: "WAL received but not replayed",
        kind: MetricKind::Gauge,
        unit: "bytes",
        read: |s| recovery(s).map(|r| r.receive_lsn.saturating_sub(r.replay_lsn) as i64),
    },
    Metric {
        name: "recovery_transitions",
        help: "Notable recovery transitions",
        kind: MetricKind::Counter,
        unit: "1",
        read: |s| recovery(s).map(|r| r.transitions as i64),
    },
    Metric {
        name: "recovery_records_replayed",
        help: "Records replayed since start",
        kind: MetricKind::Counter,
        unit: "1",
        read: |s| recovery(s).map(|r| r.records_replayed as i64),
    },
    Metric {
        name: "recovery_state_archive_recovery",
        help: "1 when the recovery machine is in this state",
        kind: MetricKind::Gauge,
        unit: "1",
        read: |s| in_state(s, StateKind::ArchiveRecovery),
    },
    Metric {
        name: "recovery_state_retrying_archive",
        help: "1 when the recovery machine is in this state",
        kind: MetricKind::Gauge,
        unit: "1",
        read: |s| in_state(s, StateKind::RetryingArchive),
    },
    Metric {
        name: "recovery_state_streaming",
        help: "1 when the recovery machine is in this state",
        kind: MetricKind::Gauge,
        unit: "1",
        read: |s| in_state(s, StateKind::Streaming),
    },
    Metric {
        name: "recovery_state_promoting",
        help: "1 when the recovery machine is in this state",
        kind: MetricKind::Gauge,
        unit: "1",
        read: |s| in_state(s, StateKind::Promoting),
    },
    Metric {
        name: "recovery_state_promoted",
        help: "1 when the recovery machine is in this state",
        kind: MetricKind::Gauge,
        unit: "1",
        read: |s| in_state(s, StateKind::Promoted),
    },
    Metric {
        name: "walsenders",
        help: "Connected walsenders",
        kind: MetricKind::Gauge,
        unit: "1",
        read: |s| Some(s.walsenders.len() as i64),
    },
    Metric {
        name: "standby_max_flush_lag_bytes",
        help: "Largest flush lag of a connected standby",
        kind: MetricKind::Gauge,
        unit: "bytes",
        read: |s| Some(max_flush_lag(s)),
    },
    Metric {
        name: "disk_free_bytes",
        help: "Free space of the data directory's filesystem",
        kind: MetricKind::Gauge,
        unit: "bytes",
        read: |s| s.disk.as_ref().map(|d| d.free_bytes as i64),
    },
    Metric {
        name: "disk_total_bytes",
        help: "Size of the data directory's filesystem",
        kind: MetricKind::Gauge,
        unit: "bytes",
        read: |s| s.disk.as_ref().map(|d| d.total_bytes as i64),
    },
    Metric {
        name: "wal_directory_bytes",
        help: "Bytes of the files in wal/",
        kind: MetricKind::Gauge,
        unit: "bytes",
        read: |s| s.disk.as_ref().map(|d| d.wal_bytes as i64),
    },
    Metric {
        name: "wal_held_by_slots_bytes",
        help: "WAL behind the end kept by replication slots (the oldest slot's share)",
        kind: MetricKind::Gauge,
        unit: "bytes",
        read: |s| s.disk.as_ref().map(|d| d.max_held_bytes("slot:") as i64),
    },
    Metric {
        name: "wal_held_by_archive_backlog_bytes",
        help: "WAL waiting for archive_command",
        kind: MetricKind::Gauge,
        unit: "bytes",
        read: |s| {
            s.disk
                .as_ref()
                .map(|d| d.max_held_bytes("archive_backlog") as i64)
        },
    },
    Metric {
        name: "wal_held_by_wal_keep_size_bytes",
        help: "WAL kept by wal_keep_size",
        kind: MetricKind::Gauge,
        unit: "bytes",
        read: |s| {
            s.disk
                .as_ref()
                .map(|d| d.max_held_bytes("wal_keep_size") as i64)
        },
    },
    Metric {
        name: "wal_held_by_checkpoint_bytes",
        help: "WAL since the previous checkpoint's redo point",
        kind: MetricKind::Gauge,
        unit: "bytes",
        read: |s| {
            s.disk
                .as_ref()
                .map(|d| d.max_held_bytes("checkpoint") as i64)
        },
    },
    Metric {
        name: "sync_waiters",
        help: "Commits waiting for synchronous standbys",
        kind: MetricKind::Gauge,
        unit: "1",
        read: |s| Some(s.sync.waiters as i64),
    },
    Metric {
        name: "sync_degraded",
        help: "1 while commits degrade to local",
        kind: MetricKind::Gauge,
        unit: "1",
        read: |s| Some(s.sync.degraded as i64),
    },
    Metric {
        name: "replication_slots",
        help: "Replication slots on this node",
        kind: MetricKind::Gauge,
        unit: "1",
        read: |s| Some(s.slots.len() as i64),
    },
    Metric {
        name: "replication_slots_active",
        help: "Replication slots a walsender streams on now",
        kind: MetricKind::Gauge,
        unit: "1",
        read: |s| Some(s.slots.iter().filter(|x| x.active_pid.is_some()).count() as i64),
    },
    Metric {
        name: "ha_leader",
        help: "1 while this node leads under automatic failover (primary, write gate open)",
        kind: MetricKind::Gauge,
        unit: "1",
        read: |s| s.ha.as_ref().map(|h| (h.role == "leader") as i64),
    },
    Metric {
        name: "ha_write_gate_open",
        help: "1 while the write gate admits and acknowledges writes",
        kind: MetricKind::Gauge,
        unit: "1",
        read: |s| s.ha.as_ref().map(|h| h.gate_open as i64),
    },
    Metric {
        name: "ha_gate_remaining_milliseconds",
        help: "How long the write gate stays open without another lease renewal",
        kind: MetricKind::Gauge,
        unit: "ms",
        read: |s| s.ha.as_ref().map(|h| h.gate_remaining_ms as i64),
    },
    Metric {
        name: "ha_paused",
        help: "1 while the cluster is paused (no automatic promotion or demotion)",
        kind: MetricKind::Gauge,
        unit: "1",
        read: |s| s.ha.as_ref().map(|h| h.paused as i64),
    },
    Metric {
        name: "ha_cycles",
        help: "HA cycles run",
        kind: MetricKind::Counter,
        unit: "1",
        read: |s| s.ha.as_ref().map(|h| h.counters.cycles as i64),
    },
    Metric {
        name: "ha_failed_cycles",
        help: "HA cycles stopped at a failed action",
        kind: MetricKind::Counter,
        unit: "1",
        read: |s| s.ha.as_ref().map(|h| h.counters.failed_cycles as i64),
    },
    Metric {
        name: "ha_dcs_errors",
        help: "etcd calls that failed (renewals, reads, writes)",
        kind: MetricKind::Counter,
        unit: "1",
        read: |s| s.ha.as_ref().map(|h| h.counters.dcs_errors as i64),
    },
    Metric {
        name: "ha_leader_acquired",
        help: "Times this node took the free leader key",
        kind: MetricKind::Counter,
        unit: "1",
        read: |s| s.ha.as_ref().map(|h| h.counters.leader_acquired as i64),
    },
    Metric {
        name: "ha_promotions",
        help: "Promotions this node started under automatic failover",
        kind: MetricKind::Counter,
        unit: "1",
        read: |s| s.ha.as_ref().map(|h| h.counters.promotions as i64),
    },
    Metric {
        name: "ha_demotions",
        help: "Demotions of this node (it ran as a primary while another member led)",
        kind: MetricKind::Counter,
        unit: "1",
        read: |s| s.ha.as_ref().map(|h| h.counters.demotions as i64),
    },
];

/// `/metrics`: every metric of [`METRICS`] that applies to `s`, in
/// Prometheus's text format.
pub fn metrics_text(s: &Snapshot) -> String {
    let mut r = Registry::with_prefix(PREFIX);
    for m in METRICS {
        let Some(v) = (m.read)(s) else { continue };
        match m.kind {
            MetricKind::Gauge => r.register(m.name, m.help, ConstGauge::new(v)),
            MetricKind::Counter => r.register(m.name, m.help, ConstCounter::new(v.max(0) as u64)),
        }
    }
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &r).is_err() {
        let _ = writeln!(out, "# encoding failed");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{RecoverySnapshot, SyncSnapshot};
    use crate::store::ClusterState;
    use crate::{Lsn, TimelineId};

    fn standby() -> Snapshot {
        Snapshot {
            primary: false,
            system_identifier: 7,
            instance_id: 1,
            cluster_state: ClusterState::InArchiveRecovery,
            timeline: TimelineId(1),
            checkpoint_lsn: Lsn(0x100060),
            redo_lsn: Lsn(0x100060),
            wal: None,
            archiver: None,
            recovery: Some(RecoverySnapshot {
                state: Some(StateKind::Streaming),
                wal_source: None,
                receive_lsn: Lsn(2_099_992),
                receive_tli: TimelineId(1),
                replay_lsn: Lsn(2_099_000),
                replay_tli: TimelineId(1),
                records_replayed: 53,
                last_commit_us: 0,
                target_tli: Some(TimelineId(1)),
                consistent: true,
                last_transition: None,
                last_transition_cause: None,
                last_transition_at_ms: 0,
                transitions: 6,
            }),
            walsenders: Vec::new(),
            sync_states: Vec::new(),
            sync: SyncSnapshot::default(),
            node_name: "standby1".into(),
            ports: Default::default(),
            upstream: None,
            disk: None,
            slots: Vec::new(),
            ha: None,
        }
    }

    #[test]
    fn names_are_unique_and_a_standby_shows_its_recovery() {
        let mut names: Vec<_> = METRICS.iter().map(|m| m.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), METRICS.len());
        let text = metrics_text(&standby());
        for line in [
            "# HELP walrep_primary 1 on a primary, 0 on a standby.",
            "# TYPE walrep_primary gauge",
            "walrep_primary 0",
            "walrep_standby_receive_lsn_bytes 2099992",
            "walrep_standby_replay_lag_bytes 992",
            "# TYPE walrep_recovery_transitions counter",
            "walrep_recovery_transitions_total 6",
            "walrep_recovery_records_replayed_total 53",
            "walrep_recovery_state_streaming 1",
            "walrep_recovery_state_promoted 0",
            "walrep_standby_max_flush_lag_bytes 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
        }
        assert!(!text.contains("walrep_wal_records"), "{text}");
    }

    #[test]
    fn ha_metrics_appear_only_under_automatic_failover() {
        let mut s = standby();
        assert!(!metrics_text(&s).contains("walrep_ha_"));
        s.ha = Some(crate::status::HaSnapshot {
            member: "n1".into(),
            role: "leader",
            leader: Some("n1".into()),
            gate_open: true,
            gate_remaining_ms: 4_200,
            paused: false,
            last_cycle: "holding the leader key".into(),
            halted: None,
            counters: crate::ha::status::HaCounters {
                cycles: 9,
                failed_cycles: 1,
                dcs_errors: 2,
                leader_acquired: 1,
                promotions: 1,
                demotions: 0,
            },
        });
        let text = metrics_text(&s);
        for line in [
            "walrep_ha_leader 1",
            "walrep_ha_write_gate_open 1",
            "walrep_ha_gate_remaining_milliseconds 4200",
            "walrep_ha_paused 0",
            "walrep_ha_cycles_total 9",
            "walrep_ha_failed_cycles_total 1",
            "walrep_ha_dcs_errors_total 2",
            "walrep_ha_leader_acquired_total 1",
            "walrep_ha_promotions_total 1",
            "walrep_ha_demotions_total 0",
            "walrep_replication_slots 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
        }
    }
}
