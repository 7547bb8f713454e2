//! walrep's WAL_RANGE: exactly the bytes `[begin, end)` of one timeline,
//! compared with the segment files of a real node and of the in-memory
//! source; the documented errors for a removed segment, a timeline switch,
//! a range ahead of the flush position or backwards; random and oversized
//! arguments never panic the server nor break the connection.

mod support;

use std::time::Duration;

use proptest::prelude::*;
use support::cluster::write_keys;
use support::fake::FakeServer;
use support::node::{init_datadir, TestNode};
use support::wal::{seg, segment_name};
use walrep::replication::client::{ConnInfo, ReplicationClient};
use walrep::replication::server::ServerOptions;
use walrep::{Lsn, SegNo, TimelineId};

fn connect(port: u16) -> ReplicationClient {
    let info = ConnInfo {
        host: "127.0.0.1".into(),
        port,
        user: "walrep".into(),
        ..ConnInfo::default()
    };
    ReplicationClient::connect(&info, Duration::from_secs(10)).unwrap()
}

fn range(
    c: &mut ReplicationClient,
    begin: Lsn,
    end: Lsn,
    tli: Option<TimelineId>,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    c.wal_range(begin, end, tli, &mut |b| {
        out.extend_from_slice(b);
        Ok(())
    })
    .map(|n| {
        assert_eq!(n, out.len() as u64);
        out
    })
    .map_err(|e| e.to_string())
}

/// The bytes `[begin, end)` of timeline `tli` from the fake's segments.
fn fake_bytes(server: &FakeServer, tli: TimelineId, begin: Lsn, end: Lsn) -> Vec<u8> {
    let s = seg();
    let mut out = Vec::new();
    for segno in begin.segno(s).0..=Lsn(end.0 - 1).segno(s).0 {
        let bytes = server.source.segment_bytes(tli, SegNo(segno));
        let base = SegNo(segno).start_lsn(s).0;
        let from = begin.0.max(base) - base;
        let to = end.0.min(base + s.bytes()) - base;
        out.extend_from_slice(&bytes[from as usize..to as usize]);
    }
    out
}

#[test]
fn a_range_is_exactly_the_bytes_of_a_real_nodes_segment_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", "1MB"]);
    let node = TestNode::start(&dir, &[]);
    write_keys(&node, "k", 3000, 1000);
    let flush: Lsn = node
        .info_field("persistence", "wal_flush_lsn")
        .unwrap()
        .parse()
        .unwrap();
    let s = seg();
    assert!(flush.segno(s).0 >= 3, "not enough WAL: {flush}");
    let begin = Lsn(SegNo(1).start_lsn(s).0 + 100);
    let end = Lsn(SegNo(3).start_lsn(s).0 + 777);
    let mut c = connect(node.replication_port);
    let got = range(&mut c, begin, end, None).unwrap();
    let mut want = Vec::new();
    for segno in 1..=3u64 {
        let file = std::fs::read(dir.join("wal").join(segment_name(segno))).unwrap();
        let base = SegNo(segno).start_lsn(s).0;
        let from = begin.0.max(base) - base;
        let to = end.0.min(base + s.bytes()) - base;
        want.extend_from_slice(&file[from as usize..to as usize]);
    }
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the range differs from the segment files");
    // The connection goes on: an empty range, then the flush position.
    assert_eq!(range(&mut c, end, end, None).unwrap(), Vec::<u8>::new());
    let e = range(&mut c, end, Lsn(flush.0 + (64 << 20)), None).unwrap_err();
    assert!(e.contains("is ahead of the WAL flush position"), "{e}");
}

#[test]
fn removed_wal_timeline_switches_and_bad_ranges_get_the_documented_errors() {
    let server = FakeServer::start(ServerOptions::default());
    let s = seg();
    server.source.advance(4 * s.bytes() + 300);
    let mut c = connect(server.port);
    let t1 = TimelineId(1);
    let (b, e) = (Lsn(s.bytes() + 10), Lsn(3 * s.bytes() + 20));
    assert_eq!(
        range(&mut c, b, e, Some(t1)).unwrap(),
        fake_bytes(&server, t1, b, e)
    );
    // Backwards, oversized, unknown timeline.
    let err = range(&mut c, e, b, None).unwrap_err();
    assert!(err.contains("is before its begin"), "{err}");
    let err = range(&mut c, Lsn(0), Lsn(u64::MAX), None).unwrap_err();
    assert!(err.contains("ask for it in parts"), "{err}");
    let err = range(&mut c, b, e, Some(TimelineId(9))).unwrap_err();
    assert!(
        err.contains("timeline 9 is not in this server's history"),
        "{err}"
    );
    // A timeline switch: the old timeline ends at the switch point.
    let switch = server.source.advance(0);
    let t2 = server.source.promote();
    let after = server.source.advance(2 * s.bytes());
    let err = range(&mut c, b, Lsn(switch.0 + 1), Some(t1)).unwrap_err();
    assert!(err.contains("crosses the end of timeline 1"), "{err}");
    let err = range(&mut c, Lsn(switch.0 - 1), after, Some(t2)).unwrap_err();
    assert!(err.contains("crosses the start of timeline 2"), "{err}");
    assert_eq!(
        range(&mut c, switch, after, None).unwrap(),
        fake_bytes(&server, t2, switch, after)
    );
    assert_eq!(
        range(&mut c, b, switch, Some(t1)).unwrap(),
        fake_bytes(&server, t1, b, switch)
    );
    // Removed WAL: the error names the oldest position still there.
    server.source.remove_before(Lsn(2 * s.bytes()));
    let err = range(&mut c, b, e, Some(t1)).unwrap_err();
    assert!(err.contains("has already been removed"), "{err}");
    assert!(
        err.contains("The oldest WAL this server still has starts at 0/200000"),
        "{err}"
    );
    c.close();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_ranges_never_panic_and_answer_exactly_or_with_an_error(
        pairs in proptest::collection::vec(
            (prop_oneof![0u64..(6 << 20), any::<u64>()],
             prop_oneof![0u64..(6 << 20), any::<u64>()],
             proptest::option::of(0u32..4)),
            1..6,
        )
    ) {
        let server = FakeServer::start(ServerOptions::default());
        let flush = server.source.advance(5 << 20);
        let mut c = connect(server.port);
        for (b, e, t) in pairs {
            let tli = t.filter(|t| *t > 0).map(TimelineId);
            match range(&mut c, Lsn(b), Lsn(e), tli) {
                Ok(bytes) => {
                    prop_assert!(b <= e && e <= flush.0);
                    prop_assert_eq!(bytes.len() as u64, e - b);
                }
                Err(msg) => prop_assert!(msg.contains("SQLSTATE"), "{}", msg),
            }
        }
        // The connection still answers.
        prop_assert!(c.identify_system().is_ok());
        c.close();
    }
}
