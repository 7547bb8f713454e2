//! Parser tests: each command's well-formed requests, and its arity and
//! syntax errors in Redis's words (checked against redis-server 7.0).

use std::time::Duration;

use super::admin::ConfigChange;
use super::keyspace::KeyType;
use super::strings::{Condition, Expiry};
use super::*;
use crate::config::SynchronousCommit;

fn words(line: &str) -> Vec<&[u8]> {
    line.split(' ').map(str::as_bytes).collect()
}

fn ok(line: &'static str) -> Command<'static> {
    // A command borrows its request: leak the argument list so the command
    // can outlive this call.
    let args: &'static [&'static [u8]] = Box::leak(words(line).into_boxed_slice());
    Command::from_frame(args).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

fn err(line: &str) -> String {
    Command::from_frame(&words(line))
        .expect_err(line)
        .to_string()
}

fn arity(name: &str) -> String {
    format!("ERR wrong number of arguments for '{name}' command")
}

#[test]
fn every_command_checks_its_arity_like_redis() {
    for (line, name) in [
        ("GET", "get"),
        ("get a b", "get"),
        ("SET k", "set"),
        ("MGET", "mget"),
        ("MSET a", "mset"),
        ("MSET a b c", "mset"),
        ("SETNX a", "setnx"),
        ("INCR", "incr"),
        ("DECR a b", "decr"),
        ("INCRBY a", "incrby"),
        ("DECRBY a 1 2", "decrby"),
        ("APPEND a", "append"),
        ("STRLEN", "strlen"),
        ("STRLEN a b", "strlen"),
        ("EXISTS", "exists"),
        ("DEL", "del"),
        ("UNLINK", "unlink"),
        ("DBSIZE x", "dbsize"),
        ("TYPE", "type"),
        ("TYPE a b", "type"),
        ("KEYS", "keys"),
        ("KEYS a b", "keys"),
        ("SCAN", "scan"),
        ("PING a b", "ping"),
        ("ECHO", "echo"),
        ("ECHO a b", "echo"),
        ("SELECT", "select"),
        ("SELECT 0 1", "select"),
        ("CLIENT", "client"),
        ("CLIENT SETNAME", "client|setname"),
        ("CLIENT SETNAME a b", "client|setname"),
        ("CLIENT GETNAME x", "client|getname"),
        ("CLIENT ID x", "client|id"),
        ("CLIENT SETINFO lib-name", "client|setinfo"),
        ("CONFIG", "config"),
        ("CONFIG GET", "config|get"),
        ("CONFIG SET a", "config|set"),
        ("WAIT 1", "wait"),
        ("COMMAND COUNT x", "command|count"),
    ] {
        assert_eq!(err(line), arity(name), "{line}");
    }
}

#[test]
fn unknown_commands_are_worded_like_redis() {
    assert_eq!(
        err("FOO a b"),
        "ERR unknown command 'FOO', with args beginning with: 'a' 'b' "
    );
    assert_eq!(
        err("averyveryverylongname"),
        "ERR unknown command 'averyveryverylongname', with args beginning with: "
    );
    // Redis lists arguments until 128 bytes, cutting the last one.
    let line = format!(
        "FOO {} {} {} d",
        "a".repeat(47),
        "b".repeat(56),
        "c".repeat(52)
    );
    let expected = format!(
        "ERR unknown command 'FOO', with args beginning with: '{}' '{}' '{}' ",
        "a".repeat(47),
        "b".repeat(56),
        "c".repeat(19)
    );
    assert_eq!(err(&line), expected);
    assert_eq!(
        err("CONFIG FOO"),
        "ERR unknown subcommand 'FOO'. Try CONFIG HELP."
    );
    assert_eq!(
        err("CLIENT FOO"),
        "ERR unknown subcommand 'FOO'. Try CLIENT HELP."
    );
}

fn names() -> Vec<&'static str> {
    table::TABLE.iter().map(|s| s.name).collect()
}

#[test]
fn every_known_name_parses_to_a_command() {
    for name in names() {
        let args = [name.as_bytes(), b"0", b"0"];
        if let Err(e @ CommandError::UnknownCommand { .. }) = Command::from_frame(&args) {
            panic!("{name}: {e}");
        }
    }
}

#[test]
fn an_empty_request_is_an_error_not_a_panic() {
    assert!(matches!(
        Command::from_frame(&[]),
        Err(CommandError::Syntax)
    ));
    assert!(err("\u{0}").starts_with("ERR unknown command"));
}

#[test]
fn names_ignore_case() {
    assert_eq!(ok("gEt k"), Command::Get(b"k"));
    assert_eq!(ok("PING"), Command::Ping(None));
    assert_eq!(ok("ping hi"), Command::Ping(Some(b"hi")));
    assert_eq!(ok("QUIT x"), Command::Quit);
}

#[test]
fn set_reads_its_options_like_redis() {
    let set = |line| match ok(line) {
        Command::Set(s) => s,
        other => panic!("{other:?}"),
    };
    let s = set("SET k v");
    assert_eq!(
        (s.key, s.value, s.condition, s.get),
        (&b"k"[..], &b"v"[..], None, false)
    );
    assert_eq!(set("SET k v nx").condition, Some(Condition::IfAbsent));
    assert_eq!(set("SET k v XX GET").condition, Some(Condition::IfPresent));
    assert!(set("SET k v NX NX GET GET").get);
    assert_eq!(
        set("SET k v EX 10 EX 20").expiry,
        Some(Expiry::AfterMs(20_000))
    );
    assert_eq!(set("SET k v px 5").expiry, Some(Expiry::AfterMs(5)));
    assert_eq!(set("SET k v EXAT 7").expiry, Some(Expiry::AtUnixMs(7000)));
    assert_eq!(set("SET k v KEEPTTL").expiry, Some(Expiry::KeepTtl));
    for bad in [
        "SET k v foo",
        "SET k v NX XX",
        "SET k v XX NX",
        "SET k v EX",
        "SET k v EX 10 PX 5",
        "SET k v KEEPTTL EX 10",
        "SET k v EX 10 KEEPTTL",
        "SET k v EX abc NX XX",
    ] {
        assert_eq!(err(bad), "ERR syntax error", "{bad}");
    }
    assert_eq!(
        err("SET k v EX abc"),
        "ERR value is not an integer or out of range"
    );
    for bad in [
        "SET k v EX 0",
        "SET k v EX -1",
        "SET k v PX 9223372036854775807",
        "SET k v EX 9223372036854775807",
    ] {
        assert_eq!(
            err(bad),
            "ERR invalid expire time in 'set' command",
            "{bad}"
        );
    }
}

#[test]
fn integers_are_read_strictly() {
    assert_eq!(ok("INCRBY k -12"), Command::IncrBy { key: b"k", by: -12 });
    assert_eq!(ok("DECR k"), Command::IncrBy { key: b"k", by: -1 });
    assert_eq!(ok("DECRBY k 3"), Command::IncrBy { key: b"k", by: -3 });
    for bad in [
        "012",
        "+1",
        "1.0",
        "",
        "99999999999999999999",
        "-0",
        "x",
        "-",
    ] {
        assert_eq!(
            err(&format!("INCRBY k {bad}")),
            "ERR value is not an integer or out of range",
            "{bad}"
        );
    }
    assert_eq!(
        err("DECRBY k -9223372036854775808"),
        "ERR decrement would overflow"
    );
    assert_eq!(parse::canonical_i64(b"0"), Some(0));
    assert_eq!(
        parse::canonical_i64(b"-9223372036854775808"),
        Some(i64::MIN)
    );
}

#[test]
fn scan_reads_its_options_like_redis() {
    let scan = |line| match ok(line) {
        Command::Scan(s) => s,
        other => panic!("{other:?}"),
    };
    let s = scan("SCAN 0");
    assert_eq!(
        (s.cursor, s.pattern, s.count, s.key_type),
        (0, None, 10, None)
    );
    let s = scan("scan 18446744073709551615 count 5 MATCH f* COUNT 7 type STRING");
    assert_eq!(s.cursor, u64::MAX);
    assert_eq!((s.pattern, s.count), (Some(&b"f*"[..]), 7));
    assert_eq!(s.key_type, Some(KeyType::String));
    assert_eq!(scan("SCAN 00").cursor, 0);
    assert_eq!(scan("SCAN 0 TYPE hash").key_type, Some(KeyType::Hash));
    assert_eq!(
        scan("SCAN 0 COUNT 99999999").count,
        keyspace::SCAN_COUNT_MAX,
        "COUNT is a hint with a ceiling"
    );
    for bad in [
        "SCAN x",
        "SCAN -1",
        "SCAN +1",
        "SCAN 18446744073709551616",
        "SCAN 1.5",
    ] {
        assert_eq!(err(bad), "ERR invalid cursor", "{bad}");
    }
    for bad in [
        "SCAN 0 COUNT 0",
        "SCAN 0 COUNT -1",
        "SCAN 0 MATCH",
        "SCAN 0 FOO x",
    ] {
        assert_eq!(err(bad), "ERR syntax error", "{bad}");
    }
    assert_eq!(
        err("SCAN 0 COUNT x"),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(err("SCAN 0 TYPE foo"), "ERR unknown type name 'foo'");
}

#[test]
fn hello_is_checked_in_redis_order() {
    let none = Hello {
        protover: None,
        auth: None,
        setname: None,
    };
    assert_eq!(ok("HELLO"), Command::Hello(none.clone()));
    assert_eq!(
        ok("HELLO 2 AUTH default pw SETNAME app"),
        Command::Hello(Hello {
            protover: Some(2),
            auth: Some((b"default", b"pw")),
            setname: Some(b"app"),
        })
    );
    for bad in ["HELLO 4", "HELLO 1", "HELLO -1", "HELLO 0"] {
        assert_eq!(err(bad), "NOPROTO unsupported protocol version", "{bad}");
    }
    assert_eq!(
        ok("HELLO 3"),
        Command::Hello(Hello {
            protover: Some(3),
            ..none.clone()
        })
    );
    assert_eq!(err("HELLO 3 FOO"), "ERR Syntax error in HELLO option 'FOO'");
    for bad in ["HELLO 3x", "HELLO 02", "HELLO AUTH"] {
        assert_eq!(
            err(bad),
            "ERR Protocol version is not an integer or out of range",
            "{bad}"
        );
    }
    assert_eq!(
        err("HELLO 2 AUTH"),
        "ERR Syntax error in HELLO option 'AUTH'"
    );
    assert_eq!(
        err("HELLO 2 AUTH u"),
        "ERR Syntax error in HELLO option 'AUTH'"
    );
    assert_eq!(
        err("HELLO 2 SETNAME"),
        "ERR Syntax error in HELLO option 'SETNAME'"
    );
    assert_eq!(
        err("HELLO 2 SETNAME a b"),
        "ERR Syntax error in HELLO option 'b'"
    );
    assert_eq!(err("HELLO 2 FOO"), "ERR Syntax error in HELLO option 'FOO'");
}

#[test]
fn connection_and_server_commands_parse() {
    assert_eq!(ok("SELECT 0"), Command::Select);
    assert_eq!(err("SELECT 1"), "ERR DB index is out of range");
    assert_eq!(err("SELECT -1"), "ERR DB index is out of range");
    assert_eq!(
        err("SELECT x"),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        ok("CLIENT setname app"),
        Command::Client(ClientCommand::SetName(b"app"))
    );
    assert_eq!(
        ok("CLIENT SETINFO LIB-NAME redis-rs"),
        Command::Client(ClientCommand::SetInfo {
            ver: false,
            value: b"redis-rs"
        })
    );
    assert_eq!(err("CLIENT SETINFO foo x"), "ERR Unrecognized option 'foo'");
    assert_eq!(ok("COMMAND COUNT"), Command::Commands(CommandQuery::Count));
    assert_eq!(
        ok("COMMAND DOCS"),
        Command::Commands(CommandQuery::Docs(&[]))
    );
    assert_eq!(ok("COMMAND"), Command::Commands(CommandQuery::All));
    assert_eq!(ok("CONFIG HELP"), Command::Config(ConfigCommand::Help));
    assert_eq!(
        ok("CONFIG SET synchronous_commit off SYNCHRONOUS_COMMIT local"),
        Command::Config(ConfigCommand::Set(ConfigChange::SynchronousCommit(
            SynchronousCommit::Local
        )))
    );
    assert_eq!(err("CONFIG SET a b c"), "ERR syntax error");
    assert!(err("CONFIG SET port 1").contains("only supported for synchronous_commit"));
    assert!(err("CONFIG SET synchronous_commit sometimes").starts_with("ERR "));
}

#[test]
fn wait_is_checked_in_redis_order() {
    assert_eq!(
        ok("WAIT 2 100"),
        Command::Wait(Wait {
            numreplicas: 2,
            timeout: Duration::from_millis(100),
            numlocal: None,
        })
    );
    assert_eq!(
        ok("WAIT -5 0"),
        Command::Wait(Wait {
            numreplicas: 0,
            timeout: admin::WAIT_FOREVER_BOUND,
            numlocal: None,
        })
    );
    assert_eq!(
        err("WAIT x y"),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        err("WAIT 0 y"),
        "ERR timeout is not an integer or out of range"
    );
    assert_eq!(err("WAIT 0 -1"), "ERR timeout is negative");
}

#[test]
fn waitaof_is_checked_in_redis_order() {
    assert_eq!(
        ok("WAITAOF 1 2 100"),
        Command::Wait(Wait {
            numreplicas: 2,
            timeout: Duration::from_millis(100),
            numlocal: Some(true),
        })
    );
    assert_eq!(
        ok("WAITAOF 0 0 0"),
        Command::Wait(Wait {
            numreplicas: 0,
            timeout: admin::WAIT_FOREVER_BOUND,
            numlocal: Some(false),
        })
    );
    // numlocal first, then numreplicas, then the timeout (Redis's words).
    assert_eq!(
        err("WAITAOF x y z"),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        err("WAITAOF 2 y z"),
        "ERR value is out of range, value must between 0 and 1"
    );
    assert_eq!(
        err("WAITAOF -1 0 0"),
        "ERR value is out of range, value must between 0 and 1"
    );
    assert_eq!(
        err("WAITAOF 1 y z"),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        err("WAITAOF 1 -1 z"),
        "ERR value is out of range, must be positive"
    );
    assert_eq!(
        err("WAITAOF 1 0 z"),
        "ERR timeout is not an integer or out of range"
    );
    assert_eq!(err("WAITAOF 1 0 -5"), "ERR timeout is negative");
    assert!(err("WAITAOF 1 0").contains("wrong number of arguments"));
}

#[test]
fn commands_know_what_they_are() {
    let writes = [
        "SET k v",
        "SETNX k v",
        "MSET a 1 b 2",
        "INCR k",
        "DECRBY k 2",
        "APPEND k v",
        "DEL a",
        "UNLINK a",
    ];
    for line in writes {
        let c = ok(line);
        assert!(c.is_write() && !c.reads_data(), "{line}");
    }
    let reads = [
        "GET k", "MGET a b", "EXISTS a", "DBSIZE", "STRLEN k", "TYPE k", "KEYS *", "SCAN 0",
    ];
    for line in reads {
        let c = ok(line);
        assert!(!c.is_write() && c.reads_data(), "{line}");
    }
    for line in [
        "PING",
        "INFO",
        "CONFIG GET *",
        "WAIT 0 0",
        "HELLO 2",
        "CLIENT ID",
    ] {
        let c = ok(line);
        assert!(!c.is_write() && !c.reads_data(), "{line}");
    }
    let keys = |line| ok(line).keys().collect::<Vec<_>>();
    assert_eq!(keys("MSET a 1 b 2"), [&b"a"[..], b"b"]);
    assert_eq!(keys("DEL a b c"), [&b"a"[..], b"b", b"c"]);
    assert_eq!(keys("SET k v NX"), [&b"k"[..]]);
    assert_eq!(keys("INCRBY n 2"), [&b"n"[..]]);
    assert!(keys("KEYS *").is_empty());
    assert!(keys("PING").is_empty());
}

fn arg() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    prop_oneof![
        proptest::sample::select(names()).prop_map(|n| n.as_bytes().to_vec()),
        proptest::sample::select(
            &[
                "nx", "xx", "get", "ex", "px", "exat", "pxat", "keepttl", "match", "count", "type",
                "auth", "setname", "0", "1", "-1", "2", "3", "*", "string", "hash",
            ][..]
        )
        .prop_map(|w| w.as_bytes().to_vec()),
        proptest::collection::vec(any::<u8>(), 0..6),
    ]
}

proptest::proptest! {
    #[test]
    fn any_request_parses_or_is_refused_without_panicking(
        args in proptest::collection::vec(arg(), 0..7)
    ) {
        let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        if let Ok(cmd) = Command::from_frame(&args) {
            let _ = (cmd.is_write(), cmd.reads_data());
            // Every key a command names is one of its arguments.
            for k in cmd.keys() {
                proptest::prop_assert!(args[1..].contains(&k));
            }
        }
    }
}
