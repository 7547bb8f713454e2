//! The `backup_manifest` of `walrep basebackup`, through the real binary
//! and PostgreSQL 15's `pg_verifybackup -n`: one-stream, `--jobs 4` and
//! two-phase copies each get one manifest listing every file they wrote,
//! which pg_verifybackup accepts and rejects once a file is altered; a file
//! altered during the copy fails the copy's own end check (the copy stays
//! incomplete, its standby never starts redo); a one-phase copy killed
//! mid-copy is resumed keeping the WAL segments it had fetched whole and
//! every chunk it had finished, copying again only the chunk damaged
//! meanwhile; a one-phase copy that fails its end check is kept, the
//! server keeps its checkpoint until a copy is confirmed, and `--resume`
//! finishes it.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::backup::{bulk_primary, bytes_under, data_mb, BulkPrimary, BULK_VALUE};
use support::cluster::*;
use support::node::{init_datadir, walrep, walrep_bin, TestNode};
use support::process::ChildGuard;
use support::tools::tool;
use support::wait_for;
use walrep::standby::pending::PendingBackup;

/// The journal of an unfinished copy (the manifest being built).
const JOURNAL: &str = "backup_manifest.partial";

fn backup(primary: &TestNode, dest: &Path, extra: &[&str]) -> String {
    let from = format!("127.0.0.1:{}", primary.replication_port);
    let mut args = vec!["basebackup", "--from", &from, "-D", dest.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (ok, out, err) = walrep(&args);
    assert!(ok, "walrep basebackup {extra:?} failed: {out}{err}");
    out
}

fn spawn_backup(primary: &TestNode, dest: &Path, extra: &[&str], out: &Path) -> ChildGuard {
    let from = format!("127.0.0.1:{}", primary.replication_port);
    ChildGuard::spawn(
        Command::new(walrep_bin())
            .args(["basebackup", "--from", &from, "-D"])
            .arg(dest)
            .args(extra)
            .stdout(std::fs::File::create(out).unwrap())
            .stderr(std::fs::File::create(out.with_extension("err")).unwrap()),
    )
}

/// `pg_verifybackup -n dir`: (success, its output); `None` when the tool
/// is missing and WALREP_SKIP_EXTERNAL=1.
fn pg_verifybackup(dir: &Path) -> Option<(bool, String)> {
    let out = Command::new(tool("pg_verifybackup")?)
        .arg("-n")
        .arg(dir)
        .output()
        .expect("run pg_verifybackup");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

/// Every regular file under `dir`, relative, `/`-separated.
fn files_under(dir: &Path, rel: &str, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir.join(rel)).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        if e.file_type().unwrap().is_dir() {
            files_under(dir, &path, out);
        } else {
            out.push(path);
        }
    }
}

/// The paths `backup_manifest` lists.
fn manifest_paths(dir: &Path) -> Vec<String> {
    let text = std::fs::read(dir.join("backup_manifest")).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
    assert_eq!(v["PostgreSQL-Backup-Manifest-Version"], 1);
    let mut paths: Vec<String> = v["Files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert_eq!(f["Checksum-Algorithm"], "CRC32C", "{f}");
            f["Path"].as_str().unwrap().to_string()
        })
        .collect();
    paths.sort();
    paths
}

/// A finished copy: pg_verifybackup accepts it, its manifest lists every
/// file in it, nothing of the unfinished copy is left.
fn assert_verified(dir: &Path) {
    assert!(!dir.join(JOURNAL).exists() && PendingBackup::read(dir).unwrap().is_none());
    let mut on_disk = Vec::new();
    files_under(dir, "", &mut on_disk);
    on_disk.retain(|p| p != "backup_manifest");
    on_disk.sort();
    assert_eq!(manifest_paths(dir), on_disk, "{}", dir.display());
    if let Some((ok, out)) = pg_verifybackup(dir) {
        assert!(ok && out.contains("backup successfully verified"), "{out}");
    }
}

/// Flip one byte in the middle of `path` (same size, other contents).
fn flip_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(path, bytes).unwrap();
}

/// The snapshot chunk files the journal of an unfinished copy lists.
fn journaled_chunks(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join(JOURNAL)).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["path"].as_str().map(str::to_string))
        .filter(|p| p.starts_with("base/") && p.contains("/chunk_"))
        .collect()
}

/// Start `walrep basebackup` into `dest`, damage the first chunk it has
/// finished and journaled before the copy ends, and return that chunk and
/// the copy's error output, after checking that the end check refused it.
fn damage_a_chunk_during_the_copy(
    primary: &TestNode,
    dest: &Path,
    args: &[&str],
    tmp: &Path,
) -> (String, String) {
    let out_file = tmp.join("backup.out");
    let mut copy = spawn_backup(primary, dest, args, &out_file);
    let chunk = wait_for("a chunk written", Duration::from_secs(120), || {
        journaled_chunks(dest).into_iter().next()
    });
    flip_byte(&dest.join(&chunk));
    let status = copy.wait_exit().expect("basebackup did not exit");
    let err = std::fs::read_to_string(out_file.with_extension("err")).unwrap();
    assert!(!status.success(), "the copy succeeded with {chunk} altered");
    assert!(
        err.contains("does not match its backup_manifest")
            && err.contains("checksum mismatch")
            && err.contains(&chunk),
        "{err}"
    );
    (chunk, err)
}

/// The counts of the "resume kept ..." line: files, WAL segments, files
/// that failed their checksum.
fn resume_counts(out: &str) -> (u64, u64, u64) {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("walrep: resume kept "))
        .unwrap_or_else(|| panic!("no resume line in {out:?}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    // files, bytes, WAL segments, failed.
    (numbers[0], numbers[2], numbers[3])
}

#[test]
fn one_stream_four_jobs_and_two_phase_copies_pass_pg_verifybackup_until_a_file_is_altered() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", "1MB"]);
    let primary = TestNode::start(&dir, &[]);
    write_keys(&primary, "bulk", 128, BULK_VALUE);
    let one = tmp.path().join("one");
    let out = backup(&primary, &one, &["-R", "--no-slot", "--jobs", "1"]);
    assert!(out.contains("backup_manifest lists"), "{out}");
    let four = tmp.path().join("four");
    backup(&primary, &four, &["--jobs", "4"]);
    let two = tmp.path().join("two");
    backup(
        &primary,
        &two,
        &["-R", "--no-slot", "--two-phase", "--jobs", "2"],
    );
    for copy in [&one, &four, &two] {
        assert_verified(copy);
    }
    // -R's files are in the manifest as written; the WAL too.
    let listed = manifest_paths(&one);
    for f in ["walrep.toml", "standby.signal", "backup_label", "control"] {
        assert!(listed.iter().any(|p| p == f), "{f} not in {listed:?}");
    }
    assert!(
        listed.iter().any(|p| p.starts_with("wal/0000")),
        "{listed:?}"
    );
    assert!(manifest_paths(&four)
        .iter()
        .any(|p| p.starts_with("wal/0000")));

    let Some(_) = tool("pg_verifybackup") else {
        return;
    };
    // A byte changed in a chunk, a line added to walrep.toml: refused.
    let chunk = {
        let mut files = Vec::new();
        files_under(&four, "base", &mut files);
        files.into_iter().find(|f| f.contains("/chunk_")).unwrap()
    };
    flip_byte(&four.join(&chunk));
    let (ok, out) = pg_verifybackup(&four).unwrap();
    assert!(
        !ok && out.contains("checksum mismatch") && out.contains(&chunk),
        "{out}"
    );
    let mut config = std::fs::read_to_string(one.join("walrep.toml")).unwrap();
    config.push_str("# edited\n");
    std::fs::write(one.join("walrep.toml"), config).unwrap();
    let (ok, out) = pg_verifybackup(&one).unwrap();
    assert!(!ok && out.contains("walrep.toml"), "{out}");
    // A file the copy never had.
    std::fs::write(two.join("extra"), b"x").unwrap();
    let (ok, out) = pg_verifybackup(&two).unwrap();
    assert!(!ok && out.contains("extra"), "{out}");
}

#[test]
fn a_file_altered_during_the_copy_fails_its_end_check_and_the_copy_stays_incomplete() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", "1MB"]);
    let primary = TestNode::start(&dir, &[]);
    write_keys(&primary, "bulk", 256, BULK_VALUE);
    // A two-phase copy is of the last checkpoint: this copy takes one.
    backup(&primary, &tmp.path().join("checkpointed"), &[]);
    let dest = tmp.path().join("copy");
    let args = [
        "-R",
        "--no-slot",
        "--two-phase",
        "--jobs",
        "2",
        "--max-rate",
        "1024",
    ];
    damage_a_chunk_during_the_copy(&primary, &dest, &args, tmp.path());
    // Not complete: the marker stays, so the copy never starts redo.
    assert!(PendingBackup::read(&dest).unwrap().is_some());
    let mut standby = TestNode::start(&dest, &[]);
    wait_state(&standby, "AwaitingBaseBackup");
    let (ok, _, err) = walrep(&["promote", dest.to_str().unwrap()]);
    assert!(!ok && err.contains("base backup not complete"), "{err}");
    standby.stop();
}

#[test]
fn a_one_phase_resume_keeps_the_whole_wal_segments_and_recopies_a_damaged_chunk() {
    let tmp = tempfile::tempdir().unwrap();
    let BulkPrimary {
        node: primary,
        keys: bulk,
        bytes: total,
        ..
    } = bulk_primary(tmp.path());
    let dest = tmp.path().join("copy");
    let rate = (data_mb() * 1024 / 16).max(512).to_string();
    let args = ["--jobs", "2", "--max-rate", &rate];
    let mut copy = spawn_backup(&primary, &dest, &args, &tmp.path().join("backup.out"));
    // Once the copy's checkpoint is taken, 4 MB of WAL: the WAL job
    // fetches those segments while the snapshot is still copied.
    wait_for("the copy to start", Duration::from_secs(60), || {
        dest.join("base").exists().then_some(())
    });
    let during = 64;
    write_keys(&primary, "during", during, BULK_VALUE);
    let whole_segments = || {
        std::fs::read_dir(dest.join("wal")).map_or(0, |d| {
            d.flatten()
                .filter(|e| e.file_name().len() == 24)
                .filter(|e| e.metadata().is_ok_and(|m| m.len() == 1 << 20))
                .count() as u64
        })
    };
    wait_for("a third of the copy", Duration::from_secs(120), || {
        (bytes_under(&dest.join("base")) > total / 3
            && journaled_chunks(&dest).len() > 1
            && whole_segments() >= 2)
            .then_some(())
    });
    copy.kill();
    assert!(PendingBackup::read(&dest).unwrap().is_some());
    // The last segment may have been cut by the kill.
    let fetched = whole_segments();
    let journaled = journaled_chunks(&dest);
    flip_byte(&dest.join(&journaled[0]));

    let resumed: Vec<&str> = args.iter().copied().chain(["--resume"]).collect();
    let out = backup(&primary, &dest, &resumed);
    let (_, wal_kept, failed) = resume_counts(&out);
    assert_eq!(failed, 1, "{out}");
    assert!(
        wal_kept + 1 >= fetched && wal_kept > 0,
        "{wal_kept} of {fetched} WAL segments kept: {out}"
    );
    let kept_chunks: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("walrep: resumed: "))
        .and_then(|l| l.split(' ').next()?.parse().ok())
        .unwrap();
    // Every chunk the interrupted copy finished but the damaged one.
    assert_eq!(
        kept_chunks,
        journaled.len() - 1,
        "{kept_chunks} of {} journaled chunks kept: {out}",
        journaled.len()
    );
    assert_verified(&dest);
    let copy = TestNode::start(&dest, &[]);
    check_keys(&copy, "bulk", bulk);
    check_keys(&copy, "during", during);
}

#[test]
fn a_copy_that_fails_its_end_check_is_kept_and_resumed_from_the_checkpoint_the_server_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let BulkPrimary {
        dir,
        node: primary,
        keys: bulk,
        ..
    } = bulk_primary(tmp.path());
    let kept = dir.join("backup_resumable");
    let dest = tmp.path().join("copy");
    let rate = (data_mb() * 1024 / 16).max(512).to_string();
    let args = ["--jobs", "2", "--max-rate", &rate];
    // Every byte arrives; the end check finds the damage.
    let (_, err) = damage_a_chunk_during_the_copy(&primary, &dest, &args, tmp.path());
    assert!(err.contains("--resume"), "{err}");
    // Kept for --resume (a one-phase copy that fails while it is received
    // is removed), and the server still pins the backup's checkpoint: its
    // stream had ended, but the copy was never confirmed.
    assert!(PendingBackup::read(&dest).unwrap().is_some());
    assert!(kept.exists(), "the server released the unconfirmed backup");

    let resumed: Vec<&str> = args.iter().copied().chain(["--resume"]).collect();
    let out = backup(&primary, &dest, &resumed);
    let (_, _, failed) = resume_counts(&out);
    assert_eq!(failed, 1, "only the damaged chunk is copied again: {out}");
    assert_verified(&dest);
    // Confirmed: nothing is kept for it any more.
    assert!(!kept.exists(), "the confirmed backup is still kept");
    let copy = TestNode::start(&dest, &[]);
    check_keys(&copy, "bulk", bulk);
}
