//! The floor of one synchronous commit done by two real processes on this
//! machine: what no implementation of `synchronous_commit` with one
//! standby can beat here, measured in the same run as walrep and
//! PostgreSQL.
//!
//! Three processes, as in a real run: the client (this bench), a primary
//! P and a standby S, each a re-exec of this binary (`walrep floor-node`,
//! hidden). The client sends one SET-sized request over loopback TCP to P
//! and waits for P's reply; one client, sequential. Per request P does,
//! by [`Mode`]:
//! - `local`: append the record to its file, fdatasync, reply;
//! - `on`: send the record to S, then append + fdatasync its own copy
//!   while S appends + fdatasyncs its own and replies; P replies to the
//!   client once it has both (the standby's flush overlaps the
//!   primary's, as walrep's transmit-while-flushing);
//! - `serial`: P appends + fdatasyncs, then sends; S appends +
//!   fdatasyncs and replies (PostgreSQL's order: WAL is sent once
//!   flushed);
//! - `remote_write`: as `on`, but S only writes (no fdatasync);
//! - `remote_apply`: as `on`, and S applies the record to an in-memory
//!   map before replying (one thread: no hand-off to a replay process).
//!
//! Each process appends to its own preallocated file (zero-filled and
//! synced first, as recycled WAL segments), in the directory given: the
//! nodes' disk. A record is 80 bytes, the WAL of one redis-benchmark SET
//! (24-byte header, 16-byte key and value, padding). No async runtime,
//! no protocol, no CRC, no batching: the syscalls of the commit and
//! nothing else.
//!
//! Wire format (little-endian): client -> P and P -> S `[mode u8][len
//! u32][record]`; S -> P `[s_work_ns u64]` (its write + fdatasync); P ->
//! client `[p_flush_ns u64][s_work_ns u64][p_wait_ns u64]` (P's write +
//! fdatasync, S's, and how long P waited for S after its own flush).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::procs::{self, Child};
use super::BenchError;

/// The WAL of one SET of redis-benchmark (`key:` + 12 digits, 16-byte
/// value): 24-byte header + 8 commit time + 4 count + 1 kind + 4 + 16 key
/// + 4 + 16 value = 77, padded to 8.
pub const RECORD_BYTES: usize = 80;
/// Size of each node's file (a WAL segment); appends wrap around in it.
const FILE_BYTES: u64 = 16 << 20;
/// Bound on one record (a request larger than this is refused).
const MAX_RECORD_BYTES: u32 = 1 << 20;
/// Bound on every socket read and on the start-up waits.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Keys of the `remote_apply` map (bounded: the key wraps).
const APPLY_KEYS: u64 = 100_000;

/// What one request asks of P and S.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Mode {
    Local,
    On,
    Serial,
    RemoteWrite,
    RemoteApply,
}

impl Mode {
    /// Every mode, in the order a round runs them.
    pub const ALL: [Mode; 5] = [
        Mode::Local,
        Mode::On,
        Mode::Serial,
        Mode::RemoteWrite,
        Mode::RemoteApply,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Local => "local (P fdatasync only)",
            Mode::On => "on (P and S fdatasync in parallel)",
            Mode::Serial => "on, serial (P fdatasync, then S)",
            Mode::RemoteWrite => "remote_write (S writes, no fdatasync)",
            Mode::RemoteApply => "remote_apply (S fdatasyncs and applies)",
        }
    }

    fn code(self) -> u8 {
        match self {
            Mode::Local => 0,
            Mode::On => 1,
            Mode::Serial => 2,
            Mode::RemoteWrite => 3,
            Mode::RemoteApply => 4,
        }
    }

    fn from_code(c: u8) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.code() == c)
    }
}

/// `walrep floor-node`'s arguments (hidden: only the bench starts it).
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// `primary` or `standby`.
    #[arg(long)]
    pub role: Role,
    /// The file this node appends to (created, preallocated, removed at exit).
    #[arg(long)]
    pub file: PathBuf,
    /// The loopback port to accept one connection on.
    #[arg(long)]
    pub port: u16,
    /// The primary's standby (its port on 127.0.0.1).
    #[arg(long)]
    pub standby_port: Option<u16>,
}

/// Which node a `floor-node` process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Primary,
    Standby,
}

/// A preallocated file appended to, wrapping at its end.
struct Log {
    file: File,
    path: PathBuf,
    offset: u64,
}

impl Log {
    fn create(path: &Path) -> std::io::Result<Log> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)?;
        let zeroes = vec![0u8; 1 << 20];
        for _ in 0..FILE_BYTES / zeroes.len() as u64 {
            file.write_all(&zeroes)?;
        }
        file.sync_all()?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(Log {
            file,
            path: path.into(),
            offset: 0,
        })
    }

    fn append(&mut self, record: &[u8]) -> std::io::Result<()> {
        if self.offset + record.len() as u64 > FILE_BYTES {
            self.offset = 0;
        }
        self.file.write_all_at(record, self.offset)?;
        self.offset += record.len().next_multiple_of(8) as u64;
        Ok(())
    }

    /// Append, then fdatasync; the nanoseconds both took.
    fn append_flush(&mut self, record: &[u8]) -> std::io::Result<u64> {
        let t = Instant::now();
        self.append(record)?;
        self.file.sync_data()?;
        Ok(t.elapsed().as_nanos() as u64)
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn io(what: &str) -> impl Fn(std::io::Error) -> BenchError + '_ {
    move |e| BenchError::io(what, e)
}

/// Accept one connection within [`IO_TIMEOUT`].
fn accept_one(l: &TcpListener) -> Result<TcpStream, BenchError> {
    l.set_nonblocking(true).map_err(io("floor node: listen"))?;
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).map_err(io("floor node: accept"))?;
                prepare(&s)?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(BenchError::io("floor node: accept", e)),
        }
    }
}

/// Connect to `port` on loopback, retrying until it listens, within
/// [`IO_TIMEOUT`].
fn connect(port: u16, peer: Option<&mut Child>) -> Result<TcpStream, BenchError> {
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut peer = peer;
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => {
                prepare(&s)?;
                return Ok(s);
            }
            Err(e) if Instant::now() < deadline => {
                if let Some(p) = peer.as_deref_mut() {
                    p.check_alive()?;
                }
                tracing::debug!(port, error = %e, "floor node not listening yet");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(BenchError::io(format!("connect to 127.0.0.1:{port}"), e)),
        }
    }
}

fn prepare(s: &TcpStream) -> Result<(), BenchError> {
    s.set_nodelay(true).map_err(io("floor node: nodelay"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(io("floor node: timeout"))
}

/// Read one `[mode][len][record]` message into `buf`; `None` at a clean EOF.
fn read_msg(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Option<Mode>, BenchError> {
    let mut head = [0u8; 5];
    match s.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(BenchError::io("floor node: read", e)),
    }
    let mode = Mode::from_code(head[0])
        .ok_or_else(|| BenchError::Server(format!("floor node: unknown mode {}", head[0])))?;
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    if len > MAX_RECORD_BYTES {
        return Err(BenchError::Server(format!(
            "floor node: record of {len} bytes"
        )));
    }
    buf.resize(len as usize, 0);
    s.read_exact(buf).map_err(io("floor node: read"))?;
    Ok(Some(mode))
}

fn write_msg(s: &mut TcpStream, mode: Mode, record: &[u8]) -> Result<(), BenchError> {
    let mut msg = Vec::with_capacity(5 + record.len());
    msg.push(mode.code());
    msg.extend_from_slice(&(record.len() as u32).to_le_bytes());
    msg.extend_from_slice(record);
    s.write_all(&msg).map_err(io("floor node: send"))
}

fn read_u64s<const N: usize>(s: &mut TcpStream) -> Result<[u64; N], BenchError> {
    let mut b = vec![0u8; 8 * N];
    s.read_exact(&mut b).map_err(io("floor node: read reply"))?;
    let mut out = [0u64; N];
    for (i, v) in out.iter_mut().enumerate() {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[8 * i..8 * i + 8]);
        *v = u64::from_le_bytes(w);
    }
    Ok(out)
}

fn write_u64s(s: &mut TcpStream, vals: &[u64]) -> Result<(), BenchError> {
    let b: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    s.write_all(&b).map_err(io("floor node: reply"))
}

/// `walrep floor-node`: serve one connection until its peer closes it.
pub fn serve(args: &NodeArgs) -> Result<(), BenchError> {
    let listener = TcpListener::bind(("127.0.0.1", args.port)).map_err(io("floor node: bind"))?;
    let mut log = Log::create(&args.file)
        .map_err(|e| BenchError::io(format!("floor node file {}", args.file.display()), e))?;
    match args.role {
        Role::Standby => {
            let conn = accept_one(&listener)?;
            standby_loop(conn, &mut log)
        }
        Role::Primary => {
            let port = args
                .standby_port
                .ok_or_else(|| BenchError::Usage("a primary needs --standby-port".into()))?;
            let standby = connect(port, None)?;
            let client = accept_one(&listener)?;
            primary_loop(client, standby, &mut log)
        }
    }
}

fn standby_loop(mut p: TcpStream, log: &mut Log) -> Result<(), BenchError> {
    let mut buf = Vec::with_capacity(RECORD_BYTES);
    let mut applied: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut n = 0u64;
    let file_err = io("floor standby: write or fdatasync");
    while let Some(mode) = read_msg(&mut p, &mut buf)? {
        let t = Instant::now();
        match mode {
            Mode::RemoteWrite => log.append(&buf).map_err(&file_err)?,
            Mode::Local | Mode::On | Mode::Serial => {
                log.append_flush(&buf).map_err(&file_err)?;
            }
            Mode::RemoteApply => {
                log.append_flush(&buf).map_err(&file_err)?;
                applied.insert(n % APPLY_KEYS, buf.clone());
            }
        }
        n += 1;
        write_u64s(&mut p, &[t.elapsed().as_nanos() as u64])?;
    }
    Ok(())
}

fn primary_loop(mut c: TcpStream, mut s: TcpStream, log: &mut Log) -> Result<(), BenchError> {
    let mut buf = Vec::with_capacity(RECORD_BYTES);
    let file_err = io("floor primary: write or fdatasync");
    while let Some(mode) = read_msg(&mut c, &mut buf)? {
        let (p_flush, s_work, p_wait) = match mode {
            Mode::Local => (log.append_flush(&buf).map_err(&file_err)?, 0, 0),
            Mode::Serial => {
                let p_flush = log.append_flush(&buf).map_err(&file_err)?;
                let t = Instant::now();
                write_msg(&mut s, mode, &buf)?;
                let [s_work] = read_u64s::<1>(&mut s)?;
                (p_flush, s_work, t.elapsed().as_nanos() as u64)
            }
            Mode::On | Mode::RemoteWrite | Mode::RemoteApply => {
                write_msg(&mut s, mode, &buf)?;
                let p_flush = log.append_flush(&buf).map_err(&file_err)?;
                let t = Instant::now();
                let [s_work] = read_u64s::<1>(&mut s)?;
                (p_flush, s_work, t.elapsed().as_nanos() as u64)
            }
        };
        write_u64s(&mut c, &[p_flush, s_work, p_wait])?;
    }
    Ok(())
}

/// What one mode measured over all its rounds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModeFloor {
    pub mode: Mode,
    pub commits: u64,
    /// Client round trips per second (1 / mean latency).
    pub per_s: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// P's write + fdatasync, mean µs.
    pub p_flush_us: f64,
    /// S's write (+ fdatasync), mean µs.
    pub s_work_us: f64,
    /// How long P waited for S after its own flush (serial: the whole
    /// send + S + reply), mean µs.
    pub p_wait_us: f64,
}

/// The two floor processes, stopped on drop.
pub struct FloorNodes {
    client: TcpStream,
    primary: Child,
    standby: Child,
}

impl FloorNodes {
    /// Start S and P from `exe` with their files in `dir`, and connect.
    pub fn start(exe: &Path, dir: &Path) -> Result<FloorNodes, BenchError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| BenchError::io(format!("create {}", dir.display()), e))?;
        let sport = procs::free_port()?;
        let mut standby = Child::spawn(
            "floor standby",
            Command::new(exe)
                .arg("floor-node")
                .args(["--role", "standby", "--port", &sport.to_string()])
                .arg("--file")
                .arg(dir.join("floorstandby.wal")),
        )?;
        let pport = procs::free_port()?;
        let mut primary = Child::spawn(
            "floor primary",
            Command::new(exe)
                .arg("floor-node")
                .args(["--role", "primary", "--port", &pport.to_string()])
                .args(["--standby-port", &sport.to_string()])
                .arg("--file")
                .arg(dir.join("floorprimary.wal")),
        )?;
        standby.check_alive()?;
        let client = connect(pport, Some(&mut primary))?;
        Ok(FloorNodes {
            client,
            primary,
            standby,
        })
    }

    /// One commit of `mode`: latency ns and P's three timings.
    fn commit(&mut self, mode: Mode, record: &[u8]) -> Result<(u64, [u64; 3]), BenchError> {
        let t = Instant::now();
        write_msg(&mut self.client, mode, record)?;
        let r = read_u64s::<3>(&mut self.client)?;
        Ok((t.elapsed().as_nanos() as u64, r))
    }

    /// Every mode, interleaved: `rounds` rounds of `per_round` commits of
    /// each mode (after one warm-up round), so that each sees the same
    /// phases of a shared disk.
    pub fn measure(&mut self, rounds: u32, per_round: u32) -> Result<Vec<ModeFloor>, BenchError> {
        let record = [0x5au8; RECORD_BYTES];
        for mode in Mode::ALL {
            for _ in 0..per_round.min(50) {
                self.commit(mode, &record)?;
            }
        }
        let mut lat: Vec<Vec<u64>> = vec![Vec::new(); Mode::ALL.len()];
        let mut sums = vec![[0u64; 3]; Mode::ALL.len()];
        for _ in 0..rounds {
            for (i, mode) in Mode::ALL.into_iter().enumerate() {
                for _ in 0..per_round {
                    let (ns, r) = self.commit(mode, &record)?;
                    lat[i].push(ns);
                    for k in 0..3 {
                        sums[i][k] += r[k];
                    }
                }
            }
        }
        Ok(Mode::ALL
            .into_iter()
            .zip(lat)
            .zip(sums)
            .map(|((mode, l), s)| summarize(mode, l, s))
            .collect())
    }
}

fn summarize(mode: Mode, mut lat: Vec<u64>, sums: [u64; 3]) -> ModeFloor {
    lat.sort_unstable();
    let n = lat.len().max(1) as f64;
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 - 1.0) * q).round() as usize)
            .map_or(f64::NAN, |&v| v as f64 / 1e3)
    };
    let mean_us = lat.iter().sum::<u64>() as f64 / n / 1e3;
    ModeFloor {
        mode,
        commits: lat.len() as u64,
        per_s: 1e6 / mean_us,
        mean_us,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        p_flush_us: sums[0] as f64 / n / 1e3,
        s_work_us: sums[1] as f64 / n / 1e3,
        p_wait_us: sums[2] as f64 / n / 1e3,
    }
}

/// Start the two processes, measure, stop them: the floors of this run.
pub fn measure(
    exe: &Path,
    dir: &Path,
    rounds: u32,
    per_round: u32,
) -> Result<Vec<ModeFloor>, BenchError> {
    let mut nodes = FloorNodes::start(exe, dir)?;
    nodes.measure(rounds, per_round)
}

impl Drop for FloorNodes {
    /// Close the client's connection: P sees the end, closes S's, and
    /// both exit (removing their files) before their guards would
    /// SIGTERM them; bounded.
    fn drop(&mut self) {
        let _ = self.client.shutdown(std::net::Shutdown::Both);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let p = self.primary.exited().unwrap_or(true);
            let s = self.standby.exited().unwrap_or(true);
            if p && s {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// One line per mode, for the progress output.
pub fn describe(floors: &[ModeFloor]) -> String {
    let mut out = String::new();
    for f in floors {
        out.push_str(&format!(
            "    {:<42} {:>6.0}/s mean {:>6.0} us p50 {:>6.0} p99 {:>6.0} | P flush {:>5.0} us, S {:>5.0} us, P waits for S {:>5.0} us\n",
            f.mode.name(),
            f.per_s,
            f.mean_us,
            f.p50_us,
            f.p99_us,
            f.p_flush_us,
            f.s_work_us,
            f.p_wait_us
        ));
    }
    out
}
