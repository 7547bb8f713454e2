//! A standby's fsyncs run on a thread of their own and, while its walrep
//! upstream says no commit may wait for its flush (the flush hint), are
//! spaced: the hint reaches the standby and follows
//! `synchronous_standby_names` across a reload; an asynchronous standby's
//! reported flush still catches up with the primary's; and a synchronous
//! standby is never deferred: a commit at `on` is acknowledged only after
//! the standby's own fsync, while one at `remote_write` is not held up by
//! it (the socket reader goes on while the fsync waits).

mod support;

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use support::cluster::{basebackup_from_port, wait_state};
use support::node::{init_datadir, set_config_line, walrep, InProcessNode, TestNode};
use support::url::{conn, info_field, set, slave_field, try_get};
use support::wait_for;
use walrep::standby::receiver::ReceiverShared;
use walrep::storage::{FaultyStorage, Storage};
use walrep::Lsn;

const DEADLINE: Duration = Duration::from_secs(30);

/// Set the primary's `synchronous_standby_names` and reload it.
fn set_sync_names(primary: &TestNode, names: &str) {
    set_config_line(
        &primary.datadir,
        "synchronous_standby_names",
        &format!("synchronous_standby_names = \"{names}\""),
    );
    let (ok, out, err) = walrep(&["reload", primary.datadir.to_str().unwrap()]);
    assert!(ok, "walrep reload failed: {out}{err}");
}

/// Wait until the standby's INFO says its fsyncs are (or are not) spaced.
fn wait_deferred(standby: &TestNode, deferred: bool) {
    let want = if deferred { "1" } else { "0" };
    wait_for(
        &format!("receiver_flush_deferred:{want} on the standby"),
        DEADLINE,
        || {
            (standby
                .info_field("replication", "receiver_flush_deferred")
                .as_deref()
                == Some(want))
            .then_some(())
        },
    );
}

/// The hint follows `synchronous_standby_names`: an asynchronous standby
/// spaces its fsyncs, the same standby named synchronous stops at the
/// next review, and starts again once it is no longer named. Meanwhile
/// its reported flush keeps reaching the primary's flush position.
#[test]
fn the_flush_hint_reaches_the_standby_and_follows_synchronous_standby_names() {
    let tmp = tempfile::tempdir().unwrap();
    let pdir = init_datadir(tmp.path(), "primary", &[]);
    let primary = TestNode::start(&pdir, &[]);
    let sdir = basebackup_from_port(primary.replication_port, tmp.path(), "s1", "s1", &[]);
    let standby = TestNode::start(&sdir, &["wal_retrieve_retry_interval=200ms"]);
    wait_state(&standby, "Streaming");
    wait_deferred(&standby, true);
    assert_reported_flush_catches_up(&primary, "async");

    set_sync_names(&primary, "s1");
    wait_deferred(&standby, false);
    assert_reported_flush_catches_up(&primary, "sync");

    set_sync_names(&primary, "");
    wait_deferred(&standby, true);
    assert_reported_flush_catches_up(&primary, "async again");
    let fsyncs: u64 = standby
        .info_field("replication", "receiver_fsyncs")
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(fsyncs > 0, "the standby's fsync thread made no fsync");
}

/// Write a few keys, then (with no more writes) wait until the standby
/// reports flushed everything the primary flushed: a spaced fsync still
/// comes, and its report with it.
fn assert_reported_flush_catches_up(primary: &TestNode, round: &str) {
    let url = primary.url();
    for i in 0..20 {
        set(&url, &format!("{round}-{i}"), "v");
    }
    let target: Lsn = info_field(&url, "persistence", "wal_flush_lsn")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "the primary's flush position in INFO: {}",
                primary.info("persistence")
            )
        });
    wait_for(
        &format!("the standby's reported flush to reach {target} ({round})"),
        DEADLINE,
        || slave_field(&url, "flush_lsn").filter(|f| *f >= target),
    );
}

/// A primary with `s1` synchronous, and `s1` in this process on
/// [`FaultyStorage`], streaming.
struct SyncStandby {
    primary: InProcessNode,
    url: String,
    io: Arc<FaultyStorage>,
    standby: InProcessNode,
    surl: String,
    _tmp: tempfile::TempDir,
}

impl SyncStandby {
    /// The standby's walreceiver, shared.
    fn received(&self) -> &ReceiverShared {
        &self.standby.node().standby.as_ref().unwrap().received
    }

    fn wait_streaming(&self) {
        wait_for("the sync standby streaming", DEADLINE, || {
            (self.standby.node().upstream_snapshot()?.status == "streaming").then_some(())
        });
    }

    /// Hold the fsyncs of the standby's WAL segments (not of `wal/`).
    fn hold_segment_syncs(&self) {
        self.io
            .hold_syncs_of(|p| p.parent().and_then(Path::file_name) == Some("wal".as_ref()));
    }

    /// `SET key v` at the connection's default level, on a thread.
    fn set_in_background(&self, key: &'static str) -> JoinHandle<redis::RedisResult<String>> {
        let mut c = conn(&self.url);
        std::thread::spawn(move || redis::cmd("SET").arg(key).arg("v").query::<String>(&mut c))
    }

    /// With the standby's fsyncs held and the primary flushed to
    /// `primary_flush`: the standby has not reported that flush and the
    /// commit at `on` is still waiting; released, the commit is
    /// acknowledged and the reported flush reaches `primary_flush`.
    fn release_held_commit(&self, on: JoinHandle<redis::RedisResult<String>>, primary_flush: Lsn) {
        let reported_flush = slave_field(&self.url, "flush_lsn").unwrap();
        assert!(
            reported_flush < primary_flush && !on.is_finished(),
            "with the standby's fsync held its flush was reported at {reported_flush} (primary flushed {primary_flush}) or the commit at on returned"
        );
        self.io.hold_syncs(false);
        assert_eq!(on.join().unwrap().unwrap(), "OK");
        wait_for("the standby's reported flush", DEADLINE, || {
            slave_field(&self.url, "flush_lsn").filter(|f| *f >= primary_flush)
        });
    }
}

fn sync_standby() -> SyncStandby {
    let tmp = tempfile::tempdir().unwrap();
    let primary = InProcessNode::start(
        &tmp.path().join("primary"),
        &["synchronous_standby_names=s1"],
    );
    let url = primary.redis_url();
    let sdir = basebackup_from_port(primary.replication_port(), tmp.path(), "s1", "s1", &[]);
    let io = Arc::new(FaultyStorage::new());
    let storage: Arc<dyn Storage> = io.clone();
    let standby =
        InProcessNode::start_existing(&sdir, &["wal_retrieve_retry_interval=200ms"], Some(storage));
    let surl = standby.redis_url();
    set(&url, "before", "1");
    // Until it is consistent the standby answers LOADING: wait through it.
    wait_for("the first write on the standby", DEADLINE, || {
        try_get(&surl, "before")
    });
    SyncStandby {
        primary,
        url,
        io,
        standby,
        surl,
        _tmp: tmp,
    }
}

/// A synchronous standby is never deferred, and its fsync is what a
/// commit at `on` waits for: with the standby's WAL fsyncs held, such a
/// commit stays unacknowledged although the standby received, wrote and
/// (the primary having flushed it) applied its WAL; once the fsyncs are
/// released it is acknowledged. A commit at `remote_write` meanwhile is
/// acknowledged with the fsync still held: once told that commits wait at
/// `remote_write`, the standby's socket reader does not wait for its
/// fsync.
#[test]
fn a_sync_standby_is_never_deferred_and_on_waits_for_its_fsync_but_remote_write_does_not() {
    let s = sync_standby();
    let received = s.received();
    s.wait_streaming();
    assert!(
        !received.flush_deferred(),
        "a synchronous standby was told to space its fsyncs"
    );
    // Once a commit waited at remote_write the standby is told so, and
    // reports its written position before each fsync, on its fsync thread.
    let mut w = conn(&s.url);
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("synchronous_commit")
        .arg("remote_write")
        .query(&mut w)
        .unwrap();
    set(&s.url, "before", "v");
    wait_for("the standby told of remote_write commits", DEADLINE, || {
        let _: () = redis::cmd("SET")
            .arg("remote-write")
            .arg("v")
            .query(&mut w)
            .unwrap();
        received.write_reports_wanted().then_some(())
    });
    s.hold_segment_syncs();
    // remote_write: the reader goes on while the fsync is held.
    let _: () = redis::cmd("SET")
        .arg("at-remote-write")
        .arg("v")
        .query(&mut w)
        .unwrap();
    let on = s.set_in_background("at-on");
    // Applied on the standby (the primary flushed it), not fsynced there:
    // the commit at `on` is not acknowledged.
    wait_for("the write applied on the standby", DEADLINE, || {
        try_get(&s.surl, "at-on")
    });
    let primary_flush = s.primary.node().wal().unwrap().flushed();
    s.release_held_commit(on, primary_flush);
    assert!(!received.flush_deferred());
}

/// With only `on` commits, a synchronous standby is told that no commit
/// waits for its written position alone (it then fsyncs on its socket
/// reader: one status update per commit, no wake-up of its fsync thread),
/// and every commit still waits for that fsync.
#[test]
fn a_sync_standby_without_remote_write_commits_fsyncs_before_it_reports() {
    let s = sync_standby();
    let received = s.received();
    s.wait_streaming();
    set(&s.url, "first", "v");
    assert!(!received.write_reports_wanted());
    let before = s.primary.node().wal().unwrap().flushed();
    s.hold_segment_syncs();
    let on = s.set_in_background("at-on");
    // Written on the standby, not fsynced there (its reader waits in the
    // fsync, so the primary's flush position telling it may apply the
    // write is read only afterwards): not acknowledged.
    let wal = s.primary.node().wal().unwrap();
    wait_for("the write flushed on the primary", DEADLINE, || {
        (wal.flushed() > before).then_some(())
    });
    let primary_flush = wal.flushed();
    wait_for("the write received by the standby", DEADLINE, || {
        (received.written() >= primary_flush).then_some(())
    });
    s.release_held_commit(on, primary_flush);
    assert!(!received.write_reports_wanted());
}
