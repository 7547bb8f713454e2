//! PostgreSQL 15 in the same run, as `shared/anchors/02_pgbench.sh` runs it
//! (lone primary, one upsert per transaction from its `kv_upsert.sql`,
//! pgbench -n -M prepared), only the cells the benchmark needs. PostgreSQL
//! refuses to run as root: as root, every PostgreSQL command runs as the
//! `postgres` user (runuser) on a directory chowned to it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::loadgen::LoadResult;
use super::procs::free_port;
use super::BenchError;

/// Where Debian installs PostgreSQL 15's server programs.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The OS user PostgreSQL runs as when we are root.
const PG_USER: &str = "postgres";
/// Rows of the `kv` table (the script's key range).
const NKEYS: u64 = 100_000;

/// A PostgreSQL cluster of this run; stopped on drop.
pub struct PgAnchor {
    dir: PathBuf,
    data: PathBuf,
    sock: PathBuf,
    port: u16,
    script: PathBuf,
    as_root: bool,
    started: bool,
}

impl PgAnchor {
    /// initdb + start in `dir` (created), with the upsert script copied
    /// from `anchors_dir/kv_upsert.sql`.
    pub fn start(dir: &Path, anchors_dir: &Path) -> Result<PgAnchor, BenchError> {
        let script = dir.join("kv_upsert.sql");
        // SAFETY: geteuid has no preconditions.
        let as_root = unsafe { libc::geteuid() } == 0;
        let mut pg = PgAnchor::prepare(dir, script.clone(), as_root)?;
        std::fs::copy(anchors_dir.join("kv_upsert.sql"), &script).map_err(|e| {
            let what = format!("copy {}/kv_upsert.sql", anchors_dir.display());
            BenchError::io(format!("PostgreSQL anchor: {what}"), e)
        })?;
        pg.give_to_pg(dir, true)?;
        pg.init()?;
        pg.pg_ctl_start()?;
        pg.psql(&[
            "CREATE TABLE kv (k text PRIMARY KEY, v text)",
            &format!("INSERT INTO kv SELECT g::text, 'v'||g FROM generate_series(1,{NKEYS}) g"),
            "VACUUM ANALYZE kv",
        ])?;
        Ok(pg)
    }

    /// A server of this run in `dir` (created, with its socket directory),
    /// not started: its data directory, a free port.
    fn prepare(dir: &Path, script: PathBuf, as_root: bool) -> Result<PgAnchor, BenchError> {
        std::fs::create_dir_all(dir.join("sock"))
            .map_err(|e| BenchError::io(format!("PostgreSQL: create {}", dir.display()), e))?;
        Ok(PgAnchor {
            dir: dir.to_path_buf(),
            data: dir.join("data"),
            sock: dir.join("sock"),
            port: free_port()?,
            script,
            as_root,
            started: false,
        })
    }

    /// Append `lines` to the data directory's postgresql.conf.
    fn append_conf(&self, lines: &str) -> Result<(), BenchError> {
        let path = self.data.join("postgresql.conf");
        let io =
            |what: &str, e| BenchError::io(format!("PostgreSQL: {what} {}", path.display()), e);
        let mut text = std::fs::read_to_string(&path).map_err(|e| io("read", e))?;
        text.push_str(lines);
        std::fs::write(&path, text).map_err(|e| io("write", e))
    }

    fn cmd(&self, program: &str) -> Command {
        let path = Path::new(PG_BIN).join(program);
        if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", PG_USER, "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn init(&mut self) -> Result<(), BenchError> {
        let out = self
            .cmd("initdb")
            .arg("-D")
            .arg(&self.data)
            .args(["-A", "trust", "-U", PG_USER, "--no-instructions"])
            .output();
        check("initdb", out)?;
        self.append_conf(&format!(
            "\n# walrep bench\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nlogging_collector = off\n",
            self.port,
            self.sock.display()
        ))
    }

    fn pg_ctl_start(&mut self) -> Result<(), BenchError> {
        let out = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.dir.join("postgres.log"))
            .args(["-w", "-t", "120", "start"])
            .stdout(Stdio::null())
            .output();
        check("pg_ctl start", out)?;
        self.started = true;
        Ok(())
    }

    /// Run SQL statements, one `-c` each; returns psql's output.
    pub fn psql(&self, sql: &[&str]) -> Result<String, BenchError> {
        let mut c = self.cmd("psql");
        c.args(["-X", "-q", "-At", "-U", PG_USER, "-d", "postgres", "-h"])
            .arg(&self.sock)
            .args(["-p", &self.port.to_string()]);
        for s in sql {
            c.args(["-c", s]);
        }
        let out = check("psql", c.output())?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `synchronous_commit` = on | off, applied and verified.
    pub fn set_synchronous_commit(&self, value: &str) -> Result<(), BenchError> {
        self.psql(&[
            &format!("ALTER SYSTEM SET synchronous_commit = '{value}'"),
            "SELECT pg_reload_conf()",
        ])?;
        std::thread::sleep(Duration::from_millis(500));
        let shown = self.psql(&["SHOW synchronous_commit"])?;
        if shown != value {
            return Err(BenchError::Anchor(format!(
                "PostgreSQL: synchronous_commit is {shown:?} after setting {value:?}"
            )));
        }
        Ok(())
    }

    /// Wait (at most a minute) until a standby streams from this server.
    pub fn wait_streaming(&self) -> Result<(), BenchError> {
        let sql = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'";
        for _ in 0..300 {
            if self.psql(&[sql])? != "0" {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(BenchError::Anchor(
            "PostgreSQL: no standby streaming after 60 s".into(),
        ))
    }

    /// CHECKPOINT, then pgbench with `clients` for `seconds` over the
    /// Unix socket.
    pub fn pgbench(&self, clients: u32, seconds: u64) -> Result<LoadResult, BenchError> {
        let logs = format!("pgbench_logs_c{clients}");
        self.run_pgbench(&logs, self.sock.as_os_str(), None, clients, seconds)
    }

    /// CHECKPOINT, then pgbench with `clients` for `seconds` to `host`
    /// (`PGSSLMODE=sslmode` if given), its per-transaction log in a fresh
    /// directory `logs` (removed after): tps and latencies.
    fn run_pgbench(
        &self,
        logs: &str,
        host: &std::ffi::OsStr,
        sslmode: Option<&str>,
        clients: u32,
        seconds: u64,
    ) -> Result<LoadResult, BenchError> {
        self.psql(&["CHECKPOINT"])?;
        let logs = self.dir.join(logs);
        std::fs::create_dir_all(&logs).map_err(|e| BenchError::io("create pgbench logs", e))?;
        self.give_to_pg(&logs, false)?;
        let mut cmd = self.cmd("pgbench");
        if let Some(mode) = sslmode {
            cmd.env("PGSSLMODE", mode);
        }
        let out = cmd
            .current_dir(&logs)
            .args(["-n", "-M", "prepared", "-U", PG_USER, "-h"])
            .arg(host)
            .args(["-p", &self.port.to_string()])
            .args([
                "-c",
                &clients.to_string(),
                "-j",
                &clients.min(2).to_string(),
            ])
            .args(["-T", &seconds.to_string(), "-l", "--log-prefix=tx", "-f"])
            .arg(&self.script)
            .arg("postgres")
            .output();
        let out = check("pgbench", out)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut lat_us = read_latencies(&logs)?;
        let _ = std::fs::remove_dir_all(&logs);
        parse_pgbench(&stdout, &mut lat_us)
    }

    /// As root, hand `path` (with `tree`, everything under it) to
    /// PostgreSQL's user, which must write there.
    fn give_to_pg(&self, path: &Path, tree: bool) -> Result<(), BenchError> {
        if !self.as_root {
            return Ok(());
        }
        let mut cmd = Command::new("chown");
        if tree {
            cmd.arg("-R");
        }
        check("chown", cmd.arg(format!("{PG_USER}:")).arg(path).output())?;
        Ok(())
    }
}

/// PostgreSQL with TLS, for the `tls` scenario: `ssl = on` with a given
/// certificate, and the clients that reach it over TCP with a `sslmode`.
impl PgAnchor {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Copy `cert` and `key` into the data directory, `ssl = on`, reload,
    /// and check it took.
    pub fn enable_ssl(&self, cert: &Path, key: &Path) -> Result<(), BenchError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |what: &str, e| BenchError::io(format!("PostgreSQL anchor: {what}"), e);
        for (from, name) in [(cert, "server.crt"), (key, "server.key")] {
            let to = self.data.join(name);
            std::fs::copy(from, &to).map_err(|e| io(&format!("copy {name}"), e))?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| io(&format!("chmod {name}"), e))?;
            self.give_to_pg(&to, false)?;
        }
        self.psql(&["ALTER SYSTEM SET ssl = on", "SELECT pg_reload_conf()"])?;
        std::thread::sleep(Duration::from_millis(500));
        match self.psql(&["SHOW ssl"])?.as_str() {
            "on" => Ok(()),
            other => Err(BenchError::Anchor(format!(
                "PostgreSQL: ssl is {other:?} after turning it on"
            ))),
        }
    }

    /// pgbench over TCP to 127.0.0.1 with `sslmode` (disable or require).
    pub fn pgbench_tcp(
        &self,
        clients: u32,
        seconds: u64,
        sslmode: &str,
    ) -> Result<LoadResult, BenchError> {
        let logs = format!("pgbench_tcp_{sslmode}_c{clients}");
        let host = std::ffi::OsStr::new("127.0.0.1");
        self.run_pgbench(&logs, host, Some(sslmode), clients, seconds)
    }
}

impl Drop for PgAnchor {
    fn drop(&mut self) {
        if self.started {
            let _ = self
                .cmd("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "fast", "-w", "-t", "60", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn check(what: &str, out: std::io::Result<Output>) -> Result<Output, BenchError> {
    let out = out.map_err(|e| BenchError::io(format!("PostgreSQL anchor: run {what}"), e))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(BenchError::Anchor(format!(
            "PostgreSQL anchor: {what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Per-transaction latencies (µs, third field) from pgbench's `-l` logs.
fn read_latencies(dir: &Path) -> Result<Vec<u64>, BenchError> {
    let mut lat = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| BenchError::io("read pgbench logs", e))?;
    for e in entries.flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        lat.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()),
        );
    }
    Ok(lat)
}

/// tps and mean latency from pgbench's summary; p50/p99/max from the
/// per-transaction latencies.
pub fn parse_pgbench(stdout: &str, lat_us: &mut [u64]) -> Result<LoadResult, BenchError> {
    let num_after = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
    };
    let bad = |what: &str| BenchError::Anchor(format!("pgbench output has no {what}: {stdout:?}"));
    let tps = num_after("tps = ").ok_or_else(|| bad("tps"))?;
    let mean_ms = num_after("latency average = ").ok_or_else(|| bad("latency average"))?;
    if lat_us.is_empty() {
        return Err(bad("per-transaction log"));
    }
    lat_us.sort_unstable();
    let pct =
        |q: f64| lat_us[((q * lat_us.len() as f64) as usize).min(lat_us.len() - 1)] as f64 / 1000.0;
    Ok(LoadResult {
        rps: tps,
        mean_ms,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
        requests: lat_us.len() as u64,
    })
}

/// The `backup` scenario's PostgreSQL side: the same amount of data,
/// copied by one pg_basebackup.
impl PgAnchor {
    /// About `mb` MB in a table whose 256 kB values are stored out of line
    /// uncompressed (EXTERNAL), as walrep's values are, then a checkpoint.
    pub fn fill_bulk(&self, mb: u64) -> Result<(), BenchError> {
        self.psql(&[
            "CREATE TABLE bulk (k int PRIMARY KEY, v text)",
            "ALTER TABLE bulk ALTER COLUMN v SET STORAGE EXTERNAL",
            &format!(
                "INSERT INTO bulk SELECT g, repeat(md5(g::text), 8192) FROM generate_series(1, {}) g",
                mb * 4
            ),
            "CHECKPOINT",
        ])?;
        Ok(())
    }

    /// Seconds of `pg_basebackup -X fetch -c fast` of this server into a
    /// new directory beside it (removed after).
    pub fn basebackup_secs(&self) -> Result<f64, BenchError> {
        let dest = self.dir.join("basebackup");
        let t0 = std::time::Instant::now();
        let out = self
            .cmd("pg_basebackup")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", PG_USER, "-X", "fetch", "-c", "fast", "-D"])
            .arg(&dest)
            .output();
        let secs = t0.elapsed().as_secs_f64();
        let _ = std::fs::remove_dir_all(&dest);
        check("pg_basebackup", out)?;
        Ok(secs)
    }
}

/// Cascading standbys for the `chain` scenario: each copied with
/// pg_basebackup from its upstream (a standby for every hop after the
/// first, as PostgreSQL allows) and streaming from it.
impl PgAnchor {
    /// A standby of the server on `upstream_port`, in `dir` (created):
    /// pg_basebackup -R -X stream, its own port and socket, started.
    pub fn standby_of(&self, upstream_port: u16, dir: &Path) -> Result<PgAnchor, BenchError> {
        let mut pg = PgAnchor::prepare(dir, self.script.clone(), self.as_root)?;
        pg.give_to_pg(dir, true)?;
        let out = pg
            .cmd("pg_basebackup")
            .args(["-h", "127.0.0.1", "-p", &upstream_port.to_string()])
            .args(["-U", PG_USER, "-R", "-X", "stream", "-c", "fast", "-D"])
            .arg(&pg.data)
            .output();
        check("pg_basebackup", out)?;
        pg.append_conf(&format!(
            "\n# walrep bench standby\nport = {}\nunix_socket_directories = '{}'\n",
            pg.port,
            pg.sock.display()
        ))?;
        pg.pg_ctl_start()?;
        Ok(pg)
    }

    /// Run `sql` `times` times with `pause_s` between runs in one psql
    /// session (a script file, so no process per sample); returns psql's
    /// output, one line per row.
    pub fn sample(&self, sql: &str, times: usize, pause_s: f64) -> Result<String, BenchError> {
        let file = self.dir.join("sample.sql");
        let mut text = String::new();
        for _ in 0..times {
            text.push_str(sql);
            text.push_str(&format!(";\nSELECT pg_sleep({pause_s});\n"));
        }
        std::fs::write(&file, text).map_err(|e| BenchError::io("write sample.sql", e))?;
        let mut c = self.cmd("psql");
        c.args(["-X", "-q", "-At", "-U", PG_USER, "-d", "postgres", "-h"])
            .arg(&self.sock)
            .args(["-p", &self.port.to_string(), "-f"])
            .arg(&file);
        let out = check("psql", c.output())?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pgbench_summary_and_logs() {
        let out = "transaction type: kv_upsert.sql\nscaling factor: 1\nnumber of clients: 1\nlatency average = 0.186 ms\ninitial connection time = 3.1 ms\ntps = 5389.123456 (without initial connection time)\n";
        let mut lat: Vec<u64> = (1..=100).rev().collect();
        let r = parse_pgbench(out, &mut lat).unwrap();
        assert_eq!(r.rps, 5389.123456);
        assert_eq!(r.mean_ms, 0.186);
        assert_eq!(r.p50_ms, 0.051);
        assert_eq!(r.p99_ms, 0.100);
        assert_eq!(r.requests, 100);
        assert!(parse_pgbench("pgbench: error: connection refused", &mut lat).is_err());
        assert!(parse_pgbench(out, &mut []).is_err());
    }
}
