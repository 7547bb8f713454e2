//! psql (libpq, PostgreSQL 15) as a client of our replication server:
//! IDENTIFY_SYSTEM, TIMELINE_HISTORY, SHOW, errors, and authentication
//! (SCRAM with the right and a wrong password, refused addresses/users).

mod support;

use std::process::{Command, Output};

use support::fake::{scram_options, FakeServer};
use support::tools::tool;
use support::wal::SYSTEM_ID;
use walrep::replication::server::ServerOptions;

fn psql(conninfo: &str, sql: &str, password: Option<&str>) -> Option<Output> {
    let bin = tool("psql")?;
    let mut c = Command::new(bin);
    c.args([
        "-X",
        "-A",
        "-t",
        "-F",
        ",",
        "-w",
        "-v",
        "VERBOSITY=verbose",
        "-d",
        conninfo,
        "-c",
        sql,
    ]);
    c.env_remove("PGPASSWORD");
    if let Some(p) = password {
        c.env("PGPASSWORD", p);
    }
    Some(c.output().unwrap())
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn psql_runs_identify_system_and_timeline_history() {
    let s = FakeServer::start(ServerOptions::default());
    let switch = s.source.advance(0x2_0000_4F28);
    s.source.promote();
    let ci = s.conninfo("replication=true");
    let Some(o) = psql(&ci, "IDENTIFY_SYSTEM", None) else {
        return;
    };
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), format!("{SYSTEM_ID},2,{switch},"));
    let o = psql(&ci, "TIMELINE_HISTORY 2", None).unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim_end(),
        "00000002.history,1\t2/4F28\tno recovery target specified"
    );
    let o = psql(&ci, "SHOW wal_segment_size", None).unwrap();
    assert_eq!(stdout(&o).trim(), "1MB");
    let o = psql(&ci, "START_REPLICATION SLOT 0/0", None).unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("42601: syntax error"), "{}", stderr(&o));
    let o = psql(&ci, "SELECT 1", None).unwrap();
    assert!(
        stderr(&o)
            .contains("0A000: cannot execute SQL commands in WAL sender for physical replication"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn psql_authenticates_with_scram_and_sees_auth_failures() {
    let s = FakeServer::start(scram_options());
    let ci = s.conninfo("replication=true");
    let Some(o) = psql(&ci, "IDENTIFY_SYSTEM", Some("sekrit pw")) else {
        return;
    };
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with(&SYSTEM_ID.to_string()));
    let o = psql(&ci, "IDENTIFY_SYSTEM", Some("wrong")).unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("password authentication failed for user \"walrep\""),
        "{}",
        stderr(&o)
    );
    let o = psql(
        &format!(
            "host=127.0.0.1 port={} user=rejected replication=true",
            s.port
        ),
        "IDENTIFY_SYSTEM",
        Some("x"),
    )
    .unwrap();
    assert!(
        stderr(&o).contains(
            "pg_hba.conf rejects replication connection for host \"127.0.0.1\", user \"rejected\""
        ),
        "{}",
        stderr(&o)
    );
    let o = psql(
        &format!(
            "host=127.0.0.1 port={} user=mallory replication=true",
            s.port
        ),
        "IDENTIFY_SYSTEM",
        Some("x"),
    )
    .unwrap();
    assert!(stderr(&o).contains("no pg_hba.conf entry for replication connection from host \"127.0.0.1\", user \"mallory\""), "{}", stderr(&o));
    // A non-replication connection is refused as by a replication-only pg_hba.conf.
    let o = psql(
        &format!("host=127.0.0.1 port={} user=walrep", s.port),
        "SELECT 1",
        Some("sekrit pw"),
    )
    .unwrap();
    assert!(
        stderr(&o).contains("no pg_hba.conf entry for host \"127.0.0.1\", user \"walrep\""),
        "{}",
        stderr(&o)
    );
}
