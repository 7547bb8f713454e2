//! Diagrams of the state machines (DOT, Mermaid, SVG) derived by exploring
//! the real machines, and renderings of transition traces.
//!
//! The recovery machine's graph comes from
//! [`explore_standby`]:
//! breadth-first over the reachable states of the real machine, so a
//! diagram cannot drift from the code. SVG is laid out in-process with
//! layout-rs (no Graphviz needed).

pub mod chart;
pub mod html;
pub mod plot;
pub mod swimlane;
pub mod xml;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use layout::backends::svg::SVGWriter;
use layout::core::base::Orientation;
use layout::core::color::Color;
use layout::core::style::{LineStyleKind, StyleAttr};
use layout::std_shapes::render::get_shape_size;
use layout::std_shapes::shapes::{Arrow, Element, LineEndKind, ShapeKind};
use layout::topo::layout::VisualGraph;

use crate::states::recovery::explore::{explore_standby, Graph};
use crate::states::recovery::{EventKind, StateKind, Transition};
use crate::states::Millis;

/// Why a diagram or trace could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum VizError {
    /// A line of a transitions.jsonl file is not a transition record.
    #[error("line {line} of the trace is not a transition record: {source}")]
    Trace {
        /// The 1-based line number in the file.
        line: usize,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
}

/// A diagram format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Graphviz DOT.
    Dot,
    /// Mermaid `stateDiagram-v2`.
    Mermaid,
    /// SVG, laid out in-process.
    Svg,
    /// The SVG the status page draws: no event labels, each state's box
    /// marked with its class.
    PageSvg,
}

impl Format {
    /// The file extension the committed diagrams use.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Dot => "dot",
            Format::Mermaid => "mmd",
            Format::Svg => "svg",
            Format::PageSvg => "page.svg",
        }
    }
}

/// The standby recovery machine's diagram in `format`.
pub fn standby_diagram(format: Format) -> String {
    let graph = explore_standby();
    match format {
        Format::Dot => to_dot(&graph),
        Format::Mermaid => to_mermaid(&graph),
        Format::Svg => to_svg(&graph),
        Format::PageSvg => to_page_svg(&graph),
    }
}

/// The committed `diagrams/standby.svg`, built into the binary: the status
/// server's `/machine.svg` serves it without exploring the machine (about
/// 0.7 s of CPU) on every request. The diagrams test fails when it is not
/// what the code draws today.
pub const STANDBY_SVG: &str = include_str!("../../diagrams/standby.svg");

/// The committed `diagrams/standby.page.svg` (see [`to_page_svg`]), built
/// in for the same reason as [`STANDBY_SVG`].
const STANDBY_PAGE_SVG: &str = include_str!("../../diagrams/standby.page.svg");

/// Arrows of the diagram: (from, to) → the events that take it, leaving
/// out what changes nothing visible.
fn arrows(graph: &Graph) -> BTreeMap<(StateKind, StateKind), BTreeSet<EventKind>> {
    graph.arrows()
}

fn label(events: &BTreeSet<EventKind>, separator: &str) -> String {
    events
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(separator)
}

/// Graphviz DOT, with the `Recovering` superstate as a cluster.
pub fn to_dot(graph: &Graph) -> String {
    let mut out = String::new();
    out.push_str("// The standby's recovery state machine, explored from the code.\n");
    out.push_str("// Regenerate: cargo run -- viz states --format dot -o diagrams/standby.dot\n");
    out.push_str("digraph standby {\n  rankdir=TB;\n  node [shape=box, style=rounded];\n");
    out.push_str("  subgraph cluster_recovering {\n    label=\"Recovering\";\n");
    for s in graph.states.iter().filter(|s| s.is_recovering()) {
        let _ = writeln!(out, "    {s};");
    }
    out.push_str("  }\n");
    for s in graph.states.iter().filter(|s| !s.is_recovering()) {
        let _ = writeln!(out, "  {s};");
    }
    for ((from, to), events) in arrows(graph) {
        let _ = writeln!(
            out,
            "  {from} -> {to} [label=\"{}\"];",
            label(&events, "\\n")
        );
    }
    out.push_str("}\n");
    out
}

/// Mermaid `stateDiagram-v2`, with the `Recovering` superstate.
pub fn to_mermaid(graph: &Graph) -> String {
    let mut out = String::new();
    out.push_str("%% The standby's recovery state machine, explored from the code.\n");
    out.push_str(
        "%% Regenerate: cargo run -- viz states --format mermaid -o diagrams/standby.mmd\n",
    );
    out.push_str("stateDiagram-v2\n");
    out.push_str("    [*] --> Starting\n");
    out.push_str("    state Recovering {\n");
    for s in graph.states.iter().filter(|s| s.is_recovering()) {
        let _ = writeln!(out, "        {s}");
    }
    out.push_str("    }\n");
    for ((from, to), events) in arrows(graph) {
        let _ = writeln!(out, "    {from} --> {to}: {}", label(&events, "<br/>"));
    }
    out.push_str("    Stopped --> [*]\n");
    out
}

/// SVG laid out with layout-rs. Every state is a box; each arrow carries
/// the events that take it, one per line.
pub fn to_svg(graph: &Graph) -> String {
    svg_with_labels(graph, true)
}

/// The machine as the live page draws it: arrows without their event
/// labels so it fits beside the figures, and each state's box marked
/// `class="st-NAME"` so a page can highlight the current one.
pub fn to_page_svg(graph: &Graph) -> String {
    let mut svg = svg_with_labels(graph, false);
    for s in &graph.states {
        svg = mark_state_box(&svg, &s.to_string());
    }
    // Inline in a page: no XML declaration.
    let svg = match (svg.starts_with("<?xml"), svg.find("?>")) {
        (true, Some(end)) => &svg[end + 2..],
        _ => &svg[..],
    };
    svg.replacen("<svg ", "<svg class=\"machine\" ", 1)
}

/// [`to_page_svg`] of the machine as committed (and built in).
pub fn page_machine_svg() -> &'static str {
    STANDBY_PAGE_SVG
}

/// The machine of [`page_machine_svg`] with `current`'s box highlighted.
pub fn machine_svg_highlighting(current: Option<StateKind>) -> String {
    let svg = page_machine_svg();
    match current {
        Some(s) => svg.replacen(
            &format!("class=\"st-{s}\""),
            &format!("class=\"st-{s} current\" style=\"fill: #ffd166; stroke: #d00000; stroke-width: 5px\""),
            1,
        ),
        None => svg.to_string(),
    }
}

/// Add `class="st-NAME"` to the `<rect` drawn just before the text `NAME`.
fn mark_state_box(svg: &str, name: &str) -> String {
    let Some(text_at) = svg.find(&format!(">{name}</tspan>")) else {
        return svg.to_string();
    };
    let Some(rect_at) = svg[..text_at].rfind("<rect ") else {
        return svg.to_string();
    };
    let at = rect_at + "<rect ".len();
    format!("{}class=\"st-{name}\" {}", &svg[..at], &svg[at..])
}

fn svg_with_labels(graph: &Graph, labels: bool) -> String {
    let mut vg = VisualGraph::new(Orientation::TopToBottom);
    let mut handles = BTreeMap::new();
    for s in &graph.states {
        let name = s.to_string();
        let shape = ShapeKind::new_box(&name);
        let fill = if s.is_recovering() {
            "lightyellow"
        } else {
            "white"
        };
        let look = StyleAttr::new(Color::fast("black"), 2, Some(Color::fast(fill)), 5, 14);
        let size = get_shape_size(Orientation::LeftToRight, &shape, 14, false);
        let node = Element::create(shape, look, Orientation::LeftToRight, size);
        handles.insert(*s, vg.add_node(node));
    }
    for ((from, to), events) in arrows(graph) {
        let look = StyleAttr::new(Color::fast("black"), 1, None, 0, 14);
        let text = if labels {
            label(&events, "\n")
        } else {
            String::new()
        };
        let arrow = Arrow::new(
            LineEndKind::None,
            LineEndKind::Arrow,
            LineStyleKind::Normal,
            &text,
            &look,
            &None,
            &None,
        );
        vg.add_edge(arrow, handles[&from], handles[&to]);
    }
    let mut svg = SVGWriter::new();
    vg.do_it(false, false, false, &mut svg);
    sort_style_block(&svg.finalize())
}

/// layout-rs writes its font classes from a HashMap, in an order that
/// changes between runs; sort them so the SVG is byte-for-byte stable.
fn sort_style_block(svg: &str) -> String {
    let (Some(start), Some(end)) = (svg.find("<style>\n"), svg.find("</style>")) else {
        return svg.to_string();
    };
    let body = start + "<style>\n".len();
    if end < body {
        return svg.to_string();
    }
    let mut lines: Vec<&str> = svg[body..end].lines().collect();
    lines.sort_unstable();
    let mut out = String::with_capacity(svg.len());
    out.push_str(&svg[..body]);
    for line in lines {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&svg[end..]);
    out
}

/// Render a `transitions.jsonl` trace as a readable timeline: one block per
/// event (time, sequence, state change, event; then actions and why), and
/// at the end the time spent in each state.
pub fn render_trace(jsonl: &str) -> Result<String, VizError> {
    let mut records = Vec::new();
    for (i, line) in jsonl.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let t: Transition = serde_json::from_str(line).map_err(|source| VizError::Trace {
            line: i + 1,
            source,
        })?;
        records.push(t);
    }
    let mut out = String::new();
    for t in &records {
        let change = if t.from == t.to {
            format!("{}", t.to)
        } else {
            format!("{} -> {}", t.from, t.to)
        };
        let _ = writeln!(
            out,
            "{:>10}  #{:<5} {change:<36} {}",
            t.at.to_string(),
            t.seq,
            t.event
        );
        if !t.actions.is_empty() {
            let actions: Vec<String> = t.actions.iter().map(|a| a.to_string()).collect();
            let _ = writeln!(out, "{:>18}do: {}", "", actions.join(", "));
        }
        if let Some(cause) = &t.cause {
            let _ = writeln!(out, "{:>18}why: {cause}", "");
        }
        let _ = writeln!(
            out,
            "{:>18}replay {} receive {} timeline {}",
            "", t.replay_lsn, t.receive_lsn, t.target_tli.0
        );
    }
    out.push_str(&time_in_states(&records));
    Ok(out)
}

/// Per state, the time between entering it and the next state change (the
/// last state counts until the last record).
fn time_in_states(records: &[Transition]) -> String {
    let mut spent: BTreeMap<StateKind, u64> = BTreeMap::new();
    let mut current: Option<(StateKind, Millis)> = None;
    for t in records {
        if let Some((state, since)) = current {
            if t.to != state {
                *spent.entry(state).or_default() += t.at.since_ms(since);
                current = Some((t.to, t.at));
            }
        } else {
            current = Some((t.to, t.at));
        }
    }
    if let (Some((state, since)), Some(last)) = (current, records.last()) {
        *spent.entry(state).or_default() += last.at.since_ms(since);
    }
    let mut out = format!("\n{} events; time in each state:\n", records.len());
    for (state, ms) in spent {
        let _ = writeln!(out, "  {:<16} {}", state.to_string(), Millis(ms));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::states::recovery::{Event, Recovery, RecoveryConfig};
    use crate::states::{Lsn, TimelineId};

    fn trace() -> String {
        let mut core = Recovery::new(RecoveryConfig::default()).unwrap();
        core.handle(
            Millis(0),
            Event::RecoveryStarted {
                redo_lsn: Lsn(0x200_0028),
                tli: TimelineId(1),
                history: crate::states::history::TimelineHistory::root(TimelineId(1)),
                min_recovery_point: Lsn(0x200_0028),
                crash_recovery_first: false,
            },
        );
        core.handle(Millis(1500), Event::ShutdownRequested);
        let mut out = String::new();
        while let Some(t) = core.poll_transition() {
            out.push_str(&serde_json::to_string(&t).unwrap());
            out.push('\n');
        }
        out
    }

    #[test]
    fn renders_a_trace_with_time_in_states() {
        let text = render_trace(&trace()).unwrap();
        assert!(text.contains("Starting -> ArchiveRecovery"), "{text}");
        assert!(text.contains("do: SetTargetTimeline 1"), "{text}");
        assert!(text.contains("ArchiveRecovery  1.500s"), "{text}");
        assert!(text.contains("2 events"), "{text}");
    }

    #[test]
    fn a_bad_trace_line_names_its_number() {
        let mut t = trace();
        t.push_str("{not json}\n");
        let err = render_trace(&t).unwrap_err();
        assert!(err.to_string().starts_with("line 3 "), "{err}");
    }
}
