//! The replication port's security through real clients: SCRAM over TLS
//! with `sslmode=verify-full` against a CA made in the test for psql,
//! pg_receivewal and pg_basebackup; each expected refusal in PostgreSQL's
//! words (wrong CA, no TLS on a hostssl-only node, wrong password, a role
//! without the replication attribute); a walrep standby streaming over
//! TLS; a fake standby that reports a flush position beyond what it was
//! sent, which must not release a synchronous commit; and idle sockets
//! that must not keep a standby out.

mod support;

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::node::{init_datadir, walrep_bin, TestNode};
use support::tls::TestCa;
use support::tools::tool;
use support::wal::segment_file_names;
use support::{wait_for, wait_until, DEADLINE};
use walrep::replication::client::{ConnInfo, ReplicationClient, StartOutcome, StreamEvent};
use walrep::security::ScramVerifier;
use walrep::Lsn;

const REPL_PW: &str = "repl-pw-93jd";
const APP_PW: &str = "app-pw-kq71";

/// hba: SCRAM over TLS only; anything else is rejected.
const HBA_TLS_SCRAM: &str = r#"hba=[{type="hostssl", address="127.0.0.0/8", method="scram-sha-256"}, {address="127.0.0.0/8", method="reject"}]"#;

/// A data directory whose walrep.toml has a replication role `repl` and
/// a role `app` without the replication attribute.
fn datadir_with_roles(parent: &Path, name: &str) -> std::path::PathBuf {
    let datadir = init_datadir(parent, name, &["--wal-segment-size", "1MB"]);
    let conf = datadir.join("walrep.toml");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!(
        "\n[[roles]]\nname = \"repl\"\npassword = \"{}\"\nreplication = true\n\n[[roles]]\nname = \"app\"\npassword = \"{}\"\nredis = \"readwrite\"\n",
        ScramVerifier::make(REPL_PW),
        ScramVerifier::make(APP_PW)
    ));
    std::fs::write(&conf, text).unwrap();
    datadir
}

fn tls_primary(tmp: &Path, ca: &TestCa) -> TestNode {
    let datadir = datadir_with_roles(tmp, "primary");
    let mut settings = ca.node_settings(0);
    settings.pop(); // no Redis TLS port here
    settings.push(HBA_TLS_SCRAM.into());
    let s: Vec<&str> = settings.iter().map(String::as_str).collect();
    TestNode::start(&datadir, &s)
}

fn conninfo(node: &TestNode, user: &str, ssl: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} dbname=replication replication=true {ssl}",
        node.replication_port
    )
}

fn psql(conninfo: &str, password: &str, command: &str) -> Option<Output> {
    let bin = tool("psql")?;
    Some(
        Command::new(bin)
            .arg(conninfo)
            .args(["-X", "-A", "-t", "-c", command])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .unwrap(),
    )
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write_bytes(node: &TestNode, bytes: usize) {
    let mut c = node.client();
    let v = vec![b'b'; 8192];
    for i in 0..bytes / 8192 {
        let _: () = redis::cmd("SET")
            .arg(format!("bulk{i}"))
            .arg(&v)
            .query(&mut c)
            .unwrap();
    }
}

#[test]
fn postgres_tools_use_scram_over_verified_tls_and_each_refusal_is_postgres_s() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&tmp.path().join("ca"));
    let mut node = tls_primary(tmp.path(), &ca);
    let root = format!("sslmode=verify-full sslrootcert={}", ca.ca_cert.display());

    let Some(ok) = psql(&conninfo(&node, "repl", &root), REPL_PW, "IDENTIFY_SYSTEM") else {
        return;
    };
    assert!(ok.status.success(), "{}", text(&ok));
    let id = node.info_field("server", "system_identifier");
    if let Some(id) = id {
        assert!(text(&ok).contains(&id), "{}", text(&ok));
    }
    // A certificate from another CA.
    let other = format!(
        "sslmode=verify-full sslrootcert={}",
        ca.other_ca_cert.display()
    );
    let o = psql(&conninfo(&node, "repl", &other), REPL_PW, "IDENTIFY_SYSTEM").unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o).contains("certificate verify failed"),
        "{}",
        text(&o)
    );
    // verify-full checks the name: localhost is in the certificate too.
    let by_name = format!(
        "host=localhost port={} user=repl dbname=replication replication=true {root}",
        node.replication_port
    );
    let o = psql(&by_name, REPL_PW, "IDENTIFY_SYSTEM").unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // Without TLS, the hostssl line does not match.
    let o = psql(
        &conninfo(&node, "repl", "sslmode=disable"),
        REPL_PW,
        "IDENTIFY_SYSTEM",
    )
    .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o).contains(
            "pg_hba.conf rejects replication connection for host \"127.0.0.1\", user \"repl\", no encryption"
        ),
        "{}",
        text(&o)
    );
    // The wrong password.
    let o = psql(&conninfo(&node, "repl", &root), "guess", "IDENTIFY_SYSTEM").unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o).contains("password authentication failed for user \"repl\""),
        "{}",
        text(&o)
    );
    // A role that may log in but has no replication attribute.
    let o = psql(&conninfo(&node, "app", &root), APP_PW, "IDENTIFY_SYSTEM").unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o).contains("must be superuser or replication role to start walsender"),
        "{}",
        text(&o)
    );
    // An unknown role fails as a wrong password does (no user enumeration).
    let o = psql(&conninfo(&node, "nobody", &root), "x", "IDENTIFY_SYSTEM").unwrap();
    assert!(text(&o).contains("password authentication failed for user \"nobody\""));

    // pg_receivewal over TLS, verify-full, SCRAM.
    let out = tmp.path().join("received");
    std::fs::create_dir(&out).unwrap();
    let bin = tool("pg_receivewal").unwrap();
    let mut child = support::process::ChildGuard::spawn(
        Command::new(bin)
            .arg("-d")
            .arg(format!(
                "host=127.0.0.1 port={} user=repl {root}",
                node.replication_port
            ))
            .args(["-n", "-s", "1", "-D"])
            .arg(&out)
            .env("PGPASSWORD", REPL_PW)
            .stderr(std::process::Stdio::null()),
    );
    wait_until("pg_receivewal to start streaming over TLS", || {
        support::file_names(&out)
            .iter()
            .any(|f| f.ends_with(".partial"))
    });
    write_bytes(&node, 2_500_000);
    wait_for(
        "pg_receivewal to complete a segment over TLS",
        Duration::from_secs(60),
        || (!segment_file_names(&out).is_empty()).then_some(()),
    );
    child.interrupt();

    // pg_basebackup -X stream over TLS, verify-full, SCRAM.
    let bb = tmp.path().join("bb");
    let o = Command::new(tool("pg_basebackup").unwrap())
        .arg("-d")
        .arg(format!(
            "host=127.0.0.1 port={} user=repl {root}",
            node.replication_port
        ))
        .args(["-Fp", "-X", "stream", "-D"])
        .arg(&bb)
        .env("PGPASSWORD", REPL_PW)
        .output()
        .unwrap();
    assert!(o.status.success(), "pg_basebackup: {}", text(&o));
    assert!(bb.join("backup_label").exists() || bb.join("control").exists());

    node.stop();
    let log = node.log_text();
    assert!(!log.contains(REPL_PW) && !log.contains(APP_PW), "{log}");
}

#[test]
fn a_walrep_standby_streams_over_tls_with_its_password_in_a_password_file() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&tmp.path().join("ca"));
    let mut primary = tls_primary(tmp.path(), &ca);
    write_bytes(&primary, 100_000);
    let standby_dir = tmp.path().join("standby");
    let out = Command::new(walrep_bin())
        .args(["basebackup", "--from"])
        .arg(format!("127.0.0.1:{}", primary.replication_port))
        .arg("-D")
        .arg(&standby_dir)
        .args(["-R", "-U", "repl", "--application-name", "s1"])
        .env("PGPASSWORD", REPL_PW)
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", &ca.ca_cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains(REPL_PW), "{}", text(&out));
    // The password went to a 0600 password file, not into walrep.toml.
    let conf = std::fs::read_to_string(standby_dir.join("walrep.toml")).unwrap();
    assert!(!conf.contains(REPL_PW));
    let ci = walrep::config::Config::from_toml_with_overrides(&conf, "standby", &[])
        .unwrap()
        .primary_conninfo;
    let parsed = ConnInfo::parse(&ci).unwrap();
    assert_eq!(
        parsed.sslmode,
        walrep::security::tls::SslMode::VerifyFull,
        "{ci}"
    );
    assert!(
        parsed.passfile.is_some() && parsed.password.is_none(),
        "{ci}"
    );
    let passfile = standby_dir.join(walrep::backup::client::STANDBY_PASSFILE);
    let mode = std::fs::metadata(&passfile).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let mut standby = TestNode::start(&standby_dir, &[]);
    let mut c = primary.client();
    let _: () = redis::cmd("SET")
        .arg("over")
        .arg("tls")
        .query(&mut c)
        .unwrap();
    wait_until("the write to reach the standby over TLS", || {
        let mut s = standby.client();
        redis::cmd("GET")
            .arg("over")
            .query::<Option<String>>(&mut s)
            .ok()
            .flatten()
            .as_deref()
            == Some("tls")
    });
    let log = primary.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("walsender") && l.contains("tls=true")),
        "no walsender over TLS in the primary's log:\n{log}"
    );
    standby.stop();
    primary.stop();
    for log in [standby.log_text(), primary.log_text()] {
        assert!(!log.contains(REPL_PW), "{log}");
    }
}

#[test]
fn a_standby_reporting_flush_beyond_what_it_was_sent_releases_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", "1MB"]);
    let node = TestNode::start(&datadir, &["synchronous_standby_names=fake"]);
    let info = ConnInfo::parse(&format!(
        "host=127.0.0.1 port={} user=walrep application_name=fake",
        node.replication_port
    ))
    .unwrap();
    // The liar: claims everything up to 1 GB past the current position.
    let mut liar = ReplicationClient::connect(&info, DEADLINE).unwrap();
    let id = liar.identify_system().unwrap();
    assert!(matches!(
        liar.start_replication(None, id.xlogpos, Some(id.timeline))
            .unwrap(),
        StartOutcome::Streaming
    ));
    let far = Lsn(id.xlogpos.0 + (1 << 30));
    liar.send_status(far, far, far, false).unwrap();
    // The server closes the connection.
    let deadline = Instant::now() + DEADLINE;
    loop {
        match liar.recv(Duration::from_secs(1)) {
            Err(_) | Ok(StreamEvent::ServerShutdown) => break,
            Ok(_) => assert!(Instant::now() < deadline, "the liar is still connected"),
        }
    }
    // A synchronous commit now waits: nobody holds its WAL.
    let (tx, rx) = mpsc::channel();
    let mut c = node.client();
    let writer = std::thread::spawn(move || {
        let r: redis::RedisResult<()> = redis::cmd("SET").arg("k").arg("v").query(&mut c);
        let _ = tx.send(r.is_ok());
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(2)).is_err(),
        "a synchronous commit was acknowledged with no standby holding it"
    );
    // An honest standby that receives the WAL and reports what it got
    // releases it: the check refuses lies only.
    let mut honest = ReplicationClient::connect(&info, DEADLINE).unwrap();
    assert!(matches!(
        honest
            .start_replication(None, id.xlogpos, Some(id.timeline))
            .unwrap(),
        StartOutcome::Streaming
    ));
    let mut received = id.xlogpos;
    let acked = wait_for("the commit to be released", DEADLINE, || {
        if let Ok(StreamEvent::XLogData { start, data, .. }) =
            honest.recv(Duration::from_millis(200))
        {
            received = Lsn(start.0 + data.len() as u64);
            honest
                .send_status(received, received, received, false)
                .unwrap();
        }
        rx.try_recv().ok()
    });
    assert!(acked);
    writer.join().unwrap();
    let log = node.log_text();
    assert!(
        log.contains("standby reported a position beyond the WAL sent to it"),
        "{log}"
    );
}

#[test]
fn idle_sockets_before_authentication_do_not_keep_a_standby_out() {
    let tmp = tempfile::tempdir().unwrap();
    let datadir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", "1MB"]);
    let node = TestNode::start(
        &datadir,
        &[
            "max_wal_senders=2",
            "max_startup_connections=4",
            "authentication_timeout=3s",
        ],
    );
    // Far more idle sockets than max_wal_senders and the startup pool.
    let idle: Vec<TcpStream> = (0..60)
        .map(|_| TcpStream::connect(("127.0.0.1", node.replication_port)).unwrap())
        .collect();
    let info = ConnInfo::parse(&format!(
        "host=127.0.0.1 port={} user=walrep application_name=real",
        node.replication_port
    ))
    .unwrap();
    for _ in 0..2 {
        let mut c = ReplicationClient::connect(&info, DEADLINE).unwrap();
        c.identify_system().unwrap();
        c.close();
    }
    // And a socket that says nothing is closed at authentication_timeout.
    let mut lone = TcpStream::connect(("127.0.0.1", node.replication_port)).unwrap();
    lone.set_read_timeout(Some(DEADLINE)).unwrap();
    let t0 = Instant::now();
    let mut b = [0u8; 1];
    assert!(matches!(
        std::io::Read::read(&mut lone, &mut b),
        Ok(0) | Err(_)
    ));
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    drop(idle);
}
