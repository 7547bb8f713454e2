//! `DIR/report.html` of `walrep demo --dir DIR`: the outcome, the standby's
//! recovery as a swimlane through the failover, writes per second and the
//! standby's lag over the load. One self-contained file.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use walrep::viz::chart::{self, line_chart, Series};
use walrep::viz::swimlane::{events_table, parse_trace, swimlane_svg, Lane};
use walrep::viz::xml::escape;

use super::{Dirs, LoadPoint};

/// Write the report; returns its path.
pub(super) fn write(
    dirs: &Dirs,
    acked: usize,
    checked: usize,
    promote_ms: f64,
    timeline: &str,
    load: &[LoadPoint],
) -> anyhow::Result<PathBuf> {
    let trace = dirs
        .standby
        .join("log")
        .join(walrep::standby::tracelog::TRACE_FILE);
    let jsonl = std::fs::read_to_string(&trace).unwrap_or_default();
    let lanes = vec![Lane {
        name: "standby".into(),
        records: parse_trace(&jsonl).with_context(|| format!("in {}", trace.display()))?,
    }];
    let mut body = String::from("<h1>walrep demo: failover report</h1>\n<table>\n");
    for (k, v) in [
        (
            "outcome",
            format!("OK: all {checked} acknowledged writes are on the promoted standby"),
        ),
        ("writes acknowledged before the crash", acked.to_string()),
        ("primary", "killed with SIGKILL under load".to_string()),
        (
            "promotion",
            format!("trigger file to first accepted write in {promote_ms:.0} ms"),
        ),
        ("new timeline", timeline.to_string()),
    ] {
        let _ = writeln!(body, "<tr><th>{k}</th><td>{}</td></tr>", escape(&v));
    }
    body.push_str("</table>\n<h2>The standby's recovery through the failover</h2>\n");
    body.push_str(&swimlane_svg(&lanes));
    body.push_str("<h2>Load</h2>\n<div class=\"row\">\n");
    let series = |name: &str, color, f: fn(&LoadPoint) -> f64| Series {
        name: name.into(),
        color,
        points: load.iter().map(|p| (p.at_ms, f(p))).collect(),
    };
    body.push_str(&line_chart(
        "writes per second (synchronous_commit = on)",
        &[series("writes/s", "#264653", |p| p.writes_per_s)],
        chart::number,
    ));
    body.push_str(&line_chart(
        "standby replay lag",
        &[series("bytes received, not replayed", "#e76f51", |p| {
            p.lag_bytes
        })],
        chart::bytes,
    ));
    body.push_str("</div>\n<h2>Every recorded transition</h2>\n");
    body.push_str(&events_table(&lanes));
    let path = dirs.root.join("report.html");
    std::fs::write(
        &path,
        walrep::viz::html::document("walrep demo report", "", &body),
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
