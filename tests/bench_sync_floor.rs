//! The two-process floor of one synchronous commit as CI runs it: `walrep
//! bench --scenario sync-floor` through the real binary, which starts a
//! primary and a standby process (`walrep floor-node`) and drives them as
//! one client. Every level must report a rate and its timings, and the
//! timings must nest as the commit does (the client's latency holds the
//! primary's flush and its wait for the standby; in the serial order the
//! primary's wait holds the standby's work). How fast is not judged here.

mod support;

use std::time::Duration;

use support::node::walrep_within;

/// Bound on the whole run (two reps of two rounds of 100 commits per
/// level: about 2 s at 1 ms a commit, 20 s on a disk in its slow phase).
const RUN_DEADLINE: Duration = Duration::from_secs(300);

const MODES: [&str; 5] = [
    "local (P fdatasync only)",
    "on (P and S fdatasync in parallel)",
    "on, serial (P fdatasync, then S)",
    "remote_write (S writes, no fdatasync)",
    "remote_apply (S fdatasyncs and applies)",
];

/// The numbers of one mode's line, by their label.
#[derive(Debug)]
struct Line {
    per_s: f64,
    mean_us: f64,
    p_flush_us: f64,
    s_us: f64,
    p_wait_us: f64,
}

/// The number right after `label` in `line`.
fn after(line: &str, label: &str) -> f64 {
    let rest = &line[line
        .find(label)
        .unwrap_or_else(|| panic!("{label:?} missing from {line:?}"))
        + label.len()..];
    let word = rest.split_whitespace().next().unwrap_or("");
    word.trim_end_matches("/s")
        .parse()
        .unwrap_or_else(|_| panic!("no number after {label:?} in {line:?}"))
}

fn parse(line: &str, mode: &str) -> Line {
    Line {
        per_s: after(line, mode),
        mean_us: after(line, "mean"),
        p_flush_us: after(line, "P flush"),
        s_us: after(line, ", S "),
        p_wait_us: after(line, "P waits for S"),
    }
}

#[test]
fn the_two_process_floor_reports_every_level_with_nested_timings() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("floor.json");
    let (ok, out, err) = walrep_within(
        &[
            "bench",
            "--scenario",
            "sync-floor",
            "--seconds",
            "1",
            "--reps",
            "2",
            "--fsync-seconds",
            "0.1",
            "--dir",
            tmp.path().to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ],
        RUN_DEADLINE,
    );
    assert!(ok, "the scenario failed:\n{out}\n{err}");
    for rep in 1..=2 {
        let start = out
            .lines()
            .position(|l| l.trim_start().starts_with(&format!("rep {rep}: fdatasync")))
            .unwrap_or_else(|| panic!("no line for rep {rep}:\n{out}"));
        let lines: Vec<&str> = out.lines().skip(start + 1).take(MODES.len()).collect();
        for (mode, line) in MODES.iter().zip(&lines) {
            assert!(line.trim_start().starts_with(mode), "{mode}: {line:?}");
            let l = parse(line, mode);
            assert!(l.per_s.is_finite() && l.per_s > 0.0, "{l:?}");
            // Printed rounded to 1 us: allow that much.
            assert!(
                l.mean_us + 1.5 >= l.p_flush_us + l.p_wait_us,
                "the client's latency holds the primary's flush and wait: {line}"
            );
            match *mode {
                m if m.starts_with("local") => {
                    assert_eq!((l.s_us, l.p_wait_us), (0.0, 0.0), "no standby: {line}")
                }
                m if m.starts_with("on, serial") => assert!(
                    l.p_wait_us + 1.0 >= l.s_us,
                    "in order, the primary waits for all of the standby's work: {line}"
                ),
                _ => {}
            }
        }
    }
    let text = std::fs::read_to_string(&json).unwrap();
    for mode in MODES {
        assert!(
            text.contains(&format!("two-process floor, 1 client: {mode}")),
            "{mode} missing from the JSON"
        );
    }
    // The files of both processes are removed when they exit.
    let left: Vec<_> = walk(tmp.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
