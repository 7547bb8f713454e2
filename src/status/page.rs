//! The live page of a node (`/`): the recovery machine drawn from the code
//! with the current state highlighted, the last transitions and their
//! causes, LSN and lag charts, the upstream (`pg_stat_wal_receiver`) and
//! the downstreams (`pg_stat_replication`). The server renders all of it;
//! the page's only script fetches `/live` (the same markup) every second
//! and swaps it in, so it updates without a reload and reads the same with
//! JavaScript off.

use std::fmt::Write as _;

use super::history::Sample;
use super::links;
use super::Snapshot;
use crate::replication::registry::WalSenderStatus;
use crate::states::recovery::Action;
use crate::store::control::now_ms;
use crate::viz::chart::{self, line_chart, Series};
use crate::viz::swimlane::{event_row, state_color, swimlane_svg, Lane, TraceRecord};
use crate::viz::xml::{duration, escape, utc};
use crate::viz::{html, machine_svg_highlighting};

/// Transitions listed on the page, newest first.
pub const PAGE_TRANSITIONS: usize = 25;

/// The script that keeps the page live: fetch `/live`, swap it in, back
/// off (up to 10 s) while the node does not answer.
const LIVE_JS: &str = "(function () {
  var delay = 1000;
  var live = document.getElementById('live');
  var note = document.getElementById('conn');
  function tick() {
    fetch('/live', { cache: 'no-store' }).then(function (r) {
      if (!r.ok) { throw new Error('HTTP ' + r.status); }
      return r.text();
    }).then(function (markup) {
      live.innerHTML = markup;
      delay = 1000;
      note.textContent = 'live: updated every second';
    }).catch(function (e) {
      delay = Math.min(delay * 2, 10000);
      note.textContent = 'the node does not answer (' + e.message + '); retrying';
    }).then(function () { setTimeout(tick, delay); });
  }
  note.textContent = 'live: updated every second';
  setTimeout(tick, delay);
})();";

/// What the page shows besides the snapshot.
pub struct PageData<'a> {
    pub snapshot: &'a Snapshot,
    /// This node's recent transitions, oldest first.
    pub transitions: &'a [TraceRecord],
    /// The chart samples, oldest first.
    pub samples: &'a [Sample],
}

/// The whole page.
pub fn node_page(d: &PageData<'_>) -> String {
    let s = d.snapshot;
    let mut body = String::new();
    let _ = writeln!(
        body,
        "<p class=\"muted\"><span id=\"conn\">a snapshot taken {}; turn JavaScript on for live updates</span> · <a href=\"/cluster\">cluster</a> · <a href=\"/status\">/status</a> · <a href=\"/metrics\">/metrics</a> · <a href=\"/machine.svg\">the machine with its events</a></p>",
        escape(&utc(now_ms()))
    );
    let _ = writeln!(body, "<div id=\"live\">{}</div>", live_fragment(d));
    body.push_str(&html::script(LIVE_JS));
    html::document(&format!("walrep {}", s.node_name), "", &body)
}

/// The part of the page that changes: served alone at `/live`.
pub fn live_fragment(d: &PageData<'_>) -> String {
    let mut out = String::new();
    out.push_str(&header(d.snapshot));
    out.push_str("<div class=\"row\">\n");
    out.push_str(&machine_card(d));
    out.push_str("<div>\n");
    out.push_str(&charts(d.samples));
    out.push_str(&figures(d.snapshot));
    out.push_str("</div>\n</div>\n");
    out.push_str(&upstream(d.snapshot));
    out.push_str(&downstreams(d.snapshot));
    out.push_str(&transitions(d));
    out
}

/// The state the page names: the recovery machine's, or `Primary` for a
/// node that never was a standby.
pub fn shown_state(s: &Snapshot) -> String {
    match s.recovery.as_ref().and_then(|r| r.state) {
        Some(state) => state.to_string(),
        None if s.primary => "Primary".into(),
        None => "Starting".into(),
    }
}

/// The timeline the node is on: its WAL writer's, else what it replays.
pub fn shown_timeline(s: &Snapshot) -> u32 {
    if let Some(w) = &s.wal {
        return w.timeline.0;
    }
    match &s.recovery {
        Some(r) if r.replay_tli.0 > 0 => r.replay_tli.0,
        _ => s.timeline.0,
    }
}

fn header(s: &Snapshot) -> String {
    let state = shown_state(s);
    let (fill, ink) = s
        .recovery
        .as_ref()
        .and_then(|r| r.state)
        .map(state_color)
        .unwrap_or(("#264653", "#fff"));
    let role = if s.primary { "primary" } else { "standby" };
    format!(
        "<h1>{} <span class=\"badge\" id=\"state\" style=\"background: {fill}; color: {ink}\">{}</span> <span id=\"timeline\">timeline {}</span></h1>\n<p>role <b id=\"role\">{role}</b> · {} · system identifier <code>{}</code> · Redis port {} · replication port {} · status port {}</p>\n",
        escape(&s.node_name),
        escape(&state),
        shown_timeline(s),
        escape(s.cluster_state.describe()),
        s.system_identifier,
        s.ports.redis,
        s.ports.replication,
        s.ports.status,
    )
}

fn machine_card(d: &PageData<'_>) -> String {
    let state = d.snapshot.recovery.as_ref().and_then(|r| r.state);
    let mut out = String::from("<div class=\"card\">\n<h2>Recovery machine</h2>\n");
    if d.snapshot.recovery.is_none() {
        out.push_str(
            "<p class=\"muted\">This node started as a primary: it has no recovery to show.</p>\n",
        );
    }
    out.push_str(&machine_svg_highlighting(state));
    if let Some(last) = d.transitions.last() {
        let t = &last.transition;
        let ago = last
            .time_unix_ms
            .map(|at| format!(", {} ago", duration(now_ms().saturating_sub(at))))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "<p>last: <b>{} \u{2192} {}</b> on {}{}</p>",
            t.from,
            t.to,
            escape(&t.event.to_string()),
            escape(&ago)
        );
        if let Some(cause) = &t.cause {
            let _ = writeln!(out, "<p>why: {}</p>", escape(cause));
        }
        out.push_str(&pending(t.actions.as_slice(), last.time_unix_ms));
    }
    out.push_str("</div>\n");
    out
}

/// The last event's actions, and the retry timer if it armed one.
fn pending(actions: &[Action], at_ms: Option<u64>) -> String {
    if actions.is_empty() {
        return "<p>actions: none pending</p>\n".into();
    }
    let list: Vec<String> = actions.iter().map(|a| a.to_string()).collect();
    let mut out = format!("<p>actions: {}</p>\n", escape(&list.join(", ")));
    for a in actions {
        if let Action::ArmRetry { .. } = a {
            let _ = writeln!(
                out,
                "<p>timer: {} (armed {})</p>",
                escape(&a.to_string()),
                at_ms.map(utc).unwrap_or_default()
            );
        }
    }
    out
}

fn charts(samples: &[Sample]) -> String {
    let series = |name: &str, color, f: fn(&Sample) -> Option<u64>| Series {
        name: name.into(),
        color,
        points: samples
            .iter()
            .filter_map(|s| f(s).map(|v| (s.at_ms, v as f64)))
            .collect(),
    };
    let lsns: Vec<Series> = [
        series("flush", "#264653", |s| s.flush_lsn),
        series("receive", "#2a9d8f", |s| s.receive_lsn),
        series("replay", "#e76f51", |s| s.replay_lsn),
    ]
    .into_iter()
    .filter(|s| !s.points.is_empty())
    .collect();
    let lag = [
        series("received, not replayed", "#e76f51", |s| {
            Some(s.receive_lsn?.saturating_sub(s.replay_lsn?))
        }),
        series("largest downstream flush lag", "#7b2cbf", |s| {
            Some(s.downstream_lag_bytes)
        }),
    ];
    let lag: Vec<Series> = lag.into_iter().filter(|s| !s.points.is_empty()).collect();
    format!(
        "<div class=\"card\">\n<h2>WAL positions and lag, last {}</h2>\n{}{}</div>\n",
        duration(
            samples
                .last()
                .zip(samples.first())
                .map_or(0, |(l, f)| l.at_ms - f.at_ms)
        ),
        line_chart("LSN", &lsns, chart::lsn),
        line_chart("lag (bytes)", &lag, chart::bytes)
    )
}

fn figures(s: &Snapshot) -> String {
    let mut rows: Vec<(&str, String)> = Vec::new();
    if let Some(r) = &s.recovery {
        rows.push((
            "wal source",
            r.wal_source.map(|w| w.to_string()).unwrap_or("none".into()),
        ));
        rows.push((
            "receive lsn",
            format!("{} (timeline {})", r.receive_lsn, r.receive_tli.0),
        ));
        rows.push((
            "replay lsn",
            format!("{} (timeline {})", r.replay_lsn, r.replay_tli.0),
        ));
        rows.push(("consistent", r.consistent.to_string()));
        rows.push(("records replayed", r.records_replayed.to_string()));
    }
    if let Some(w) = &s.wal {
        rows.push(("wal insert lsn", w.insert_lsn.to_string()));
        rows.push(("wal flush lsn", w.flush_lsn.to_string()));
        rows.push((
            "wal records / fsyncs",
            format!("{} / {}", w.stats.records, w.stats.fsyncs),
        ));
    }
    rows.push((
        "checkpoint / redo",
        format!("{} / {}", s.checkpoint_lsn, s.redo_lsn),
    ));
    rows.push((
        "synchronous_standby_names",
        s.sync
            .standby_names
            .clone()
            .unwrap_or_else(|| "(empty)".into()),
    ));
    rows.push((
        "sync waiters",
        format!(
            "{}{}",
            s.sync.waiters,
            if s.sync.degraded {
                " (degraded to local commits)"
            } else {
                ""
            }
        ),
    ));
    if let Some(a) = &s.archiver {
        rows.push((
            "archived / failed",
            format!("{} / {}", a.archived_count, a.failed_count),
        ));
    }
    let mut out = String::from("<div class=\"card\">\n<h2>Figures</h2>\n<table>\n");
    for (k, v) in rows {
        let _ = writeln!(
            out,
            "<tr><th>{k}</th><td class=\"lsn\">{}</td></tr>",
            escape(&v)
        );
    }
    out.push_str("</table>\n</div>\n");
    out
}

/// Not tracked by walrep: the column keeps its place, empty.
const UNTRACKED: &str = "<span class=\"muted\" title=\"not tracked by walrep\">\u{2014}</span>";

fn upstream(s: &Snapshot) -> String {
    let Some(u) = &s.upstream else {
        return "<h2>Upstream</h2>\n<p id=\"upstream\">none: this node streams from no one</p>\n"
            .into();
    };
    let lsn = |l: crate::Lsn| format!("<code>{l}</code>");
    let rows: [(&str, String); 17] = [
        ("pid", UNTRACKED.into()),
        ("status", escape(u.status)),
        ("receive_start_lsn", UNTRACKED.into()),
        ("receive_start_tli", UNTRACKED.into()),
        ("written_lsn", lsn(u.written_lsn)),
        ("flushed_lsn", lsn(u.flushed_lsn)),
        ("received_tli", u.received_tli.0.to_string()),
        ("last_msg_send_time", UNTRACKED.into()),
        ("last_msg_receipt_time", UNTRACKED.into()),
        ("latest_end_lsn", lsn(u.latest_end_lsn)),
        ("latest_end_time", UNTRACKED.into()),
        ("slot_name", escape(u.slot_name.as_deref().unwrap_or(""))),
        ("sender_host", escape(&u.sender_host)),
        ("sender_port", u.sender_port.to_string()),
        ("conninfo", format!("<code>{}</code>", escape(&u.conninfo))),
        (
            "instance_id",
            u.instance_id
                .map(crate::replication::server::format_instance_id)
                .unwrap_or_default(),
        ),
        ("upstream_chain", escape(&u.upstream_chain)),
    ];
    let name = format!("<b>{}:{}</b>", escape(&u.sender_host), u.sender_port);
    let mut out = format!(
        "<h2>Upstream</h2>\n<p id=\"upstream\">streams from {} ({}){}</p>\n<table class=\"wal-receiver\">\n<tr>",
        links::link_to_page(u.status_url.as_deref(), "node-link upstream-link", &name),
        escape(u.status),
        if u.status_url.is_some() { "" } else { " \u{b7} <span class=\"muted\">it advertises no status page</span>" }
    );
    for (k, _) in &rows {
        let _ = write!(out, "<th>{k}</th>");
    }
    out.push_str("</tr>\n<tr>");
    for (_, v) in &rows {
        let _ = write!(out, "<td>{v}</td>");
    }
    out.push_str("</tr>\n</table>\n");
    out
}

/// `pg_stat_replication`'s columns, in its order.
const REPLICATION_COLUMNS: [&str; 20] = [
    "pid",
    "usesysid",
    "usename",
    "application_name",
    "client_addr",
    "client_hostname",
    "client_port",
    "backend_start",
    "backend_xmin",
    "state",
    "sent_lsn",
    "write_lsn",
    "flush_lsn",
    "replay_lsn",
    "write_lag",
    "flush_lag",
    "replay_lag",
    "sync_priority",
    "sync_state",
    "reply_time",
];

fn downstreams(s: &Snapshot) -> String {
    let mut out = format!(
        "<h2>Downstreams ({} walsenders)</h2>\n<table class=\"replication\">\n<tr>",
        s.walsenders.len()
    );
    for c in REPLICATION_COLUMNS {
        let _ = write!(out, "<th>{c}</th>");
    }
    out.push_str("</tr>\n");
    for (i, w) in s.walsenders.iter().enumerate() {
        out.push_str(&walsender_row(
            w,
            s.sync_states.get(i).copied().unwrap_or("async"),
        ));
    }
    out.push_str("</table>\n");
    out
}

fn walsender_row(w: &WalSenderStatus, sync_state: &str) -> String {
    let lag = |d: Option<std::time::Duration>| {
        d.map(|d| duration(d.as_millis() as u64))
            .unwrap_or_default()
    };
    let time = |t: Option<std::time::SystemTime>| {
        t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| utc(d.as_millis() as u64))
            .unwrap_or_default()
    };
    let cells: [String; 20] = [
        w.id.to_string(),
        UNTRACKED.into(),
        escape(&w.user),
        links::link_to_page(
            w.status_url.as_deref(),
            "node-link downstream-link",
            &escape(&w.application_name),
        ),
        w.client_addr
            .map(|a| a.ip().to_string())
            .unwrap_or_default(),
        UNTRACKED.into(),
        w.client_addr
            .map(|a| a.port().to_string())
            .unwrap_or_default(),
        escape(&time(Some(w.backend_start))),
        w.feedback
            .as_ref()
            .map(|f| f.xmin.to_string())
            .filter(|x| x != "0")
            .unwrap_or_default(),
        w.state.as_str().into(),
        w.sent_lsn.to_string(),
        w.write_lsn.to_string(),
        w.flush_lsn.to_string(),
        w.apply_lsn.to_string(),
        lag(w.write_lag),
        lag(w.flush_lag),
        lag(w.apply_lag),
        UNTRACKED.into(),
        escape(sync_state),
        escape(&time(w.reply_time)),
    ];
    let mut out = String::from("<tr>");
    for c in cells {
        let _ = write!(out, "<td>{c}</td>");
    }
    out.push_str("</tr>\n");
    out
}

fn transitions(d: &PageData<'_>) -> String {
    let mut out = format!(
        "<h2>Recent transitions ({} notable since start)</h2>\n",
        d.snapshot.recovery.as_ref().map_or(0, |r| r.transitions)
    );
    if d.transitions.is_empty() {
        out.push_str("<p class=\"muted\">none recorded</p>\n");
        return out;
    }
    out.push_str(&swimlane_svg(&[Lane {
        name: d.snapshot.node_name.clone(),
        records: d.transitions.to_vec(),
    }]));
    out.push_str("<table class=\"events\">\n<tr><th>#</th><th>time</th><th>state</th><th>event</th><th>actions</th><th>why</th><th>replay</th><th>receive</th><th>timeline</th></tr>\n");
    for r in d.transitions.iter().rev().take(PAGE_TRANSITIONS) {
        out.push_str(&event_row(r));
    }
    out.push_str("</table>\n");
    out
}
