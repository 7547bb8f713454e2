//! Our replication client against our replication server over the
//! in-memory source: commands, streaming, timelines, slots, errors,
//! authentication, limits, garbage input and shutdown.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::fake::{scram_options, FakeServer};
use support::wal::{seg, SYSTEM_ID};
use support::{wait_until, DEADLINE};
use walrep::replication::client::{
    ConnInfo, ReplicationClient, SlotPosition, StartOutcome, StreamEvent,
};
use walrep::replication::registry::{
    ReplicationObserver, WalSenderChange, WalSenderState, WalSenderStatus,
};
use walrep::replication::server::ServerOptions;
use walrep::{Lsn, SegNo, TimelineId};

fn connect(s: &FakeServer, extra: &str) -> ReplicationClient {
    let info = ConnInfo::parse(&s.conninfo(extra)).unwrap();
    ReplicationClient::connect(&info, DEADLINE).unwrap()
}

/// Receive until `until` is reached, checking order; returns the bytes.
fn receive(c: &mut ReplicationClient, from: Lsn, until: Lsn) -> Vec<u8> {
    let mut out = Vec::new();
    let mut next = from;
    while next < until {
        match c.recv(DEADLINE).unwrap() {
            StreamEvent::XLogData {
                start,
                data,
                wal_end,
                ..
            } => {
                assert_eq!(start, next, "gap or overlap in the stream");
                assert!(data.len() <= 128 * 1024, "message larger than 128 kB");
                assert!(
                    Lsn(start.0 + data.len() as u64) <= wal_end,
                    "sent beyond the flush point"
                );
                next = Lsn(next.0 + data.len() as u64);
                out.extend_from_slice(&data);
            }
            StreamEvent::Keepalive { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(next, until, "received past the flush point");
    out
}

fn expected(s: &FakeServer, tli: TimelineId, from: Lsn, until: Lsn) -> Vec<u8> {
    let mut out = Vec::new();
    let seg = seg();
    let mut segno = from.segno(seg);
    while segno.start_lsn(seg) < until {
        out.extend(s.source.segment_bytes(tli, segno));
        segno = segno.next();
    }
    let base = from.segment_start(seg).0;
    out[(from.0 - base) as usize..(until.0 - base) as usize].to_vec()
}

#[test]
fn commands_answer_like_postgres() {
    let s = FakeServer::start(ServerOptions::default());
    s.source.advance(0x1234);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
    let mut c = connect(&s, "application_name=t1");
    assert!(c.parameter("server_version").unwrap().starts_with("15."));
    assert_eq!(c.parameter("integer_datetimes"), Some("on"));
    let id = c.identify_system().unwrap();
    assert_eq!(
        (id.system_id, id.timeline, id.xlogpos, id.dbname),
        (SYSTEM_ID, TimelineId(1), Lsn(0x1234), None)
    );
    assert_eq!(c.show("wal_segment_size").unwrap(), "1MB");
    assert_eq!(c.show("data_directory_mode").unwrap(), "0750");
    let e = c.show("work_mem").unwrap_err();
    assert_eq!(e.sqlstate(), Some("42704"));
    let e = c.simple_query("SELECT 1").unwrap_err();
    assert_eq!(e.sqlstate(), Some("0A000"));
    let e = c.simple_query("IDENTIFY_SYSTEM garbage").unwrap_err();
    assert_eq!(e.sqlstate(), Some("42601"));
    let e = c.timeline_history(TimelineId(1)).unwrap_err();
    assert_eq!(e.sqlstate(), Some("58P01"));
    let e = c.simple_query("BASE_BACKUP (LABEL 'x')").unwrap_err();
    assert_eq!(e.sqlstate(), Some("0A000"));
    // After all those errors the connection still works.
    assert_eq!(c.identify_system().unwrap().system_id, SYSTEM_ID);
    s.source.promote();
    let (name, content) = c.timeline_history(TimelineId(2)).unwrap();
    assert_eq!(name, "00000002.history");
    assert_eq!(
        String::from_utf8(content).unwrap(),
        "1\t0/1234\tno recovery target specified\n"
    );
    let r = c.simple_query("IDENTIFY_SYSTEM").unwrap();
    assert_eq!(r.tags, vec!["IDENTIFY_SYSTEM"]);
    assert_eq!(
        r.columns.iter().map(|f| f.type_oid).collect::<Vec<_>>(),
        vec![25, 23, 25, 25]
    );
}

#[test]
fn streams_flushed_wal_and_new_wal_as_it_is_flushed() {
    let s = FakeServer::start(ServerOptions::default());
    s.source.advance(300_000);
    let mut c = connect(&s, "");
    assert_eq!(
        c.start_replication(None, Lsn(0), None).unwrap(),
        StartOutcome::Streaming
    );
    let got = receive(&mut c, Lsn(0), Lsn(300_000));
    assert_eq!(got, expected(&s, TimelineId(1), Lsn(0), Lsn(300_000)));
    // New WAL arrives without polling; across a segment boundary.
    let end = s.source.advance(2 << 20);
    let got = receive(&mut c, Lsn(300_000), end);
    assert_eq!(got, expected(&s, TimelineId(1), Lsn(300_000), end));
    c.stop_streaming().unwrap();
    assert_eq!(c.identify_system().unwrap().xlogpos, end);
}

#[test]
fn historic_timeline_ends_with_the_next_timeline() {
    let s = FakeServer::start(ServerOptions::default());
    let switch = s.source.advance((1 << 20) + 5000);
    s.source.promote();
    let end2 = s.source.advance(10_000);
    let mut c = connect(&s, "");
    assert_eq!(
        c.start_replication(None, Lsn(1 << 20), Some(TimelineId(1)))
            .unwrap(),
        StartOutcome::Streaming
    );
    let got = receive(&mut c, Lsn(1 << 20), switch);
    // The switch segment comes from timeline 2's file, equal up to the switch.
    assert_eq!(got, expected(&s, TimelineId(2), Lsn(1 << 20), switch));
    match c.recv(DEADLINE).unwrap() {
        StreamEvent::EndOfTimeline {
            next_tli,
            next_start,
        } => {
            assert_eq!((next_tli, next_start), (TimelineId(2), switch));
        }
        other => panic!("expected the end of timeline 1, got {other:?}"),
    }
    // Same connection: follow timeline 2 from the segment start.
    assert_eq!(
        c.start_replication(None, Lsn(1 << 20), Some(TimelineId(2)))
            .unwrap(),
        StartOutcome::Streaming
    );
    let got = receive(&mut c, Lsn(1 << 20), end2);
    assert_eq!(got, expected(&s, TimelineId(2), Lsn(1 << 20), end2));
    c.stop_streaming().unwrap();
    // Starting at the switch point: no COPY at all, just the answer.
    assert_eq!(
        c.start_replication(None, switch, Some(TimelineId(1)))
            .unwrap(),
        StartOutcome::TimelineEnded {
            next_tli: TimelineId(2),
            next_start: switch
        }
    );
    let e = c
        .start_replication(None, Lsn(switch.0 + 8), Some(TimelineId(1)))
        .unwrap_err();
    assert!(
        e.to_string().contains("is not in this server's history"),
        "{e}"
    );
    let e = c
        .start_replication(None, Lsn(0), Some(TimelineId(7)))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("requested timeline 7 is not in this server's history"),
        "{e}"
    );
}

#[test]
fn promotion_while_streaming_ends_the_timeline() {
    let s = FakeServer::start(ServerOptions::default());
    s.source.advance(4096);
    let mut c = connect(&s, "");
    c.start_replication(None, Lsn(0), None).unwrap();
    receive(&mut c, Lsn(0), Lsn(4096));
    s.source.promote();
    match c.recv(DEADLINE).unwrap() {
        StreamEvent::EndOfTimeline {
            next_tli,
            next_start,
        } => assert_eq!((next_tli, next_start), (TimelineId(2), Lsn(4096))),
        other => panic!("expected end of timeline, got {other:?}"),
    }
}

/// PostgreSQL reports these errors after CopyBothResponse.
fn start_err(c: &mut ReplicationClient, at: Lsn) -> walrep::replication::client::ClientError {
    assert_eq!(
        c.start_replication(None, at, None).unwrap(),
        StartOutcome::Streaming
    );
    c.recv(DEADLINE).unwrap_err()
}

#[test]
fn bad_start_positions_get_postgres_errors() {
    let s = FakeServer::start(ServerOptions::default());
    s.source.advance(3 << 20);
    s.source.remove_before(Lsn(2 << 20));
    let mut c = connect(&s, "");
    let e = start_err(&mut c, Lsn(1 << 20));
    assert_eq!(e.sqlstate(), Some("58P01"));
    assert!(
        e.to_string()
            .contains("requested WAL segment 000000010000000000000001 has already been removed"),
        "{e}"
    );
    let e = start_err(&mut c, Lsn(4 << 20));
    assert!(
        e.to_string()
            .contains("is ahead of the WAL flush position of this server 0/300000"),
        "{e}"
    );
    let e = c
        .start_replication(Some("nope"), Lsn(2 << 20), None)
        .unwrap_err();
    assert_eq!(e.sqlstate(), Some("42704"));
    assert_eq!(c.identify_system().unwrap().xlogpos, Lsn(3 << 20));
}

#[test]
fn slots_hold_position_and_commands_work() {
    let s = FakeServer::start(ServerOptions::default());
    s.source.advance(1 << 20);
    let mut c = connect(&s, "application_name=s1");
    c.create_physical_slot("s1", false, false).unwrap();
    assert_eq!(
        c.read_replication_slot("s1").unwrap(),
        Some(SlotPosition {
            restart_lsn: None,
            restart_tli: None
        })
    );
    assert_eq!(c.read_replication_slot("missing").unwrap(), None);
    let e = c.create_physical_slot("s1", false, false).unwrap_err();
    assert_eq!(e.sqlstate(), Some("42710"));
    let e = c
        .create_physical_slot("Bad-Name", false, false)
        .unwrap_err();
    assert_eq!(e.sqlstate(), Some("42602"));
    c.start_replication(Some("s1"), Lsn(0), None).unwrap();
    receive(&mut c, Lsn(0), Lsn(1 << 20));
    c.send_status(Lsn(1 << 20), Lsn(0x80000), Lsn(0), false)
        .unwrap();
    wait_until("slot restart_lsn to follow the flush", || {
        s.slots.get("s1").unwrap().restart_lsn == Lsn(0x80000)
    });
    // Another connection cannot use or drop the active slot.
    let mut other = connect(&s, "");
    assert_eq!(
        other
            .start_replication(Some("s1"), Lsn(0), None)
            .unwrap_err()
            .sqlstate(),
        Some("55006")
    );
    assert_eq!(
        other.drop_slot("s1", false).unwrap_err().sqlstate(),
        Some("55006")
    );
    c.stop_streaming().unwrap();
    assert_eq!(
        other.read_replication_slot("s1").unwrap(),
        Some(SlotPosition {
            restart_lsn: Some(Lsn(0x80000)),
            restart_tli: Some(TimelineId(1))
        })
    );
    other.drop_slot("s1", true).unwrap();
    assert!(s.slots.get("s1").is_none());
    // A temporary slot disappears with its connection.
    s.source.set_redo(Lsn(0x1000));
    c.create_physical_slot("tmp", true, true).unwrap();
    assert_eq!(
        s.slots.get("tmp").unwrap().restart_lsn,
        Lsn(0x1000),
        "RESERVE_WAL holds from the redo point"
    );
    c.close();
    wait_until("temporary slot dropped at disconnect", || {
        s.slots.get("tmp").is_none()
    });
}

/// Records every reply the observer sees.
struct Seen(Mutex<Vec<(WalSenderChange, String, Lsn, WalSenderState)>>);
impl ReplicationObserver for Seen {
    fn walsender_changed(&self, change: WalSenderChange, st: &WalSenderStatus) {
        self.0
            .lock()
            .unwrap()
            .push((change, st.application_name.clone(), st.flush_lsn, st.state));
    }
}

#[test]
fn replies_reach_registry_and_observer_and_keepalives_ask_for_them() {
    let o = ServerOptions {
        wal_sender_timeout: Some(Duration::from_millis(600)),
        ..ServerOptions::default()
    };
    let s = FakeServer::start(o);
    let seen = Arc::new(Seen(Mutex::new(Vec::new())));
    s.registry.set_observer(seen.clone());
    s.source.advance(100);
    let mut c = connect(&s, "application_name=sync1");
    c.start_replication(None, Lsn(0), None).unwrap();
    receive(&mut c, Lsn(0), Lsn(100));
    // Silence: a keepalive asks for a reply at wal_sender_timeout/2.
    let asked = loop {
        match c.recv(DEADLINE).unwrap() {
            StreamEvent::Keepalive {
                reply_requested: true,
                wal_end,
                ..
            } => break wal_end,
            StreamEvent::Keepalive { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(asked, Lsn(100));
    c.send_status(Lsn(100), Lsn(100), Lsn(50), false).unwrap();
    // The socket's reader records the positions at once; the walsender
    // thread records the lags when it gets to the reply.
    wait_until("reply and its lags in registry", || {
        s.registry
            .snapshot()
            .first()
            .is_some_and(|w| w.flush_lsn == Lsn(100) && w.flush_lag.is_some())
    });
    let w = s.registry.snapshot().remove(0);
    assert_eq!(
        (
            w.application_name.as_str(),
            w.state,
            w.sent_lsn,
            w.apply_lsn
        ),
        ("sync1", WalSenderState::Streaming, Lsn(100), Lsn(50))
    );
    assert!(w.flush_lag.is_some());
    assert!(seen
        .0
        .lock()
        .unwrap()
        .iter()
        .any(|(ch, app, flush, _)| *ch == WalSenderChange::Reply
            && app == "sync1"
            && *flush == Lsn(100)));
    c.status_sender().send_feedback(1234, 0, 1200, 0).unwrap();
    wait_until("feedback in registry", || {
        s.registry
            .snapshot()
            .first()
            .and_then(|w| w.feedback)
            .is_some_and(|h| h.xmin == 1234 && h.catalog_xmin == 1200)
    });
    // A reply asking for a reply gets a keepalive at once.
    c.send_status(Lsn(100), Lsn(100), Lsn(100), true).unwrap();
    assert!(matches!(
        c.recv(DEADLINE).unwrap(),
        StreamEvent::Keepalive {
            reply_requested: false,
            ..
        }
    ));
    // Silence past wal_sender_timeout: the server hangs up.
    let end = loop {
        match c.recv(DEADLINE) {
            Ok(StreamEvent::Keepalive { .. }) => {}
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => break e,
        }
    };
    assert!(!end.to_string().is_empty());
    wait_until("walsender gone from the registry", || s.registry.is_empty());
}

#[test]
fn max_wal_senders_is_enforced_with_53300() {
    let o = ServerOptions {
        max_wal_senders: 1,
        max_startup_connections: 8,
        ..ServerOptions::default()
    };
    let s = FakeServer::start(o);
    let first = connect(&s, "");
    let info = ConnInfo::parse(&s.conninfo("")).unwrap();
    let e = ReplicationClient::connect(&info, DEADLINE).err().unwrap();
    assert_eq!(e.sqlstate(), Some("53300"));
    assert!(
        e.to_string().contains(
            "number of requested standby connections exceeds max_wal_senders (currently 1)"
        ),
        "{e}"
    );
    first.close();
    wait_until("slot freed", || s.registry.is_empty());
    connect(&s, "").close();
    // Connections that never finish startup are bounded too, apart from
    // the walsenders: past max_startup_connections the oldest are closed
    // (so idle sockets cannot keep a standby out), the newest are kept.
    let mut idle: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(("127.0.0.1", s.port)).unwrap())
        .collect();
    for t in &mut idle[..2] {
        t.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut b = [0u8; 1];
        assert!(
            matches!(t.read(&mut b), Ok(0) | Err(_)),
            "an old idle socket stays open"
        );
    }
    for t in &mut idle[2..] {
        t.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut b = [0u8; 1];
        let r = t.read(&mut b);
        assert!(
            matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
            "a recent socket was closed: {r:?}"
        );
    }
    // And a real client still gets in.
    connect(&s, "").close();
}

#[test]
fn scram_authentication_and_hba() {
    let s = FakeServer::start(scram_options());
    let ok = ConnInfo::parse(&s.conninfo("password='sekrit pw'")).unwrap();
    let mut c = ReplicationClient::connect(&ok, DEADLINE).unwrap();
    assert_eq!(c.identify_system().unwrap().system_id, SYSTEM_ID);
    let bad = ConnInfo::parse(&s.conninfo("password=wrong")).unwrap();
    let e = ReplicationClient::connect(&bad, DEADLINE).err().unwrap();
    assert_eq!(e.sqlstate(), Some("28P01"));
    assert!(
        e.to_string()
            .contains("password authentication failed for user \"walrep\""),
        "{e}"
    );
    let other_user = ConnInfo::parse(&format!(
        "host=127.0.0.1 port={} user=mallory password=x",
        s.port
    ))
    .unwrap();
    let e = ReplicationClient::connect(&other_user, DEADLINE)
        .err()
        .unwrap();
    assert_eq!(e.sqlstate(), Some("28000"));
    assert!(e.to_string().contains("no pg_hba.conf entry for replication connection from host \"127.0.0.1\", user \"mallory\""), "{e}");
    let rejected = ConnInfo::parse(&format!(
        "host=127.0.0.1 port={} user=rejected password=x",
        s.port
    ))
    .unwrap();
    let e = ReplicationClient::connect(&rejected, DEADLINE)
        .err()
        .unwrap();
    assert_eq!(e.sqlstate(), Some("28000"));
    assert!(
        e.to_string().contains(
            "pg_hba.conf rejects replication connection for host \"127.0.0.1\", user \"rejected\""
        ),
        "{e}"
    );
    // An address range that does not hold the client: no entry.
    let o = ServerOptions {
        hba: vec![walrep::config::HbaEntry {
            connection: walrep::config::HbaConnection::Host,
            address: "10.0.0.0/8".into(),
            method: walrep::config::HbaMethod::Trust,
            user: "all".into(),
            clientcert: false,
        }],
        ..ServerOptions::default()
    };
    let far = FakeServer::start(o);
    let e = ReplicationClient::connect(&ConnInfo::parse(&far.conninfo("")).unwrap(), DEADLINE)
        .err()
        .unwrap();
    assert_eq!(e.sqlstate(), Some("28000"));
}

#[test]
fn garbage_gets_an_error_or_close_and_others_are_still_served() {
    let s = FakeServer::start(ServerOptions::default());
    s.source.advance(200_000);
    let mut good = connect(&s, "");
    good.start_replication(None, Lsn(0), None).unwrap();
    let inputs: Vec<Vec<u8>> = vec![
        vec![0xFF; 64],
        vec![0, 0, 0, 8, 0, 0, 0, 0],
        vec![0x7F, 0xFF, 0xFF, 0xFF],
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    ];
    for bytes in inputs {
        let mut t = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        t.set_read_timeout(Some(DEADLINE)).unwrap();
        t.write_all(&bytes).unwrap();
        let mut buf = Vec::new();
        let _ = t.read_to_end(&mut buf); // closed (maybe after a FATAL)
        assert!(
            buf.is_empty() || buf[0] == b'E',
            "unexpected answer {buf:?}"
        );
    }
    // A session that sends an oversized message after startup is closed.
    let mut t = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    t.set_read_timeout(Some(DEADLINE)).unwrap();
    t.write_all(
        &walrep::replication::pgwire::StartupPacket::startup(vec![
            ("user".into(), "x".into()),
            ("replication".into(), "true".into()),
        ])
        .encode(),
    )
    .unwrap();
    t.write_all(&[b'Q', 0x7F, 0, 0, 0]).unwrap();
    let mut buf = Vec::new();
    let _ = t.read_to_end(&mut buf);
    assert!(buf.ends_with(&[]) && !buf.is_empty());
    let got = receive(&mut good, Lsn(0), Lsn(200_000));
    assert_eq!(got.len(), 200_000);
    wait_until("garbage sessions gone", || s.registry.len() == 1);
}

#[test]
fn shutdown_sends_the_rest_then_copy_0() {
    let mut s = FakeServer::start(ServerOptions::default());
    s.source.advance(50_000);
    let mut c = connect(&s, "");
    c.start_replication(None, Lsn(0), None).unwrap();
    let sender = c.status_sender();
    let stopper = std::thread::spawn(move || s.stop());
    let mut next = Lsn(0);
    loop {
        match c.recv(DEADLINE).unwrap() {
            StreamEvent::XLogData { start, data, .. } => next = Lsn(start.0 + data.len() as u64),
            StreamEvent::Keepalive {
                reply_requested: true,
                ..
            } => sender.send_status(next, Lsn(0), Lsn(0), false).unwrap(),
            StreamEvent::Keepalive { .. } => {}
            StreamEvent::ServerShutdown => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(next, Lsn(50_000));
    stopper.join().unwrap();
}

#[test]
fn a_stalled_client_does_not_hold_up_another() {
    let s = FakeServer::start(ServerOptions::default());
    s.source.advance(8 << 20);
    let mut stalled = connect(&s, "");
    stalled.start_replication(None, Lsn(0), None).unwrap();
    // `stalled` never reads; its socket buffers fill and its walsender blocks.
    let mut fast = connect(&s, "");
    fast.start_replication(None, Lsn(0), None).unwrap();
    let got = receive(&mut fast, Lsn(0), Lsn(8 << 20));
    assert_eq!(
        got[..4096],
        s.source.segment_bytes(TimelineId(1), SegNo(0))[..4096]
    );
    let _ = stalled.recv(Duration::from_millis(1));
}

#[test]
fn a_large_stream_arrives_whole_in_full_messages() {
    let s = FakeServer::start(ServerOptions::default());
    let end = s.source.advance(4 << 20);
    let mut c = connect(&s, "");
    assert_eq!(
        c.start_replication(None, Lsn(0), None).unwrap(),
        StartOutcome::Streaming
    );
    let mut messages = 0;
    let mut next = Lsn(0);
    while next < end {
        if let StreamEvent::XLogData { start, data, .. } = c.recv(DEADLINE).unwrap() {
            assert_eq!(start, next, "gap or overlap in the stream");
            next = Lsn(next.0 + data.len() as u64);
            messages += 1;
        }
    }
    assert_eq!(next, end);
    // Already-flushed WAL goes out in full 128 kB messages.
    assert_eq!(messages, (4 << 20) / (128 * 1024));
}
