//! The README's first command: `walrep demo` runs the whole story (primary,
//! archive, synchronous standby from a base backup, load, kill -9, promotion)
//! and verifies every acknowledged write; this keeps it working.

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
}
