//! Every input path a hostile peer reaches, on random and shaped bytes
//! (proptest): RESP requests and the command layer, the glob matcher, the
//! replication port's messages and commands, the walreceiver's view of a
//! server, WAL records and a corrupted segment read by the WAL reader,
//! timeline history and control files, connection strings, password files,
//! verifiers and walrep.toml (hba, roles). Each must return, never panic.
//!
//! CI runs a few hundred cases per target; `WALREP_FUZZ_CASES=N` runs N
//! (the coverage-guided fuzzers in fuzz/ run the same entry points for
//! hours: docs/security.md). Inputs that once crashed a target are named
//! regression tests at the end of this file.

use proptest::prelude::*;
use walrep::fuzzing;

fn cases() -> u32 {
    std::env::var("WALREP_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// RESP-shaped bytes: the pieces requests are made of, command names
/// included, so the parser and the executors are reached.
fn resp_pieces() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"*".to_vec()),
        Just(b"$".to_vec()),
        Just(b"\r\n".to_vec()),
        (0i64..5).prop_map(|n| n.to_string().into_bytes()),
        Just(b"-1".to_vec()),
        Just(b"99999999999".to_vec()),
        prop::sample::select(vec![
            "GET", "SET", "MGET", "MSET", "APPEND", "INCRBY", "DEL", "KEYS", "SCAN", "MATCH",
            "COUNT", "TYPE", "CONFIG", "WAIT", "AUTH", "HELLO", "ACL", "CLIENT", "INFO", "EX",
            "NX", "*", "[a-", "\\", "k", "v",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..8),
    ];
    prop::collection::vec(piece, 0..60).prop_map(|p| p.concat())
}

/// Well-framed requests of random words, so every command parser runs.
fn resp_requests() -> impl Strategy<Value = Vec<u8>> {
    let word = prop_oneof![
        prop::sample::select(vec![
            "GET",
            "SET",
            "MGET",
            "MSET",
            "APPEND",
            "INCR",
            "DECRBY",
            "DEL",
            "EXISTS",
            "KEYS",
            "SCAN",
            "TYPE",
            "STRLEN",
            "CONFIG",
            "GET",
            "SET",
            "WAIT",
            "AUTH",
            "HELLO",
            "ACL",
            "WHOAMI",
            "CLIENT",
            "SETNAME",
            "INFO",
            "PING",
            "ECHO",
            "SELECT",
            "COMMAND",
            "DBSIZE",
            "SETNX",
            "EX",
            "PX",
            "NX",
            "XX",
            "KEEPTTL",
            "MATCH",
            "COUNT",
            "*",
            "?",
            "[^a-z]",
            "0",
            "-1",
            "9223372036854775807",
            "default",
            "synchronous_commit",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..12),
    ];
    let request = prop::collection::vec(word, 1..8).prop_map(|words| {
        let mut out = format!("*{}\r\n", words.len()).into_bytes();
        for w in words {
            out.extend_from_slice(format!("${}\r\n", w.len()).as_bytes());
            out.extend_from_slice(&w);
            out.extend_from_slice(b"\r\n");
        }
        out
    });
    prop::collection::vec(request, 1..20).prop_map(|r| r.concat())
}

/// A PostgreSQL frontend stream: a startup packet, then typed messages
/// with random bodies (sometimes replication commands).
fn pg_stream() -> impl Strategy<Value = Vec<u8>> {
    let message = (
        prop::sample::select(vec![
            b'Q', b'p', b'd', b'c', b'f', b'X', b'S', b'H', b'P', b'z',
        ]),
        prop_oneof![
            prop::sample::select(vec![
                "IDENTIFY_SYSTEM",
                "START_REPLICATION SLOT \"s\" PHYSICAL 0/1000000 TIMELINE 1",
                "BASE_BACKUP (LABEL 'x', MAX_RATE 32, MANIFEST 'yes')",
                "CREATE_REPLICATION_SLOT \"a\" TEMPORARY PHYSICAL (RESERVE_WAL)",
                "TIMELINE_HISTORY 0",
                "SHOW wal_segment_size",
                "DROP_REPLICATION_SLOT \"\" WAIT",
                "READ_REPLICATION_SLOT x",
            ])
            .prop_map(|s| format!("{s}\0").into_bytes()),
            prop::collection::vec(any::<u8>(), 0..64),
        ],
        any::<bool>(),
    )
        .prop_map(|(tag, body, honest_len)| {
            let len = if honest_len {
                body.len() as u32 + 4
            } else {
                body.len() as u32 ^ 0x00ff_ff00
            };
            let mut m = vec![tag];
            m.extend_from_slice(&len.to_be_bytes());
            m.extend_from_slice(&body);
            m
        });
    (
        prop::collection::vec(any::<u8>(), 0..40),
        prop::collection::vec(message, 0..12),
    )
        .prop_map(|(startup_params, msgs)| {
            let mut out = ((startup_params.len() + 8) as u32).to_be_bytes().to_vec();
            out.extend_from_slice(&196_608u32.to_be_bytes());
            out.extend_from_slice(&startup_params);
            out.extend(msgs.concat());
            out
        })
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// Text made of the characters a format's parser cares about.
fn shaped_text(alphabet: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let chars: Vec<char> = alphabet.chars().collect();
    prop::collection::vec(prop::sample::select(chars), 0..120)
        .prop_map(|c| c.into_iter().collect::<String>().into_bytes())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn redis_requests_on_random_bytes(b in bytes(512)) { fuzzing::redis_requests(&b) }

    #[test]
    fn redis_requests_on_resp_pieces(b in resp_pieces()) { fuzzing::redis_requests(&b) }

    #[test]
    fn redis_requests_on_framed_commands(b in resp_requests()) { fuzzing::redis_requests(&b) }

    #[test]
    fn glob_patterns(b in shaped_text("*?[]^-\\ab\0")) { fuzzing::glob(&b) }

    #[test]
    fn replication_port_streams(b in pg_stream()) { fuzzing::pg_frontend(&b) }

    #[test]
    fn replication_port_random_bytes(b in bytes(512)) { fuzzing::pg_frontend(&b) }

    #[test]
    fn replication_commands(b in shaped_text("ABCDEFGHIJKLMNOPQRSTUVWXYZ_ ()'\",/0123456789xX\\\u{e9}")) {
        fuzzing::replication_command(&b)
    }

    #[test]
    fn server_messages_to_a_walreceiver(b in bytes(512)) { fuzzing::pg_backend(&b) }

    #[test]
    fn wal_record_pieces(b in bytes(256)) { fuzzing::wal_decoders(&b) }

    #[test]
    fn corrupted_wal_segments(b in bytes(60)) { fuzzing::wal_reader(&b) }

    #[test]
    fn history_files(b in shaped_text("0123456789ABCDEF/\t\n# x")) { fuzzing::history_file(&b) }

    #[test]
    fn control_files(b in bytes(300)) { fuzzing::control_file(&b) }

    #[test]
    fn connection_strings(b in shaped_text("=' \\abcdefhlnoprstuw:*#$-SCRAM256\n")) { fuzzing::conninfo(&b) }

    #[test]
    fn configuration_files(b in shaped_text("[]{}=\"',.\nhbaddressmethodusertyperolespasswordtrust0123456789/:")) {
        fuzzing::config_text(&b)
    }
}
