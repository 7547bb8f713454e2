//! PostgreSQL's own tools against a walrep primary under write load:
//! pg_receivewal's completed segments are byte-identical to the primary's,
//! the current one is .partial; a slot holds WAL while pg_receivewal is
//! stopped and it resumes without a gap; --synchronous flush positions show
//! in INFO replication; psql runs IDENTIFY_SYSTEM.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::node::{init_datadir, TestNode};
use support::process::ChildGuard;
use support::tools::tool;
use support::wal::segment_file_names;
use support::{file_names, wait_for};

const SEG: u64 = 1 << 20;

fn receivewal(node: &TestNode, dir: &Path, extra: &[&str]) -> Option<Command> {
    let bin = tool("pg_receivewal")?;
    let mut c = Command::new(bin);
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &node.replication_port.to_string(),
        "-U",
        "walrep",
        "-w",
        "-n",
        "-s",
        "1",
        "-D",
    ])
    .arg(dir)
    .args(extra)
    .env_remove("PGPASSWORD")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    Some(c)
}

/// Writes 4 kB values from one client until told to stop (bounded count).
fn start_load(node: &TestNode, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let mut c = node.client();
    std::thread::spawn(move || {
        let v = vec![b'w'; 4096];
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) && n < 200_000 {
            let _: () = redis::cmd("SET")
                .arg(format!("k{}", n % 5000))
                .arg(&v)
                .query(&mut c)
                .unwrap();
            n += 1;
        }
        n
    })
}

fn write_bytes(node: &TestNode, bytes: usize) {
    let mut c = node.client();
    let v = vec![b'b'; 8192];
    for i in 0..bytes / 8192 {
        let _: () = redis::cmd("SET")
            .arg(format!("bulk{i}"))
            .arg(&v)
            .query(&mut c)
            .unwrap();
    }
}

fn assert_identical(node_wal: &Path, received: &Path, segs: &[String]) {
    for s in segs {
        let ours = std::fs::read(node_wal.join(s)).unwrap_or_else(|e| panic!("primary's {s}: {e}"));
        let theirs = std::fs::read(received.join(s)).unwrap();
        assert!(
            ours == theirs,
            "segment {s} received by pg_receivewal differs from the primary's"
        );
    }
}

fn segno(name: &str) -> u64 {
    u64::from_str_radix(&name[8..16], 16).unwrap() * (0x1_0000_0000 / SEG)
        + u64::from_str_radix(&name[16..24], 16).unwrap()
}

#[test]
fn pg_receivewal_receives_byte_identical_segments_under_load() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", "1MB"]);
    let node = TestNode::start(&datadir, &[]);
    let out = tmp.path().join("received");
    std::fs::create_dir(&out).unwrap();
    let Some(mut cmd) = receivewal(&node, &out, &[]) else {
        return;
    };
    let mut child = ChildGuard::spawn(&mut cmd);
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&node, stop.clone());
    let done = wait_for(
        "pg_receivewal to complete 3 segments",
        Duration::from_secs(60),
        || {
            let segs = segment_file_names(&out);
            (segs.len() >= 3).then_some(segs)
        },
    );
    stop.store(true, Ordering::Relaxed);
    assert!(load.join().unwrap() > 0);
    // pg_receivewal opens the next segment's .partial only when bytes of it
    // arrive: interrupted just after it completed a segment, it leaves
    // none. So before interrupting, wait until it has written everything
    // the primary flushed (it reports its write position every second).
    let end = received_everything(&node);
    assert!(
        child.interrupt().success(),
        "pg_receivewal did not exit cleanly"
    );
    assert_identical(&datadir.join("wal"), &out, &done);
    // Consecutive: no gap between the first and last completed segment.
    let (first, last) = (segno(&done[0]), segno(done.last().unwrap()));
    assert_eq!((last - first + 1) as usize, done.len(), "gap in {done:?}");
    let names = file_names(&out);
    let newest = names.iter().rfind(|f| !f.ends_with(".history")).unwrap();
    // The segment holding the end of the WAL is .partial, unless the WAL
    // ends exactly on a segment boundary (then that segment is complete and
    // the next one has no byte yet).
    if end.0 % SEG != 0 {
        assert!(
            newest.ends_with(".partial") && segno(newest) >= end.0 / SEG,
            "the current segment (the one holding {end}) should be .partial: {names:?}"
        );
    }
}

/// Waits until pg_receivewal (the only walsender) reports having written
/// all the primary has flushed, and returns that position.
fn received_everything(node: &TestNode) -> walrep::Lsn {
    wait_for(
        "pg_receivewal to write all the primary flushed",
        Duration::from_secs(60),
        || {
            let flushed: walrep::Lsn = node
                .info_field("persistence", "wal_flush_lsn")?
                .parse()
                .ok()?;
            let info = node.info("replication");
            let line = info.lines().find(|l| {
                l.starts_with("slave0:") && l.contains("application_name=pg_receivewal")
            })?;
            let written: walrep::Lsn = line
                .split(',')
                .find_map(|f| f.strip_prefix("write_lsn="))?
                .parse()
                .ok()?;
            (written >= flushed).then_some(flushed)
        },
    )
}

#[test]
fn a_slot_holds_wal_while_pg_receivewal_is_stopped_and_it_resumes_without_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", "1MB"]);
    // Frequent checkpoints would remove WAL nobody holds.
    let node = TestNode::start(&datadir, &["checkpoint_timeout=1s", "min_wal_size=0"]);
    let out = tmp.path().join("received");
    std::fs::create_dir(&out).unwrap();
    let Some(mut create) = receivewal(&node, &out, &["--slot", "s1", "--create-slot"]) else {
        return;
    };
    assert!(
        create.status().unwrap().success(),
        "pg_receivewal --create-slot failed"
    );
    let mut child = ChildGuard::spawn(&mut receivewal(&node, &out, &["--slot", "s1"]).unwrap());
    write_bytes(&node, 2 << 20);
    wait_for(
        "pg_receivewal to complete a segment",
        Duration::from_secs(60),
        || (!segment_file_names(&out).is_empty()).then_some(()),
    );
    assert!(child.interrupt().success());
    let resume_from = segment_file_names(&out).last().cloned().unwrap();
    // While it is away: several segments and checkpoints.
    write_bytes(&node, 4 << 20);
    let ckpt = node.info_field("persistence", "last_checkpoint_lsn");
    wait_for("two checkpoints", Duration::from_secs(30), || {
        (node.info_field("persistence", "last_checkpoint_lsn") != ckpt).then_some(())
    });
    let ckpt = node.info_field("persistence", "last_checkpoint_lsn");
    wait_for("another checkpoint", Duration::from_secs(30), || {
        (node.info_field("persistence", "last_checkpoint_lsn") != ckpt).then_some(())
    });
    let kept: Vec<String> = segment_file_names(&datadir.join("wal"));
    let next = format!(
        "{}{:08X}",
        &resume_from[..16],
        segno(&resume_from) % (0x1_0000_0000 / SEG) + 1
    );
    assert!(
        kept.contains(&next),
        "the slot did not hold segment {next}: primary has {kept:?}"
    );
    // Resume: every segment from where it stopped arrives, no gap.
    let mut child = ChildGuard::spawn(&mut receivewal(&node, &out, &["--slot", "s1"]).unwrap());
    write_bytes(&node, 1 << 20);
    // The last segment the primary has completed (its wal/ also holds
    // pre-allocated future segments, so ask for the flush position).
    let flushed: walrep::Lsn = node
        .info_field("persistence", "wal_flush_lsn")
        .unwrap()
        .parse()
        .unwrap();
    let target = flushed.0 / SEG - 1;
    wait_for("pg_receivewal to catch up", Duration::from_secs(60), || {
        segment_file_names(&out)
            .iter()
            .any(|s| segno(s) >= target)
            .then_some(())
    });
    assert!(child.interrupt().success());
    let got = segment_file_names(&out);
    let (first, last) = (segno(&got[0]), segno(got.last().unwrap()));
    assert_eq!(
        (last - first + 1) as usize,
        got.len(),
        "gap after resuming: {got:?}"
    );
    let on_primary: Vec<String> = got
        .iter()
        .filter(|s| datadir.join("wal").join(s).exists())
        .cloned()
        .collect();
    assert_identical(&datadir.join("wal"), &out, &on_primary);
}

#[test]
fn synchronous_pg_receivewal_flush_shows_in_info_replication() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", "1MB"]);
    let node = TestNode::start(&datadir, &[]);
    let out: PathBuf = tmp.path().join("received");
    std::fs::create_dir(&out).unwrap();
    let Some(mut cmd) = receivewal(&node, &out, &["--synchronous"]) else {
        return;
    };
    let mut child = ChildGuard::spawn(&mut cmd);
    write_bytes(&node, 64 << 10);
    let flushed = node.info_field("persistence", "wal_flush_lsn").unwrap();
    let line = wait_for(
        "pg_receivewal's flush position in INFO replication",
        Duration::from_secs(30),
        || {
            let info = node.info("replication");
            info.lines()
                .find(|l| {
                    l.starts_with("slave0:")
                        && l.contains("application_name=pg_receivewal")
                        && l.contains(&format!("flush_lsn={flushed},"))
                })
                .map(str::to_string)
        },
    );
    assert!(line.contains("walsender_state=streaming"), "{line}");
    assert_eq!(
        node.info_field("replication", "connected_slaves")
            .as_deref(),
        Some("1")
    );
    assert!(child.interrupt().success());
}

#[test]
fn psql_runs_identify_system_against_the_node() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = init_datadir(tmp.path(), "primary", &[]);
    let node = TestNode::start(&datadir, &[]);
    let Some(psql) = tool("psql") else { return };
    let conninfo = format!(
        "host=127.0.0.1 port={} user=walrep replication=true",
        node.replication_port
    );
    let out = Command::new(&psql)
        .args([
            "-X",
            "-A",
            "-t",
            "-F",
            ",",
            "-w",
            "-d",
            &conninfo,
            "-c",
            "IDENTIFY_SYSTEM",
        ])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = text.trim().split(',').collect();
    let sysid = node.info_field("server", "system_identifier").unwrap();
    assert_eq!(fields[0], sysid);
    assert_eq!(fields[1], "1");
    assert_eq!(
        fields[2],
        node.info_field("persistence", "wal_flush_lsn").unwrap()
    );
    let out = Command::new(&psql)
        .args([
            "-X",
            "-A",
            "-t",
            "-w",
            "-d",
            &conninfo,
            "-c",
            "TIMELINE_HISTORY 1",
        ])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    // Timeline 1 has no history file, as in PostgreSQL.
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("00000001.history"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
