//! `walrep demo --dir DIR` prints each node's live page while it runs and
//! leaves DIR/report.html: the outcome, the standby's swimlane through the
//! failover, writes/s and lag; all of it well-formed and self-contained.

mod support;

#[test]
fn the_demo_prints_its_pages_and_leaves_a_report() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let (ok, out, err) = support::node::walrep(&[
        "demo",
        "--dir",
        dir.to_str().unwrap(),
        "--seconds",
        "1.5",
        "--clients",
        "4",
        "--linger",
        "1",
    ]);
    assert!(ok, "walrep demo failed:\n{out}\n{err}");
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
