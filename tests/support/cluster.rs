//! Primaries and standbys built the way an operator builds them: a primary
//! with an archive, `walrep basebackup -R`, restore_command.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::node::{walrep, TestNode};

pub const SEG_1MB: &str = "1MB";

/// The archive directory and the primary's archive settings.
pub fn archive_settings(archive: &Path) -> Vec<String> {
    vec![
        "archive_mode=on".into(),
        format!("archive_command=cp %p {}/%f", archive.display()),
    ]
}

pub fn restore_setting(archive: &Path) -> String {
    format!("restore_command=cp {}/%f %p", archive.display())
}

/// `walrep basebackup -R` of `primary` into `tmp/name`, as standby `app`
/// (with a slot named after it, the default).
pub fn basebackup(primary: &TestNode, tmp: &Path, name: &str, app: &str) -> PathBuf {
    basebackup_with(primary, tmp, name, app, &[])
}

/// [`basebackup`] with more arguments (`--no-slot`, `--jobs 4`, ...).
pub fn basebackup_with(
    primary: &TestNode,
    tmp: &Path,
    name: &str,
    app: &str,
    extra: &[&str],
) -> PathBuf {
    basebackup_from_port(primary.replication_port, tmp, name, app, extra)
}

/// [`basebackup_with`] of whatever node listens for replication on
/// `replication_port` (a node run in the test's process too).
pub fn basebackup_from_port(
    replication_port: u16,
    tmp: &Path,
    name: &str,
    app: &str,
    extra: &[&str],
) -> PathBuf {
    let dest = tmp.join(name);
    let from = format!("127.0.0.1:{replication_port}");
    let (ok, out, err) = walrep(
        &[
            "basebackup",
            "--from",
            &from,
            "-D",
            dest.to_str().unwrap(),
            "--write-standby-config",
            "--application-name",
            app,
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .collect::<Vec<_>>(),
    );
    assert!(ok, "walrep basebackup failed: {out}{err}");
    dest
}

/// Write `n` keys `prefix:i`; returns how many were acknowledged.
pub fn write_keys(node: &TestNode, prefix: &str, n: usize, value_len: usize) -> usize {
    let mut c = node.client();
    let pad = "x".repeat(value_len);
    for i in 0..n {
        let set = |c: &mut redis::Connection| {
            redis::cmd("SET")
                .arg(format!("{prefix}:{i}"))
                .arg(format!("{i}:{pad}"))
                .query::<()>(c)
        };
        match set(&mut c) {
            // A signal for the test process (a child exiting) can break off
            // a socket call with EINTR: the connection's state is unknown,
            // so the same SET goes again on a new one.
            Err(e)
                if e.kind() == redis::ErrorKind::IoError
                    && e.to_string().contains("Interrupted system call") =>
            {
                c = node.client();
                set(&mut c).unwrap();
            }
            r => r.unwrap(),
        }
    }
    n
}

/// Every key `prefix:0..n` is on `node` with its value.
pub fn check_keys(node: &TestNode, prefix: &str, n: usize) {
    let mut c = node.client();
    for chunk in (0..n).collect::<Vec<_>>().chunks(200) {
        let keys: Vec<String> = chunk.iter().map(|i| format!("{prefix}:{i}")).collect();
        let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query(&mut c).unwrap();
        for (i, v) in chunk.iter().zip(values) {
            let v = v
                .unwrap_or_else(|| panic!("{prefix}:{i} is missing on {}", node.datadir.display()));
            assert!(v.starts_with(&format!("{i}:")), "{prefix}:{i} holds {v}");
        }
    }
}

/// Wait until `standby` has replayed everything `primary` has flushed.
pub fn wait_caught_up(primary: &TestNode, standby: &TestNode) {
    let target: walrep::Lsn = primary
        .info_field("persistence", "wal_flush_lsn")
        .unwrap()
        .parse()
        .unwrap();
    wait_on_node(
        standby,
        &format!("the standby to replay up to {target}"),
        || {
            let replay = standby.info_field("replication", "replay_lsn");
            let done = replay
                .as_deref()
                .and_then(|r| r.parse::<walrep::Lsn>().ok())
                .is_some_and(|r| r >= target);
            (done, format!("replay_lsn {replay:?}"))
        },
    );
}

/// Wait for a recovery state in INFO replication.
pub fn wait_state(node: &TestNode, state: &str) {
    wait_on_node(node, &format!("recovery state {state}"), || {
        let now = node.info_field("replication", "recovery_state");
        (
            now.as_deref() == Some(state),
            format!("recovery_state {now:?}"),
        )
    });
}

/// Poll `check` (done?, what it saw) for up to 90 s. On a timeout the panic
/// carries what was last seen, the tail of the node's log and of its
/// transitions trace: what recovery was doing instead.
fn wait_on_node(node: &TestNode, what: &str, mut check: impl FnMut() -> (bool, String)) {
    let deadline = Duration::from_secs(90);
    let end = std::time::Instant::now() + deadline;
    loop {
        let (done, seen) = check();
        if done {
            return;
        }
        if std::time::Instant::now() >= end {
            panic!(
                "timed out after {deadline:?} waiting for {what} (last seen: {seen})\n\
                 --- log tail ({}) ---\n{}\n--- transitions tail ---\n{}",
                node.log.display(),
                tail(&fs::read_to_string(&node.log).unwrap_or_default(), 40),
                tail(&trace(node), 15),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The visible key-value pairs of a node (for comparing nodes).
pub fn dump(node: &TestNode, prefix: &str, n: usize) -> Vec<Option<String>> {
    let mut c = node.client();
    let keys: Vec<String> = (0..n).map(|i| format!("{prefix}:{i}")).collect();
    keys.chunks(500)
        .flat_map(|k| {
            redis::cmd("MGET")
                .arg(k)
                .query::<Vec<Option<String>>>(&mut c)
                .unwrap()
        })
        .collect()
}

/// The transitions trace of a node.
pub fn trace(node: &TestNode) -> String {
    fs::read_to_string(node.datadir.join("log/transitions.jsonl")).unwrap_or_default()
}
