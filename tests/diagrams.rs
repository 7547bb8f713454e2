//! The committed diagrams (diagrams/standby.{dot,mmd,svg,page.svg}) are what the
//! code draws today, and `walrep viz` draws and renders what it says.
//! `UPDATE_DIAGRAMS=1 cargo test --test diagrams` rewrites them.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use support::node::walrep_bin;
use walrep::states::recovery::explore::{explore_standby, Graph};
use walrep::states::recovery::{Event, Recovery, RecoveryConfig};
use walrep::states::{Lsn, Millis, TimelineId};
use walrep::viz::{to_dot, to_mermaid, to_page_svg, to_svg, Format};

/// Exploring takes seconds in a debug build: once for all tests.
fn graph() -> &'static Graph {
    static GRAPH: OnceLock<Graph> = OnceLock::new();
    GRAPH.get_or_init(explore_standby)
}

fn diagram_path(format: Format) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("diagrams")
        .join(format!("standby.{}", format.extension()))
}

#[test]
fn committed_diagrams_are_current() {
    let graph = graph();
    let update = std::env::var_os("UPDATE_DIAGRAMS").is_some();
    let mut stale = Vec::new();
    for (format, text) in [
        (Format::Dot, to_dot(graph)),
        (Format::Mermaid, to_mermaid(graph)),
        (Format::Svg, to_svg(graph)),
        (Format::PageSvg, to_page_svg(graph)),
    ] {
        let path = diagram_path(format);
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != text {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale diagrams: {stale:?}\nthe recovery machine changed; regenerate them with\n  \
         UPDATE_DIAGRAMS=1 cargo test --test diagrams\nor one by one with\n  \
         cargo run -- viz states --format dot|mermaid|svg|page-svg -o diagrams/standby.dot|mmd|svg|page.svg"
    );
}

#[test]
fn the_diagrams_show_every_state_and_the_superstate() {
    let graph = graph();
    let dot = to_dot(graph);
    let mmd = to_mermaid(graph);
    let svg = to_svg(graph);
    for state in walrep::states::recovery::StateKind::ALL {
        let name = state.to_string();
        assert!(dot.contains(&format!("  {name}")), "dot lacks {name}");
        assert!(mmd.contains(&name), "mermaid lacks {name}");
        assert!(svg.contains(&name), "svg lacks {name}");
    }
    assert!(dot.contains("ArchiveRecovery -> RetryingArchive"));
    assert!(dot.contains("subgraph cluster_recovering"));
    assert!(mmd.contains("state Recovering {"));
    assert!(svg.contains("<svg"));
    // The SVG layout is deterministic (the committed file is compared byte
    // for byte).
    assert_eq!(svg, to_svg(graph));
}

fn walrep() -> Command {
    Command::new(walrep_bin())
}

#[test]
fn viz_states_writes_the_committed_dot() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("standby.dot");
    let status = walrep()
        .args(["viz", "states", "--format", "dot", "-o"])
        .arg(&out)
        .status()
        .expect("run walrep viz states");
    assert!(status.success());
    let written = std::fs::read_to_string(&out).unwrap();
    assert_eq!(written, to_dot(graph()));
}

#[test]
fn viz_trace_renders_a_transitions_file() {
    let mut core = Recovery::new(RecoveryConfig::default()).unwrap();
    core.handle(
        Millis(0),
        Event::RecoveryStarted {
            redo_lsn: Lsn(0x200_0028),
            tli: TimelineId(1),
            history: walrep::states::history::TimelineHistory::root(TimelineId(1)),
            min_recovery_point: Lsn(0x200_0028),
            crash_recovery_first: false,
        },
    );
    core.handle(Millis(2000), Event::ShutdownRequested);
    let mut jsonl = String::new();
    while let Some(t) = core.poll_transition() {
        jsonl.push_str(&serde_json::to_string(&t).unwrap());
        jsonl.push('\n');
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("transitions.jsonl");
    std::fs::write(&file, jsonl).unwrap();
    let out = walrep().args(["viz", "trace"]).arg(&file).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ArchiveRecovery -> Stopped"), "{text}");
    assert!(text.contains("ArchiveRecovery  2.000s"), "{text}");

    std::fs::write(&file, "garbage\n").unwrap();
    let bad = walrep().args(["viz", "trace"]).arg(&file).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("line 1 of the trace"));
}
