//! The real pg_receivewal (PostgreSQL 15) streaming from our server over
//! the in-memory source: completed segments are byte-identical to the
//! source, the current one is .partial; slots hold the position and a
//! restart resumes without a gap; --synchronous flush positions reach the
//! walsender registry.

mod support;

use std::path::Path;
use std::process::Command;

use support::fake::FakeServer;
use support::process::ChildGuard;
use support::tools::tool;
use support::wal::{seg, segment_name};
use support::{file_names, wait_until};
use walrep::replication::server::ServerOptions;
use walrep::{Lsn, SegNo, TimelineId};

fn receivewal(s: &FakeServer, dir: &Path, extra: &[&str]) -> Option<Command> {
    let bin = tool("pg_receivewal")?;
    let mut c = Command::new(bin);
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &s.port.to_string(),
        "-U",
        "walrep",
        "-w",
        "-n",
        "-v",
        "-s",
        "1",
        "-D",
    ])
    .arg(dir)
    .args(extra)
    .env_remove("PGPASSWORD");
    Some(c)
}

/// Every complete segment in `dir` equals the source's bytes.
fn assert_segments_equal(s: &FakeServer, dir: &Path, segnos: std::ops::Range<u64>) {
    for n in segnos {
        let got =
            std::fs::read(dir.join(segment_name(n))).unwrap_or_else(|e| panic!("segment {n}: {e}"));
        assert!(
            got == s.source.segment_bytes(TimelineId(1), SegNo(n)),
            "segment {} differs from the source",
            segment_name(n)
        );
    }
}

/// Write WAL in bounded steps while pg_receivewal runs ("write load").
fn write_load(s: &FakeServer, bytes: u64) -> Lsn {
    let step = 64 * 1024 + 24;
    let mut end = s.source.flush_lsn();
    let mut left = bytes;
    while left > 0 {
        let n = step.min(left);
        end = s.source.advance(n);
        left -= n;
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    end
}

trait FlushLsn {
    fn flush_lsn(&self) -> Lsn;
}
impl FlushLsn for walrep::replication::fake::FakeSource {
    fn flush_lsn(&self) -> Lsn {
        use walrep::replication::source::ReplicationSource;
        self.flush_point().lsn
    }
}

#[test]
fn streams_segments_byte_identical_and_partial_current() {
    let s = FakeServer::start(ServerOptions::default());
    s.source.advance((1 << 20) + 0x28);
    let out = tempfile::tempdir().unwrap();
    let Some(mut cmd) = receivewal(&s, out.path(), &[]) else {
        return;
    };
    let mut child = ChildGuard::spawn(&mut cmd);
    wait_until("pg_receivewal to connect", || !s.registry.is_empty());
    let end = write_load(&s, 3 << 20);
    let last = end.segno(seg()).0;
    wait_until("pg_receivewal to complete segments", || {
        file_names(out.path()).contains(&segment_name(last - 1))
            && file_names(out.path()).contains(&format!("{}.partial", segment_name(last)))
    });
    wait_until("pg_receivewal to report what it wrote", || {
        s.registry
            .snapshot()
            .first()
            .is_some_and(|w| w.write_lsn == end)
    });
    assert_segments_equal(&s, out.path(), 1..last);
    let partial =
        std::fs::read(out.path().join(format!("{}.partial", segment_name(last)))).unwrap();
    let off = end.segment_offset(seg()) as usize;
    assert_eq!(
        partial.len(),
        1 << 20,
        "a .partial is padded to the segment size"
    );
    assert!(partial[..off] == s.source.segment_bytes(TimelineId(1), SegNo(last))[..off]);
    assert!(
        child.interrupt().success(),
        "pg_receivewal did not exit cleanly"
    );
    assert!(
        !file_names(out.path()).contains(&segment_name(0)),
        "started at the server's segment"
    );
}

#[test]
fn slot_holds_position_and_restart_resumes_without_gap() {
    let s = FakeServer::start(ServerOptions::default());
    s.source.advance((1 << 20) + 0x28);
    let out = tempfile::tempdir().unwrap();
    let Some(mut create) = receivewal(&s, out.path(), &["--slot", "s1", "--create-slot"]) else {
        return;
    };
    assert!(
        create.status().unwrap().success(),
        "pg_receivewal --create-slot failed"
    );
    assert!(s.slots.get("s1").is_some());
    let mut child = ChildGuard::spawn(&mut receivewal(&s, out.path(), &["--slot", "s1"]).unwrap());
    let end = write_load(&s, (1 << 20) + 5000);
    // Without --synchronous pg_receivewal fsyncs (and so reports a flush)
    // only when it completes a segment.
    let synced = end.segment_start(seg());
    wait_until("slot to follow pg_receivewal's flush", || {
        s.slots.get("s1").unwrap().restart_lsn >= synced
    });
    assert!(child.interrupt().success());
    // Stopped: the slot still holds its position while more WAL is written.
    let held = s.slots.get("s1").unwrap().restart_lsn;
    let end2 = write_load(&s, 2 << 20);
    assert_eq!(
        s.slots.min_restart_lsn(),
        Some(held),
        "the slot must hold WAL while its client is away"
    );
    // Restart: resumes from its .partial, no gap.
    let mut child = ChildGuard::spawn(&mut receivewal(&s, out.path(), &["--slot", "s1"]).unwrap());
    let last = end2.segno(seg()).0;
    let synced2 = end2.segment_start(seg());
    wait_until("pg_receivewal to catch up after restart", || {
        s.slots.get("s1").unwrap().restart_lsn >= synced2
    });
    assert!(child.interrupt().success());
    assert_segments_equal(&s, out.path(), 1..last);
    // An empty directory with the slot starts where the slot is (READ_REPLICATION_SLOT).
    let fresh = tempfile::tempdir().unwrap();
    let mut child =
        ChildGuard::spawn(&mut receivewal(&s, fresh.path(), &["--slot", "s1"]).unwrap());
    let slot_seg = s.slots.get("s1").unwrap().restart_lsn.segno(seg()).0;
    wait_until("pg_receivewal to start at the slot", || {
        file_names(fresh.path())
            .iter()
            .any(|f| f.starts_with(&segment_name(slot_seg)))
    });
    assert!(child.interrupt().success());
    assert!(
        file_names(fresh.path())
            .iter()
            .all(|f| f >= &segment_name(slot_seg)),
        "{:?}",
        file_names(fresh.path())
    );
}

#[test]
fn synchronous_flush_position_appears_in_the_registry() {
    let s = FakeServer::start(ServerOptions::default());
    s.source.advance((1 << 20) + 0x28);
    let out = tempfile::tempdir().unwrap();
    let Some(mut cmd) = receivewal(&s, out.path(), &["--synchronous"]) else {
        return;
    };
    let mut child = ChildGuard::spawn(&mut cmd);
    let end = write_load(&s, 300_000);
    wait_until("--synchronous flush to reach the registry", || {
        s.registry
            .snapshot()
            .first()
            .is_some_and(|w| w.flush_lsn == end && w.application_name == "pg_receivewal")
    });
    let w = s.registry.snapshot().remove(0);
    assert_eq!(w.state.as_str(), "streaming");
    assert!(child.interrupt().success());
}

#[test]
fn removed_wal_is_reported_and_pg_receivewal_gives_up_with_no_loop() {
    let s = FakeServer::start(ServerOptions::default());
    s.source.advance(3 << 20);
    s.source.remove_before(Lsn(3 << 20));
    let out = tempfile::tempdir().unwrap();
    // The directory says "continue at segment 2", which the server removed
    // (pg_receivewal never counts segment 0 as found).
    std::fs::write(out.path().join(segment_name(1)), vec![0u8; 1 << 20]).unwrap();
    let Some(mut cmd) = receivewal(&s, out.path(), &[]) else {
        return;
    };
    let log = out.path().join("stderr.log");
    cmd.stderr(std::fs::File::create(&log).unwrap());
    let mut child = ChildGuard::spawn(&mut cmd);
    let status = child.wait_exit();
    let stderr = std::fs::read_to_string(&log).unwrap();
    let status = status.unwrap_or_else(|| panic!("pg_receivewal -n did not exit: {stderr}"));
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("requested WAL segment 000000010000000000000002 has already been removed"),
        "{stderr}"
    );
}

#[test]
fn pg_receivewal_follows_a_promotion_to_the_next_timeline() {
    let s = FakeServer::start(ServerOptions::default());
    s.source.advance((1 << 20) + 0x28);
    let out = tempfile::tempdir().unwrap();
    let Some(mut cmd) = receivewal(&s, out.path(), &[]) else {
        return;
    };
    let log = out.path().join("..").join(format!("rw-{}.log", s.port));
    cmd.stderr(std::fs::File::create(&log).unwrap());
    let mut child = ChildGuard::spawn(&mut cmd);
    let switch = write_load(&s, (1 << 20) + 3000);
    wait_until("pg_receivewal to receive timeline 1", || {
        s.registry
            .snapshot()
            .first()
            .is_some_and(|w| w.write_lsn == switch)
    });
    let t2 = s.source.promote();
    let end = write_load(&s, (1 << 20) + 100);
    let seg2 = switch.segno(seg()).0;
    let name2 = SegNo(seg2).file_name(t2, seg());
    wait_until(
        "pg_receivewal to finish the first segment of timeline 2",
        || file_names(out.path()).contains(&name2),
    );
    assert!(child.interrupt().success());
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        stderr.contains(&format!("switched to timeline 2 at {switch}")),
        "{stderr}"
    );
    let names = file_names(out.path());
    assert!(names.contains(&"00000002.history".to_string()), "{names:?}");
    assert!(
        names.contains(&format!("{}.partial", segment_name(seg2))),
        "the old timeline's last segment stays .partial: {names:?}"
    );
    let got = std::fs::read(out.path().join(&name2)).unwrap();
    assert!(
        got == s.source.segment_bytes(t2, SegNo(seg2)),
        "timeline 2's segment differs"
    );
    assert!(end > switch);
}
