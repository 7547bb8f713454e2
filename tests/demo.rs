//! The README's first command: `walrep demo` runs the whole story (primary,
//! archive, synchronous standby from a base backup, load, kill -9, promotion)
//! and verifies every acknowledged write, prints each node's live page and
//! leaves report.html; this keeps it working, in one run.

mod support;

#[test]
fn walrep_demo_runs_the_failover_and_verifies_every_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let (ok, out, err) = support::node::walrep(&[
        "demo",
        "--dir",
        dir.to_str().unwrap(),
        "--seconds",
        "1.5",
        "--clients",
        "8",
        "--linger",
        "1",
    ]);
    assert!(ok, "walrep demo failed:\n{out}\n{err}");
    assert!(out.contains("walrep demo: OK"), "{out}");
    assert!(out.contains("all present on the promoted standby"), "{out}");
    assert!(
        out.contains("Streaming -> RetryingArchive") || out.contains("Streaming -> Promoting"),
        "{out}"
    );
    assert!(out.contains("Promoting -> Promoted"), "{out}");
    assert!(out.contains("timeline 2"), "{out}");
    // The kept directory holds the trace and the diagram it points at.
    assert!(dir.join("standby/log/transitions.jsonl").exists());
    let svg = std::fs::read_to_string(dir.join("standby.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("Streaming"));
    // It printed each node's live page and left the failover's report.
    assert!(
        out.contains("the primary's page: http://127.0.0.1:"),
        "{out}"
    );
    assert!(
        out.contains("the standby's page: http://127.0.0.1:"),
        "{out}"
    );
    assert!(out.contains("cluster?peers=127.0.0.1:"), "{out}");
    assert!(out.contains("stays up for 1s"), "{out}");
    let report = std::fs::read_to_string(dir.join("report.html")).unwrap();
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(&report, opts)
        .unwrap_or_else(|e| panic!("report.html is not well-formed: {e}"));
    let bands: Vec<&str> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("band"))
        .filter_map(|n| n.attribute("data-state"))
        .collect();
    assert_eq!(bands.last(), Some(&"Promoted"), "{bands:?}");
    assert!(bands.contains(&"Streaming"), "{bands:?}");
    assert!(report.contains("writes per second"));
    assert!(report.contains("standby replay lag"));
    assert!(report.contains("OK: all "));
    assert!(!report.contains("src=\"http") && !report.contains("<link"));
}
