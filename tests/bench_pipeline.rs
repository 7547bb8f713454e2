//! The pipelined-SET comparison as CI runs it: `walrep bench --scenario
//! pipeline` through the real binary with one-second runs and two
//! repetitions, walrep `off` beside the Redis 7 `appendfsync no` it starts.
//! The report must give, for each key pattern, both servers' requests/s
//! and CPU per SET, the ratio of every repetition and its median, and the
//! target line for the one-key pattern; the JSON the same figures. Their
//! values depend on the machine and are not judged here.

mod support;

use std::time::Duration;

use support::node::walrep_within;

/// Bound on the whole run (about 25 s on a quiet machine: three patterns,
/// two repetitions, a million keys preloaded on each server per rep).
const RUN_DEADLINE: Duration = Duration::from_secs(240);

const PATTERNS: [&str; 3] = ["one-key", "random-100k", "random-1m"];

#[test]
fn pipelined_set_reports_ratios_and_cpu_per_set_beside_redis() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("pipeline.json");
    let (ok, out, err) = walrep_within(
        &[
            "bench",
            "--scenario",
            "pipeline",
            "--seconds",
            "1",
            "--reps",
            "2",
            "--dir",
            tmp.path().to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ],
        RUN_DEADLINE,
    );
    assert!(ok, "the scenario failed:\n{out}\n{err}");
    check_text(&out);
    check_json(&std::fs::read_to_string(&json).unwrap(), &out);
}

/// Every pattern and rep has its line, the table its rows, one-key its
/// target and the others their figures.
fn check_text(out: &str) {
    for pattern in PATTERNS {
        for rep in 1..=2 {
            let line = out
                .lines()
                .find(|l| {
                    l.trim_start().starts_with(&format!("{pattern} "))
                        && l.contains(&format!("rep {rep}:"))
                })
                .unwrap_or_else(|| panic!("no line for {pattern} rep {rep}:\n{out}"));
            for field in [
                "walrep",
                "redis",
                "us CPU/SET",
                "redis-worker",
                "walwriter",
                "ratio",
                "CPU ratio",
                "load",
            ] {
                assert!(line.contains(field), "{field} missing from {line:?}");
            }
        }
        let row = out
            .lines()
            .find(|l| l.starts_with(&format!("| {pattern} |")))
            .unwrap_or_else(|| panic!("no table row for {pattern}:\n{out}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells[5].split(" / ").count(), 2, "a ratio per rep: {row}");
        assert!(
            ["redis-worker", "redis-commit", "walwriter"]
                .iter()
                .all(|t| cells[8].contains(t)),
            "walrep's CPU split by thread: {row}"
        );
        for i in [3, 4, 6, 7, 9, 10] {
            let n: f64 = cells[i]
                .parse()
                .unwrap_or_else(|_| panic!("column {i} of {row:?} is not a number"));
            assert!(n.is_finite() && n > 0.0, "column {i} of {row:?}");
        }
    }
    assert!(
        out.lines().any(
            |l| l.starts_with("target: pipelined SET (one-key) walrep / Redis: ")
                && (l.ends_with("-> met") || l.ends_with("-> NOT met"))
        ),
        "no target line for one key:\n{out}"
    );
    for pattern in &PATTERNS[1..] {
        let figure = format!("figure: pipelined SET ({pattern}) walrep / Redis: ");
        assert!(out.contains(&figure), "no figure for {pattern}:\n{out}");
    }
    assert!(out.contains("load average"), "no load average:\n{out}");
}

/// The JSON holds the same figures, consistent with each other.
fn check_json(text: &str, out: &str) {
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    let p = &v["pipeline"];
    let num = |v: &serde_json::Value| v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    let cells = p["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), 6, "three patterns x two reps:\n{text}");
    for c in cells {
        let (w, r) = (&c["walrep"], &c["redis"]);
        assert_eq!(
            w["load"]["requests"], r["load"]["requests"],
            "both servers get the same requests: {c}"
        );
        for s in [w, r] {
            assert!(
                num(&s["cpu_s"]) > 0.0,
                "a server that served SETs used CPU: {c}"
            );
            assert!(num(&s["cpu_per_set_us"]) > 0.0, "{c}");
        }
        let threads = w["threads_cpu_per_set_us"].as_array().unwrap();
        let names: Vec<&str> = threads.iter().map(|t| t[0].as_str().unwrap()).collect();
        assert_eq!(names, ["redis-worker", "redis-commit", "walwriter"], "{c}");
        assert!(
            num(&threads[0][1]) > 0.0,
            "the workers served the SETs: {c}"
        );
        assert!(threads.iter().all(|t| num(&t[1]) >= 0.0), "{c}");
        assert_eq!(
            r["threads_cpu_per_set_us"].as_array().map(Vec::len),
            Some(0)
        );
        let ratio = num(&w["load"]["rps"]) / num(&r["load"]["rps"]);
        assert!((num(&c["ratio"]) - ratio).abs() < 1e-9 * ratio, "{c}");
    }
    let summaries = p["summaries"].as_array().expect("summaries");
    let names: Vec<&str> = summaries
        .iter()
        .map(|s| s["pattern"].as_str().unwrap())
        .collect();
    assert_eq!(names, PATTERNS, "{text}");
    for s in summaries {
        let ratios: Vec<f64> = s["ratios"].as_array().unwrap().iter().map(num).collect();
        assert_eq!(ratios.len(), 2, "{s}");
        let median = (ratios[0] + ratios[1]) / 2.0;
        assert!((num(&s["ratio"]) - median).abs() < 1e-9 * median, "{s}");
        assert!(num(&s["walrep_cpu_per_set_us"]) > 0.0 && num(&s["redis_cpu_per_set_us"]) > 0.0);
        let judged = s["pattern"] == "one-key";
        assert_eq!(s["target"].is_null(), !judged, "{s}");
        if judged {
            let met = num(&s["ratio"]) >= 1.0;
            assert_eq!(s["met"].as_bool(), Some(met), "{s}");
            let verdict = if met { "-> met" } else { "-> NOT met" };
            assert!(out
                .lines()
                .any(|l| l.starts_with("target:") && l.ends_with(verdict)));
        }
    }
    assert!(v["commit"].is_null(), "only the pipeline scenario ran");
}

#[test]
fn the_help_lists_the_pipeline_scenario() {
    let (ok, out, err) = walrep_within(&["bench", "--help"], Duration::from_secs(30));
    assert!(ok, "{err}");
    assert!(
        out.contains("pipeline:"),
        "not among the possible values:\n{out}"
    );
    assert!(
        out.contains("pipeline (pipelined SET"),
        "not in the list:\n{out}"
    );
}
