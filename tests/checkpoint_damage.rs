//! Damage to what recovery starts from, with real processes: a damaged
//! control file or checkpoint chunk is found by its CRC. A damaged last
//! checkpoint is replaced by the previous one, whose snapshot and WAL are
//! kept until the next checkpoint: replay from its redo point serves every
//! acknowledged write. When there is no usable previous checkpoint either,
//! the node refuses to start with an error that names the file and the
//! ways out, and changes nothing in the data directory.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use support::node::{init_datadir, walrep, TestNode};

/// Every file under `dir` with its bytes (the data directory as it is).
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().unwrap() != "walrep.pid" {
                let b = fs::read(&p).unwrap();
                out.push((p.display().to_string(), b));
            }
        }
    }
    out.sort();
    out
}

/// A node with 500 keys written and checkpointed, then stopped.
fn written_and_stopped(parent: &Path) -> std::path::PathBuf {
    let datadir = init_datadir(parent, "node", &["--wal-segment-size", "1MB"]);
    let mut node = TestNode::start(&datadir, &[]);
    let mut c = node.client();
    for i in 0..500 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .query(&mut c)
            .unwrap();
    }
    node.stop();
    datadir
}

fn flip(path: &Path, at: usize) {
    let mut b = fs::read(path).unwrap();
    b[at] ^= 0x40;
    fs::write(path, b).unwrap();
}

fn refused(datadir: &Path) -> String {
    let dir = datadir.to_str().unwrap();
    let before = tree(datadir);
    let (ok, out, err) = walrep(&["start", dir, "-c", "port=0", "-c", "replication_port=0"]);
    assert!(!ok, "the node started:\n{out}{err}");
    assert_eq!(tree(datadir), before, "the refused start changed files");
    err
}

#[test]
fn a_damaged_control_file_is_refused_with_the_way_out() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = written_and_stopped(tmp.path());
    flip(&datadir.join("control"), 20);
    let err = refused(&datadir);
    assert!(err.contains("control file"), "{err}");
    assert!(err.contains("corrupt"), "{err}");
    assert!(
        err.contains("walrep basebackup"),
        "the way out is named:\n{err}"
    );

    // A control file cut short (a torn copy) is refused the same way.
    let control = datadir.join("control");
    let b = fs::read(&control).unwrap();
    fs::write(&control, &b[..b.len() / 2]).unwrap();
    let err = refused(&datadir);
    assert!(err.contains("corrupt"), "{err}");
}

/// The snapshot directories under `base/`, oldest first (names are ids).
fn snapshots(datadir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(datadir.join("base"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// Flip a byte in the middle of the largest chunk of `snapshot`; returns
/// the chunk's file name.
fn damage_snapshot(snapshot: &Path) -> String {
    let chunk = fs::read_dir(snapshot)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let len = fs::metadata(&chunk).unwrap().len() as usize;
    flip(&chunk, len / 2);
    chunk.file_name().unwrap().to_string_lossy().into_owned()
}

fn set(c: &mut redis::Connection, key: &str, value: &str) {
    let _: () = redis::cmd("SET").arg(key).arg(value).query(c).unwrap();
}

/// A value of about 2 kB, so the writes span several 1 MB segments.
fn value(i: usize) -> String {
    format!("{i}:{}", "v".repeat(2000))
}

/// Two checkpoints with writes before each: 500 keys before the first
/// (a shutdown checkpoint), then 1,000 new keys, 100 overwritten and 50
/// deleted before the second. Returns what the keys must hold.
fn two_checkpoints(datadir: &Path) -> BTreeMap<String, String> {
    let mut want = BTreeMap::new();
    let mut node = TestNode::start(datadir, &[]);
    let mut c = node.client();
    for i in 0..500 {
        set(&mut c, &format!("k{i}"), &value(i));
        want.insert(format!("k{i}"), value(i));
    }
    node.stop();
    node.restart();
    let mut c = node.client();
    for i in 500..1500 {
        set(&mut c, &format!("k{i}"), &value(i));
        want.insert(format!("k{i}"), value(i));
    }
    for i in 0..100 {
        set(&mut c, &format!("k{i}"), "again");
        want.insert(format!("k{i}"), "again".into());
    }
    for i in 100..150 {
        let _: i64 = redis::cmd("DEL")
            .arg(format!("k{i}"))
            .query(&mut c)
            .unwrap();
        want.remove(&format!("k{i}"));
    }
    node.stop();
    want
}

fn every_key(node: &TestNode) -> BTreeMap<String, String> {
    let mut c = node.client();
    let keys: Vec<String> = redis::cmd("KEYS").arg("k*").query(&mut c).unwrap();
    keys.into_iter()
        .map(|k| {
            let v: String = redis::cmd("GET").arg(&k).query(&mut c).unwrap();
            (k, v)
        })
        .collect()
}

#[test]
fn a_damaged_last_checkpoint_falls_back_to_the_previous_one_and_keeps_every_key() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = init_datadir(tmp.path(), "node", &["--wal-segment-size", "1MB"]);
    let want = two_checkpoints(&datadir);
    let snaps = snapshots(&datadir);
    assert_eq!(snaps.len(), 2, "the previous checkpoint is kept: {snaps:?}");
    let last = snaps[1].file_name().unwrap().to_string_lossy().into_owned();
    let chunk = damage_snapshot(&snaps[1]);

    let mut node = TestNode::start(&datadir, &[]);
    assert_eq!(every_key(&node), want, "every acknowledged write is served");
    let log = node.log_text();
    let warning = log
        .lines()
        .find(|l| l.contains("recovery starts from the previous checkpoint"))
        .unwrap_or_else(|| panic!("no fallback message:\n{log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains(&chunk),
        "the damaged file is named: {warning}"
    );
    let kept: Vec<PathBuf> = fs::read_dir(datadir.join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("damaged-checkpoint"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(
        kept[0].join(&last).join(&chunk).exists(),
        "the damaged snapshot is kept"
    );

    // The start ended with a checkpoint of its own: writes go on, and a
    // second restart needs no fallback.
    set(&mut node.client(), "after", "1");
    node.stop();
    let logged = node.log_text().len();
    node.restart();
    let mut c = node.client();
    let after: String = redis::cmd("GET").arg("after").query(&mut c).unwrap();
    assert_eq!(after, "1");
    assert_eq!(every_key(&node), want);
    let second = node.log_text()[logged..].to_string();
    assert!(
        !second.contains("previous checkpoint") && second.contains("loaded the checkpoint"),
        "{second}"
    );
}

#[test]
fn damaged_last_and_previous_checkpoints_are_found_by_their_crc_and_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = init_datadir(tmp.path(), "node", &["--wal-segment-size", "1MB"]);
    two_checkpoints(&datadir);
    let snaps = snapshots(&datadir);
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    let name = damage_snapshot(&snaps[1]);
    damage_snapshot(&snaps[0]);
    let err = refused(&datadir);
    assert!(err.contains(&name), "the chunk is named:\n{err}");
    assert!(err.contains("CRC") || err.contains("checksum"), "{err}");
    assert!(
        err.contains("previous checkpoint's snapshot is damaged too"),
        "{err}"
    );
    assert!(
        err.contains("walrep basebackup"),
        "the way out is named:\n{err}"
    );
}

#[test]
fn a_damaged_last_checkpoint_without_the_previous_ones_wal_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = init_datadir(tmp.path(), "node", &["--wal-segment-size", "1MB"]);
    two_checkpoints(&datadir);
    let snaps = snapshots(&datadir);
    let name = damage_snapshot(&snaps[1]);
    // Every segment but the newest goes (as if removed by hand).
    let mut segs: Vec<PathBuf> = fs::read_dir(datadir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().len() == 24)
        .collect();
    segs.sort();
    segs.pop();
    assert!(!segs.is_empty());
    for s in segs {
        fs::remove_file(s).unwrap();
    }
    let err = refused(&datadir);
    assert!(err.contains(&name), "the chunk is named:\n{err}");
    assert!(err.contains("is gone"), "{err}");
}
