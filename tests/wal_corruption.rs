//! Damage in the middle of the WAL is not the end of the WAL: a primary
//! with 5,000 acknowledged writes over several 1 MB segments is killed, 16
//! bytes in the middle of an early segment are flipped, and it is started
//! again. Without a good copy it refuses to start and writes nothing;
//! `walrep resetwal` accepts the loss into quarantine/; with the segment in
//! the archive, or on a streaming standby named in wal_repair_sources, it
//! heals itself and serves every key.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::cluster::{basebackup, wait_caught_up};
use support::node::{init_datadir, walrep, TestNode};
use support::wait_for;

const KEYS: usize = 5_000;
const SEG: u64 = 1 << 20;

fn key(i: usize) -> String {
    format!("key:{i:05}")
}

/// 5,000 acknowledged writes of ~600 bytes (about three segments), no
/// checkpoint after the first; `before_crash` runs, then kill -9.
fn write_and_crash(datadir: &Path, settings: &[&str], before_crash: impl FnOnce()) -> TestNode {
    let mut all = vec!["checkpoint_timeout=1h", "max_wal_size=1GB"];
    all.extend_from_slice(settings);
    let mut node = TestNode::start(datadir, &all);
    write_all(&node);
    before_crash();
    node.kill9();
    node
}

/// The 5,000 acknowledged writes.
fn write_all(node: &TestNode) {
    let mut c = node.client();
    let value = vec![b'v'; 600];
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(100) {
        let mut p = redis::pipe();
        for &i in chunk {
            p.cmd("SET").arg(key(i)).arg(&value).ignore();
        }
        let _: () = p.query(&mut c).unwrap();
    }
}

/// The first segment with WAL in it.
fn first_written(datadir: &Path) -> PathBuf {
    segments(datadir)
        .into_iter()
        .find(|p| fs::read(p).unwrap()[..4] == *b"WALR")
        .unwrap()
}

/// The WAL segment files of the data directory, oldest first.
fn segments(datadir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(datadir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.len() == 24
                && n.bytes().all(|b| b.is_ascii_hexdigit())
                && fs::metadata(p).unwrap().len() == SEG
        })
        .collect();
    v.sort();
    v
}

/// Flip 16 bytes in the middle of the first segment, which two or more
/// written segments follow. Returns its path.
fn damage_first_segment(datadir: &Path) -> PathBuf {
    let segs = segments(datadir);
    let written: Vec<&PathBuf> = segs
        .iter()
        .filter(|p| fs::read(p).unwrap()[..4] == *b"WALR")
        .collect();
    assert!(
        written.len() >= 3,
        "the writes should span three segments: {segs:?}"
    );
    let first = written[0].clone();
    let mut bytes = fs::read(&first).unwrap();
    for b in &mut bytes[(SEG / 2) as usize..(SEG / 2) as usize + 16] {
        *b ^= 0xA5;
    }
    fs::write(&first, bytes).unwrap();
    first
}

fn wal_snapshot(datadir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    segments(datadir)
        .into_iter()
        .map(|p| {
            let b = fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

fn start_args(datadir: &str) -> Vec<&str> {
    vec!["start", datadir, "-c", "port=0", "-c", "replication_port=0"]
}

fn present_keys(node: &TestNode) -> BTreeSet<String> {
    let mut c = node.client();
    let keys: Vec<String> = redis::cmd("KEYS").arg("key:*").query(&mut c).unwrap();
    keys.into_iter().collect()
}

#[test]
fn damage_without_a_copy_refuses_to_start_until_resetwal_accepts_the_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", "1MB"]);
    let node = write_and_crash(&datadir, &[], || {});
    let damaged = damage_first_segment(&datadir);
    let before = wal_snapshot(&datadir);

    // It refuses, names the damage and the ways out, and writes nothing.
    let dir = datadir.to_str().unwrap();
    let (ok, _, stderr) = walrep(&start_args(dir));
    assert!(!ok, "a node with damaged WAL must not start:\n{stderr}");
    let log = format!("{stderr}{}", node.log_text());
    let name = damaged.file_name().unwrap().to_string_lossy().into_owned();
    assert!(log.contains("WAL is damaged at"), "{log}");
    assert!(log.contains(&name), "the damaged file is named:\n{log}");
    assert!(
        log.contains("walrep resetwal"),
        "the way out is named:\n{log}"
    );
    assert!(
        !log.contains("invalid record marks the end of WAL"),
        "{log}"
    );
    assert_eq!(
        wal_snapshot(&datadir),
        before,
        "the refused start wrote WAL"
    );

    // resetwal sets the WAL after the damage aside, with a report.
    let (ok, stdout, stderr) = walrep(&["resetwal", dir]);
    assert!(ok, "resetwal failed: {stderr}");
    assert!(stdout.contains("set aside"), "{stdout}");
    let quarantine: Vec<PathBuf> = fs::read_dir(datadir.join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(quarantine.len(), 1, "{quarantine:?}");
    let report = fs::read_to_string(quarantine[0].join("report.txt")).unwrap();
    assert!(
        quarantine[0].join(&name).exists(),
        "the damaged segment is kept"
    );
    let lost: BTreeSet<String> = report
        .lines()
        .filter_map(|l| l.strip_prefix("key: "))
        .map(str::to_string)
        .collect();
    assert!(!lost.is_empty(), "{report}");

    // It starts from the WAL before the damage and takes writes again.
    let node = TestNode::start(&datadir, &[]);
    let present = present_keys(&node);
    assert!(present.len() < KEYS, "{} keys", present.len());
    assert!(present.is_disjoint(&lost), "a key reported lost is present");
    // Keys were written in order: what is present is a prefix.
    for i in 0..present.len() {
        assert!(
            present.contains(&key(i)),
            "{} missing from the prefix",
            key(i)
        );
    }
    let mut c = node.client();
    let _: () = redis::cmd("SET")
        .arg("after")
        .arg("1")
        .query(&mut c)
        .unwrap();
    let (ok, stdout, _) = walrep(&["resetwal", dir]);
    assert!(!ok, "resetwal on a running node must refuse: {stdout}");
}

#[test]
fn damage_with_the_segment_in_the_archive_heals_and_keeps_every_key() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    fs::create_dir(&archive).unwrap();
    let datadir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", "1MB"]);
    let archive_command = format!("archive_command=cp %p {}/%f", archive.display());
    let restore_command = format!("restore_command=cp {}/%f %p", archive.display());
    let settings = ["archive_mode=on", &archive_command, &restore_command];
    let first = first_written(&datadir);
    let name = first.file_name().unwrap().to_string_lossy().into_owned();
    let mut node = write_and_crash(&datadir, &settings, || {
        wait_for(
            "the first segment archived",
            Duration::from_secs(30),
            || archive.join(&name).exists().then_some(()),
        );
    });
    let damaged = damage_first_segment(&datadir);
    assert_eq!(damaged, first);

    node.restart();
    let present = present_keys(&node);
    assert_eq!(present.len(), KEYS, "every acknowledged key is served");
    assert_eq!(
        node.info_field("persistence", "wal_repaired_segments")
            .as_deref(),
        Some("1")
    );
    let last = node.info_field("persistence", "wal_last_repair").unwrap();
    assert!(
        last.starts_with(&name) && last.ends_with("from archive"),
        "{last}"
    );
    assert!(
        node.log_text().contains("repaired a damaged WAL segment"),
        "{}",
        node.log_text()
    );
    let kept: Vec<PathBuf> = fs::read_dir(datadir.join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().path().join(&name))
        .collect();
    assert!(kept.iter().any(|p| p.exists()), "the damaged copy is kept");
}

/// Flip 16 bytes in the middle of the first segment whose middle holds
/// records, which two or more written segments follow (a base backup may
/// have switched the very first segment early). Returns its path.
fn damage_first_full_segment(datadir: &Path) -> PathBuf {
    let mid = (SEG / 2) as usize;
    let segs = segments(datadir);
    let written: Vec<(PathBuf, Vec<u8>)> = segs
        .iter()
        .map(|p| (p.clone(), fs::read(p).unwrap()))
        .filter(|(_, b)| b[..4] == *b"WALR")
        .collect();
    let i = written
        .iter()
        .position(|(_, b)| b[mid..mid + 64].iter().any(|&x| x != 0))
        .unwrap();
    assert!(written.len() >= i + 3, "{segs:?}");
    let (path, mut bytes) = written[i].clone();
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0xA5;
    }
    fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn damage_with_the_segment_on_a_streaming_standby_heals_from_it() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", "1MB"]);
    let mut primary = TestNode::start(&datadir, &["checkpoint_timeout=1h", "max_wal_size=1GB"]);
    let standby_dir = basebackup(&primary, tmp.path(), "standby", "standby1");
    let standby = TestNode::start(&standby_dir, &[]);
    write_all(&primary);
    wait_caught_up(&primary, &standby);
    primary.kill9();
    let damaged = damage_first_full_segment(&datadir);
    let name = damaged.file_name().unwrap().to_string_lossy().into_owned();

    // The archive, asked first, holds only a damaged copy: it is checked
    // and dropped. Named in wal_repair_sources (with a password the log
    // must not show), the standby gives the good segment back.
    let archive = tmp.path().join("archive");
    fs::create_dir(&archive).unwrap();
    fs::copy(&damaged, archive.join(&name)).unwrap();
    let source = format!(
        "wal_repair_sources=host=127.0.0.1 port={} password=hunter2",
        standby.replication_port
    );
    primary.args.push(source);
    primary
        .args
        .push(format!("restore_command=cp {}/%f %p", archive.display()));
    primary.restart();
    let present = present_keys(&primary);
    assert_eq!(present.len(), KEYS, "every acknowledged key is served");
    assert_eq!(
        primary
            .info_field("persistence", "wal_repaired_segments")
            .as_deref(),
        Some("1")
    );
    let last = primary
        .info_field("persistence", "wal_last_repair")
        .unwrap();
    let from = format!("from 127.0.0.1:{}", standby.replication_port);
    assert!(last.starts_with(&name) && last.ends_with(&from), "{last}");
    let log = primary.log_text();
    assert!(log.contains("repaired a damaged WAL segment"), "{log}");
    assert!(
        log.contains("the copy from archive does not read back across the damage"),
        "the archive's bad copy is checked and dropped:\n{log}"
    );
    assert!(!log.contains("hunter2"), "the password is logged:\n{log}");
    let shown: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("wal_repair_sources")
        .query(&mut primary.client())
        .unwrap();
    assert!(
        shown[1].contains("password=********") && !shown[1].contains("hunter2"),
        "{shown:?}"
    );
    let kept: Vec<PathBuf> = fs::read_dir(datadir.join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().path().join(&name))
        .collect();
    assert!(kept.iter().any(|p| p.exists()), "the damaged copy is kept");

    // The healed primary takes writes and the standby follows it again.
    let _: () = redis::cmd("SET")
        .arg("after")
        .arg("1")
        .query(&mut primary.client())
        .unwrap();
    wait_caught_up(&primary, &standby);
}

/// A standby whose own WAL is damaged in the middle, with no other source
/// for it (its primary is gone), is promoted: the promotion goes on, as
/// the operator asked, but says in the log that recovery ended at damage
/// with valid WAL after it, and keeps that WAL and the keys it wrote in
/// quarantine/.
#[test]
fn promoting_a_standby_past_damage_in_its_wal_says_so_and_keeps_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", "1MB"]);
    let mut primary = TestNode::start(&datadir, &["checkpoint_timeout=1h", "max_wal_size=1GB"]);
    let standby_dir = basebackup(&primary, tmp.path(), "standby", "standby1");
    let mut standby = TestNode::start(&standby_dir, &[]);
    write_all(&primary);
    wait_caught_up(&primary, &standby);
    primary.kill9();
    standby.kill9();
    let damaged = damage_first_full_segment(&standby_dir);
    let name = damaged.file_name().unwrap().to_string_lossy().into_owned();

    standby.restart();
    let (ok, out, err) = walrep(&["promote", standby_dir.to_str().unwrap()]);
    assert!(
        ok,
        "walrep promote failed: {out}{err}\n{}",
        standby.log_text()
    );
    wait_for(
        "the promoted node to take writes",
        Duration::from_secs(60),
        || {
            let mut c = standby.try_client()?;
            redis::cmd("SET")
                .arg("promoted")
                .arg("1")
                .query::<String>(&mut c)
                .ok()
        },
    );
    let log = standby.log_text();
    assert!(log.contains("promoting past damaged WAL"), "{log}");
    let present = present_keys(&standby);
    assert!(present.len() < KEYS, "{} keys", present.len());

    // What the promotion left behind is kept, with the keys it wrote.
    let kept: Vec<PathBuf> = fs::read_dir(standby_dir.join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("promoted-past-damage"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].join(&name).exists(), "the damaged segment is kept");
    let report = fs::read_to_string(kept[0].join("report.txt")).unwrap();
    let lost: BTreeSet<String> = report
        .lines()
        .filter_map(|l| l.strip_prefix("key: "))
        .map(str::to_string)
        .collect();
    assert!(!lost.is_empty(), "{report}");
    assert!(present.is_disjoint(&lost), "a key reported lost is present");
    // The writes after the damaged segment are all listed (those in its
    // damaged rest cannot be told apart from garbage).
    assert!(lost.contains(&key(KEYS - 1)), "{report}");
    for i in 0..present.len() {
        assert!(present.contains(&key(i)), "{} missing", key(i));
    }
}
