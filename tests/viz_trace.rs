//! `walrep viz trace`: a known transitions file (a real standby's, through
//! a failover) as a swimlane in SVG and HTML, both parsed strictly as XML;
//! the SVG is a snapshot; `--format text` keeps the text timeline.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::node::walrep_bin;

/// A real standby's trace from `walrep demo`: archive recovery, streaming,
/// the primary killed, promotion to timeline 2.
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/swimlane/standby1/log/transitions.jsonl")
}

fn viz_trace(args: &[&str], files: &[&Path]) -> String {
    let out = Command::new(walrep_bin())
        .args(["viz", "trace"])
        .args(files)
        .args(args)
        .output()
        .expect("run walrep viz trace");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Parses as XML, or fails the test with the parser's message.
fn well_formed(text: &str) -> roxmltree::Document<'_> {
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    roxmltree::Document::parse_with_options(text, opts)
        .unwrap_or_else(|e| panic!("not well-formed: {e}\n{text}"))
}

#[test]
fn the_swimlane_of_a_known_trace_is_a_snapshot() {
    let svg = viz_trace(&["--format", "svg"], &[&fixture()]);
    let doc = well_formed(&svg);
    let bands: Vec<&str> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("band"))
        .filter_map(|n| n.attribute("data-state"))
        .collect();
    assert_eq!(
        bands,
        [
            "ArchiveRecovery",
            "RetryingArchive",
            "Streaming",
            "RetryingArchive",
            "ArchiveRecovery",
            "Promoting",
            "Promoted"
        ]
    );
    let promotions = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("promotion"))
        .count();
    assert_eq!(promotions, 1);
    assert!(svg.contains("promoted, timeline 2"), "{svg}");
    insta::assert_snapshot!("swimlane_failover_svg", svg);
}

#[test]
fn the_html_swimlane_is_self_contained_and_lists_every_event() {
    let fixture = fixture();
    let dir = tempfile::tempdir().unwrap();
    let second = dir.path().join("standby2/log/transitions.jsonl");
    std::fs::create_dir_all(second.parent().unwrap()).unwrap();
    std::fs::copy(&fixture, &second).unwrap();
    let html = viz_trace(&["--format", "html"], &[&fixture, &second]);
    let doc = well_formed(&html);
    let lanes: Vec<&str> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("lane"))
        .filter_map(|n| n.attribute("data-node"))
        .collect();
    assert_eq!(lanes, ["standby1", "standby2"]);
    let events = std::fs::read_to_string(&fixture).unwrap().lines().count();
    let rows = doc.descendants().filter(|n| n.has_tag_name("tr")).count();
    // A header row per lane, then one row per event.
    assert_eq!(rows, 2 * (events + 1));
    assert!(
        html.contains("stream lost: could not receive data"),
        "the causes are listed"
    );
    for external in ["src=\"http", "href=\"http", "<link", "@import"] {
        assert!(
            !html.contains(external),
            "{external} in a self-contained page"
        );
    }
}

#[test]
fn text_stays_the_default_and_output_goes_to_a_file() {
    let text = viz_trace(&[], &[&fixture()]);
    assert!(text.contains("Promoting -> Promoted"), "{text}");
    assert!(text.contains("time in each state"), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.svg");
    let printed = viz_trace(
        &["--format", "svg", "-o", out.to_str().unwrap()],
        &[&fixture()],
    );
    assert!(printed.is_empty());
    well_formed(&std::fs::read_to_string(out).unwrap());
}

#[test]
fn a_bad_file_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"seq\":1}\n").unwrap();
    let out = Command::new(walrep_bin())
        .args(["viz", "trace", "--format", "svg"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.jsonl") && err.contains("line 1"), "{err}");
}
