//! `docs/observability.md`, generated: the status port's endpoints, every
//! `/status` field ([`STATUS_FIELDS`]) and every metric
//! ([`METRICS`]). A test keeps the committed page equal to
//! this and every field `/status` prints documented here.

use std::fmt::Write as _;

use super::http::{IO_TIMEOUT, QUEUE, REQUEST_DEADLINE, WORKERS};
use super::metrics::{MetricKind, METRICS, PREFIX};

/// Every field of `/status`, as a path (`wal.flush_lsn`; `standbys[]` for
/// each element of a list) and what it means.
pub static STATUS_FIELDS: &[(&str, &str)] = &[
    ("role", "`primary` (accepts writes) or `standby`"),
    ("system_identifier", "The cluster's system identifier (a string: it exceeds JSON's safe integers)"),
    ("instance_id", "Random per start (16 hex digits), as walrep_instance_id and INFO's instance_id: tells nodes apart"),
    ("cluster_state", "The control file's state, as pg_controldata prints it"),
    ("timeline", "The control file's timeline"),
    ("checkpoint_lsn", "Last checkpoint (or restartpoint) location"),
    ("redo_lsn", "Its redo location"),
    ("node", "The node's name on its pages: its data directory's name"),
    ("ports", "The ports the node listens on (0 = off)"),
    ("ports.port", "Redis protocol"),
    ("ports.replication_port", "Replication protocol"),
    ("ports.status_port", "This HTTP port"),
    ("wal", "The WAL writer (a primary or a promoted standby); null otherwise"),
    ("wal.timeline", "Timeline WAL is written on"),
    ("wal.insert_lsn", "WAL insert position"),
    ("wal.flush_lsn", "WAL flushed (fdatasync'ed) position"),
    ("wal.records", "WAL records inserted since start"),
    ("wal.bytes", "WAL bytes inserted since start"),
    ("wal.fsyncs", "fdatasync calls on WAL segments since start"),
    ("recovery", "A standby's recovery (kept after a promotion); null on a node started as a primary"),
    ("recovery.state", "The recovery machine's state (ArchiveRecovery, RetryingArchive, Streaming, Promoting, Promoted...)"),
    ("recovery.wal_source", "Where replayed WAL comes from: archive, local (wal/) or stream"),
    ("recovery.receive_lsn", "WAL flushed by the walreceiver"),
    ("recovery.replay_lsn", "End of the last record replayed"),
    ("recovery.replay_tli", "Timeline of the last record replayed"),
    ("recovery.target_timeline", "The timeline recovery follows"),
    ("recovery.consistent", "Replay reached the minimum recovery point (reads allowed)"),
    ("recovery.last_transition", "The last notable transition, `from -> to on Event`"),
    ("recovery.last_transition_cause", "Why the machine made it"),
    ("recovery.last_transition_age_ms", "How long ago"),
    ("recovery.transitions", "Notable transitions since start"),
    ("upstream", "The walreceiver, as pg_stat_wal_receiver; null without primary_conninfo"),
    ("upstream.status", "stopped, starting, streaming, waiting, restarting or stopping"),
    ("upstream.sender_host", "The upstream's host (primary_conninfo)"),
    ("upstream.sender_port", "The upstream's replication port"),
    ("upstream.application_name", "The name the upstream's pg_stat_replication shows for this node"),
    ("upstream.conninfo", "primary_conninfo with the password hidden"),
    ("upstream.slot_name", "primary_slot_name, or null"),
    ("upstream.written_lsn", "WAL written, maybe not yet flushed"),
    ("upstream.flushed_lsn", "WAL flushed"),
    ("upstream.received_tli", "Timeline of the flushed WAL"),
    ("upstream.latest_end_lsn", "The upstream's flush position as it last said"),
    ("upstream.status_url", "The upstream's status page, as it advertised it (status_advertise_url); null from PostgreSQL"),
    ("upstream.instance_id", "The upstream's instance_id, as it said at connection; null from PostgreSQL"),
    ("upstream.upstream_chain", "The instances above this node, nearest first, comma-separated"),
    ("standbys", "Every connected walsender, as pg_stat_replication"),
    ("standbys[].pid", "The walsender's id (unique per server run)"),
    ("standbys[].usename", "Replication user"),
    ("standbys[].application_name", "application_name of the downstream (what synchronous_standby_names matches)"),
    ("standbys[].client_addr", "The downstream's address"),
    ("standbys[].client_port", "Its port"),
    ("standbys[].backend_start_unix_ms", "When it connected (ms since the epoch)"),
    ("standbys[].state", "startup, backup, catchup, streaming or stopping"),
    ("standbys[].cascading", "This node is itself a standby (a cascading walsender is never synchronous)"),
    ("standbys[].slot_name", "The slot streamed from, or null"),
    ("standbys[].sent_lsn", "Last WAL position sent"),
    ("standbys[].write_lsn", "Written by the downstream, as it reported"),
    ("standbys[].flush_lsn", "Flushed by the downstream"),
    ("standbys[].replay_lsn", "Replayed by the downstream"),
    ("standbys[].write_lag_ms", "Time from sending WAL to the downstream reporting it written"),
    ("standbys[].flush_lag_ms", "... flushed"),
    ("standbys[].replay_lag_ms", "... replayed"),
    ("standbys[].sync_state", "async, potential, sync or quorum"),
    ("standbys[].reply_time_unix_ms", "When the last status update arrived"),
    ("standbys[].status_url", "The downstream's status page, as a walrep standby told it; null for other clients (pg_receivewal)"),
    ("synchronous", "Synchronous replication"),
    ("synchronous.standby_names", "synchronous_standby_names, normalised; null when empty"),
    ("synchronous.waiters", "Commits waiting for synchronous standbys"),
    ("synchronous.oldest_wait_ms", "How long the oldest has waited"),
    ("synchronous.degraded", "Commits degrade to local (no synchronous standby within the timeout)"),
    ("disk", "The data directory's filesystem and what holds WAL on it"),
    ("disk.free_bytes", "Free space (what an unprivileged writer may still use)"),
    ("disk.total_bytes", "Size of the filesystem"),
    ("disk.wal_bytes", "Bytes of the files in wal/"),
    ("disk.wal_held", "Every reason WAL is kept, largest first"),
    ("disk.wal_held[].reason", "`slot:<name>`, `archive_backlog`, `wal_keep_size` or `checkpoint` (WAL since the previous checkpoint's redo point, kept for recovery's fallback)"),
    ("disk.wal_held[].bytes", "WAL behind the current position it keeps"),
    ("replication_slots", "Every replication slot, as pg_replication_slots"),
    ("replication_slots[].slot_name", "The slot's name (under automatic failover the leader keeps one per other member, named after it)"),
    ("replication_slots[].slot_type", "`physical`"),
    ("replication_slots[].temporary", "Lives only as long as the connection that made it"),
    ("replication_slots[].active", "A walsender streams on it now"),
    ("replication_slots[].active_pid", "That walsender's id (standbys[].pid), or null"),
    ("replication_slots[].restart_lsn", "The oldest WAL it keeps, or null before it reserved any"),
    ("replication_slots[].wal_status", "`reserved`, `lost` (past max_slot_wal_keep_size: its WAL is gone), or null"),
    ("ha", "Automatic failover (docs/ha.md), as the HA loop last found it; null with ha_enabled off"),
    ("ha.member", "This member's name (ha_name)"),
    ("ha.role", "`leader` (primary, write gate open), `fenced` (primary, gate closed), `promoting` or `replica`"),
    ("ha.leader", "The member holding the leader key, as last read; null when none or the read failed"),
    ("ha.gate", "The write gate: `open` or `closed`"),
    ("ha.gate_remaining_ms", "How long the gate stays open without another lease renewal"),
    ("ha.paused", "The cluster is paused (`walrep ha pause`): no automatic promotion or demotion"),
    ("ha.last_cycle", "What the last HA cycle did and why"),
    ("ha.halted", "Why the HA loop stopped for good (another cluster's keys), or null"),
    ("ha.cycles", "HA cycles run since start"),
    ("ha.failed_cycles", "Cycles stopped at a failed action (a lost compare-and-swap, an etcd error)"),
    ("ha.dcs_errors", "etcd calls that failed since start (renewals, reads, writes)"),
    ("ha.leader_acquired", "Times this node took the free leader key"),
    ("ha.promotions", "Promotions this node started"),
    ("ha.demotions", "Times this node, running as a primary while another member led, was demoted"),
];

/// The page, as committed in `docs/observability.md`.
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "# Observability\n\n<!-- Generated from the code (src/status/reference.rs and src/status/metrics.rs); \
         regenerate with `UPDATE_DOCS=1 cargo test --test observability_docs`. -->\n\n\
         Every node serves HTTP on `status_port` (off when 0):\n\n\
         | path | what |\n| --- | --- |\n\
         | `/` | The live page: the recovery machine drawn from the code with the current state highlighted, the last transitions with their causes, LSN and lag charts over the last minutes, the upstream (every pg_stat_wal_receiver column) and the downstreams (every pg_stat_replication column), each a link to that node's own page. It updates every second without a reload and reads the same with JavaScript off. |\n\
         | `/live` | The changing part of `/`, which the page fetches. |\n\
         | `/cluster` | The whole topology, from any node: it follows each node's upstream and downstreams by the status addresses they advertise and draws every node with its state, every walsender's client (pg_receivewal too) and the lag on each edge; `/cluster?peers=HOST:PORT,...` reads more nodes. |\n\
         | `/status` | The fields below, as JSON. |\n\
         | `/metrics` | The metrics below, in Prometheus's text format. |\n\
         | `/machine.svg` | The recovery machine with the events on each arrow. |\n\n\
         A Grafana dashboard for the metrics is in `docs/grafana-dashboard.json` (import it and pick your Prometheus data source).\n\n",
    );
    let _ = write!(
        out,
        "## What the page costs\n\nNothing on the node's own paths: the page reads the same snapshot `/status` does, \
         once a second for the charts (a ring of the last five minutes) and once per request; transitions are read \
         from the end of `log/transitions.jsonl` (at most 256 KiB) only when a page asks. The server has {WORKERS} \
         worker threads and a queue of {QUEUE} connections; past that a connection gets `503` at once. Each read or \
         write waits at most {} s and a request must arrive within {} s, so a slow or hostile client holds one \
         worker for a bounded time and never a thread of the node.\n\n",
        IO_TIMEOUT.as_secs(),
        REQUEST_DEADLINE.as_secs()
    );
    let _ = write!(
        out,
        "## Links between nodes\n\nA node's status address is `status_advertise_url` when set, else `http://LISTEN:status_port/` \
         (the first of `listen_addresses`). The upstream sends it on every replication connection as the ParameterStatus \
         `{}` (PostgreSQL clients ignore parameters they do not know); a walrep standby sends its own in the startup packet as \
         `{}` (a dotted name, which a PostgreSQL primary accepts as a custom setting). An address whose host names no \
         machine (`0.0.0.0`, `::`) is completed with the host the other side sees; set `status_advertise_url` where that is \
         not the right one (NAT, a proxy). Addresses longer than {} characters, or not http(s), are ignored. `/cluster` reads \
         at most {} nodes, each within {} s, all within {} s.\n\n",
        super::links::STATUS_URL_PARAMETER,
        super::links::STATUS_URL_STARTUP_PARAMETER,
        super::links::MAX_STATUS_URL_LEN,
        super::cluster::MAX_PEERS,
        super::cluster::PEER_TIMEOUT.as_secs(),
        super::cluster::WALK_DEADLINE.as_secs()
    );
    out.push_str("## `/status` fields\n\n| field | meaning |\n| --- | --- |\n");
    for (path, meaning) in STATUS_FIELDS {
        let _ = writeln!(out, "| `{path}` | {meaning} |");
    }
    out.push_str("\n## Metrics\n\nA metric that does not apply to the node (no WAL writer on a standby, no recovery on a primary) is left out.\n\n| name | type | unit | meaning |\n| --- | --- | --- | --- |\n");
    for m in METRICS {
        let suffix = if m.kind == MetricKind::Counter {
            "_total"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "| `{PREFIX}_{}{suffix}` | {} | {} | {} |",
            m.name,
            m.kind.as_str(),
            m.unit,
            m.help
        );
    }
    out
}
