//! Our replication client against a real PostgreSQL 15 primary (SCRAM
//! authentication, IDENTIFY_SYSTEM, SHOW, streaming): the segments it
//! writes in pg_receivewal's layout are byte-identical to what the real
//! pg_receivewal wrote from the same server over the same range. A walrep
//! standby's status address, sent as a dotted startup parameter, does not
//! stop PostgreSQL from serving it.

mod support;

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::process::ChildGuard;
use support::tools::tool;
use support::wal::segment_file_names;
use support::{free_port, wait_until, DEADLINE};
use walrep::replication::client::{ConnInfo, ReplicationClient, StartOutcome, StreamEvent};
use walrep::{Lsn, TimelineId, WalSegSize};

/// A PostgreSQL 15 server in a temporary directory, run as user postgres,
/// stopped (fast shutdown, then kill) on drop.
struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    child: ChildGuard,
}

fn as_postgres(bin: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
        .arg(bin);
    c
}

impl Postgres {
    fn start() -> Option<Postgres> {
        let initdb = tool("initdb")?;
        let postgres = tool("postgres")?;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        chown_postgres(dir.path());
        let st = as_postgres(&initdb)
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--wal-segsize=1",
                "-N",
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "initdb failed");
        fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhost replication walrep 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        let port = free_port();
        let mut cmd = as_postgres(&postgres);
        cmd.arg("-D").arg(&data).args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            &format!("port={port}"),
            "-c",
            &format!("unix_socket_directories={}", dir.path().display()),
            "-c",
            "wal_level=replica",
            "-c",
            "max_wal_senders=4",
            "-c",
            "fsync=off",
            "-c",
            "password_encryption=scram-sha-256",
        ]);
        cmd.stdout(File::create(dir.path().join("postgres.log")).unwrap());
        cmd.stderr(File::create(dir.path().join("postgres.err")).unwrap());
        let pg = Postgres {
            port,
            child: ChildGuard::spawn(&mut cmd),
            dir,
        };
        wait_until("PostgreSQL to accept connections", || {
            pg.sql("SELECT 1").is_ok()
        });
        pg.sql("CREATE ROLE walrep LOGIN REPLICATION PASSWORD 'pg pw'")
            .unwrap();
        Some(pg)
    }

    /// Run SQL as postgres over the Unix socket; stdout or stderr.
    fn sql(&self, sql: &str) -> Result<String, String> {
        let o = Command::new(tool("psql").unwrap())
            .args(["-X", "-A", "-t", "-h"])
            .arg(self.dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    }

    fn conninfo(&self, password: &str) -> ConnInfo {
        ConnInfo::parse(&format!(
            "host=127.0.0.1 port={} user=walrep password='{password}' application_name=walrep_test",
            self.port
        ))
        .unwrap()
    }
}

impl Drop for Postgres {
    /// Fast shutdown (SIGINT), bounded; the guard kills a server that
    /// does not stop in time.
    fn drop(&mut self) {
        let _ = self.child.signal_and_wait(libc::SIGINT);
    }
}

fn chown_postgres(p: &Path) {
    let st = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success(), "chown failed");
}

/// Writes WAL exactly as pg_receivewal lays it out: `<seg>.partial`
/// zero-filled to the segment size, renamed when complete.
struct SegmentWriter {
    dir: PathBuf,
    seg: WalSegSize,
    tli: TimelineId,
    open: Option<(u64, File)>,
}

impl SegmentWriter {
    fn write(&mut self, start: Lsn, data: &[u8]) {
        let mut pos = start.0;
        let mut data = data;
        while !data.is_empty() {
            let segno = pos / self.seg.bytes();
            let off = pos % self.seg.bytes();
            let n = ((self.seg.bytes() - off) as usize).min(data.len());
            let file = self.file(segno, off);
            file.write_all_at(&data[..n], off).unwrap();
            pos += n as u64;
            data = &data[n..];
            if pos % self.seg.bytes() == 0 {
                self.complete();
            }
        }
    }

    fn name(&self, segno: u64) -> String {
        walrep::SegNo(segno).file_name(self.tli, self.seg)
    }

    fn file(&mut self, segno: u64, off: u64) -> &File {
        if self.open.as_ref().map(|o| o.0) != Some(segno) {
            assert_eq!(off, 0, "first WAL of a segment must start at its beginning");
            let path = self.dir.join(format!("{}.partial", self.name(segno)));
            let f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(path)
                .unwrap();
            f.set_len(self.seg.bytes()).unwrap();
            self.open = Some((segno, f));
        }
        &self.open.as_ref().unwrap().1
    }

    fn complete(&mut self) {
        let (segno, f) = self.open.take().unwrap();
        f.sync_all().unwrap();
        let from = self.dir.join(format!("{}.partial", self.name(segno)));
        fs::rename(from, self.dir.join(self.name(segno))).unwrap();
    }
}

#[test]
fn our_client_streams_the_same_bytes_as_pg_receivewal() {
    let Some(pg) = Postgres::start() else { return };
    // SCRAM against PostgreSQL: a wrong password is PostgreSQL's 28P01.
    let e = ReplicationClient::connect(&pg.conninfo("nope"), DEADLINE)
        .err()
        .unwrap();
    assert_eq!(e.sqlstate(), Some("28P01"), "{e}");
    let theirs = tempfile::tempdir().unwrap();
    let ours = tempfile::tempdir().unwrap();
    let mut rw = Command::new(tool("pg_receivewal").unwrap());
    rw.args([
        "-h",
        "127.0.0.1",
        "-p",
        &pg.port.to_string(),
        "-U",
        "walrep",
        "-n",
        "-s",
        "1",
        "-D",
    ])
    .arg(theirs.path())
    .env("PGPASSWORD", "pg pw");
    let mut receiver = ChildGuard::spawn(&mut rw);
    // pg_receivewal starts at the beginning of the segment the server is
    // writing when it connects: it must be streaming before our start
    // position is taken, or, connecting late on a loaded machine, it starts
    // segments after ours and never completes our first ones.
    wait_until("pg_receivewal to stream", || {
        pg.sql(
            "SELECT count(*) FROM pg_stat_replication \
             WHERE application_name = 'pg_receivewal' AND state = 'streaming'",
        )
        .is_ok_and(|n| n == "1")
    });
    let mut c = ReplicationClient::connect(&pg.conninfo("pg pw"), DEADLINE).unwrap();
    let id = c.identify_system().unwrap();
    let sysid = pg
        .sql("SELECT system_identifier FROM pg_control_system()")
        .unwrap();
    assert_eq!(id.system_id.to_string(), sysid);
    assert_eq!(id.dbname, None);
    assert_eq!(c.show("wal_segment_size").unwrap(), "1MB");
    let seg = WalSegSize::new(1 << 20).unwrap();
    let start = id.xlogpos.segment_start(seg);

    assert_eq!(
        c.start_replication(None, start, Some(id.timeline)).unwrap(),
        StartOutcome::Streaming
    );
    let mut writer = SegmentWriter {
        dir: ours.path().to_path_buf(),
        seg,
        tli: id.timeline,
        open: None,
    };
    pg.sql("CREATE TABLE t(x int, pad text)").unwrap();
    for i in 0..3 {
        pg.sql(&format!(
            "INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, {}) g",
            2000 + i
        ))
        .unwrap();
        pg.sql("SELECT pg_switch_wal()").unwrap();
    }
    let end: Lsn = pg
        .sql("SELECT pg_current_wal_flush_lsn()")
        .unwrap()
        .parse()
        .unwrap();
    let mut received = start;
    let deadline = std::time::Instant::now() + DEADLINE;
    while received < end.segment_start(seg) {
        assert!(
            std::time::Instant::now() < deadline,
            "did not receive up to {end} (at {received})"
        );
        match c.recv(Duration::from_secs(1)).unwrap() {
            StreamEvent::XLogData { start, data, .. } => {
                assert_eq!(start, received, "gap in the stream");
                writer.write(start, &data);
                received = Lsn(start.0 + data.len() as u64);
            }
            StreamEvent::Keepalive {
                reply_requested: true,
                ..
            } => c.send_status(received, Lsn(0), Lsn(0), false).unwrap(),
            _ => {}
        }
    }
    c.stop_streaming().unwrap();
    c.close();

    let want: Vec<String> = segment_file_names(ours.path());
    assert!(
        want.len() >= 3,
        "expected at least 3 completed segments, got {want:?}"
    );
    wait_until("pg_receivewal to complete the same segments", || {
        want.iter()
            .all(|w| segment_file_names(theirs.path()).contains(w))
    });
    assert!(receiver.interrupt().success());
    for name in &want {
        let a = fs::read(ours.path().join(name)).unwrap();
        let b = fs::read(theirs.path().join(name)).unwrap();
        assert!(a == b, "segment {name} differs from pg_receivewal's");
    }
}

#[test]
fn a_real_primary_accepts_a_standbys_status_address_and_sends_none() {
    use walrep::status::links::{STATUS_URL_PARAMETER, STATUS_URL_STARTUP_PARAMETER};
    let Some(pg) = Postgres::start() else { return };
    let param = |name: &str| vec![(name.to_string(), "http://127.0.0.1:9187/".to_string())];
    // What a walrep standby sends: a dotted (custom) setting, accepted.
    let mut c = ReplicationClient::connect_with(
        &pg.conninfo("pg pw"),
        DEADLINE,
        &param(STATUS_URL_STARTUP_PARAMETER),
    )
    .unwrap();
    assert!(c.identify_system().is_ok());
    assert_eq!(c.parameter(STATUS_URL_PARAMETER), None);
    assert_eq!(c.status_url(), None);
    assert_eq!(c.instance_id(), None);
    // Why the name has a dot: PostgreSQL refuses an undotted name it does
    // not know (42704, unrecognized configuration parameter).
    let e = ReplicationClient::connect_with(
        &pg.conninfo("pg pw"),
        DEADLINE,
        &param("walrep_status_url"),
    )
    .err()
    .expect("an unknown undotted startup parameter is refused");
    assert_eq!(e.sqlstate(), Some("42704"), "{e}");
}
