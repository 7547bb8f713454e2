//! `walrep demo --ha` through the real binary: a three-member etcd and three
//! HA nodes, the primary killed under load, a synchronous standby taking
//! over by itself, the old primary rejoining, every acknowledged write on
//! the new primary, and nothing left running afterwards. Without etcd the
//! demo says what to install and fails.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::node::walrep_bin;
use support::process::processes_running;

/// The whole demo takes 15–40 s here; a generous bound on a loaded machine.
const DEMO_DEADLINE: Duration = Duration::from_secs(300);

/// Run `walrep` with `args`, bounded by [`DEMO_DEADLINE`]: success, stdout,
/// stderr.
fn walrep(args: &[&str]) -> (bool, String, String) {
    let mut child = Command::new(walrep_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run walrep");
    let end = Instant::now() + DEMO_DEADLINE;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > end {
            // SIGTERM first: the demo stops what it started.
            // SAFETY: signalling our own child, not reaped yet.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            std::thread::sleep(Duration::from_secs(20));
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "walrep {args:?} did not finish within {DEMO_DEADLINE:?}:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("collect output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A demo run killed (SIGKILL) and reaped if the test fails on the way.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The number right after `prefix` in `text`.
fn number_after(text: &str, prefix: &str) -> Option<f64> {
    let rest = &text[text.find(prefix)? + prefix.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].trim_end_matches('.').parse().ok()
}

#[test]
fn walrep_demo_ha_fails_over_by_itself_and_loses_no_acknowledged_write() {
    if support::etcd::etcd_binary().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo-ha");
    let dir_text = dir.to_str().unwrap();
    let (ok, out, err) = walrep(&[
        "demo",
        "--ha",
        "--dir",
        dir_text,
        "--seconds",
        "2",
        "--clients",
        "6",
    ]);
    println!("{out}");
    assert!(ok, "walrep demo --ha failed:\n{out}\n{err}");
    assert!(out.contains("walrep demo --ha: OK"), "{out}");
    let summary = &out[out.find("walrep demo --ha: OK").unwrap()..];

    // n1 led first, was killed, and a standby took the key by itself.
    assert!(out.contains("n1 holds the leader key"), "{out}");
    assert!(out.contains("kill -9 n1"), "{out}");
    let new_leader = ["n2", "n3"]
        .into_iter()
        .find(|n| out.contains(&format!("{n} took the leader key")))
        .unwrap_or_else(|| panic!("no standby took the leader key:\n{out}"));
    assert!(
        out.contains(&format!(
            "Cluster: demo (/walrep/demo/) leader: {new_leader}"
        )),
        "walrep ha list never showed {new_leader} leading:\n{out}"
    );
    // The takeover waited for n1's lease (the key cannot go at once) and
    // came within the lease plus a promotion on a loaded machine.
    let gone = number_after(summary, "its leader key was gone after ").expect("lease time");
    let first_ack =
        number_after(summary, "acknowledged its first write ").expect("failover time printed");
    assert!(gone >= 2.0, "n1's key went {gone}s after the kill:\n{out}");
    assert!(
        first_ack >= gone && first_ack <= 30.0,
        "first write on the new primary {first_ack}s after the kill:\n{out}"
    );

    // The old primary came back as a standby of the new one.
    assert!(
        out.contains(&format!("n1 rejoined as a standby of {new_leader}")),
        "{out}"
    );
    assert!(out.contains("a write on n1 now: -READONLY"), "{out}");

    // Every acknowledged write checked, none lost, writes on both sides.
    let acked = number_after(summary, "writes acknowledged: ").expect("count") as u64;
    assert!(acked > 0, "{out}");
    assert!(
        out.contains(&format!(
            "all {acked} present on the new primary {new_leader}, 0 lost"
        )),
        "{out}"
    );
    let after = number_after(summary, "n1 before the kill, ").expect("acks after");
    assert!(
        after > 0.0,
        "no write acknowledged after the failover:\n{out}"
    );

    // Nothing the demo started runs on: no node, no etcd member.
    let left = processes_running(dir_text);
    assert!(left.is_empty(), "still running after the demo: {left:?}");
    for name in ["n1.log", "n2.log", "n3.log", "etcd/e1.log"] {
        assert!(dir.join(name).is_file(), "{name} was not kept");
    }
    // The report: the winner's lane ends promoted, the load's chart is there.
    let report = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(report.contains("0 lost"), "{report}");
    assert!(report.contains("writes per second"));
    for lane in ["n1 (", "n2 (", "n3 ("] {
        assert!(report.contains(&format!("<h2>{lane}")), "no lane {lane}");
    }
    assert!(report.contains("data-state=\"Promoted\""));
}

#[test]
fn walrep_demo_ha_interrupted_stops_everything_it_started() {
    if support::etcd::etcd_binary().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo-ha");
    let dir_text = dir.to_str().unwrap();
    let mut demo = Demo(
        Command::new(walrep_bin())
            .args(["demo", "--ha", "--dir", dir_text, "--seconds", "120"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run walrep demo --ha"),
    );
    // Read its narration until the load runs on three nodes.
    let (tx, rx) = mpsc::channel();
    let stdout = BufReader::new(demo.0.stdout.take().expect("stdout"));
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let end = Instant::now() + DEMO_DEADLINE;
    let mut seen = String::new();
    while !seen.contains("acknowledged (") {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen += &format!("{line}\n"),
            Err(e) => panic!("the load never started ({e}):\n{seen}"),
        }
    }
    // Three etcd members and three nodes, all gone after SIGTERM.
    let started: Vec<String> = processes_running(dir_text)
        .into_iter()
        .filter(|p| !p.contains(" demo --ha "))
        .collect();
    assert_eq!(started.len(), 6, "{started:?}\n{seen}");
    // SAFETY: signalling our own child, not reaped yet.
    unsafe {
        libc::kill(demo.0.id() as libc::pid_t, libc::SIGTERM);
    }
    let end = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = demo.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < end,
            "the demo did not exit within 60s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "an interrupted demo reported success");
    let left = processes_running(dir_text);
    assert!(left.is_empty(), "still running after SIGTERM: {left:?}");
}

#[test]
fn walrep_demo_ha_without_etcd_says_what_to_install() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo-ha");
    let missing = tmp.path().join("no-such-etcd");
    let (ok, out, err) = walrep(&[
        "demo",
        "--ha",
        "--dir",
        dir.to_str().unwrap(),
        "--etcd",
        missing.to_str().unwrap(),
    ]);
    assert!(!ok, "walrep demo --ha ran without etcd:\n{out}\n{err}");
    assert!(err.contains("apt-get install etcd-server"), "{err}");
    assert!(err.contains("needs etcd"), "{err}");
    // It stopped before starting anything.
    assert!(!dir.exists(), "the demo made {} anyway", dir.display());

    let (ok, help, _) = walrep(&["demo", "--help"]);
    assert!(ok);
    assert!(help.contains("--ha") && help.contains("etcd"), "{help}");
}
