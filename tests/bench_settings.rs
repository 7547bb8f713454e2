//! `walrep bench --walrep-setting NAME=VALUE` through the real binary: a
//! bad setting is refused before anything starts, with the parameter and
//! what is wrong named; a good one reaches every node the scenario starts
//! (read back from each with CONFIG GET) and is printed in the report's
//! header. How fast the nodes are is not judged here.

mod support;

use std::time::Duration;

use support::node::walrep_within;

/// Bound on a refused run (nothing is started).
const REFUSAL_DEADLINE: Duration = Duration::from_secs(30);
/// Bound on the short runs (about 5 s each on a quiet machine, a minute
/// on a loaded one with the disk in its slow phase).
const RUN_DEADLINE: Duration = Duration::from_secs(240);

fn refused(extra: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let mut args = vec!["bench", "--dir", tmp.path().to_str().unwrap()];
    args.extend_from_slice(extra);
    let (ok, out, err) = walrep_within(&args, REFUSAL_DEADLINE);
    assert!(!ok, "{args:?} was accepted:\n{out}\n{err}");
    assert!(
        std::fs::read_dir(tmp.path()).unwrap().next().is_none(),
        "a refused run left something in its directory"
    );
    err
}

/// A short run of `walrep bench` with `extra` (in a fresh directory, with
/// short fdatasync probes) that must succeed; its standard output.
fn ran(extra: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let mut args = vec![
        "bench",
        "--fsync-seconds",
        "0.1",
        "--dir",
        tmp.path().to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (ok, out, err) = walrep_within(&args, RUN_DEADLINE);
    assert!(ok, "the scenario failed:\n{out}\n{err}");
    out
}

#[test]
fn a_bad_setting_is_refused_before_anything_starts() {
    let err = refused(&[
        "--scenario",
        "sync",
        "--walrep-setting",
        "wal_sender_async_delay=soon",
    ]);
    assert!(
        err.contains("--walrep-setting")
            && err.contains("wal_sender_async_delay")
            && err.contains("not a valid time"),
        "{err}"
    );
    let err = refused(&["--scenario", "lag", "--walrep-setting", "no_such_thing=1"]);
    assert!(
        err.contains("unrecognized configuration parameter \"no_such_thing\""),
        "{err}"
    );
    let err = refused(&[
        "--scenario",
        "lag",
        "--walrep-setting",
        "wal_sender_async_delay",
    ]);
    assert!(err.contains("is not NAME=VALUE"), "{err}");
    let err = refused(&["--scenario", "commit", "--walrep-setting", "port=7000"]);
    assert!(err.contains("port is chosen by the benchmark"), "{err}");
    let err = refused(&[
        "--scenario",
        "sync,promote",
        "--walrep-setting",
        "wal_sender_async_delay=1ms",
    ]);
    assert!(
        err.contains("commit, sync and lag scenarios only, not to promote"),
        "{err}"
    );
}

#[test]
fn a_setting_reaches_the_lag_scenarios_primary_and_standby() {
    let out = ran(&[
        "--scenario",
        "lag",
        "--lag-seconds",
        "3",
        "--reps",
        "1",
        "--walrep-setting",
        "wal_sender_async_delay=2ms",
        "--walrep-setting",
        "wal_receiver_status_interval=7s",
    ]);
    assert!(
        out.contains(
            "walrep settings: wal_sender_async_delay=2ms, wal_receiver_status_interval=7s"
        ),
        "no header line:\n{out}"
    );
    for node in ["primary", "standby"] {
        let line = out
            .lines()
            .find(|l| l.contains(&format!("walrep settings in effect on {node} (CONFIG GET)")))
            .unwrap_or_else(|| panic!("nothing read back from the {node}:\n{out}"));
        assert!(
            line.contains("wal_sender_async_delay=2ms")
                && line.contains("wal_receiver_status_interval=7s"),
            "{line}"
        );
    }
}

#[test]
fn a_setting_reaches_the_commit_scenarios_node() {
    let out = ran(&[
        "--scenario",
        "commit",
        "--seconds",
        "1",
        "--clients",
        "1",
        "--synchronous-commit",
        "local",
        "--walrep-setting",
        "wal_sender_async_delay=2ms",
    ]);
    assert!(
        out.contains("walrep settings: wal_sender_async_delay=2ms"),
        "no header line:\n{out}"
    );
    assert!(
        out.contains("walrep settings in effect (CONFIG GET): wal_sender_async_delay=2ms"),
        "nothing read back from the node:\n{out}"
    );
}
