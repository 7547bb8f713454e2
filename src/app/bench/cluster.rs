//! walrep nodes for the replication scenarios: `walrep init`, `walrep
//! start` with `-c` overrides, `walrep basebackup -R`, all from this very
//! binary; INFO fields and LSNs read over a persistent RESP connection; and
//! bounded waits on them. Every node is a [`Child`] guard (stopped on drop).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use super::procs::init;
use super::procs::{free_port, wait_ready, Child};
use super::BenchError;
use walrep::Lsn;

/// Bound on one RESP command's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest reply read (INFO is a few kB).
const MAX_REPLY_BYTES: usize = 1 << 20;
/// Most parameters one CONFIG GET answer is read for.
const MAX_CONFIG_PAIRS: usize = 1024;

/// A running walrep node started by the benchmark.
pub struct Node {
    /// Stops the process on drop.
    pub child: Child,
    pub datadir: PathBuf,
    /// The Redis-protocol port.
    pub port: u16,
    /// The replication port (walsenders, base backups).
    pub repl_port: u16,
    /// When `walrep start` was spawned (the start of a catch-up clock).
    pub spawned_at: Instant,
}

/// `walrep basebackup --from 127.0.0.1:REPL -D DIR -R` (a standby named
/// `application_name`).
pub fn basebackup(
    exe: &Path,
    repl_port: u16,
    dir: &Path,
    application_name: &str,
) -> Result<(), BenchError> {
    basebackup_with(exe, repl_port, dir, application_name, &[])
}

/// [`basebackup`] with more options (`--no-slot`).
pub fn basebackup_with(
    exe: &Path,
    repl_port: u16,
    dir: &Path,
    application_name: &str,
    extra: &[&str],
) -> Result<(), BenchError> {
    let out = Command::new(exe)
        .arg("basebackup")
        .args(["--from", &format!("127.0.0.1:{repl_port}"), "-D"])
        .arg(dir)
        .args(["-R", "-U", "walrep", "--application-name", application_name])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BenchError::io("walrep basebackup", e))?;
    if !out.status.success() {
        return Err(BenchError::Server(format!(
            "walrep basebackup into {} failed ({}): {}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Drop replication slot `name` on the node at `repl_port`, if it has one.
pub fn drop_slot(repl_port: u16, name: &str) -> Result<(), BenchError> {
    use walrep::replication::client::{ConnInfo, ReplicationClient};
    let info = ConnInfo::parse(&format!("host=127.0.0.1 port={repl_port} user=walrep"))
        .map_err(|e| BenchError::Server(e.to_string()))?;
    let mut c = ReplicationClient::connect(&info, Duration::from_secs(10))
        .map_err(|e| BenchError::Server(format!("connect to drop slot {name}: {e}")))?;
    let dropped = c.drop_slot(name, false);
    c.close();
    match dropped {
        Err(e) if e.sqlstate() != Some(walrep::replication::sqlstate::UNDEFINED_OBJECT) => Err(
            BenchError::Server(format!("could not drop slot {name}: {e}")),
        ),
        _ => Ok(()),
    }
}

/// `walrep rejoin DATADIR --from 127.0.0.1:REPL_PORT` as standby
/// `application_name`: `Ok(Ok(bytes quarantined))` when it rewound the
/// data directory, `Ok(Err(why))` when it refused (no checkpoint old
/// enough: the caller copies afresh).
pub fn rejoin(
    exe: &Path,
    repl_port: u16,
    dir: &Path,
    application_name: &str,
) -> Result<Result<u64, String>, BenchError> {
    let out = Command::new(exe)
        .arg("rejoin")
        .arg(dir)
        .args(["--from", &format!("127.0.0.1:{repl_port}")])
        .args(["-U", "walrep", "--application-name", application_name])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BenchError::io("walrep rejoin", e))?;
    if !out.status.success() {
        return Ok(Err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    // "walrep: N records (B bytes, K keys) written past the fork moved to ..."
    let text = String::from_utf8_lossy(&out.stdout);
    let bytes = text
        .split_once(" records (")
        .and_then(|(_, rest)| rest.split_once(" bytes"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0);
    Ok(Ok(bytes))
}

impl Node {
    /// `walrep start DATADIR` on free loopback ports with `overrides`
    /// (`name=value`), logs in `DATADIR.log`; returns once it answers PING
    /// (a standby answers PING while it recovers).
    pub fn start(exe: &Path, datadir: &Path, overrides: &[String]) -> Result<Node, BenchError> {
        let mut node = Node::spawn(exe, datadir, overrides)?;
        wait_ready(&mut node.child, node.port)?;
        Ok(node)
    }

    /// [`Node::start`] without waiting for it to answer (the restart
    /// scenario times that itself).
    pub fn spawn(exe: &Path, datadir: &Path, overrides: &[String]) -> Result<Node, BenchError> {
        let port = free_port()?;
        let repl_port = free_port()?;
        let log_path = datadir.with_extension("log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| BenchError::io(format!("open the log {}", log_path.display()), e))?;
        let mut cmd = Command::new(exe);
        cmd.arg("start").arg(datadir);
        let ports = [
            format!("port={port}"),
            format!("replication_port={repl_port}"),
        ];
        let defaults = ["log_level=warn".to_string()];
        for c in defaults.iter().chain(overrides).chain(ports.iter()) {
            cmd.arg("-c").arg(c);
        }
        cmd.stdout(Stdio::null()).stderr(log);
        let spawned_at = Instant::now();
        let child = Child::spawn("walrep start", &mut cmd)?;
        Ok(Node {
            child,
            datadir: datadir.to_path_buf(),
            port,
            repl_port,
            spawned_at,
        })
    }

    /// A persistent connection to the Redis port.
    pub fn connect(&self) -> Result<Resp, BenchError> {
        Resp::connect(self.port)
    }

    /// SIGTERM (then SIGKILL after a bound) and wait.
    pub fn stop(mut self) {
        self.child.stop();
    }

    /// This node's `primary_conninfo` as a standby of it would write it.
    pub fn conninfo(&self, application_name: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=walrep application_name={application_name}",
            self.repl_port
        )
    }
}

/// `--walrep-setting`s as the node on `port` has them: `name=value` per
/// setting, the value read back with CONFIG GET (an error if the node
/// does not know the parameter).
pub fn settings_in_effect(port: u16, settings: &[String]) -> Result<Vec<String>, BenchError> {
    if settings.is_empty() {
        return Ok(Vec::new());
    }
    let mut c = Resp::connect(port)?;
    let mut out = Vec::with_capacity(settings.len());
    for s in settings {
        let name = s.split_once('=').map_or(s.as_str(), |(n, _)| n).trim();
        let value = c.config_get(name)?.ok_or_else(|| {
            BenchError::Server(format!("the node on port {port} has no parameter {name}"))
        })?;
        out.push(format!("{name}={value}"));
    }
    Ok(out)
}

/// One RESP connection: inline or array commands, one reply each.
pub struct Resp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

/// A parsed RESP2 reply (arrays are not needed here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
}

impl Resp {
    pub fn connect(port: u16) -> Result<Resp, BenchError> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let io = |e| BenchError::io(format!("connect to 127.0.0.1:{port}"), e);
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(io)?;
        s.set_nodelay(true).map_err(io)?;
        s.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(io)?;
        s.set_write_timeout(Some(REPLY_TIMEOUT)).map_err(io)?;
        let writer = s.try_clone().map_err(io)?;
        Ok(Resp {
            reader: BufReader::new(s),
            writer,
        })
    }

    /// Send `args` as a RESP array and read one reply.
    pub fn call(&mut self, args: &[&[u8]]) -> Result<Reply, BenchError> {
        self.writer
            .write_all(&encode(args))
            .map_err(|e| BenchError::io("send a command", e))?;
        self.read_reply()
    }

    /// Send pre-encoded bytes (see [`encode`]) and read one reply.
    pub fn call_raw(&mut self, encoded: &[u8]) -> Result<Reply, BenchError> {
        self.writer
            .write_all(encoded)
            .map_err(|e| BenchError::io("send a command", e))?;
        self.read_reply()
    }

    /// Send pre-encoded bytes without reading the reply (read it later
    /// with [`Resp::read_waitaof`]).
    pub fn send_raw(&mut self, encoded: &[u8]) -> Result<(), BenchError> {
        self.writer
            .write_all(encoded)
            .map_err(|e| BenchError::io("send a command", e))
    }

    /// Whether a reply has arrived (buffered or on the socket), without
    /// waiting.
    pub fn reply_arrived(&mut self) -> Result<bool, BenchError> {
        if !self.reader.buffer().is_empty() {
            return Ok(true);
        }
        let mut byte = [0u8; 1];
        // SAFETY: recv into a valid 1-byte buffer on an open socket;
        // MSG_PEEK leaves the byte for the reader.
        let n = unsafe {
            libc::recv(
                std::os::fd::AsRawFd::as_raw_fd(self.reader.get_ref()),
                byte.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            1 => Ok(true),
            0 => Err(BenchError::Server("connection closed".into())),
            _ => {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::WouldBlock => Ok(false),
                    _ => Err(BenchError::io("look for a reply", e)),
                }
            }
        }
    }

    /// WAITAOF's reply, `[local, replicas]`.
    pub fn read_waitaof(&mut self) -> Result<(i64, i64), BenchError> {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| BenchError::io("read a reply", e))?;
        if line.trim_end() != "*2" {
            return Err(BenchError::Server(format!(
                "WAITAOF: unexpected reply {line:?}"
            )));
        }
        let mut int = || match self.read_reply()? {
            Reply::Integer(n) => Ok(n),
            other => Err(BenchError::Server(format!(
                "WAITAOF: unexpected element {other:?}"
            ))),
        };
        Ok((int()?, int()?))
    }

    fn read_reply(&mut self) -> Result<Reply, BenchError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| BenchError::io("read a reply", e))?;
        if n == 0 {
            return Err(BenchError::Server("connection closed".into()));
        }
        parse_reply_line(line.trim_end(), |len| {
            let mut buf = vec![0u8; len + 2];
            std::io::Read::read_exact(&mut self.reader, &mut buf)
                .map_err(|e| BenchError::io("read a bulk reply", e))?;
            buf.truncate(len);
            Ok(buf)
        })
    }

    /// `INFO section` as `field -> value`.
    pub fn info(&mut self, section: &str) -> Result<BTreeMap<String, String>, BenchError> {
        match self.call(&[b"INFO", section.as_bytes()])? {
            Reply::Bulk(Some(b)) => Ok(parse_info(&String::from_utf8_lossy(&b))),
            other => Err(BenchError::Server(format!("INFO {section}: {other:?}"))),
        }
    }

    /// `CONFIG GET name`: the node's value of parameter `name` (`None`
    /// if it has no such parameter).
    pub fn config_get(&mut self, name: &str) -> Result<Option<String>, BenchError> {
        self.writer
            .write_all(&encode(&[b"CONFIG", b"GET", name.as_bytes()]))
            .map_err(|e| BenchError::io("send CONFIG GET", e))?;
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| BenchError::io("read a reply", e))?;
        let bad = || BenchError::Server(format!("CONFIG GET {name}: unexpected reply {line:?}"));
        // A map: `*2n` in RESP2, then name and value as bulk strings.
        let n: usize = line
            .trim_end()
            .strip_prefix('*')
            .and_then(|n| n.parse().ok())
            .filter(|n| n % 2 == 0 && *n <= 2 * MAX_CONFIG_PAIRS)
            .ok_or_else(bad)?;
        let mut found = None;
        for _ in 0..n / 2 {
            let (Reply::Bulk(Some(k)), Reply::Bulk(Some(v))) =
                (self.read_reply()?, self.read_reply()?)
            else {
                return Err(bad());
            };
            if k == name.as_bytes() {
                found = Some(String::from_utf8_lossy(&v).into_owned());
            }
        }
        Ok(found)
    }

    /// An LSN field of `INFO section` (`None` if absent or empty).
    pub fn info_lsn(&mut self, section: &str, field: &str) -> Result<Option<Lsn>, BenchError> {
        Ok(self
            .info(section)?
            .get(field)
            .and_then(|v| v.parse::<Lsn>().ok()))
    }
}

/// A RESP array of bulk strings.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One reply from its first line; `bulk` reads a bulk body of that length.
fn parse_reply_line(
    line: &str,
    bulk: impl FnOnce(usize) -> Result<Vec<u8>, BenchError>,
) -> Result<Reply, BenchError> {
    let bad = || BenchError::Server(format!("unexpected reply {line:?}"));
    let (kind, rest) = line.split_at_checked(1).ok_or_else(bad)?;
    match kind {
        "+" => Ok(Reply::Simple(rest.to_string())),
        "-" => Ok(Reply::Error(rest.to_string())),
        ":" => rest.parse().map(Reply::Integer).map_err(|_| bad()),
        "$" => {
            let len: i64 = rest.parse().map_err(|_| bad())?;
            if len < 0 {
                return Ok(Reply::Bulk(None));
            }
            let len = usize::try_from(len).map_err(|_| bad())?;
            if len > MAX_REPLY_BYTES {
                return Err(bad());
            }
            bulk(len).map(|b| Reply::Bulk(Some(b)))
        }
        _ => Err(bad()),
    }
}

/// `field:value` lines of an INFO reply.
pub fn parse_info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// A `slaveN:` line of the primary's INFO replication as `key -> value`.
pub fn parse_slave_line(value: &str) -> BTreeMap<String, String> {
    value
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Poll `probe` every `every` until it returns `Some`, at most `limit`.
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<Option<T>, BenchError>,
) -> Result<T, BenchError> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(BenchError::Server(format!(
                "{what}: not reached within {limit:?}"
            )));
        }
        std::thread::sleep(every);
    }
}

/// Wait until the standby on `standby` has replayed up to `target`
/// (INFO replication `replay_lsn`), polling every `every`.
pub fn wait_replayed(
    standby: &mut Resp,
    target: Lsn,
    limit: Duration,
    every: Duration,
) -> Result<Lsn, BenchError> {
    wait_for("standby replay", limit, every, || {
        let r = standby.info_lsn("replication", "replay_lsn")?;
        Ok(r.filter(|r| *r >= target))
    })
}

/// The primary's flush position (INFO persistence `wal_flush_lsn`).
pub fn flush_lsn(primary: &mut Resp) -> Result<Lsn, BenchError> {
    primary
        .info_lsn("persistence", "wal_flush_lsn")?
        .ok_or_else(|| BenchError::Server("INFO persistence has no wal_flush_lsn".into()))
}

/// The primary's insert position (INFO persistence `wal_insert_lsn`).
pub fn insert_lsn(primary: &mut Resp) -> Result<Lsn, BenchError> {
    primary
        .info_lsn("persistence", "wal_insert_lsn")?
        .ok_or_else(|| BenchError::Server("INFO persistence has no wal_insert_lsn".into()))
}

/// CPU seconds (user + system) a process has used, from /proc.
pub fn process_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_from_stat(&stat)
}

/// CPU seconds of the thread named `name` in process `pid`, from /proc.
pub fn thread_cpu_s(pid: u32, name: &str) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = None;
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            *total.get_or_insert(0.0) += cpu_from_stat(&stat)?;
        }
    }
    total
}

/// CPU seconds of the threads of process `pid` whose name starts with
/// `prefix` (`redis-worker` for every `redis-worker-N`), from /proc; 0
/// when none has that name.
pub fn threads_cpu_s(pid: u32, prefix: &str) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0.0;
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.starts_with(prefix) {
            // A thread that exits meanwhile takes its CPU with it.
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            total += cpu_from_stat(&stat).unwrap_or(0.0);
        }
    }
    Some(total)
}

/// utime + stime of a `/proc/.../stat` line, in seconds (USER_HZ = 100).
fn cpu_from_stat(stat: &str) -> Option<f64> {
    // The command name may contain spaces: fields are counted after ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The 1-minute load average (other engineers' builds share the 2 cores).
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse() {
        let none = |_| -> Result<Vec<u8>, BenchError> { unreachable!() };
        assert_eq!(
            parse_reply_line("+OK", none).unwrap(),
            Reply::Simple("OK".into())
        );
        assert_eq!(
            parse_reply_line("-READONLY no", none).unwrap(),
            Reply::Error("READONLY no".into())
        );
        assert_eq!(parse_reply_line(":42", none).unwrap(), Reply::Integer(42));
        assert_eq!(parse_reply_line("$-1", none).unwrap(), Reply::Bulk(None));
        let body = |n| Ok(vec![b'x'; n]);
        assert_eq!(
            parse_reply_line("$3", body).unwrap(),
            Reply::Bulk(Some(b"xxx".to_vec()))
        );
        assert!(parse_reply_line("", none).is_err());
        assert!(parse_reply_line("$99999999999", none).is_err());
        assert!(parse_reply_line("?x", none).is_err());
    }

    #[test]
    fn info_and_slave_lines_parse() {
        let info = parse_info("# Replication\r\nrole:master\r\nslave0:ip=127.0.0.1,replay_lsn=0/3000060,replay_lag_ms=2\r\n");
        assert_eq!(info["role"], "master");
        let s = parse_slave_line(&info["slave0"]);
        assert_eq!(s["replay_lsn"], "0/3000060");
        assert_eq!(s["replay_lag_ms"], "2");
        assert_eq!(encode(&[b"GET", b"k"]), b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }

    #[test]
    fn proc_stat_cpu() {
        let stat = "123 (wal sender) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0";
        assert_eq!(cpu_from_stat(stat), Some(3.0));
        assert!(process_cpu_s(std::process::id()).is_some());
    }
}
