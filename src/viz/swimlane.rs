//! Swimlane timelines of one or more nodes' `transitions.jsonl`: one lane
//! per node, the recovery machine's state as coloured bands over time,
//! every recorded event as a mark (its event, actions, cause and LSNs on
//! hover), promotions and timeline switches marked. Rendered as SVG and as
//! a self-contained HTML page (the SVG plus a legend and a table of every
//! event), deterministic so a known trace is a snapshot test.

use std::fmt::Write as _;

use super::xml::{duration, escape, utc};
use super::VizError;
use crate::states::recovery::{Action, StateKind, Transition};

/// One line of a trace file: the transition and, when the runtime wrote
/// it, the wall-clock time (which lines up lanes of different nodes).
#[derive(Debug, Clone)]
pub struct TraceRecord {
    /// Milliseconds since the Unix epoch, as the runtime's trace log
    /// writes it; absent in traces made from the pure machine.
    pub time_unix_ms: Option<u64>,
    /// What the event did.
    pub transition: Transition,
}

/// One node's lane: a name and its records in file order.
#[derive(Debug, Clone)]
pub struct Lane {
    /// Shown at the left of the lane (the node's data directory name).
    pub name: String,
    /// The node's transitions.
    pub records: Vec<TraceRecord>,
}

#[derive(serde::Deserialize)]
struct WallClock {
    time_unix_ms: Option<u64>,
}

/// Parse a `transitions.jsonl`; blank lines are skipped, anything else
/// that is not a transition is an error naming its line.
pub fn parse_trace(jsonl: &str) -> Result<Vec<TraceRecord>, VizError> {
    let mut records = Vec::new();
    for (i, line) in jsonl.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |source| VizError::Trace {
            line: i + 1,
            source,
        };
        let transition: Transition = serde_json::from_str(line).map_err(bad)?;
        let clock: WallClock = serde_json::from_str(line).map_err(bad)?;
        records.push(TraceRecord {
            time_unix_ms: clock.time_unix_ms,
            transition,
        });
    }
    Ok(records)
}

/// Bytes read from the end of a trace file for a page: enough for
/// hundreds of transitions, bounded whatever the file's size.
pub const TAIL_BYTES: u64 = 256 * 1024;

/// The last `max` records of the trace file at `path` (oldest first),
/// reading at most [`TAIL_BYTES`] from its end. A missing file is no
/// records; a line cut by the read or being written is skipped.
pub fn read_trace_tail(path: &std::path::Path, max: usize) -> Vec<TraceRecord> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(TAIL_BYTES);
    if f.seek(SeekFrom::Start(from)).is_err() {
        return Vec::new();
    }
    let mut bytes = Vec::new();
    if f.take(TAIL_BYTES).read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if from > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    let start = lines.len().saturating_sub(max);
    lines[start..]
        .iter()
        .filter_map(|l| parse_trace(l).ok()?.pop())
        .collect()
}

/// The fill of a state's band; dark states get white text.
pub fn state_color(s: StateKind) -> (&'static str, &'static str) {
    match s {
        StateKind::Starting => ("#d9d9d9", "#000"),
        StateKind::AwaitingBaseBackup => ("#a8dadc", "#000"),
        StateKind::CrashRecovery => ("#f4a261", "#000"),
        StateKind::ArchiveRecovery => ("#e9c46a", "#000"),
        StateKind::RetryingArchive => ("#e76f51", "#fff"),
        StateKind::Streaming => ("#2a9d8f", "#fff"),
        StateKind::Promoting => ("#8ab17d", "#000"),
        StateKind::Promoted => ("#264653", "#fff"),
        StateKind::Stopped => ("#6c757d", "#fff"),
    }
}

const WIDTH: f64 = 1200.0;
const LEFT: f64 = 170.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 50.0;
const LANE_H: f64 = 84.0;
const BAND_Y: f64 = 22.0;
const BAND_H: f64 = 30.0;

/// The time axis: lanes line up on wall-clock time when every record has
/// it, else on each machine's own clock (then lanes are not comparable,
/// and the header says so).
struct Axis {
    wall_clock: bool,
    start_ms: u64,
    span_ms: u64,
}

impl Axis {
    fn of(lanes: &[Lane]) -> Axis {
        let all = || lanes.iter().flat_map(|l| l.records.iter());
        let wall_clock = all().next().is_some() && all().all(|r| r.time_unix_ms.is_some());
        let times: Vec<u64> = all().map(|r| time_of(r, wall_clock)).collect();
        let start_ms = times.iter().copied().min().unwrap_or(0);
        let end_ms = times.iter().copied().max().unwrap_or(0);
        // A tenth more after the last record, so the state each lane ends
        // in shows as a band, not a line at the edge.
        let span_ms = (end_ms - start_ms).max(1);
        Axis {
            wall_clock,
            start_ms,
            span_ms: span_ms + span_ms.div_ceil(10),
        }
    }

    fn end_ms(&self) -> u64 {
        self.start_ms + self.span_ms
    }

    fn x(&self, t_ms: u64) -> f64 {
        let frac = t_ms.saturating_sub(self.start_ms) as f64 / self.span_ms as f64;
        LEFT + frac * (WIDTH - LEFT - RIGHT)
    }
}

fn time_of(r: &TraceRecord, wall_clock: bool) -> u64 {
    match (wall_clock, r.time_unix_ms) {
        (true, Some(t)) => t,
        _ => r.transition.at.0,
    }
}

/// A state held from `start_ms` to `end_ms`.
struct Band {
    state: StateKind,
    start_ms: u64,
    end_ms: u64,
    /// The record that entered it.
    first: usize,
}

fn bands(lane: &Lane, axis: &Axis) -> Vec<Band> {
    let mut out: Vec<Band> = Vec::new();
    for (i, r) in lane.records.iter().enumerate() {
        let t = time_of(r, axis.wall_clock);
        if let Some(last) = out.last_mut() {
            if last.state == r.transition.to {
                continue;
            }
            last.end_ms = t;
        }
        out.push(Band {
            state: r.transition.to,
            start_ms: t,
            end_ms: axis.end_ms(),
            first: i,
        });
    }
    out
}

/// What a mark's tooltip and the event table say about one record.
pub fn describe(t: &Transition) -> String {
    let mut s = format!("#{} {}", t.seq, t.event);
    if t.from != t.to {
        let _ = write!(s, "\n{} -> {}", t.from, t.to);
    }
    if !t.actions.is_empty() {
        let actions: Vec<String> = t.actions.iter().map(|a| a.to_string()).collect();
        let _ = write!(s, "\ndo: {}", actions.join(", "));
    }
    if let Some(cause) = &t.cause {
        let _ = write!(s, "\nwhy: {cause}");
    }
    let _ = write!(
        s,
        "\nreplay {} receive {} timeline {}",
        t.replay_lsn, t.receive_lsn, t.target_tli.0
    );
    s
}

/// The swimlane as a standalone SVG document.
pub fn swimlane_svg(lanes: &[Lane]) -> String {
    let axis = Axis::of(lanes);
    let height = TOP + LANE_H * lanes.len().max(1) as f64 + 70.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"swimlane\" width=\"{WIDTH}\" height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(
        out,
        "<rect x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{height}\" fill=\"#fff\"/>"
    );
    let header = if axis.wall_clock {
        format!("from {}", utc(axis.start_ms))
    } else {
        "machine time (each lane on its own clock)".to_string()
    };
    let _ = writeln!(
        out,
        "<text x=\"{LEFT}\" y=\"20\" font-size=\"14\" font-weight=\"bold\">Recovery state over time, {}</text>",
        escape(&header)
    );
    for (i, lane) in lanes.iter().enumerate() {
        draw_lane(&mut out, lane, &axis, TOP + LANE_H * i as f64);
    }
    draw_axis(&mut out, &axis, TOP + LANE_H * lanes.len().max(1) as f64);
    out.push_str("</svg>\n");
    out
}

fn draw_lane(out: &mut String, lane: &Lane, axis: &Axis, y0: f64) {
    let _ = writeln!(
        out,
        "<g class=\"lane\" data-node=\"{}\">",
        escape(&lane.name)
    );
    let _ = writeln!(
        out,
        "<line x1=\"0\" y1=\"{y0}\" x2=\"{WIDTH}\" y2=\"{y0}\" stroke=\"#ccc\"/>"
    );
    let _ = writeln!(
        out,
        "<text x=\"8\" y=\"{}\" font-weight=\"bold\">{}</text>",
        y0 + BAND_Y + BAND_H / 2.0 + 4.0,
        escape(&lane.name)
    );
    let by = y0 + BAND_Y;
    for band in bands(lane, axis) {
        draw_band(out, lane, axis, &band, by);
    }
    draw_marks(out, lane, axis, by);
    out.push_str("</g>\n");
}

fn draw_band(out: &mut String, lane: &Lane, axis: &Axis, band: &Band, by: f64) {
    let (x1, x2) = (axis.x(band.start_ms), axis.x(band.end_ms));
    let w = (x2 - x1).max(1.0);
    let (fill, ink) = state_color(band.state);
    let first = &lane.records[band.first].transition;
    let _ = writeln!(
        out,
        "<rect class=\"band\" data-state=\"{}\" x=\"{x1:.1}\" y=\"{by}\" width=\"{w:.1}\" height=\"{BAND_H}\" fill=\"{fill}\"><title>{} for {}, entered on {}</title></rect>",
        band.state,
        band.state,
        duration(band.end_ms - band.start_ms),
        escape(&first.event.to_string())
    );
    let label = band.state.to_string();
    if w > label.len() as f64 * 7.0 + 8.0 {
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{}\" fill=\"{ink}\" pointer-events=\"none\">{label}</text>",
            x1 + 4.0,
            by + BAND_H / 2.0 + 4.0
        );
    }
    if w > 80.0 {
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{}\" font-size=\"10\" fill=\"#555\">replay {}</text>",
            x1 + 2.0,
            by + BAND_H + 24.0,
            first.replay_lsn
        );
    }
}

/// The timeline the node is on after `t`: the one a promotion writes
/// (`AcceptWrites`), else the recovery target.
pub fn timeline_after(t: &Transition) -> u32 {
    t.actions
        .iter()
        .find_map(|a| match a {
            Action::AcceptWrites { tli } => Some(tli.0),
            _ => None,
        })
        .unwrap_or(t.target_tli.0)
}

/// A tick per record under the band; promotions as a red line across the
/// lane, timeline changes as a labelled diamond above it.
fn draw_marks(out: &mut String, lane: &Lane, axis: &Axis, by: f64) {
    let mut tli = None;
    for r in &lane.records {
        let t = &r.transition;
        let x = axis.x(time_of(r, axis.wall_clock));
        if t.to == StateKind::Promoted && t.from != StateKind::Promoted {
            let _ = writeln!(
                out,
                "<line class=\"promotion\" x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#d00\" stroke-width=\"2\" stroke-dasharray=\"4 2\"/>",
                by - 14.0,
                by + BAND_H + 12.0
            );
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"{}\" fill=\"#d00\" font-weight=\"bold\" text-anchor=\"end\">promoted, timeline {}</text>",
                x - 3.0,
                by - 4.0,
                timeline_after(t)
            );
        }
        let now = timeline_after(t);
        if tli.is_some_and(|old| old != now) {
            let _ = writeln!(
                out,
                "<path class=\"timeline-switch\" d=\"M{x:.1} {} l5 5 l-5 5 l-5 -5 z\" fill=\"#7b2cbf\"><title>timeline {}</title></path>",
                by - 16.0,
                now
            );
            if t.to != StateKind::Promoted {
                let _ = writeln!(
                    out,
                    "<text x=\"{:.1}\" y=\"{}\" fill=\"#7b2cbf\" font-size=\"11\">timeline {}</text>",
                    x + 7.0,
                    by - 7.0,
                    now
                );
            }
        }
        tli = Some(now);
        let _ = writeln!(
            out,
            "<rect class=\"mark\" data-seq=\"{}\" x=\"{:.1}\" y=\"{}\" width=\"3\" height=\"10\" fill=\"#222\"><title>{}</title></rect>",
            t.seq,
            x - 1.5,
            by + BAND_H + 1.0,
            escape(&describe(t))
        );
    }
}

fn draw_axis(out: &mut String, axis: &Axis, y: f64) {
    let _ = writeln!(
        out,
        "<line x1=\"{LEFT}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#000\"/>",
        WIDTH - RIGHT
    );
    let step = tick_step(axis.span_ms);
    let mut t = 0;
    while t <= axis.span_ms {
        let x = axis.x(axis.start_ms + t);
        let _ = writeln!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{y}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#000\"/><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\">+{}</text>",
            y + 5.0,
            y + 18.0,
            duration(t)
        );
        t += step;
    }
    draw_legend(out, y + 36.0);
}

/// A round step giving at most about ten ticks.
pub fn tick_step(span_ms: u64) -> u64 {
    const STEPS: [u64; 14] = [
        1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 30_000,
    ];
    STEPS
        .iter()
        .copied()
        .find(|s| span_ms / s <= 10)
        .unwrap_or_else(|| (span_ms / 10 / 60_000 + 1) * 60_000)
}

fn draw_legend(out: &mut String, y: f64) {
    let mut x = LEFT;
    for s in StateKind::ALL {
        let (fill, _) = state_color(s);
        let _ = writeln!(
            out,
            "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{fill}\"/><text x=\"{}\" y=\"{y}\" font-size=\"11\">{s}</text>",
            y - 10.0,
            x + 16.0
        );
        x += s.to_string().len() as f64 * 7.0 + 34.0;
    }
}

/// The swimlane as a self-contained HTML page: the SVG (hover a mark for
/// its event), then every event of every lane in a table.
pub fn swimlane_html(title: &str, lanes: &[Lane]) -> String {
    let mut body = String::new();
    let _ = writeln!(body, "<h1>{}</h1>", escape(title));
    body.push_str(&swimlane_svg(lanes));
    body.push_str(&events_table(lanes));
    super::html::document(title, "", &body)
}

/// Every event of every lane, with its cause: the legend of the marks.
pub fn events_table(lanes: &[Lane]) -> String {
    let mut out = String::new();
    for lane in lanes {
        let _ = writeln!(
            out,
            "<h2>{} ({} events)</h2>\n<table class=\"events\">\n<tr><th>#</th><th>time</th><th>state</th><th>event</th><th>actions</th><th>why</th><th>replay</th><th>receive</th><th>timeline</th></tr>",
            escape(&lane.name),
            lane.records.len()
        );
        for r in &lane.records {
            out.push_str(&event_row(r));
        }
        out.push_str("</table>\n");
    }
    out
}

/// One row of an events table.
pub fn event_row(r: &TraceRecord) -> String {
    let t = &r.transition;
    let when = match r.time_unix_ms {
        Some(ms) => utc(ms),
        None => t.at.to_string(),
    };
    let change = if t.from == t.to {
        t.to.to_string()
    } else {
        format!("{} \u{2192} {}", t.from, t.to)
    };
    let actions: Vec<String> = t.actions.iter().map(|a| a.to_string()).collect();
    format!(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
        t.seq,
        escape(&when),
        escape(&change),
        escape(&t.event.to_string()),
        escape(&actions.join(", ")),
        escape(t.cause.as_deref().unwrap_or("")),
        t.replay_lsn,
        t.receive_lsn,
        t.target_tli.0
    )
}
