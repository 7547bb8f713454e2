//! The Redis port's security through real clients: requirepass and ACL
//! roles with redis-cli and the redis crate (right, wrong and missing
//! passwords, each role's limits, each refusal in Redis's words), protected
//! mode for a client that is not local, TLS with `redis-cli --tls
//! --cacert`, secrets absent from CONFIG GET and from the log, and the
//! limits no request may pass (idle timeout, APPEND, reply size).

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::unix::io::FromRawFd;
use std::process::Command;
use std::time::Duration;

use support::node::{init_datadir, TestNode};
use support::tls::TestCa;
use support::tools::tool;
use support::{free_port, wait_until};
use walrep::security::ScramVerifier;

const DEFAULT_PW: &str = "default-pw-7fq2";
const READER_PW: &str = "reader-pw-b81x";
const WRITER_PW: &str = "writer-pw-c44z";
const ADMIN_PW: &str = "admin-pw-d09k";

/// A primary with requirepass and three ACL roles, in `dir`.
fn secured_node(dir: &std::path::Path, extra: &[&str]) -> TestNode {
    let datadir = init_datadir(dir, "primary", &[]);
    let role = |name: &str, pw: &str, redis: &str| {
        format!(
            "\n[[roles]]\nname = \"{name}\"\npassword = \"{}\"\nredis = \"{redis}\"\n",
            ScramVerifier::make(pw)
        )
    };
    let conf = datadir.join("walrep.toml");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&role("reader", READER_PW, "readonly"));
    text.push_str(&role("writer", WRITER_PW, "readwrite"));
    text.push_str(&role("boss", ADMIN_PW, "admin"));
    std::fs::write(&conf, text).unwrap();
    let requirepass = format!("requirepass={}", ScramVerifier::make(DEFAULT_PW));
    let mut settings = vec![requirepass.as_str(), "log_connections=on"];
    settings.extend_from_slice(extra);
    TestNode::start(&datadir, &settings)
}

/// redis-cli's output (stdout and stderr) for `args`.
fn cli(redis_cli: &std::path::Path, port: u16, args: &[&str]) -> String {
    let out = Command::new(redis_cli)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--no-auth-warning",
        ])
        .args(args)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .trim()
    .to_string()
}

#[test]
fn passwords_and_roles_through_redis_cli_and_the_redis_crate() {
    let Some(redis_cli) = tool("redis-cli") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut node = secured_node(tmp.path(), &[]);
    let p = node.port;
    let run = |args: &[&str]| cli(&redis_cli, p, args);

    // No password: only AUTH, HELLO AUTH and QUIT are served.
    assert_eq!(run(&["SET", "k", "v"]), "NOAUTH Authentication required.");
    assert_eq!(run(&["GET", "k"]), "NOAUTH Authentication required.");
    assert!(run(&["HELLO", "2"]).starts_with("NOAUTH HELLO must be called"));
    // The wrong password, for the default user and for a role.
    let wrong = run(&["-a", "guess", "PING"]);
    assert!(
        wrong.contains("WRONGPASS invalid username-password pair or user is disabled.")
            && wrong.contains("NOAUTH Authentication required."),
        "{wrong}"
    );
    assert!(run(&["--user", "reader", "--pass", "nope", "GET", "k"]).contains("WRONGPASS"));
    // The default user (requirepass) may do everything.
    assert_eq!(run(&["-a", DEFAULT_PW, "SET", "k", "v1"]), "OK");
    assert_eq!(run(&["-a", DEFAULT_PW, "ACL", "WHOAMI"]), "default");
    // readonly: reads yes, writes and CONFIG no.
    let reader = |args: &[&str]| {
        let mut a = vec!["--user", "reader", "--pass", READER_PW];
        a.extend_from_slice(args);
        run(&a)
    };
    assert_eq!(reader(&["GET", "k"]), "v1");
    assert_eq!(reader(&["ACL", "WHOAMI"]), "reader");
    assert_eq!(
        reader(&["SET", "k", "v2"]),
        "NOPERM this user has no permissions to run the 'set' command"
    );
    assert!(reader(&["CONFIG", "GET", "port"]).contains("NOPERM"));
    // readwrite: writes yes, CONFIG no.
    let writer = |args: &[&str]| {
        let mut a = vec!["--user", "writer", "--pass", WRITER_PW];
        a.extend_from_slice(args);
        run(&a)
    };
    assert_eq!(writer(&["SET", "k", "v2"]), "OK");
    assert_eq!(writer(&["WAIT", "0", "10"]), "0");
    assert!(writer(&["CONFIG", "GET", "port"]).contains("NOPERM"));
    // admin: CONFIG too.
    let admin = |args: &[&str]| {
        let mut a = vec!["--user", "boss", "--pass", ADMIN_PW];
        a.extend_from_slice(args);
        run(&a)
    };
    assert!(admin(&["CONFIG", "GET", "port"]).contains(&p.to_string()));
    // AUTH within a session, and HELLO AUTH.
    let mut c = TcpStream::connect(("127.0.0.1", p)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut ask = |req: &str| -> String {
        c.write_all(req.as_bytes()).unwrap();
        let mut buf = [0u8; 4096];
        let n = c.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(ask("GET k\r\n"), "-NOAUTH Authentication required.\r\n");
    assert_eq!(
        ask("AUTH reader wrong\r\n"),
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert_eq!(ask(&format!("AUTH reader {READER_PW}\r\n")), "+OK\r\n");
    assert_eq!(ask("GET k\r\n"), "$2\r\nv2\r\n");
    assert!(ask(&format!("HELLO 2 AUTH boss {ADMIN_PW}\r\n")).starts_with("*14\r\n"));
    assert_eq!(ask("ACL WHOAMI\r\n"), "$4\r\nboss\r\n");

    // The redis crate's URL form.
    let url = format!("redis://writer:{WRITER_PW}@127.0.0.1:{p}/");
    let mut rc = redis::Client::open(url).unwrap().get_connection().unwrap();
    let _: () = redis::cmd("SET")
        .arg("crate")
        .arg("yes")
        .query(&mut rc)
        .unwrap();
    let url = format!("redis://writer:wrong@127.0.0.1:{p}/");
    assert!(redis::Client::open(url).unwrap().get_connection().is_err());
    let url = format!("redis://:{DEFAULT_PW}@127.0.0.1:{p}/");
    let mut rc = redis::Client::open(url).unwrap().get_connection().unwrap();
    let v: String = redis::cmd("GET").arg("crate").query(&mut rc).unwrap();
    assert_eq!(v, "yes");

    // CONFIG GET * shows no secret: no verifier, no password.
    let all = admin(&["CONFIG", "GET", "*"]);
    assert!(all.contains("requirepass"), "{all}");
    for secret in ["SCRAM-SHA-256$", DEFAULT_PW, READER_PW, WRITER_PW, ADMIN_PW] {
        assert!(!all.contains(secret), "CONFIG GET * shows {secret}:\n{all}");
    }
    node.stop();
    let log = node.log_text();
    for secret in [DEFAULT_PW, READER_PW, WRITER_PW, ADMIN_PW, "SCRAM-SHA-256$"] {
        assert!(!log.contains(secret), "the log shows {secret}:\n{log}");
    }
    assert!(
        log.contains("AUTH failed"),
        "failed logins are logged:\n{log}"
    );
}

#[test]
fn a_readonly_role_reads_every_type_and_writes_none_over_resp3_too() {
    let Some(redis_cli) = tool("redis-cli") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut node = secured_node(tmp.path(), &[]);
    let p = node.port;
    let run = |args: &[&str]| cli(&redis_cli, p, args);
    let as_user = |user: &str, pw: &str, args: &[&str]| {
        let mut a = vec!["--user", user, "--pass", pw];
        a.extend_from_slice(args);
        run(&a)
    };
    let writer = |args: &[&str]| as_user("writer", WRITER_PW, args);
    let reader = |args: &[&str]| as_user("reader", READER_PW, args);
    assert_eq!(writer(&["HSET", "h", "f", "1"]), "1");
    assert_eq!(writer(&["RPUSH", "l", "a", "b"]), "2");
    assert_eq!(writer(&["SADD", "s", "m"]), "1");
    assert_eq!(writer(&["SET", "t", "v", "EX", "1000"]), "OK");
    assert!(writer(&["CLIENT", "LIST"]).contains("NOPERM"));

    // Reads of every type are allowed...
    assert_eq!(reader(&["HGET", "h", "f"]), "1");
    assert_eq!(reader(&["LRANGE", "l", "0", "-1"]), "a\nb");
    assert_eq!(reader(&["SISMEMBER", "s", "m"]), "1");
    assert!(reader(&["TTL", "t"]).parse::<u32>().unwrap() > 900);
    // ...and every write is refused, by its own name.
    for (args, name) in [
        (&["HSET", "h", "f", "2"][..], "hset"),
        (&["HDEL", "h", "f"][..], "hdel"),
        (&["LPUSH", "l", "c"][..], "lpush"),
        (&["RPOP", "l"][..], "rpop"),
        (&["SADD", "s", "n"][..], "sadd"),
        (&["SPOP", "s"][..], "spop"),
        (&["EXPIRE", "t", "5"][..], "expire"),
        (&["PERSIST", "t"][..], "persist"),
    ] {
        assert_eq!(
            reader(args),
            format!("NOPERM this user has no permissions to run the '{name}' command"),
            "{args:?}"
        );
    }
    // A write queued in MULTI is refused when queued, and EXEC aborts.
    let mut c = TcpStream::connect(("127.0.0.1", p)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut ask = |req: &str| -> String {
        c.write_all(req.as_bytes()).unwrap();
        let mut buf = [0u8; 4096];
        let n = c.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // HELLO 3 with AUTH logs in and switches to RESP3 in one step.
    let hello = ask(&format!("HELLO 3 AUTH reader {READER_PW}\r\n"));
    assert!(hello.starts_with("%7\r\n"), "{hello}");
    assert!(hello.contains("proto\r\n:3\r\n"), "{hello}");
    assert_eq!(ask("ACL WHOAMI\r\n"), "$6\r\nreader\r\n");
    assert_eq!(ask("HGETALL h\r\n"), "%1\r\n$1\r\nf\r\n$1\r\n1\r\n");
    assert_eq!(ask("GET missing\r\n"), "_\r\n");
    assert_eq!(ask("MULTI\r\n"), "+OK\r\n");
    assert!(ask("SADD s x\r\n").starts_with("-NOPERM"));
    assert!(ask("EXEC\r\n").starts_with("-EXECABORT"));
    assert_eq!(writer(&["SMEMBERS", "s"]), "m");
    node.stop();
}

/// A TCP connection to `port` on 127.0.0.1 from the source address
/// 127.0.0.2: a client that is not "local" for Redis's protected mode.
fn connect_from_127_0_0_2(port: u16) -> TcpStream {
    // SAFETY: plain socket calls on a descriptor this function owns; the
    // sockaddr_in structs are fully initialised.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let addr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let src = addr(Ipv4Addr::new(127, 0, 0, 2), 0);
        assert_eq!(
            libc::bind(fd, &src as *const _ as *const libc::sockaddr, len),
            0
        );
        let dst = addr(Ipv4Addr::LOCALHOST, port);
        assert_eq!(
            libc::connect(fd, &dst as *const _ as *const libc::sockaddr, len),
            0
        );
        TcpStream::from_raw_fd(fd)
    }
}

#[test]
fn protected_mode_serves_only_local_clients_while_no_password_is_set() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = init_datadir(tmp.path(), "open", &[]);
    let node = TestNode::start(&datadir, &[]);
    let mut far = connect_from_127_0_0_2(node.port);
    assert_eq!(
        far.local_addr().unwrap(),
        std::net::SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::new(127, 0, 0, 2),
            far.local_addr().unwrap().port()
        ))
    );
    far.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reply = String::new();
    far.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with("-DENIED Redis is running in protected mode"),
        "{reply}"
    );
    // A local client is served.
    let mut c = node.client();
    let pong: String = redis::cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG");

    // With a password the far client may log in; without protected mode
    // it is served as it is.
    let pw = "far-pw-31";
    for settings in [
        vec![format!("requirepass={}", ScramVerifier::make(pw))],
        vec!["protected_mode=off".to_string()],
    ] {
        let dir = tmp.path().join(format!("n{}", settings[0].len()));
        let datadir = init_datadir(&dir, "d", &[]);
        let s: Vec<&str> = settings.iter().map(String::as_str).collect();
        let node = TestNode::start(&datadir, &s);
        let mut far = connect_from_127_0_0_2(node.port);
        far.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        far.write_all(format!("AUTH {pw}\r\nPING\r\n").as_bytes())
            .unwrap();
        let mut buf = [0u8; 256];
        let mut got = String::new();
        while !got.contains("PONG") {
            let n = far.read(&mut buf).unwrap();
            assert!(n > 0, "closed: {got}");
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert!(!got.contains("DENIED"), "{got}");
    }
}

#[test]
fn redis_cli_over_tls_with_the_test_ca() {
    let Some(redis_cli) = tool("redis-cli") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&tmp.path().join("ca"));
    let tls_port = free_port();
    let settings = ca.node_settings(tls_port);
    let s: Vec<&str> = settings.iter().map(String::as_str).collect();
    let datadir = init_datadir(tmp.path(), "tls", &[]);
    let node = TestNode::start(&datadir, &s);
    let tls = |cacert: &std::path::Path, args: &[&str]| {
        let mut a = vec!["--tls", "--cacert", cacert.to_str().unwrap()];
        a.extend_from_slice(args);
        cli(&redis_cli, tls_port, &a)
    };
    assert_eq!(tls(&ca.ca_cert, &["SET", "over", "tls"]), "OK");
    assert_eq!(tls(&ca.ca_cert, &["GET", "over"]), "tls");
    // Many requests in one session, large values both ways.
    let big = "x".repeat(100_000);
    assert_eq!(tls(&ca.ca_cert, &["SET", "big", &big]), "OK");
    assert_eq!(tls(&ca.ca_cert, &["STRLEN", "big"]), "100000");
    assert_eq!(tls(&ca.ca_cert, &["GET", "big"]).len(), 100_000);
    // A CA that did not sign the certificate: refused by the client.
    let refused = tls(&ca.other_ca_cert, &["PING"]);
    assert!(!refused.contains("PONG"), "{refused}");
    // Plain text on the TLS port is not a request.
    let plain = cli(&redis_cli, tls_port, &["PING"]);
    assert!(!plain.contains("PONG"), "{plain}");
    // The plain port still works; the node is fine.
    let mut c = node.client();
    let v: String = redis::cmd("GET").arg("over").query(&mut c).unwrap();
    assert_eq!(v, "tls");
}

#[test]
fn a_certificate_that_does_not_load_stops_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = init_datadir(tmp.path(), "d", &[]);
    let (ok, _, err) = support::node::walrep(&[
        "start",
        datadir.to_str().unwrap(),
        "-c",
        "port=0",
        "-c",
        "replication_port=0",
        "-c",
        "ssl=on",
        "-c",
        "ssl_cert_file=/nonexistent/server.crt",
    ]);
    assert!(!ok);
    assert!(
        err.contains("could not load ssl_cert_file \"/nonexistent/server.crt\""),
        "{err}"
    );
    // A key file others can read is refused, as PostgreSQL refuses it.
    let ca = TestCa::new(&tmp.path().join("ca"));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ca.server_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut args = vec![
        "start",
        datadir.to_str().unwrap(),
        "-c",
        "port=0",
        "-c",
        "replication_port=0",
    ];
    let settings = ca.node_settings(0);
    for s in &settings[..3] {
        args.extend(["-c", s.as_str()]);
    }
    let (ok, _, err) = support::node::walrep(&args);
    assert!(!ok);
    assert!(err.contains("group or world access"), "{err}");
    // A clear password where a verifier belongs is refused, not echoed.
    let (ok, _, err) = support::node::walrep(&[
        "start",
        datadir.to_str().unwrap(),
        "-c",
        "requirepass=hunter2",
    ]);
    assert!(!ok);
    assert!(
        err.contains("requirepass") && !err.contains("hunter2"),
        "{err}"
    );
}

#[test]
fn limits_on_idle_clients_appends_and_replies() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = init_datadir(tmp.path(), "lim", &[]);
    let node = TestNode::start(
        &datadir,
        &[
            "timeout=1",
            "proto_max_bulk_len=1MB",
            "client_query_buffer_limit=2MB",
            "client_output_buffer_limit=1MB",
        ],
    );
    // An idle client is closed after `timeout`; so is one trickling bytes
    // of a request that never completes.
    let mut idle = TcpStream::connect(("127.0.0.1", node.port)).unwrap();
    let mut slow = TcpStream::connect(("127.0.0.1", node.port)).unwrap();
    slow.write_all(b"*3\r\n$3\r\nSET\r\n").unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut b = [0u8; 16];
    assert_eq!(idle.read(&mut b).unwrap(), 0, "idle client not closed");
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = slow.write_all(b"$1\r\nk\r\n");
    assert!(
        matches!(slow.read(&mut b), Ok(0) | Err(_)),
        "slow client not closed"
    );

    let mut c = node.client();
    // APPEND cannot grow a value past proto_max_bulk_len.
    let chunk = vec![b'a'; 400 << 10];
    for _ in 0..2 {
        let _: i64 = redis::cmd("APPEND")
            .arg("v")
            .arg(&chunk)
            .query(&mut c)
            .unwrap();
    }
    let e = redis::cmd("APPEND")
        .arg("v")
        .arg(&chunk)
        .query::<i64>(&mut c)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("string exceeds maximum allowed size"),
        "{e}"
    );
    // MGET of a large value many times is refused, not built.
    let mut mget = redis::cmd("MGET");
    for _ in 0..10 {
        mget.arg("v");
    }
    let e = mget.query::<Vec<Vec<u8>>>(&mut c).unwrap_err();
    assert!(e.to_string().contains("client_output_buffer_limit"), "{e}");
    let len: i64 = redis::cmd("STRLEN").arg("v").query(&mut c).unwrap();
    assert_eq!(len, 800 << 10);
    // A request larger than the query buffer limit closes its client.
    let mut hog = TcpStream::connect(("127.0.0.1", node.port)).unwrap();
    let _ = hog.write_all(b"*7\r\n$4\r\nMSET\r\n");
    for k in ["a", "b", "c"] {
        let _ = hog.write_all(format!("$1\r\n{k}\r\n$1048576\r\n").as_bytes());
        let _ = hog.write_all(&vec![b'x'; 1 << 20]);
        let _ = hog.write_all(b"\r\n");
    }
    hog.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reply = Vec::new();
    let _ = hog.read_to_end(&mut reply);
    assert!(String::from_utf8_lossy(&reply).starts_with("-ERR Protocol error"));
    // WAIT with an absurd timeout is clamped, not a panic.
    let n: i64 = redis::cmd("WAIT")
        .arg(0)
        .arg(i64::MAX)
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 0);
    wait_until("the node still answers", || {
        redis::cmd("PING").query::<String>(&mut c).is_ok()
    });
}

#[test]
fn walrep_passwd_makes_a_verifier_and_never_prints_the_password() {
    use std::process::Stdio;
    let run = |args: &[&str], input: &str| {
        let mut child = Command::new(support::node::walrep_bin())
            .arg("passwd")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(&["--verifier-only"], "s3cret pass\n");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("s3cret"));
    let v = ScramVerifier::parse(text.trim()).unwrap();
    assert!(v.check(b"s3cret pass") && !v.check(b"s3cret"));
    // The default output is a walrep.toml line that a node accepts.
    let out = run(&["--role", "app"], "pw2\n");
    let text = String::from_utf8(out.stdout).unwrap();
    let cfg = walrep::config::Config::from_toml_with_overrides(&text, "passwd", &[]).unwrap();
    assert_eq!(cfg.roles[0].name, "app");
    assert!(ScramVerifier::parse(&cfg.roles[0].password)
        .unwrap()
        .check(b"pw2"));
    let out = run(&[], "\n");
    assert!(!out.status.success(), "an empty password is refused");
}
