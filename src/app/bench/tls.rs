//! The `tls` scenario: what TLS costs walrep, beside what it costs
//! PostgreSQL 15 in the same run. Durable commits per second through the
//! Redis port (`port` vs `tls_port`, redis-benchmark `--tls`) and WAL MB/s
//! to the real `pg_receivewal` (`sslmode=disable` vs `require`); for
//! PostgreSQL (with `--anchors`), pgbench's upsert over TCP and
//! pg_receivewal, with `ssl = on` and the same certificate. The cost of a
//! cell is `1 - tls / plain`; the target is that TLS costs walrep no more
//! than it costs PostgreSQL.
//!
//! The certificate is an ECDSA P-256 one made by `openssl` for this run.
//! pg_receivewal runs with `--no-sync` on both sides so the figure is the
//! wire, not the disk; each starts from a slot made before the WAL was
//! generated and stops at `--endpos`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::cluster::{self, Node};
use super::loadgen::{self, Load, LoadResult};
use super::pg::PgAnchor;
use super::{BenchArgs, BenchError};
use walrep::Lsn;

/// One figure, plain and over TLS.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TlsRow {
    pub system: &'static str,
    pub what: String,
    pub unit: &'static str,
    pub plain: f64,
    pub tls: f64,
}

impl TlsRow {
    /// The share of the plain figure TLS takes away.
    pub fn cost(&self) -> f64 {
        if self.plain > 0.0 {
            1.0 - self.tls / self.plain
        } else {
            0.0
        }
    }
}

/// What the scenario measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TlsReport {
    pub rows: Vec<TlsRow>,
    pub wal_mb: u64,
    pub seconds: u64,
}

/// Most WAL the stream part generates (it is read twice per system).
const MAX_STREAM_MB: u64 = 512;

/// Run the scenario and print its table.
pub fn run(args: &BenchArgs) -> Result<TlsReport, BenchError> {
    for tool in ["redis-benchmark", "pg_receivewal", "openssl"] {
        super::require_tool(tool)?;
    }
    let run_dir = super::RunDir::create(args, "walrep-bench-tls-")?;
    let dir = run_dir.path();
    let (cert, key) = make_certificate(dir)?;
    let wal_mb = args.wal_mb.min(MAX_STREAM_MB);
    println!(
        "walrep bench --scenario tls: commits/s over the Redis port and WAL MB/s to pg_receivewal, plain vs TLS; {} s per run, {wal_mb} MB of WAL; data in {}",
        args.seconds,
        dir.display()
    );
    let mut rows = walrep_rows(args, dir, &cert, &key, wal_mb)?;
    match &args.anchors {
        Some(anchors) => rows.extend(postgres_rows(args, dir, anchors, &cert, &key, wal_mb)?),
        None => println!("  note: PostgreSQL not measured (give --anchors DIR)"),
    }
    print_table(&rows);
    run_dir.finish(args.keep);
    Ok(TlsReport {
        rows,
        wal_mb,
        seconds: args.seconds,
    })
}

/// A self-signed ECDSA certificate for 127.0.0.1 and localhost.
fn make_certificate(dir: &Path) -> Result<(PathBuf, PathBuf), BenchError> {
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .map_err(|e| BenchError::io("run openssl", e))?;
    if !out.status.success() {
        return Err(BenchError::Server(format!(
            "openssl could not make a certificate: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| BenchError::io("chmod the key", e))?;
    Ok((cert, key))
}

fn walrep_rows(
    args: &BenchArgs,
    dir: &Path,
    cert: &Path,
    key: &Path,
    wal_mb: u64,
) -> Result<Vec<TlsRow>, BenchError> {
    let exe = std::env::current_exe().map_err(|e| BenchError::io("find this binary", e))?;
    let datadir = dir.join("walrep");
    cluster::init(&exe, &datadir)?;
    let tls_port = super::procs::free_port()?;
    let node = Node::start(
        &exe,
        &datadir,
        &[
            "ssl=on".into(),
            format!("ssl_cert_file={}", cert.display()),
            format!("ssl_key_file={}", key.display()),
            format!("tls_port={tls_port}"),
            "synchronous_commit=local".into(),
        ],
    )?;
    let mut rows = Vec::new();
    for &clients in &args.clients {
        let load = |port| Load {
            port,
            clients,
            keyspace: args.keyspace,
            value_bytes: args.value_bytes,
        };
        let secs = Duration::from_secs(args.seconds);
        let (mut plain, mut tls) = (Vec::new(), Vec::new());
        for _ in 0..args.reps {
            plain.push(loadgen::run_for(&load(node.port), secs, dir)?);
            tls.push(loadgen::run_for_with(
                &load(tls_port),
                secs,
                dir,
                &["--tls", "--insecure"],
            )?);
        }
        rows.push(commit_row("walrep", clients, &plain, &tls));
    }
    let mut resp = node.connect()?;
    let conninfo = |mode: &str| {
        format!(
            "host=127.0.0.1 port={} user=walrep sslmode={mode}",
            node.repl_port
        )
    };
    for slot in ["bench_plain", "bench_tls"] {
        create_slot(&conninfo("disable"), slot)?;
    }
    // The slots hold WAL from here (RESERVE_WAL).
    let start = cluster::flush_lsn(&mut resp)?;
    let fill = Load {
        port: node.port,
        clients: 16,
        keyspace: 1_000_000,
        value_bytes: args.bulk_value_bytes,
    };
    let requests = (wal_mb << 20) / u64::from(args.bulk_value_bytes.max(1)) + 1;
    loadgen::run(&fill, requests, Duration::from_secs(600), dir)?;
    let end = cluster::flush_lsn(&mut resp)?;
    let plain = receive(dir, &conninfo("disable"), "bench_plain", start, end)?;
    let tls = receive(dir, &conninfo("require"), "bench_tls", start, end)?;
    rows.push(stream_row("walrep", plain, tls));
    node.stop();
    Ok(rows)
}

fn postgres_rows(
    args: &BenchArgs,
    dir: &Path,
    anchors: &Path,
    cert: &Path,
    key: &Path,
    wal_mb: u64,
) -> Result<Vec<TlsRow>, BenchError> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    let pg = PgAnchor::start(&dir.join("postgres"), anchors)?;
    pg.enable_ssl(cert, key)?;
    pg.set_synchronous_commit("on")?;
    let mut rows = Vec::new();
    for &clients in &args.clients {
        let (mut plain, mut tls) = (Vec::new(), Vec::new());
        for _ in 0..args.reps {
            plain.push(pg.pgbench_tcp(clients, args.seconds, "disable")?);
            tls.push(pg.pgbench_tcp(clients, args.seconds, "require")?);
        }
        rows.push(commit_row("PostgreSQL 15", clients, &plain, &tls));
    }
    let lsn = |s: String| {
        s.parse::<Lsn>()
            .map_err(|_| BenchError::Anchor(format!("PostgreSQL: not an LSN: {s:?}")))
    };
    pg.psql(&[
        "SELECT pg_create_physical_replication_slot('bench_plain', true)",
        "SELECT pg_create_physical_replication_slot('bench_tls', true)",
        "CREATE TABLE walbulk (v text)",
    ])?;
    let start = lsn(pg.psql(&["SELECT pg_current_wal_flush_lsn()"])?)?;
    let rows_needed = (wal_mb << 20) / 4096 + 1;
    pg.psql(&[&format!(
        "INSERT INTO walbulk SELECT repeat(md5(g::text), 128) FROM generate_series(1, {rows_needed}) g"
    )])?;
    let end = lsn(pg.psql(&["SELECT pg_current_wal_flush_lsn()"])?)?;
    let conninfo = |mode: &str| {
        format!(
            "host=127.0.0.1 port={} user=postgres sslmode={mode}",
            pg.port()
        )
    };
    let plain = receive(dir, &conninfo("disable"), "bench_plain", start, end)?;
    let tls = receive(dir, &conninfo("require"), "bench_tls", start, end)?;
    rows.push(stream_row("PostgreSQL 15", plain, tls));
    Ok(rows)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn commit_row(
    system: &'static str,
    clients: u32,
    plain: &[LoadResult],
    tls: &[LoadResult],
) -> TlsRow {
    let rps = |r: &[LoadResult]| median(&mut r.iter().map(|x| x.rps).collect::<Vec<_>>());
    let row = TlsRow {
        system,
        what: format!("durable commits, {clients} client(s)"),
        unit: "commits/s",
        plain: rps(plain),
        tls: rps(tls),
    };
    println!(
        "  {system}: {}: {:.0} plain, {:.0} TLS ({:+.1}%)",
        row.what,
        row.plain,
        row.tls,
        -100.0 * row.cost()
    );
    row
}

fn stream_row(system: &'static str, plain: f64, tls: f64) -> TlsRow {
    let row = TlsRow {
        system,
        what: "WAL to pg_receivewal".into(),
        unit: "MB/s",
        plain,
        tls,
    };
    println!(
        "  {system}: {}: {:.0} MB/s plain, {:.0} MB/s TLS ({:+.1}%)",
        row.what,
        plain,
        tls,
        -100.0 * row.cost()
    );
    row
}

/// A physical slot that reserves WAL at once (pg_receivewal's
/// `--create-slot` does not reserve, and would then start at the newest
/// segment instead of the slot's position).
fn create_slot(conninfo: &str, slot: &str) -> Result<(), BenchError> {
    use walrep::replication::client::{ConnInfo, ReplicationClient};
    let info = ConnInfo::parse(conninfo).map_err(|e| BenchError::Server(e.to_string()))?;
    let mut c = ReplicationClient::connect(&info, Duration::from_secs(30))
        .map_err(|e| BenchError::Server(format!("connect to create slot {slot}: {e}")))?;
    c.create_physical_slot(slot, false, true)
        .map_err(|e| BenchError::Server(format!("create slot {slot}: {e}")))?;
    c.close();
    Ok(())
}

/// pg_receivewal from `slot` up to `end`; MB/s of WAL from `start`.
/// Killed after [`RECEIVE_LIMIT`].
fn receive(
    dir: &Path,
    conninfo: &str,
    slot: &str,
    start: Lsn,
    end: Lsn,
) -> Result<f64, BenchError> {
    let out_dir = dir.join(format!("received-{slot}-{}", end.0));
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| BenchError::io(format!("create {}", out_dir.display()), e))?;
    // pg_receivewal stops once it has received past --endpos: one byte
    // before the end, so it stops at the end instead of waiting for more.
    let stop = Lsn(end.0.saturating_sub(1));
    let log = dir.join(format!("pg_receivewal-{slot}.log"));
    let err = std::fs::File::create(&log)
        .map_err(|e| BenchError::io(format!("create {}", log.display()), e))?;
    let mut cmd = Command::new("pg_receivewal");
    cmd.args(["-d", conninfo, "-S", slot, "-n", "--no-sync"])
        .arg(format!("--endpos={stop}"))
        .arg("-D")
        .arg(&out_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err);
    let t0 = Instant::now();
    let mut child = super::procs::Child::spawn("pg_receivewal", &mut cmd)?;
    while !child.exited()? {
        if t0.elapsed() > RECEIVE_LIMIT {
            child.stop();
            return Err(BenchError::Load(format!(
                "pg_receivewal from slot {slot} did not reach {end} within {RECEIVE_LIMIT:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = t0.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&out_dir);
    let received = received_all(&log);
    if !received {
        return Err(BenchError::Server(format!(
            "pg_receivewal from slot {slot} failed: {}",
            std::fs::read_to_string(&log).unwrap_or_default().trim()
        )));
    }
    Ok((end.0.saturating_sub(start.0)) as f64 / (1 << 20) as f64 / secs.max(1e-6))
}

/// Longest a pg_receivewal run may take.
const RECEIVE_LIMIT: Duration = Duration::from_secs(600);

/// pg_receivewal exited without an error message (its exit status is
/// taken by the guard; an error always says "error:").
fn received_all(log: &Path) -> bool {
    !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains("error:")
}

fn print_table(rows: &[TlsRow]) {
    println!("\n| system | figure | plain | TLS | TLS cost |\n|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} ({}) | {:.0} | {:.0} | {:.1}% |",
            r.system,
            r.what,
            r.unit,
            r.plain,
            r.tls,
            100.0 * r.cost()
        );
    }
    for w in rows.iter().filter(|r| r.system == "walrep") {
        if let Some(p) = rows
            .iter()
            .find(|p| p.system != "walrep" && p.what == w.what)
        {
            println!(
                "target: TLS costs walrep no more than PostgreSQL ({}): {:.1}% vs {:.1}% -> {}",
                w.what,
                100.0 * w.cost(),
                100.0 * p.cost(),
                if w.cost() <= p.cost() + 0.02 {
                    "met"
                } else {
                    "NOT met"
                }
            );
        }
    }
}
