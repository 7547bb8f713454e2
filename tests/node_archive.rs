//! Archiving from a running primary: a failing archive_command keeps
//! completed segments (and retries) until it succeeds; then the archive holds
//! byte-identical copies and the checkpointer may remove them.

mod support;

use std::fs;
use std::path::Path;
use std::time::Duration;

use support::node::{init_datadir, TestNode};
use support::wait_for;

fn ready_segments(datadir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(datadir.join("wal/archive_status"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".ready")
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn failing_archive_command_keeps_segments_until_it_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    fs::create_dir(&archive).unwrap();
    let fail_flag = tmp.path().join("FAIL");
    fs::write(&fail_flag, b"").unwrap();
    let datadir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", "1MB"]);
    let command = format!(
        "archive_command=test ! -f {} && cp %p {}/%f",
        fail_flag.display(),
        archive.display()
    );
    let node = TestNode::start(
        &datadir,
        &["archive_mode=on", &command, "checkpoint_timeout=1s"],
    );
    let mut c = node.client();
    let value = vec![b'x'; 16 << 10];
    for i in 0..200 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(&value)
            .query(&mut c)
            .unwrap();
    }
    let ready = wait_for(
        "completed segments marked .ready",
        Duration::from_secs(30),
        || {
            let r = ready_segments(&datadir);
            (r.len() >= 2).then_some(r)
        },
    );
    // Keep a copy of each completed segment as it is now (complete = final).
    let originals: Vec<(String, Vec<u8>)> = ready
        .iter()
        .map(|s| (s.clone(), fs::read(datadir.join("wal").join(s)).unwrap()))
        .collect();
    // Several checkpoints pass while the command keeps failing.
    let first_ckpt = node.info_field("persistence", "last_checkpoint_lsn");
    wait_for("two more checkpoints", Duration::from_secs(30), || {
        let now = node.info_field("persistence", "last_checkpoint_lsn");
        let failed: u64 = node
            .info_field("persistence", "failed_count")?
            .parse()
            .ok()?;
        (now != first_ckpt && failed >= 2).then_some(())
    });
    let _: () = redis::cmd("SET")
        .arg("more")
        .arg(&value)
        .query(&mut c)
        .unwrap();
    wait_for("another checkpoint", Duration::from_secs(30), || {
        (node.info_field("persistence", "last_checkpoint_lsn") != first_ckpt).then_some(())
    });
    for (seg, _) in &originals {
        assert!(
            datadir.join("wal").join(seg).exists(),
            "segment {seg} was removed before it was archived"
        );
        assert!(
            ready_segments(&datadir).contains(seg),
            "{seg} lost its .ready"
        );
    }
    assert_eq!(
        fs::read_dir(&archive).unwrap().count(),
        0,
        "the failing command archived something"
    );
    assert!(
        node.log_text().contains("archive command failed"),
        "failures are not logged:\n{}",
        node.log_text()
    );

    // The command starts succeeding: everything kept is archived intact.
    fs::remove_file(&fail_flag).unwrap();
    for (seg, bytes) in &originals {
        let archived = archive.join(seg);
        wait_for(
            &format!("{seg} in the archive"),
            Duration::from_secs(90),
            || {
                datadir
                    .join("wal/archive_status")
                    .join(format!("{seg}.done"))
                    .exists()
                    .then_some(())
                    .or_else(|| {
                        (!ready_segments(&datadir).contains(seg) && archived.exists()).then_some(())
                    })
            },
        );
        assert!(
            fs::read(&archived).unwrap() == *bytes,
            "archived {seg} differs from the segment"
        );
    }
    // The archiver counts a segment after it marks it `.done`.
    wait_for(
        "archived_count to count them",
        Duration::from_secs(30),
        || {
            let archived: u64 = node
                .info_field("persistence", "archived_count")?
                .parse()
                .ok()?;
            (archived >= originals.len() as u64).then_some(())
        },
    );
}
