//! Real Redis clients no one here wrote: redis-cli and redis-benchmark
//! (Debian's redis-tools) against a walrep node.

mod support;

use std::process::Command;

use support::node::{init_datadir, TestNode};
use support::tools::tool;

#[test]
fn redis_cli_and_redis_benchmark_work() {
    let (Some(redis_cli), Some(redis_benchmark)) = (tool("redis-cli"), tool("redis-benchmark"))
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let datadir = init_datadir(tmp.path(), "primary", &[]);
    let mut node = TestNode::start(&datadir, &[]);
    let port = node.port.to_string();
    let cli = |args: &[&str]| {
        let out = Command::new(&redis_cli)
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(cli(&["PING"]), "PONG");
    assert_eq!(cli(&["SET", "greeting", "hello world"]), "OK");
    assert_eq!(cli(&["GET", "greeting"]), "hello world");
    assert_eq!(cli(&["INCR", "n"]), "1");
    assert_eq!(cli(&["MSET", "a", "1", "b", "2"]), "OK");
    // redis-cli prints a nil as an empty line (trimmed away at the end).
    assert_eq!(cli(&["MGET", "a", "b", "zz"]), "1\n2");
    assert_eq!(cli(&["DEL", "a", "zz"]), "1");
    assert_eq!(cli(&["EXISTS", "a", "b"]), "1");
    assert!(cli(&["INFO", "replication"]).contains("role:master"));
    assert!(cli(&["CONFIG", "GET", "port"]).contains(&port));
    assert!(cli(&["NOSUCHCOMMAND"]).contains("unknown command"));

    let bench = Command::new(&redis_benchmark)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "set,get",
            "-n",
            "2000",
            "-c",
            "8",
            "-r",
            "1000",
            "-q",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&bench.stdout).to_string()
        + &String::from_utf8_lossy(&bench.stderr);
    assert!(bench.status.success(), "redis-benchmark failed: {text}");
    for t in ["SET:", "GET:"] {
        assert!(
            text.contains(t) && text.contains("requests per second"),
            "redis-benchmark did not report {t}: {text}"
        );
    }
    assert!(!text.contains("ERR"), "redis-benchmark saw errors: {text}");
    let keys: u64 = cli(&["DBSIZE"]).parse().unwrap();
    assert!(
        keys > 500,
        "redis-benchmark's SETs did not land: {keys} keys"
    );
    assert!(node.stop().success());
}
