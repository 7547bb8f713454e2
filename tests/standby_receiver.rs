//! The walreceiver against a real walrep primary (in-process) and against
//! the in-memory source: segments streamed into an empty `wal/` equal the
//! primary's byte for byte; status replies carry flush and the apply
//! position the redo loop sets; another system, the node itself and an
//! upstream behind our timeline are refused with no WAL written; a
//! timeline switch is reported and followed on the same connection; a
//! silent upstream times out after a ping; an fsync failure ends the
//! session for good; a stream publishes its start point as flushed; no
//! status update follows the COPY's end; a walsender spacing an
//! asynchronous standby's messages still delivers every flush.

mod support;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver};
use support::fake::FakeServer;
use support::node::InProcessNode;
use support::wal::{seg, segment_file_names, SYSTEM_ID};
use support::{wait_until, DEADLINE};
use walrep::replication::pgwire::{
    BackendMessage, FieldDescription, FrontendMessage, MessageReader, StandbyMessage,
    TransactionStatus,
};
use walrep::replication::server::ServerOptions;
use walrep::replication::source::ReplicationSource;
use walrep::standby::receiver::{
    start, ReceiverConfig, ReceiverError, ReceiverEvent, ReceiverHandle, ReceiverShared,
    ReceiverState,
};
use walrep::standby::Replayed;
use walrep::storage::{FaultyStorage, StdStorage, Storage};
use walrep::wal::SegmentDir;
use walrep::watch::Watch;
use walrep::{Lsn, SegNo, TimelineId};

/// The bytes of a segment of [`seg`].
const SEG: u64 = 1 << 20;

/// A primary running in this process, checkpointing only when asked.
struct Primary(InProcessNode);

impl Primary {
    fn start(dir: &Path) -> Primary {
        Primary(InProcessNode::start(dir, &["checkpoint_timeout=1h"]))
    }
    fn node(&self) -> &Arc<walrep::node::Node> {
        self.0.node()
    }
    fn conninfo(&self, app: &str) -> String {
        let port = self.0.replication_port();
        format!("host=127.0.0.1 port={port} user=walrep application_name={app}")
    }
    fn write(&self, bytes: usize) {
        let addr = self.0.running().redis_addr().unwrap();
        let mut c = redis::Client::open(format!("redis://{addr}/"))
            .unwrap()
            .get_connection_with_timeout(DEADLINE)
            .unwrap();
        let v = vec![b'w'; 8192];
        for i in 0..bytes / 8192 {
            let _: () = redis::cmd("SET")
                .arg(format!("k{i}"))
                .arg(&v)
                .query(&mut c)
                .unwrap();
        }
    }
}

fn standby_segdir(dir: &Path, io: Arc<dyn Storage>) -> Arc<SegmentDir> {
    std::fs::create_dir_all(dir).unwrap();
    Arc::new(SegmentDir::open(dir, seg(), io).unwrap())
}

fn config(conninfo: String, segdir: Arc<SegmentDir>, start: Lsn, system_id: u64) -> ReceiverConfig {
    ReceiverConfig {
        conninfo,
        slot_name: None,
        start,
        tli: TimelineId(1),
        system_id,
        instance_id: 0x1234,
        status_url: None,
        segdir,
        archive_always: false,
        status_interval: Some(Duration::from_millis(200)),
        timeout: Some(Duration::from_secs(30)),
        hot_standby_feedback: false,
        receive_unflushed: true,
        connect_timeout: DEADLINE,
        restart_wait: DEADLINE,
        connect_delay: Duration::ZERO,
    }
}

/// The next event matching `want`, skipping others (WalFlushed progress).
fn expect(
    rx: &Receiver<ReceiverEvent>,
    what: &str,
    want: impl Fn(&ReceiverEvent) -> bool,
) -> ReceiverEvent {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
        if want(&ev) {
            return ev;
        }
        if let ReceiverEvent::StreamLost { reason, .. } = &ev {
            panic!("stream lost while waiting for {what}: {reason}");
        }
    }
}

#[test]
fn streams_byte_identical_segments_and_reports_flush_and_apply() {
    let tmp = tempfile::tempdir().unwrap();
    let primary = Primary::start(&tmp.path().join("primary"));
    let node = primary.node();
    let (system_id, redo) = {
        let c = node.control();
        (c.system_identifier, c.redo_lsn)
    };
    primary.write(1 << 20);
    let standby_wal = tmp.path().join("standby_wal");
    let segdir = standby_segdir(&standby_wal, Arc::new(StdStorage));
    let replayed: Arc<Watch<Replayed>> = Arc::default();
    let shared = ReceiverShared::new(replayed.clone());
    let (tx, rx) = bounded(64);
    let mut h = start(
        1,
        config(primary.conninfo("s1"), segdir, redo, system_id),
        tx,
        shared.clone(),
    )
    .unwrap();
    let connected = expect(&rx, "StreamConnected", |e| {
        matches!(e, ReceiverEvent::StreamConnected { .. })
    });
    assert!(matches!(
        connected,
        ReceiverEvent::StreamConnected {
            session: 1,
            upstream_tli: TimelineId(1),
            ..
        }
    ));
    primary.write(3 << 20);
    let target = node.wal().unwrap().flushed();
    expect(
        &rx,
        "WalFlushed past the primary's flush",
        |e| matches!(e, ReceiverEvent::WalFlushed { session: 1, tli: TimelineId(1), upto } if *upto >= target),
    );
    assert_eq!(shared.state(), ReceiverState::Streaming);
    // `WalFlushed` is redo's limit, which may come before this node's own
    // fsync of the batch: the flush position follows that fsync.
    let flushed = shared
        .flushed_watch()
        .wait_until(|p| p.lsn >= target, DEADLINE)
        .unwrap_or_else(|p| panic!("the standby's fsync stopped at {} (want {target})", p.lsn))
        .lsn;
    // Byte for byte, up to what was flushed; completed segments are .done.
    let primary_wal = tmp.path().join("primary/wal");
    let first = redo.segno(seg()).0;
    let last = flushed.segno(seg()).0;
    assert!(
        last >= first + 3,
        "expected several segments, got {first}..={last}"
    );
    for s in first..=last {
        let name = SegNo(s).file_name(TimelineId(1), seg());
        let ours = std::fs::read(standby_wal.join(&name)).unwrap();
        let theirs = std::fs::read(primary_wal.join(&name)).unwrap();
        let n = if s < last {
            SEG as usize
        } else {
            flushed.segment_offset(seg()) as usize
        };
        assert!(
            ours[..n] == theirs[..n],
            "segment {name} differs from the primary's"
        );
        if s < last {
            assert!(
                standby_wal
                    .join(format!("archive_status/{name}.done"))
                    .exists(),
                "{name}.done"
            );
        }
    }
    // The primary sees our flush, and the apply position the redo loop sets.
    let registry = node.registry().unwrap();
    let reported = |f: &dyn Fn(&walrep::replication::registry::WalSenderStatus) -> bool| {
        registry
            .snapshot()
            .iter()
            .any(|s| s.application_name == "s1" && f(s))
    };
    wait_until("the primary to see our flush position", || {
        reported(&|s| s.flush_lsn >= target)
    });
    let apply = Lsn(target.0 - 100);
    // What the redo loop publishes; the session replies with it at once.
    replayed.publish(Replayed {
        end: apply,
        ..Replayed::default()
    });
    wait_until("the primary to see our apply position", || {
        reported(&|s| s.apply_lsn == apply)
    });
    // stop: bounded, returns the flush position, reported last.
    let stopped_at = h.stop();
    assert_eq!(stopped_at, shared.flushed().1);
    let last_ev = expect(&rx, "WalReceiverStopped", |e| {
        matches!(e, ReceiverEvent::WalReceiverStopped { .. })
    });
    assert_eq!(
        last_ev,
        ReceiverEvent::WalReceiverStopped {
            session: 1,
            flushed: stopped_at
        }
    );
    drop(h);
    assert_eq!(shared.state(), ReceiverState::Stopped);
    assert!(rx.try_recv().is_err(), "events after WalReceiverStopped");
}

#[test]
fn another_system_and_the_node_itself_are_refused_with_no_wal_written() {
    let tmp = tempfile::tempdir().unwrap();
    let primary = Primary::start(&tmp.path().join("primary"));
    let node = primary.node();
    let (system_id, redo) = {
        let c = node.control();
        (c.system_identifier, c.redo_lsn)
    };
    for (case, sysid, instance) in [
        ("other system", system_id ^ 1, 0x1234u64),
        ("itself", system_id, node.instance_id),
    ] {
        let wal = tmp.path().join(case.replace(' ', "_"));
        let segdir = standby_segdir(&wal, Arc::new(StdStorage));
        let cfg = ReceiverConfig {
            instance_id: instance,
            ..config(
                primary.conninfo(&case.replace(' ', "_")),
                segdir,
                redo,
                sysid,
            )
        };
        let (tx, rx) = bounded(16);
        let mut h = start(7, cfg, tx, ReceiverShared::new(Default::default())).unwrap();
        let ev = rx.recv_timeout(DEADLINE).expect("an event");
        let ReceiverEvent::StreamLost { session: 7, reason } = ev else {
            panic!("{case}: expected StreamLost, got {ev:?}");
        };
        let want = match case {
            "itself" => "points at this node itself",
            _ => "database system identifier differs between the primary and standby",
        };
        assert!(reason.contains(want), "{case}: {reason}");
        assert!(
            segment_file_names(&wal).is_empty(),
            "{case}: WAL was written"
        );
        assert_eq!(h.stop(), redo.segment_start(seg()));
        expect(&rx, "WalReceiverStopped", |e| {
            matches!(e, ReceiverEvent::WalReceiverStopped { session: 7, .. })
        });
    }
}

#[test]
fn a_timeline_switch_is_reported_and_followed_on_the_same_connection() {
    let server = FakeServer::start(ServerOptions::default());
    let fake = &server.source;
    fake.advance(SEG * 2 + 5000);
    let tmp = tempfile::tempdir().unwrap();
    let wal = tmp.path().join("wal");
    let segdir = standby_segdir(&wal, Arc::new(StdStorage));
    let shared = ReceiverShared::new(Default::default());
    let (tx, rx) = bounded(64);
    let cfg = config(
        server.conninfo("application_name=s2"),
        segdir,
        Lsn(SEG / 2),
        SYSTEM_ID,
    );
    let mut h = start(1, cfg, tx, shared.clone()).unwrap();
    let switch = fake.flush_point().lsn;
    expect(
        &rx,
        "tli 1 flushed",
        |e| matches!(e, ReceiverEvent::WalFlushed { upto, .. } if *upto == switch),
    );
    let tli2 = fake.promote();
    let ended = expect(&rx, "TimelineEnded", |e| {
        matches!(e, ReceiverEvent::TimelineEnded { .. })
    });
    assert_eq!(
        ended,
        ReceiverEvent::TimelineEnded {
            session: 1,
            tli: TimelineId(1),
            next_tli: tli2,
            switch_point: switch
        }
    );
    // Waiting already when the event is out: a restart ordered the moment
    // the event is handled must find the connection (else the caller opens
    // a new one).
    assert!(
        h.is_waiting(),
        "the session was not waiting when it reported the end"
    );
    assert_eq!(shared.state(), ReceiverState::Waiting);
    // Same connection: the walsender's id does not change.
    let pid_before: Vec<_> = server.registry.snapshot().iter().map(|s| s.id).collect();
    h.restart(2, switch, tli2).unwrap();
    let hist = expect(&rx, "HistoryReceived", |e| {
        matches!(e, ReceiverEvent::HistoryReceived { .. })
    });
    let ReceiverEvent::HistoryReceived {
        session: 2,
        tli,
        history,
    } = hist
    else {
        panic!("{hist:?}")
    };
    assert_eq!(tli, tli2);
    assert_eq!(history.timeline_of(Lsn(switch.0 - 1)), TimelineId(1));
    assert!(wal.join(tli2.history_file_name()).exists());
    assert!(wal
        .join(format!("archive_status/{}.done", tli2.history_file_name()))
        .exists());
    expect(
        &rx,
        "StreamConnected on tli 2",
        |e| matches!(e, ReceiverEvent::StreamConnected { session: 2, upstream_tli, .. } if *upstream_tli == tli2),
    );
    let pid_after: Vec<_> = server.registry.snapshot().iter().map(|s| s.id).collect();
    assert_eq!(pid_before, pid_after, "a new connection was opened");
    let end = fake.advance(SEG);
    expect(
        &rx,
        "tli 2 flushed",
        |e| matches!(e, ReceiverEvent::WalFlushed { session: 2, tli, upto } if *tli == tli2 && *upto == end),
    );
    // Files: tli 1's up to the switch, tli 2's from its segment on.
    let s1 = switch.segno(seg());
    let ours = std::fs::read(wal.join(s1.file_name(TimelineId(1), seg()))).unwrap();
    let want = fake.segment_bytes(TimelineId(1), s1);
    let off = switch.segment_offset(seg()) as usize;
    assert!(ours[..off] == want[..off], "tli 1 bytes differ");
    for s in s1.0..=end.segno(seg()).0 {
        let name = SegNo(s).file_name(tli2, seg());
        let ours = std::fs::read(wal.join(&name)).unwrap();
        let want = fake.segment_bytes(tli2, SegNo(s));
        let n = if s < end.segno(seg()).0 {
            SEG
        } else {
            end.segment_offset(seg())
        } as usize;
        assert!(ours[..n] == want[..n], "{name} differs");
    }
    assert_eq!(h.stop(), end);
}

#[test]
fn an_upstream_behind_our_timeline_is_refused() {
    let server = FakeServer::start(ServerOptions::default());
    server.source.advance(SEG);
    let tmp = tempfile::tempdir().unwrap();
    let segdir = standby_segdir(&tmp.path().join("wal"), Arc::new(StdStorage));
    let cfg = ReceiverConfig {
        tli: TimelineId(2),
        ..config(server.conninfo(""), segdir, Lsn(0), SYSTEM_ID)
    };
    let (tx, rx) = bounded(16);
    let _h = start(3, cfg, tx, ReceiverShared::new(Default::default())).unwrap();
    let ev = rx.recv_timeout(DEADLINE).unwrap();
    let ReceiverEvent::StreamLost { reason, .. } = ev else {
        panic!("{ev:?}")
    };
    assert_eq!(
        reason,
        "highest timeline 1 of the primary is behind recovery timeline 2"
    );
    assert!(segment_file_names(&tmp.path().join("wal")).is_empty());
}

#[test]
fn an_fsync_failure_ends_the_session_and_no_new_one_starts() {
    let server = FakeServer::start(ServerOptions::default());
    server.source.advance(SEG / 4);
    let tmp = tempfile::tempdir().unwrap();
    let io = Arc::new(FaultyStorage::new());
    io.fail_sync_data_after(1);
    let segdir = standby_segdir(&tmp.path().join("wal"), io);
    let shared = ReceiverShared::new(Default::default());
    let (tx, rx) = bounded(16);
    let cfg = config(server.conninfo(""), segdir.clone(), Lsn(0), SYSTEM_ID);
    let _h = start(1, cfg.clone(), tx.clone(), shared.clone()).unwrap();
    let ev = expect(&rx, "StreamLost", |e| {
        matches!(e, ReceiverEvent::StreamLost { .. })
    });
    let ReceiverEvent::StreamLost { reason, .. } = ev else {
        unreachable!()
    };
    assert!(reason.contains("could not write received WAL"), "{reason}");
    assert!(shared.io_failure().is_some());
    assert!(matches!(
        start(2, cfg, tx, shared),
        Err(ReceiverError::Poisoned(_))
    ));
}

/// A server that completes the handshake, answers IDENTIFY_SYSTEM, enters
/// COPY on START_REPLICATION and then says nothing; returns whether the
/// client asked it for a reply (`r` with replyRequested) before leaving.
fn silent_upstream(listener: TcpListener) -> bool {
    let (mut r, mut w) = accept_scripted(listener);
    let mut pinged = false;
    loop {
        let m = match r.read_frontend() {
            Ok(m) => m,
            Err(_) => return pinged,
        };
        match m {
            FrontendMessage::Query(q) if q.starts_with("IDENTIFY_SYSTEM") => {
                send(&mut w, &identify_system_reply(1))
            }
            FrontendMessage::Query(_) => send(
                &mut w,
                &[BackendMessage::CopyBothResponse {
                    format: 0,
                    columns: vec![],
                }],
            ),
            FrontendMessage::CopyData(d) => {
                if let Ok(StandbyMessage::Status(s)) = StandbyMessage::decode(&d) {
                    pinged |= s.reply_requested;
                }
            }
            _ => return pinged,
        }
    }
}

#[test]
fn a_silent_upstream_is_pinged_then_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = std::thread::spawn(move || silent_upstream(listener));
    let tmp = tempfile::tempdir().unwrap();
    let segdir = standby_segdir(&tmp.path().join("wal"), Arc::new(StdStorage));
    let cfg = ReceiverConfig {
        timeout: Some(Duration::from_millis(600)),
        ..config(
            format!("host=127.0.0.1 port={port} user=walrep"),
            segdir,
            Lsn(SEG),
            SYSTEM_ID,
        )
    };
    let (tx, rx) = bounded(16);
    let mut h = start(1, cfg, tx, ReceiverShared::new(Default::default())).unwrap();
    expect(&rx, "StreamConnected", |e| {
        matches!(e, ReceiverEvent::StreamConnected { .. })
    });
    let ev = rx.recv_timeout(DEADLINE).unwrap();
    assert_eq!(
        ev,
        ReceiverEvent::StreamLost {
            session: 1,
            reason: "terminating walreceiver due to timeout".into()
        }
    );
    h.stop();
    drop(h);
    assert!(
        upstream.join().unwrap(),
        "no status update with replyRequested before the timeout"
    );
}

#[test]
fn a_slot_and_hot_standby_feedback_reach_the_upstream() {
    let server = FakeServer::start(ServerOptions::default());
    server.source.advance(SEG / 2);
    let info = walrep::replication::client::ConnInfo::parse(&server.conninfo("")).unwrap();
    let mut c = walrep::replication::client::ReplicationClient::connect(&info, DEADLINE).unwrap();
    c.create_physical_slot("standby_slot", false, true).unwrap();
    c.close();
    let tmp = tempfile::tempdir().unwrap();
    let segdir = standby_segdir(&tmp.path().join("wal"), Arc::new(StdStorage));
    let cfg = ReceiverConfig {
        slot_name: Some("standby_slot".into()),
        hot_standby_feedback: true,
        receive_unflushed: true,
        ..config(
            server.conninfo("application_name=s3"),
            segdir,
            Lsn(0),
            SYSTEM_ID,
        )
    };
    let shared = ReceiverShared::new(Default::default());
    shared.set_feedback_xmin(77);
    let (tx, rx) = bounded(64);
    let mut h = start(1, cfg, tx, shared).unwrap();
    expect(
        &rx,
        "WalFlushed",
        |e| matches!(e, ReceiverEvent::WalFlushed { upto, .. } if upto.0 == SEG / 2),
    );
    wait_until("the slot and the feedback in the registry", || {
        server.registry.snapshot().iter().any(|s| {
            s.application_name == "s3"
                && s.slot.as_deref() == Some("standby_slot")
                && s.feedback.is_some_and(|f| f.xmin == 77)
        })
    });
    wait_until("the slot to follow our flush position", || {
        server
            .slots
            .get("standby_slot")
            .is_some_and(|s| s.restart_lsn == Lsn(SEG / 2))
    });
    h.stop();
}

#[test]
fn sessions_reuse_a_waiting_session_and_answer_stops() {
    use walrep::standby::receiver::Sessions;
    let server = FakeServer::start(ServerOptions::default());
    let fake = &server.source;
    fake.advance(SEG + 100);
    let tmp = tempfile::tempdir().unwrap();
    let segdir = standby_segdir(&tmp.path().join("wal"), Arc::new(StdStorage));
    let conninfo = server.conninfo("application_name=s4");
    let (tx, rx) = bounded::<walrep::states::recovery::Event>(64);
    let mut sessions = Sessions::new(
        tx,
        ReceiverShared::new(Default::default()),
        Box::new(move |from, tli| ReceiverConfig {
            tli,
            ..config(conninfo.clone(), segdir.clone(), from, SYSTEM_ID)
        }),
    );
    use walrep::states::recovery::{Event, SessionId};
    let next = |what: &str, want: &dyn Fn(&Event) -> bool| -> Event {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
            if want(&ev) {
                return ev;
            }
        }
    };
    sessions.start(1, Lsn(0), TimelineId(1));
    next("connected", &|e| {
        matches!(
            e,
            Event::StreamConnected {
                session: SessionId(1),
                ..
            }
        )
    });
    let switch = fake.flush_point().lsn;
    let tli2 = fake.promote();
    next("timeline end", &|e| {
        matches!(
            e,
            Event::TimelineEnded {
                session: SessionId(1),
                ..
            }
        )
    });
    let ids: Vec<_> = server.registry.snapshot().iter().map(|s| s.id).collect();
    // At once, as the recovery machine does: the session waits before it
    // reports the end.
    assert_eq!(sessions.shared().state(), ReceiverState::Waiting);
    sessions.start(2, switch, tli2);
    next("connected on tli 2", &|e| {
        matches!(
            e,
            Event::StreamConnected {
                session: SessionId(2),
                ..
            }
        )
    });
    assert_eq!(sessions.current(), Some(2));
    let ids_after: Vec<_> = server.registry.snapshot().iter().map(|s| s.id).collect();
    assert_eq!(
        ids, ids_after,
        "the waiting session's connection was not reused"
    );
    // A stale stop is answered at once; the current one stops for real.
    sessions.stop(1);
    next("stale stop answered", &|e| {
        matches!(
            e,
            Event::WalReceiverStopped {
                session: SessionId(1),
                ..
            }
        )
    });
    let flushed = sessions.stop(2);
    let ev = next("stopped", &|e| {
        matches!(
            e,
            Event::WalReceiverStopped {
                session: SessionId(2),
                ..
            }
        )
    });
    assert_eq!(
        ev,
        Event::WalReceiverStopped {
            session: SessionId(2),
            flushed
        }
    );
    assert_eq!(sessions.current(), None);
    wait_until("the walsender to go", || {
        server.registry.snapshot().is_empty()
    });
}

#[test]
fn a_stream_publishes_its_start_point_as_flushed_before_any_fsync() {
    use walrep::replication::source::FlushPoint;
    let server = FakeServer::start(ServerOptions::default());
    let fake = &server.source;
    // The upstream's WAL ends at a segment start, where the stream starts:
    // nothing is received, nothing fsynced.
    let at = fake.flush_point().lsn;
    let end = fake.advance(SEG - at.segment_offset(seg()));
    assert_eq!(end.segment_offset(seg()), 0);
    let tmp = tempfile::tempdir().unwrap();
    let segdir = standby_segdir(&tmp.path().join("wal"), Arc::new(StdStorage));
    let shared = ReceiverShared::new(Default::default());
    assert_eq!(shared.flushed_point().tli, TimelineId(0));
    let (tx, rx) = bounded(64);
    let cfg = config(
        server.conninfo("application_name=s5"),
        segdir,
        end,
        SYSTEM_ID,
    );
    let mut h = start(1, cfg, tx, shared.clone()).unwrap();
    expect(&rx, "StreamConnected", |e| {
        matches!(e, ReceiverEvent::StreamConnected { session: 1, .. })
    });
    // What lies before the start point is durable here already: the flush
    // position is on the stream's timeline from the start (a restartpoint
    // never sees "no flush position" while redo applies streamed WAL
    // early).
    assert_eq!(
        shared.flushed_point(),
        FlushPoint {
            tli: TimelineId(1),
            lsn: end
        }
    );
    assert_eq!(h.stop(), end);
}

/// A server that answers IDENTIFY_SYSTEM, enters COPY on
/// START_REPLICATION and at once ends the timeline (CopyDone, then the
/// next-timeline result once the client's CopyDone came); returns the
/// first message the client sent after its CopyDone.
fn ending_upstream(listener: TcpListener) -> FrontendMessage {
    let (mut r, mut w) = accept_scripted(listener);
    let ready = BackendMessage::ReadyForQuery(TransactionStatus::Idle);
    let mut copy_done = false;
    loop {
        let m = r.read_frontend().unwrap();
        if copy_done {
            return m;
        }
        match m {
            FrontendMessage::Query(q) if q.starts_with("IDENTIFY_SYSTEM") => {
                send(&mut w, &identify_system_reply(2))
            }
            FrontendMessage::Query(_) => send(
                &mut w,
                &[
                    BackendMessage::CopyBothResponse {
                        format: 0,
                        columns: vec![],
                    },
                    BackendMessage::CopyDone,
                ],
            ),
            FrontendMessage::CopyDone => {
                copy_done = true;
                send(
                    &mut w,
                    &[
                        BackendMessage::RowDescription(vec![
                            FieldDescription::new("next_tli", 20),
                            FieldDescription::new("next_tli_startpos", 25),
                        ]),
                        BackendMessage::DataRow(vec![
                            Some(b"2".to_vec()),
                            Some(b"0/1000000".to_vec()),
                        ]),
                        BackendMessage::CommandComplete("SELECT 1".into()),
                        BackendMessage::CommandComplete("START_STREAMING".into()),
                        ready.clone(),
                    ],
                )
            }
            // Status updates inside the COPY are fine.
            FrontendMessage::CopyData(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn no_status_update_follows_the_copy_s_end() {
    use walrep::replication::client::{ConnInfo, ReplicationClient, StartOutcome, StreamEvent};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || ending_upstream(listener));
    let info = ConnInfo::parse(&format!("host=127.0.0.1 port={port} user=walrep")).unwrap();
    let mut c = ReplicationClient::connect(&info, DEADLINE).unwrap();
    c.identify_system().unwrap();
    let sender = c.status_sender();
    assert!(matches!(
        c.start_replication(None, Lsn(0), Some(TimelineId(1)))
            .unwrap(),
        StartOutcome::Streaming
    ));
    let ev = c.recv(DEADLINE).unwrap();
    assert!(matches!(ev, StreamEvent::EndOfTimeline { .. }), "{ev:?}");
    // Another thread's status update (the fsync thread's flush report,
    // redo's apply report) after the COPY ended: nothing is sent.
    sender
        .send_status(Lsn(100), Lsn(100), Lsn(100), true)
        .unwrap();
    sender.send_feedback(0, 0, 0, 0).unwrap();
    c.send_status(Lsn(100), Lsn(100), Lsn(100), false).unwrap();
    // The next command is the first thing the server hears.
    let _ = c.identify_system();
    let first = server.join().unwrap();
    assert!(
        matches!(&first, FrontendMessage::Query(q) if q.starts_with("IDENTIFY_SYSTEM")),
        "{first:?}"
    );
}

#[test]
fn an_asynchronous_standby_spaced_by_wal_sender_async_delay_receives_every_flush() {
    // No synchronous standby: the walsender spaces its messages, holding
    // flushes that come within the delay and sending them together.
    let spaced = SpacedStandby::start(Duration::from_millis(5), "s6");
    let (fake, shared, rx, from) = (
        &spaced.server.source,
        &spaced.shared,
        &spaced.rx,
        spaced.from,
    );
    let mut h = spaced.handle;
    let mut end = from;
    for _ in 0..50 {
        end = fake.advance(100);
    }
    expect(
        rx,
        "WalFlushed at the last flush",
        |e| matches!(e, ReceiverEvent::WalFlushed { upto, .. } if *upto == end),
    );
    wait_until("the flush position to reach the end", || {
        shared.flushed_point().lsn == end
    });
    assert_eq!(h.stop(), end);
}

#[test]
fn an_asynchronous_standby_is_sent_a_large_flush_at_once_whatever_the_delay() {
    // The delay holds only small flushes (a one-client commit stream); a
    // flush of half a page or more goes at once. With the delay an hour,
    // a held one would not arrive before the wait below gives up.
    let spaced = SpacedStandby::start(Duration::from_secs(3600), "s7");
    let (fake, shared, rx) = (&spaced.server.source, &spaced.shared, &spaced.rx);
    let mut h = spaced.handle;
    // The first small flush after none sent goes at once; it starts the
    // delay.
    let small = fake.advance(100);
    expect(
        rx,
        "WalFlushed at the small flush",
        |e| matches!(e, ReceiverEvent::WalFlushed { upto, .. } if *upto == small),
    );
    // Within the delay, a large one: not held.
    // A page (XLOG_BLCKSZ): past the hold's bound of half a page.
    let large = fake.advance(8192);
    expect(
        rx,
        "WalFlushed at the large flush",
        |e| matches!(e, ReceiverEvent::WalFlushed { upto, .. } if *upto == large),
    );
    wait_until("the flush position to reach the large flush", || {
        shared.flushed_point().lsn == large
    });
    assert_eq!(h.stop(), large);
}

/// A walreceiver connected to a fake upstream that has no synchronous
/// standby and spaces its messages by `wal_sender_async_delay = delay`.
struct SpacedStandby {
    server: FakeServer,
    shared: Arc<ReceiverShared>,
    rx: Receiver<ReceiverEvent>,
    handle: ReceiverHandle,
    /// Where the stream started (the upstream's flush point then).
    from: Lsn,
    _dir: tempfile::TempDir,
}

impl SpacedStandby {
    fn start(delay: Duration, name: &str) -> SpacedStandby {
        let server = FakeServer::start(ServerOptions {
            wal_sender_async_delay: delay,
            ..ServerOptions::default()
        });
        let from = server.source.flush_point().lsn;
        let dir = tempfile::tempdir().unwrap();
        let segdir = standby_segdir(&dir.path().join("wal"), Arc::new(StdStorage));
        let shared = ReceiverShared::new(Default::default());
        let (tx, rx) = bounded(64);
        let conninfo = server.conninfo(&format!("application_name={name}"));
        let cfg = config(conninfo, segdir, from, SYSTEM_ID);
        let handle = start(1, cfg, tx, shared.clone()).unwrap();
        expect(&rx, "StreamConnected", |e| {
            matches!(e, ReceiverEvent::StreamConnected { session: 1, .. })
        });
        SpacedStandby {
            server,
            shared,
            rx,
            handle,
            from,
            _dir: dir,
        }
    }
}

/// A scripted upstream's answer to IDENTIFY_SYSTEM on `timeline`, ending
/// with ReadyForQuery.
fn identify_system_reply(timeline: u32) -> Vec<BackendMessage> {
    vec![
        BackendMessage::RowDescription(vec![
            FieldDescription::new("systemid", 25),
            FieldDescription::new("timeline", 23),
            FieldDescription::new("xlogpos", 25),
        ]),
        BackendMessage::DataRow(vec![
            Some(SYSTEM_ID.to_string().into_bytes()),
            Some(timeline.to_string().into_bytes()),
            Some(b"0/1000000".to_vec()),
        ]),
        BackendMessage::CommandComplete("IDENTIFY_SYSTEM".into()),
        BackendMessage::ReadyForQuery(TransactionStatus::Idle),
    ]
}

/// Accept one client as a scripted upstream: refuse TLS (libpq's
/// sslmode=prefer asks first), accept the startup without a password and
/// say ReadyForQuery; the reader and the writer of the connection.
fn accept_scripted(listener: TcpListener) -> (MessageReader<TcpStream>, TcpStream) {
    let (sock, _) = listener.accept().unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut w = sock.try_clone().unwrap();
    let mut r = MessageReader::new(sock, 1 << 20);
    while let walrep::replication::pgwire::StartupPacket::SslRequest = r.read_startup().unwrap() {
        std::io::Write::write_all(&mut w, b"N").unwrap();
    }
    send(
        &mut w,
        &[
            BackendMessage::Authentication(walrep::replication::pgwire::Authentication::Ok),
            BackendMessage::ReadyForQuery(TransactionStatus::Idle),
        ],
    );
    (r, w)
}

/// Write `msgs` to a scripted upstream's client.
fn send(w: &mut TcpStream, msgs: &[BackendMessage]) {
    let mut out = Vec::new();
    for m in msgs {
        m.encode(&mut out);
    }
    std::io::Write::write_all(w, &out).unwrap();
}
