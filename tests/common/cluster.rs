//! Primaries and standbys built the way an operator builds them: a primary
//! with an archive, `walrep basebackup -R`, restore_command.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

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

/// `walrep basebackup -R` of `primary` into `tmp/name`, as standby `app`.
pub fn basebackup(primary: &TestNode, tmp: &Path, name: &str, app: &str) -> PathBuf {
    let dest = tmp.join(name);
    let from = format!("127.0.0.1:{}", primary.replication_port);
    let (ok, out, err) = walrep(&[
        "basebackup",
        "--from",
        &from,
        "-D",
        dest.to_str().unwrap(),
        "--write-standby-config",
        "--application-name",
        app,
    ]);
    assert!(ok, "walrep basebackup failed: {out}{err}");
    dest
}

/// Write `n` keys `prefix:i`; returns how many were acknowledged.
pub fn write_keys(node: &TestNode, prefix: &str, n: usize, value_len: usize) -> usize {
    let mut c = node.client();
    let pad = "x".repeat(value_len);
    for i in 0..n {
        let _: () = redis::cmd("SET")
            .arg(format!("{prefix}:{i}"))
            .arg(format!("{i}:{pad}"))
            .query(&mut c)
            .unwrap();
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
    wait_for(
        &format!("the standby to replay up to {target}"),
        Duration::from_secs(90),
        || {
            let replay: walrep::Lsn = standby
                .info_field("replication", "replay_lsn")?
                .parse()
                .ok()?;
            (replay >= target).then_some(())
        },
    );
}

/// Wait for a recovery state in INFO replication.
pub fn wait_state(node: &TestNode, state: &str) {
    wait_for(
        &format!("recovery state {state}"),
        Duration::from_secs(90),
        || {
            (node.info_field("replication", "recovery_state").as_deref() == Some(state))
                .then_some(())
        },
    );
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
