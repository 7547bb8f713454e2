//! Property tests of the protocol decoders: random, truncated and oversized
//! input never panics and never allocates beyond the bound; it is an error
//! (or a need for more bytes), and every valid message round-trips.

use std::io::Cursor;

use proptest::prelude::*;
use walrep::replication::client::ConnInfo;
use walrep::replication::command;
use walrep::replication::pgwire::io::WireError;
use walrep::replication::pgwire::*;
use walrep::security::scram::{ScramClient, ScramServer};
use walrep::Lsn;

const MAX: usize = 4096;

fn backend_message() -> impl Strategy<Value = BackendMessage> {
    let s = "[a-zA-Z0-9 _]{0,20}";
    prop_oneof![
        Just(BackendMessage::Authentication(Authentication::Ok)),
        prop::collection::vec(any::<u8>(), 0..64)
            .prop_map(|d| BackendMessage::Authentication(Authentication::SaslContinue(d))),
        (s, s).prop_map(|(name, value)| BackendMessage::ParameterStatus { name, value }),
        (any::<i32>(), any::<i32>())
            .prop_map(|(pid, key)| BackendMessage::BackendKeyData { pid, key }),
        Just(BackendMessage::ReadyForQuery(TransactionStatus::Idle)),
        prop::collection::vec((s, any::<i32>()), 0..5).prop_map(|cols| {
            BackendMessage::RowDescription(
                cols.iter()
                    .map(|(n, t)| FieldDescription::new(n, *t))
                    .collect(),
            )
        }),
        prop::collection::vec(
            prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
            0..5
        )
        .prop_map(BackendMessage::DataRow),
        s.prop_map(|t| BackendMessage::CommandComplete(t.to_string())),
        (s, s).prop_map(|(m, d)| BackendMessage::ErrorResponse(ErrorFields {
            severity: "ERROR".into(),
            code: "42601".into(),
            message: m.to_string(),
            detail: Some(d.to_string()),
            hint: None,
            other: vec![],
        })),
        Just(BackendMessage::CopyBothResponse {
            format: 0,
            columns: vec![]
        }),
        prop::collection::vec(any::<u8>(), 0..256).prop_map(BackendMessage::CopyData),
        Just(BackendMessage::CopyDone),
    ]
}

fn frontend_message() -> impl Strategy<Value = FrontendMessage> {
    prop_oneof![
        "[ -~]{0,40}".prop_map(FrontendMessage::Query),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(FrontendMessage::AuthResponse),
        prop::collection::vec(any::<u8>(), 0..256).prop_map(FrontendMessage::CopyData),
        Just(FrontendMessage::CopyDone),
        Just(FrontendMessage::Terminate),
        Just(FrontendMessage::Sync),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = split_typed(&bytes, MAX);
        let _ = split_startup(&bytes, MAX);
        if let Some(tag) = bytes.first() {
            let _ = BackendMessage::decode(*tag, &bytes[1..]);
            let _ = FrontendMessage::decode(*tag, &bytes[1..]);
        }
        let _ = StartupPacket::decode(&bytes);
        let _ = ReplicationMessage::decode(&bytes);
        let _ = StandbyMessage::decode(&bytes);
        let _ = SaslInitialResponse::parse(&bytes);
        let mut r = MessageReader::new(Cursor::new(bytes.clone()), MAX);
        for _ in 0..64 {
            if r.read_backend().is_err() { break; }
        }
        let mut r = MessageReader::new(Cursor::new(bytes.clone()), MAX);
        let _ = r.read_startup();
        let text = String::from_utf8_lossy(&bytes);
        let _ = command::parse(&text);
        let _ = ConnInfo::parse(&text);
        let _ = ScramServer::with_password("pw").client_first(&bytes);
        let _ = ScramClient::new("pw").server_first(&bytes);
    }

    #[test]
    fn valid_messages_round_trip_and_truncations_are_errors(msgs in prop::collection::vec(backend_message(), 1..6), cut in any::<prop::sample::Index>()) {
        let mut wire = Vec::new();
        for m in &msgs { m.encode(&mut wire); }
        let mut r = MessageReader::new(Cursor::new(wire.clone()), MAX);
        for m in &msgs {
            prop_assert_eq!(&r.read_backend().unwrap(), m);
        }
        prop_assert!(matches!(r.read_backend(), Err(WireError::Closed)));
        // Any proper prefix ends in an error, never a wrong message.
        let n = cut.index(wire.len());
        let mut r = MessageReader::new(Cursor::new(wire[..n].to_vec()), MAX);
        let mut got = Vec::new();
        let end = loop {
            match r.read_backend() {
                Ok(m) => got.push(m),
                Err(e) => break e,
            }
        };
        prop_assert!(got.len() < msgs.len() || n == wire.len());
        prop_assert_eq!(&got[..], &msgs[..got.len()]);
        prop_assert!(matches!(end, WireError::Closed | WireError::ClosedMidMessage));
    }

    #[test]
    fn frontend_messages_round_trip(m in frontend_message()) {
        let mut wire = Vec::new();
        m.encode(&mut wire);
        let raw = split_typed(&wire, MAX).unwrap().unwrap();
        prop_assert_eq!(raw.consumed, wire.len());
        prop_assert_eq!(FrontendMessage::decode(raw.tag, raw.body).unwrap(), m);
    }

    #[test]
    fn oversized_lengths_fail_from_the_header_alone(len in (MAX as i32 + 5)..i32::MAX, tag in any::<u8>()) {
        let mut header = vec![tag];
        header.extend_from_slice(&len.to_be_bytes());
        let oversized = matches!(split_typed(&header, MAX), Err(CodecError::Oversized { .. }));
        prop_assert!(oversized);
        // A reader fails without waiting for (or allocating) the body.
        let mut r = MessageReader::new(Cursor::new(header), MAX);
        let codec_error = matches!(r.read_frontend(), Err(WireError::Codec(CodecError::Oversized { .. })));
        prop_assert!(codec_error);
    }

    #[test]
    fn negative_and_tiny_lengths_are_errors(len in i32::MIN..4, tag in any::<u8>()) {
        let mut header = vec![tag];
        header.extend_from_slice(&len.to_be_bytes());
        let bad = matches!(split_typed(&header, MAX), Err(CodecError::BadLength { .. }));
        prop_assert!(bad);
        let bad = matches!(split_startup(&header[1..], MAX), Err(CodecError::BadLength { .. }));
        prop_assert!(bad);
    }

    #[test]
    fn replication_messages_round_trip(start in any::<u64>(), end in any::<u64>(), t in any::<i64>(), data in prop::collection::vec(any::<u8>(), 0..300), rr in any::<bool>(), af in any::<bool>(), fd in any::<bool>(), ww in any::<bool>()) {
        let w = ReplicationMessage::XLogData { header: XLogDataHeader { wal_start: Lsn(start), wal_end: Lsn(end), send_time: t }, data };
        prop_assert_eq!(ReplicationMessage::decode(&w.encode()).unwrap(), w);
        let k = ReplicationMessage::Keepalive(PrimaryKeepalive { wal_end: Lsn(end), send_time: t, reply_requested: rr, apply_feedback: af, flush_deferrable: fd, write_wanted: ww });
        let bytes = k.encode();
        prop_assert_eq!(bytes.len(), 18);
        prop_assert_eq!(ReplicationMessage::decode(&bytes).unwrap(), k);
        prop_assert!(ReplicationMessage::decode(&bytes[..17]).is_err());
        let r = StandbyMessage::Status(StandbyStatusUpdate { write: Lsn(start), flush: Lsn(end), apply: Lsn(start ^ end), client_time: t, reply_requested: rr });
        let bytes = r.encode();
        prop_assert_eq!(bytes.len(), 34);
        prop_assert_eq!(StandbyMessage::decode(&bytes).unwrap(), r);
        for n in 0..bytes.len() {
            prop_assert!(StandbyMessage::decode(&bytes[..n]).is_err());
        }
    }
}

/// DataRow and RowDescription counts that promise more than the body holds
/// are refused before allocating.
#[test]
fn lying_counts_do_not_allocate() {
    let mut body = Vec::new();
    body.extend_from_slice(&i16::MAX.to_be_bytes());
    assert!(BackendMessage::decode(b'D', &body).is_err());
    assert!(BackendMessage::decode(b'T', &body).is_err());
    let mut sasl = b"SCRAM-SHA-256\0".to_vec();
    sasl.extend_from_slice(&i32::MAX.to_be_bytes());
    assert!(SaslInitialResponse::parse(&sasl).is_err());
}
