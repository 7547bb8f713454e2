//! The node's INFO sections (server, persistence, replication), in Redis's
//! `field:value` format with walrep's own fields beside Redis's, and the
//! [`Snapshot`] the status server renders as `/status` and `/metrics`.

use std::fmt::Write as _;

use super::Node;
use crate::status::{
    PortsSnapshot, RecoverySnapshot, Snapshot, SnapshotProvider, SyncSnapshot, UpstreamSnapshot,
    WalSnapshot,
};

impl Node {
    /// A standby's recovery: the status its startup process last
    /// published and the positions redo and the walreceiver own. `None`
    /// on a node started as a primary.
    pub fn recovery_snapshot(&self) -> Option<RecoverySnapshot> {
        let p = self.standby.as_ref()?;
        let status = p.status.get();
        let replayed = p.replayed.get();
        let received = p.received.flushed_point();
        let last = status.last_transition.as_deref();
        Some(RecoverySnapshot {
            state: status.machine.as_ref().map(|m| m.state),
            wal_source: status.source,
            receive_lsn: received.lsn,
            receive_tli: received.tli,
            replay_lsn: replayed.end,
            replay_tli: replayed.tli,
            records_replayed: replayed.records,
            last_commit_us: replayed.last_commit_us,
            target_tli: status.machine.as_ref().map(|m| m.target_tli),
            consistent: status.consistent_at.is_some(),
            last_transition: last.map(|t| t.summary.clone()),
            last_transition_cause: last.and_then(|t| t.cause.clone()),
            last_transition_at_ms: last.map_or(0, |t| t.at_ms),
            transitions: status.transitions,
        })
    }
}

impl Node {
    /// `pg_stat_wal_receiver`: `None` on a node that has no walreceiver
    /// (a primary, or a standby without primary_conninfo).
    pub fn upstream_snapshot(&self) -> Option<UpstreamSnapshot> {
        use crate::replication::client::{redact_conninfo, ConnInfo};
        let progress = self.standby.as_ref()?;
        let settings = self.settings();
        let conninfo = settings.primary_conninfo.trim();
        let parsed = ConnInfo::parse(conninfo).ok()?;
        let received = progress.received.flushed_point();
        // The address the last session heard, while it is still the
        // upstream primary_conninfo names.
        let heard = progress
            .received
            .upstream()
            .filter(|u| u.host == parsed.host && u.port == parsed.port);
        let instance_id = heard.as_ref().and_then(|u| u.instance_id);
        let status_url = heard.and_then(|u| u.status_url);
        let upstream_chain = connected_upstream(self, &parsed.host, parsed.port).1;
        Some(UpstreamSnapshot {
            status: progress.received.state().as_str(),
            sender_host: parsed.host,
            sender_port: parsed.port,
            application_name: parsed.application_name,
            conninfo: redact_conninfo(conninfo),
            slot_name: Some(settings.primary_slot_name.clone()).filter(|s| !s.is_empty()),
            written_lsn: progress.received.written(),
            flushed_lsn: received.lsn,
            received_tli: received.tli,
            latest_end_lsn: progress.received.upstream_flush(),
            status_url,
            instance_id,
            upstream_chain,
        })
    }

    /// `pg_stat_replication.sync_state` of each walsender of `standbys`
    /// (cascading walsenders are never synchronous).
    pub fn walsender_sync_states(
        &self,
        standbys: &[crate::replication::registry::WalSenderStatus],
    ) -> Vec<&'static str> {
        let sync_states = self.syncrep.sync_states(&self.standby_positions());
        let mut direct = sync_states.iter();
        standbys
            .iter()
            .map(|w| {
                if w.cascading {
                    "async"
                } else {
                    direct.next().map_or("async", |s| s.as_str())
                }
            })
            .collect()
    }
}

impl SnapshotProvider for Node {
    fn recent_transitions(&self, max: usize) -> Vec<crate::viz::swimlane::TraceRecord> {
        let path = self.dir.log().join(crate::standby::tracelog::TRACE_FILE);
        crate::viz::swimlane::read_trace_tail(&path, max)
    }

    fn snapshot(&self) -> Snapshot {
        let c = self.control();
        let (waiters, oldest) = self.syncrep.waiters();
        let walsenders = self.registry().map(|r| r.snapshot()).unwrap_or_default();
        let ports = *self.ports.lock().unwrap_or_else(|e| e.into_inner());
        Snapshot {
            primary: self.is_primary(),
            system_identifier: c.system_identifier,
            instance_id: self.instance_id,
            cluster_state: c.state,
            timeline: c.timeline,
            checkpoint_lsn: c.checkpoint_lsn,
            redo_lsn: c.redo_lsn,
            wal: self.wal().map(|w| WalSnapshot {
                timeline: w.timeline(),
                insert_lsn: w.inserted(),
                flush_lsn: w.flushed(),
                stats: w.stats(),
            }),
            archiver: self.archiver_stats().map(|a| a.snapshot()),
            recovery: self.recovery_snapshot(),
            sync_states: self.walsender_sync_states(&walsenders),
            walsenders,
            node_name: self
                .dir
                .root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            ports: PortsSnapshot {
                redis: ports.redis,
                replication: ports.replication,
                status: self.settings().status_port,
            },
            upstream: self.upstream_snapshot(),
            disk: Some(self.disk_usage()),
            slots: self.slots.list(),
            ha: ha_snapshot(self),
            sync: SyncSnapshot {
                standby_names: self.syncrep.config().map(|c| c.to_string()),
                waiters,
                oldest_wait_ms: oldest.map(|d| d.as_millis() as u64),
                degraded: self.syncrep.is_degraded(),
            },
        }
    }
}

pub(crate) fn section(node: &Node, name: &str) -> Option<String> {
    match name {
        "server" => Some(server(node)),
        "persistence" => Some(persistence(node)),
        "replication" => Some(replication(node)),
        _ => None,
    }
}

fn server(node: &Node) -> String {
    let c = node.control();
    let ports = *node.ports.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = String::new();
    let _ = write!(
        s,
        "redis_version:7.0.0\r\nwalrep_version:{}\r\nredis_mode:standalone\r\nprocess_id:{}\r\ntcp_port:{}\r\nreplication_port:{}\r\nuptime_in_seconds:{}\r\nsystem_identifier:{}\r\nwal_segment_size:{}\r\ndata_directory:{}\r\n",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        ports.redis,
        ports.replication,
        node.started_at.elapsed().as_secs(),
        c.system_identifier,
        c.wal_segment_size.bytes(),
        node.dir.root.display(),
    );
    s
}

fn persistence(node: &Node) -> String {
    let mut s = String::from("loading:0\r\n");
    {
        let c = node.control();
        let _ = write!(
            s,
            "cluster_state:{}\r\ntimeline:{}\r\ncheckpoint_lsn:{}\r\nredo_lsn:{}\r\n",
            c.state.describe().replace(' ', "_"),
            c.timeline,
            c.checkpoint_lsn,
            c.redo_lsn
        );
    }
    if let Some(wal) = node.wal() {
        let st = wal.stats();
        let _ = write!(
            s,
            "wal_insert_lsn:{}\r\nwal_flush_lsn:{}\r\nwal_records:{}\r\nwal_bytes:{}\r\nwal_fsyncs:{}\r\nwal_flushes:{}\r\nwal_mean_batch_records:{:.2}\r\nwal_max_batch_records:{}\r\nwal_segments_completed:{}\r\nwal_writer_failed:{}\r\n",
            wal.inserted(),
            wal.flushed(),
            st.records,
            st.bytes,
            st.fsyncs,
            st.flushes,
            st.mean_batch_records(),
            st.max_batch_records,
            st.segments_completed,
            wal.poisoned().is_some() as u8,
        );
    }
    if let Some((done, at_ms)) = node.last_checkpoint() {
        let _ = write!(
            s,
            "last_checkpoint_lsn:{}\r\nlast_checkpoint_time_ms:{}\r\nlast_checkpoint_keys:{}\r\nlast_checkpoint_bytes:{}\r\nlast_checkpoint_duration_ms:{}\r\n",
            done.checkpoint_lsn, at_ms, done.keys, done.bytes, done.elapsed_ms
        );
    }
    let repairs = node.wal_repairs();
    let _ = write!(s, "wal_repaired_segments:{}\r\n", repairs.len());
    if let Some(r) = repairs.last() {
        let _ = write!(
            s,
            "wal_last_repair:{} at {} from {}\r\n",
            r.file, r.at, r.source
        );
    }
    node.disk_usage().info_fields(&mut s);
    let _ = write!(
        s,
        "archive_mode:{}\r\n",
        node.settings().archive_mode.as_str()
    );
    if let Some(stats) = node.archiver_stats() {
        let a = stats.snapshot();
        let _ = write!(
            s,
            "archived_count:{}\r\nlast_archived_wal:{}\r\nfailed_count:{}\r\nlast_failed_wal:{}\r\n",
            a.archived_count,
            a.last_archived_wal.as_deref().unwrap_or(""),
            a.failed_count,
            a.last_failed_wal.as_deref().unwrap_or(""),
        );
    }
    s
}

fn replication(node: &Node) -> String {
    let mut s = String::new();
    let role = if node.is_primary() { "master" } else { "slave" };
    let standbys = node.registry().map(|r| r.snapshot()).unwrap_or_default();
    let positions = node.standby_positions();
    let sync_states = node.syncrep.sync_states(&positions);
    let _ = write!(s, "role:{role}\r\n");
    let _ = write!(
        s,
        "instance_id:{}\r\n",
        crate::replication::server::format_instance_id(node.instance_id)
    );
    if let Some(r) = node
        .recovery_snapshot()
        .filter(|r| !node.is_primary() || r.state.is_some())
    {
        standby_fields(node, &r, &mut s);
    }
    let _ = write!(s, "connected_slaves:{}\r\n", standbys.len());
    let mut direct = 0;
    for (i, w) in standbys.iter().enumerate() {
        let sync_state = if w.cascading {
            "async"
        } else {
            direct += 1;
            sync_states
                .get(direct - 1)
                .map(|s| s.as_str())
                .unwrap_or("async")
        };
        let addr = w
            .client_addr
            .map(|a| (a.ip().to_string(), a.port()))
            .unwrap_or_default();
        let lag_ms = |d: Option<std::time::Duration>| {
            d.map(|d| d.as_millis().to_string()).unwrap_or_default()
        };
        let reply_age_ms = w
            .reply_time
            .and_then(|t| t.elapsed().ok())
            .map(|d| d.as_millis().to_string())
            .unwrap_or_default();
        let _ = write!(
            s,
            "slave{i}:ip={},port={},state={},offset={},lag={},application_name={},walsender_state={},sync_state={},sent_lsn={},write_lsn={},flush_lsn={},replay_lsn={},write_lag_ms={},flush_lag_ms={},replay_lag_ms={},reply_age_ms={},slot={}\r\n",
            addr.0,
            addr.1,
            if w.state == crate::replication::registry::WalSenderState::Streaming { "online" } else { w.state.as_str() },
            w.flush_lsn.0,
            w.reply_time.and_then(|t| t.elapsed().ok()).map(|d| d.as_secs()).unwrap_or(0),
            w.application_name,
            w.state.as_str(),
            sync_state,
            w.sent_lsn,
            w.write_lsn,
            w.flush_lsn,
            w.apply_lsn,
            lag_ms(w.write_lag),
            lag_ms(w.flush_lag),
            lag_ms(w.apply_lag),
            reply_age_ms,
            w.slot.as_deref().unwrap_or(""),
        );
    }
    let (waiters, age) = node.syncrep.waiters();
    let _ = write!(
        s,
        "synchronous_standby_names:{}\r\nsync_waiters:{}\r\nsync_oldest_wait_ms:{}\r\nsync_degraded:{}\r\n",
        node.syncrep.config().map(|c| c.to_string()).unwrap_or_default(),
        waiters,
        age.map(|a| a.as_millis()).unwrap_or(0),
        node.syncrep.is_degraded() as u8,
    );
    slot_fields(node, &mut s);
    ha_fields(node, &mut s);
    s
}

/// Under automatic failover: this node's role as the HA loop sees it, who
/// leads, its write gate and the loop's counters; `None` with HA off.
pub(crate) fn ha_snapshot(node: &Node) -> Option<crate::status::HaSnapshot> {
    let gate = node.write_gate();
    if !gate.controlled() {
        return None;
    }
    let status = node.ha_status().unwrap_or_default();
    let member = node.settings().ha_member_name().unwrap_or_default();
    let open = gate.is_open();
    let role = match (&status.leader, node.is_primary(), open) {
        (_, true, true) => "leader",
        (_, true, false) => "fenced",
        (Some(l), false, _) if *l == member => "promoting",
        _ => "replica",
    };
    Some(crate::status::HaSnapshot {
        member,
        role,
        leader: status.leader,
        gate_open: open,
        gate_remaining_ms: gate.remaining().unwrap_or_default().as_millis() as u64,
        paused: status.paused,
        last_cycle: status.why,
        halted: status.halted,
        counters: status.counters,
    })
}

/// Under automatic failover: who leads, whether this node may write
/// (its write gate) and for how long without another lease renewal, what
/// the HA loop's last cycle did, and its counters.
fn ha_fields(node: &Node, s: &mut String) {
    let Some(h) = ha_snapshot(node) else {
        return;
    };
    let one_line = |t: &str| t.replace(['\r', '\n'], " ");
    let c = &h.counters;
    let _ = write!(
        s,
        "ha_enabled:1\r\nha_member:{}\r\nha_role:{}\r\nha_leader:{}\r\nha_gate:{}\r\nha_gate_remaining_ms:{}\r\nha_paused:{}\r\nha_last_cycle:{}\r\nha_halted:{}\r\n",
        h.member,
        h.role,
        h.leader.as_deref().unwrap_or(""),
        if h.gate_open { "open" } else { "closed" },
        h.gate_remaining_ms,
        h.paused as u8,
        one_line(&h.last_cycle),
        one_line(h.halted.as_deref().unwrap_or("")),
    );
    let _ = write!(
        s,
        "ha_cycles:{}\r\nha_failed_cycles:{}\r\nha_dcs_errors:{}\r\nha_leader_acquired:{}\r\nha_promotions:{}\r\nha_demotions:{}\r\n",
        c.cycles, c.failed_cycles, c.dcs_errors, c.leader_acquired, c.promotions, c.demotions,
    );
}

/// Every replication slot, one line each as pg_replication_slots:
/// `slot0:name=n2,type=physical,temporary=0,active=1,active_pid=3,restart_lsn=0/3000060,wal_status=reserved`.
fn slot_fields(node: &Node, s: &mut String) {
    for (i, slot) in node.slots.list().iter().enumerate() {
        let wal_status = if slot.invalidated {
            "lost"
        } else if slot.restart_lsn.is_valid() {
            "reserved"
        } else {
            ""
        };
        let _ = write!(
            s,
            "slot{i}:name={},type=physical,temporary={},active={},active_pid={},restart_lsn={},wal_status={wal_status}\r\n",
            slot.name,
            slot.temporary as u8,
            slot.active_pid.is_some() as u8,
            slot.active_pid.map(|p| p.to_string()).unwrap_or_default(),
            Some(slot.restart_lsn)
                .filter(|l| l.is_valid())
                .map(|l| l.to_string())
                .unwrap_or_default(),
        );
    }
}

/// A standby's view: its recovery state, where WAL comes from, how far it
/// has received and replayed, and the last transition with its cause.
fn standby_fields(node: &Node, r: &RecoverySnapshot, s: &mut String) {
    let conninfo = Some(node.settings().primary_conninfo.trim())
        .filter(|c| !c.is_empty())
        .and_then(|c| crate::replication::client::ConnInfo::parse(c).ok());
    let (host, port) = conninfo
        .as_ref()
        .map(|c| (c.host.clone(), c.port))
        .unwrap_or_default();
    let configured_app = conninfo
        .as_ref()
        .and_then(|c| c.application_name.clone())
        .unwrap_or_default();
    let (receive, replay) = (r.receive_lsn, r.replay_lsn);
    // Redis's master_link_status: up while a walreceiver session holds a
    // connection to the upstream (streaming, or between timelines on it).
    // The machine's WAL source alone stays "stream" while the walreceiver
    // retries a lost upstream.
    let streaming = r.wal_source == Some(crate::states::recovery::WalSource::Stream)
        && node.standby.as_ref().is_some_and(|p| {
            use crate::standby::receiver::ReceiverState as R;
            matches!(
                p.received.state(),
                R::Streaming | R::Waiting | R::Restarting
            )
        });
    let now_us = crate::store::control::now_ms() * 1000;
    let replay_lag_ms = if r.last_commit_us == 0 || receive <= replay {
        0
    } else {
        now_us.saturating_sub(r.last_commit_us) / 1000
    };
    let _ = write!(
        s,
        "master_host:{host}\r\nmaster_port:{port}\r\nmaster_link_status:{}\r\nrecovery_state:{}\r\nwal_source:{}\r\nreceive_lsn:{receive}\r\nreceive_tli:{}\r\nreplay_lsn:{replay}\r\nreplay_tli:{}\r\nreplay_lag_bytes:{}\r\nreplay_lag_ms:{replay_lag_ms}\r\nrecords_replayed:{}\r\ntarget_timeline:{}\r\nconsistent:{}\r\nlast_transition:{}\r\nlast_transition_cause:{}\r\nlast_transition_time_ms:{}\r\ntransitions:{}\r\n",
        if streaming { "up" } else { "down" },
        r.state.map(|k| k.to_string()).unwrap_or_else(|| "Starting".into()),
        r.wal_source.map(|k| k.to_string()).unwrap_or_default(),
        r.receive_tli.0,
        r.replay_tli.0,
        receive.saturating_sub(replay),
        r.records_replayed,
        r.target_tli.map(|t| t.0).unwrap_or(0),
        r.consistent as u8,
        r.last_transition.as_deref().unwrap_or_default(),
        r.last_transition_cause.as_deref().unwrap_or_default(),
        r.last_transition_at_ms,
        r.transitions,
    );
    upstream_fields(node, (&host, port, &configured_app), s);
}

/// The instance id and chain of the upstream last connected to, when it
/// is the configured one (`host`:`port`); empty strings otherwise.
fn connected_upstream(node: &Node, host: &str, port: u16) -> (String, String) {
    let Some(progress) = &node.standby else {
        return Default::default();
    };
    let Some(connected) = progress
        .received
        .upstream()
        .filter(|u| u.host == host && u.port == port)
    else {
        return Default::default();
    };
    let id = connected
        .instance_id
        .map(crate::replication::server::format_instance_id)
        .unwrap_or_default();
    let chain = crate::replication::server::format_chain(&progress.received.upstream_chain());
    (id, chain)
}

/// Who a standby streams from: the upstream of the last connection when it
/// is the configured one (its instance and the chain above it), else the
/// configured upstream alone (not connected yet, or just re-pointed).
fn upstream_fields(node: &Node, configured: (&str, u16, &str), s: &mut String) {
    if node.standby.is_none() {
        return;
    }
    let (host, port, app) = configured;
    let (id, chain) = connected_upstream(node, host, port);
    let _ = write!(
        s,
        "master_application_name:{app}\r\nmaster_instance_id:{id}\r\nupstream_chain:{chain}\r\n"
    );
    if let Some(progress) = &node.standby {
        // Whether the walreceiver spaces its fsyncs (no commit upstream
        // waits for this standby's flush), and how many it made.
        let _ = write!(
            s,
            "receiver_flush_deferred:{}\r\nreceiver_fsyncs:{}\r\n",
            progress.received.flush_deferred() as u8,
            progress.received.fsyncs()
        );
    }
}
