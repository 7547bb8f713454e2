//! `walrep basebackup` against a running primary under write load: the copy
//! verifies, holds every write acknowledged before the backup started, and
//! starts (after its standby.signal is removed: standby mode is not in this
//! build) as a primary with that data; refusals (non-empty target, unsafe
//! archive members) leave nothing behind; PostgreSQL 15's pg_basebackup
//! (-Ft and -Fp, -X fetch/stream) takes a backup pg_verifybackup accepts.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::node::{init_datadir, walrep, TestNode};
use support::tools::tool;
use support::{file_names, wait_for};
use walrep::backup::client::{run, BasebackupOptions, NoProgress};
use walrep::backup::verify::{verify, Expected};

fn options(node: &TestNode, datadir: &Path) -> BasebackupOptions {
    BasebackupOptions {
        host: "127.0.0.1".into(),
        port: node.replication_port,
        datadir: datadir.to_path_buf(),
        user: "walrep".into(),
        password: None,
        application_name: Some("copy1".into()),
        write_standby_config: true,
        label: "test backup".into(),
        max_rate_kbps: 0,
        timeout: Duration::from_secs(30),
        storage: std::sync::Arc::new(walrep::storage::StdStorage),
        slot: None,
        jobs: 1,
        two_phase: false,
        resume: false,
    }
}

/// Overwrites `load:{i % 500}` with `val:{i}` (4 kB padded) until stopped
/// (bounded count); returns how many writes were acknowledged.
fn start_load(node: &TestNode, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let mut c = node.client();
    std::thread::spawn(move || {
        let pad = "x".repeat(4096);
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) && n < 100_000 {
            let _: () = redis::cmd("SET")
                .arg(format!("load:{}", n % 500))
                .arg(format!("val:{n}:{pad}"))
                .query(&mut c)
                .unwrap();
            n += 1;
        }
        n
    })
}

#[test]
fn a_backup_under_load_verifies_and_starts_with_every_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", "1MB"]);
    let node = TestNode::start(&datadir, &[]);
    let mut c = node.client();
    for i in 0..500 {
        let _: () = redis::cmd("SET")
            .arg(format!("pre:{i}"))
            .arg(format!("v{i}"))
            .query(&mut c)
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&node, stop.clone());
    // Let the load spread over a few segments before and during the copy.
    wait_for("load to write 300 values", Duration::from_secs(30), || {
        let v: Option<String> = redis::cmd("GET").arg("load:299").query(&mut c).ok()?;
        v.map(|_| ())
    });
    let copy = tmp.path().join("copy");
    // MAX_RATE stretches the copy so the load fills segments meanwhile.
    let opts = BasebackupOptions {
        max_rate_kbps: 2048,
        ..options(&node, &copy)
    };
    // The copy's WAL must span a segment switch. On a loaded machine the
    // load may write less than a segment while the copy runs (it did, now
    // and then): the test itself writes a segment's worth once it began.
    let mut switch = SwitchSegmentOnBegin {
        node: &node,
        client: node.client(),
    };
    let summary = run(&opts, &mut switch).expect("basebackup");
    stop.store(true, Ordering::Relaxed);
    assert!(load.join().unwrap() >= 300);
    assert!(summary.end > summary.start);
    assert!(summary.wal_records > 0);
    // The copy says what the server said, and re-verifies.
    verify(
        &copy,
        &Expected {
            system_id: summary.system_id,
            start: summary.start,
            end: summary.end,
            tli: summary.tli,
        },
    )
    .expect("copy verifies");
    assert!(copy.join("standby.signal").exists());
    let config = std::fs::read_to_string(copy.join("walrep.toml")).unwrap();
    let want = format!(
        "primary_conninfo = \"host=127.0.0.1 port={} user=walrep application_name=copy1\"",
        node.replication_port
    );
    assert!(config.contains(&want), "walrep.toml lacks {want}");
    // Every segment of the copy is marked archived (the primary archives it).
    let segments: Vec<String> = file_names(&copy.join("wal"))
        .into_iter()
        .filter(|f| f.len() == 24)
        .collect();
    let seg_size = 1u64 << 20;
    let wanted: Vec<String> = (summary.start.0 / seg_size..=summary.end.0 / seg_size)
        .map(|n| walrep::SegNo(n).file_name(summary.tli, support::wal::seg()))
        .collect();
    assert!(
        wanted.len() >= 2 && wanted.iter().all(|w| segments.contains(w)),
        "expected the load's segments {wanted:?} from {} to {}: {segments:?}",
        summary.start,
        summary.end
    );
    for s in &segments {
        assert!(
            copy.join(format!("wal/archive_status/{s}.done")).exists(),
            "{s}"
        );
    }
    // Standby mode is not in this build: start the copy as a plain node.
    std::fs::remove_file(copy.join("standby.signal")).unwrap();
    let copy_node = TestNode::start(&copy, &[]);
    let mut cc = copy_node.client();
    for i in 0..500 {
        let v: Option<String> = redis::cmd("GET")
            .arg(format!("pre:{i}"))
            .query(&mut cc)
            .unwrap();
        assert_eq!(v.as_deref(), Some(format!("v{i}").as_str()), "pre:{i}");
    }
    // Values written during the copy are whole values of the load, each
    // under its own key (replay applied complete records only).
    for k in 0..300 {
        let v: Option<String> = redis::cmd("GET")
            .arg(format!("load:{k}"))
            .query(&mut cc)
            .unwrap();
        let v = v.unwrap_or_else(|| panic!("load:{k} missing in the copy"));
        let n: u64 = v.split(':').nth(1).unwrap().parse().unwrap();
        assert_eq!(n % 500, k, "load:{k} holds {n}");
        assert_eq!(v.len(), format!("val:{n}:").len() + 4096);
    }
}

/// As soon as the copy has begun (its start position is taken), writes
/// WAL from the test itself until the primary flushes into a later segment
/// than the one it was writing then, so the copy's WAL spans at least two
/// segments whatever the load managed on a loaded machine. The server
/// cannot end the copy meanwhile: MAX_RATE holds it for the snapshot's
/// size over the rate (over a second here), and these few writes are
/// acknowledged in milliseconds.
struct SwitchSegmentOnBegin<'a> {
    node: &'a TestNode,
    client: redis::Connection,
}

impl SwitchSegmentOnBegin<'_> {
    fn flushed_segment(&self) -> u64 {
        let lsn: walrep::Lsn = self
            .node
            .info_field("persistence", "wal_flush_lsn")
            .unwrap()
            .parse()
            .unwrap();
        lsn.0 >> 20
    }
}

impl walrep::backup::client::Progress for SwitchSegmentOnBegin<'_> {
    fn begin(&mut self, _: Option<u64>) {
        let first = self.flushed_segment();
        let value = vec![b's'; 256 << 10];
        // Bounded: 8 x 256 kB is two 1 MB segments of WAL.
        for i in 0..8 {
            if self.flushed_segment() > first {
                return;
            }
            let _: () = redis::cmd("SET")
                .arg(format!("switch:{i}"))
                .arg(&value)
                .query(&mut self.client)
                .unwrap();
        }
        assert!(
            self.flushed_segment() > first,
            "2 MB of WAL did not switch segments"
        );
    }
    fn advance(&mut self, _: u64) {}
    fn end(&mut self, _: u64) {}
}

#[test]
fn a_non_empty_target_is_refused_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", "1MB"]);
    let node = TestNode::start(&datadir, &[]);
    let target = tmp.path().join("busy");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("mine"), b"keep me").unwrap();
    let e = run(&options(&node, &target), &mut NoProgress).unwrap_err();
    assert!(e.to_string().contains("exists but is not empty"), "{e}");
    assert_eq!(std::fs::read(target.join("mine")).unwrap(), b"keep me");
    // The command line says the same and fails.
    let port = node.replication_port.to_string();
    let from = format!("127.0.0.1:{port}");
    let (ok, _, err) = walrep(&[
        "basebackup",
        "--from",
        &from,
        "-D",
        target.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("not empty"), "{err}");
    let (ok, _, err) = walrep(&["basebackup", "--from", "nohostport", "-D", "x"]);
    assert!(!ok && err.contains("HOST:PORT"), "{err}");
}

#[test]
fn the_cli_takes_a_backup_with_progress_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", "1MB"]);
    let node = TestNode::start(&datadir, &[]);
    let copy = tmp.path().join("copy");
    let from = format!("127.0.0.1:{}", node.replication_port);
    let (ok, out, err) = walrep(&[
        "basebackup",
        "--from",
        &from,
        "-D",
        copy.to_str().unwrap(),
        "-U",
        "walrep",
        "--progress",
        "--max-rate",
        "1048576",
    ]);
    assert!(ok, "walrep basebackup failed: {err}");
    assert!(out.contains("base backup of system"), "{out}");
    // Not a terminal: plain progress lines ending at 100%.
    assert!(
        err.lines().last().is_some_and(|l| l.contains("kB")),
        "{err}"
    );
    assert!(!copy.join("standby.signal").exists());
    assert!(copy.join("backup_label").exists());
}

fn pg_basebackup(node: &TestNode, dir: &Path, args: &[&str]) -> Option<std::process::Output> {
    let bin = tool("pg_basebackup")?;
    Some(
        Command::new(bin)
            .args(["-h", "127.0.0.1", "-p", &node.replication_port.to_string()])
            .args(["-U", "walrep", "-w", "-c", "fast", "-D"])
            .arg(dir)
            .args(args)
            .env_remove("PGPASSWORD")
            .output()
            .expect("run pg_basebackup"),
    )
}

fn pg_verifybackup(dir: &Path) -> Option<std::process::Output> {
    let bin = tool("pg_verifybackup")?;
    Some(
        Command::new(bin)
            .arg("-n")
            .arg(dir)
            .output()
            .expect("run pg_verifybackup"),
    )
}

fn assert_ok(what: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pg_basebackup_plain_and_tar_backups_verify_and_the_plain_copy_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", "1MB"]);
    let node = TestNode::start(&datadir, &[]);
    let mut c = node.client();
    for i in 0..200 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .query(&mut c)
            .unwrap();
    }
    // Plain format, WAL fetched into the archive.
    let plain = tmp.path().join("plain");
    let Some(out) = pg_basebackup(&node, &plain, &["-Fp", "-X", "fetch", "-P"]) else {
        return;
    };
    assert_ok("pg_basebackup -Fp -X fetch", &out);
    let Some(v) = pg_verifybackup(&plain) else {
        return;
    };
    assert_ok("pg_verifybackup -n", &v);
    assert!(String::from_utf8_lossy(&v.stdout).contains("backup successfully verified"));
    let copy = TestNode::start(&plain, &[]);
    let n: i64 = redis::cmd("DBSIZE").query(&mut copy.client()).unwrap();
    assert_eq!(n, 200);
    drop(copy);
    // Tar format: base.tar holds our layout and extracts with our reader.
    let tar_dir = tmp.path().join("tar");
    let out = pg_basebackup(&node, &tar_dir, &["-Ft", "-X", "fetch"]).unwrap();
    assert_ok("pg_basebackup -Ft -X fetch", &out);
    assert!(tar_dir.join("backup_manifest").exists());
    let extracted = tmp.path().join("extracted");
    std::fs::create_dir(&extracted).unwrap();
    let f = std::fs::File::open(tar_dir.join("base.tar")).unwrap();
    let mut x = walrep::backup::extract::Extractor::new(
        std::sync::Arc::new(walrep::storage::StdStorage),
        &extracted,
    );
    x.extract(f).unwrap();
    x.finish().unwrap();
    for name in [
        "backup_label",
        "control",
        "walrep.toml",
        "wal/archive_status",
        "slots",
        "log",
    ] {
        assert!(
            extracted.join(name).exists(),
            "{name} missing from base.tar"
        );
    }
    // -X stream: a second connection streams WAL (into pg_wal/) meanwhile.
    let streamed = tmp.path().join("streamed");
    let out = pg_basebackup(&node, &streamed, &["-Fp", "-X", "stream"]).unwrap();
    assert_ok("pg_basebackup -Fp -X stream", &out);
    assert!(
        file_names(&streamed.join("pg_wal"))
            .iter()
            .any(|f| f.len() == 24),
        "no streamed segment in pg_wal"
    );
}

#[test]
fn backups_of_an_idle_primary_copy_its_last_checkpoint_until_its_wal_grows() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", "1MB"]);
    let node = TestNode::start(&dir, &[]);
    let mut c = node.client();
    let _: () = redis::cmd("SET").arg("k").arg("v1").query(&mut c).unwrap();
    let backup = |name: &str| {
        let dest = tmp.path().join(name);
        let s = run(&options(&node, &dest), &mut NoProgress).unwrap();
        (dest, s)
    };
    let reused = || {
        node.log_text()
            .matches("nothing changed since the last checkpoint")
            .count()
    };
    // The first backup checkpoints the write; the second finds only the
    // first's backup-end and switch records after that checkpoint, so it
    // copies it again (same start) and verifies against its own
    // backup-end record.
    let (_, first) = backup("first");
    let (second_dir, second) = backup("second");
    assert_eq!(second.start, first.start);
    assert!(second.end > first.end);
    assert_eq!(reused(), 1);
    let copy = TestNode::start(&second_dir, &[]);
    wait_for("the copy to read k", Duration::from_secs(60), || {
        let v: Option<String> = redis::cmd("GET").arg("k").query(&mut copy.client()).ok()?;
        v.filter(|v| v == "v1")
    });
    drop(copy);
    // Two switches later the WAL from that redo point is over a segment
    // (more than an eighth of this tiny snapshot): a new checkpoint.
    let (_, third) = backup("third");
    assert!(
        third.start > second.end,
        "{} after {}",
        third.start,
        second.end
    );
    // A write since the last checkpoint: a new one too.
    let (_, fourth) = backup("fourth");
    assert_eq!(fourth.start, third.start, "idle again: reused");
    let _: () = redis::cmd("SET").arg("k").arg("v2").query(&mut c).unwrap();
    let (_, fifth) = backup("fifth");
    assert!(
        fifth.start > fourth.end,
        "{} after {}",
        fifth.start,
        fourth.end
    );
    assert_eq!(reused(), 2);
}
