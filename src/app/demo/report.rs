//! `DIR/report.html` of `walrep demo --dir DIR` (and `--ha`): the outcome,
//! the nodes' recovery as swimlanes through the failover, writes per second
//! (and the standby's lag) over the load. One self-contained file.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use walrep::viz::chart::{self, line_chart, Series};
use walrep::viz::swimlane::{events_table, parse_trace, swimlane_svg, Lane};
use walrep::viz::xml::escape;

use super::LoadPoint;

/// What a report shows.
pub(super) struct Report<'a> {
    /// Where report.html goes.
    pub root: &'a Path,
    /// The page's heading.
    pub title: &'a str,
    /// The outcome table: (what, value).
    pub rows: Vec<(&'static str, String)>,
    /// The heading above the swimlanes.
    pub lanes_heading: &'a str,
    /// Each node's name and data directory (its trace is in log/).
    pub nodes: Vec<(String, PathBuf)>,
    /// The load's progress.
    pub load: &'a [LoadPoint],
    /// Whether the load points carry the standby's lag (the plain demo's).
    pub lag: bool,
}

/// Write the report; returns its path.
pub(super) fn write(r: &Report) -> anyhow::Result<PathBuf> {
    let mut lanes = Vec::new();
    for (name, datadir) in &r.nodes {
        let trace = datadir
            .join("log")
            .join(walrep::standby::tracelog::TRACE_FILE);
        let jsonl = std::fs::read_to_string(&trace).unwrap_or_default();
        lanes.push(Lane {
            name: name.clone(),
            records: parse_trace(&jsonl).with_context(|| format!("in {}", trace.display()))?,
        });
    }
    let mut body = format!("<h1>{}</h1>\n<table>\n", escape(r.title));
    for (k, v) in &r.rows {
        let _ = writeln!(body, "<tr><th>{k}</th><td>{}</td></tr>", escape(v));
    }
    let _ = writeln!(body, "</table>\n<h2>{}</h2>", escape(r.lanes_heading));
    body.push_str(&swimlane_svg(&lanes));
    body.push_str("<h2>Load</h2>\n<div class=\"row\">\n");
    let series = |name: &str, color, f: fn(&LoadPoint) -> f64| Series {
        name: name.into(),
        color,
        points: r.load.iter().map(|p| (p.at_ms, f(p))).collect(),
    };
    body.push_str(&line_chart(
        "writes per second (synchronous_commit = on)",
        &[series("writes/s", "#264653", |p| p.writes_per_s)],
        chart::number,
    ));
    if r.lag {
        body.push_str(&line_chart(
            "standby replay lag",
            &[series("bytes received, not replayed", "#e76f51", |p| {
                p.lag_bytes
            })],
            chart::bytes,
        ));
    }
    body.push_str("</div>\n<h2>Every recorded transition</h2>\n");
    body.push_str(&events_table(&lanes));
    let path = r.root.join("report.html");
    std::fs::write(
        &path,
        walrep::viz::html::document("walrep demo report", "", &body),
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
