//! What the two fault soaks (`failover` and `ha`) share: the seed and its
//! random numbers, the client threads of a round (each key's unique values,
//! every `SET` recorded with the three outcomes the history checker knows),
//! each key's final value on the surviving node, and the private network
//! namespace where partitions are cut with nftables.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use walrep::history::{History, Outcome, Write as HistoryWrite};

use super::cluster::{self, Reply};
use super::BenchError;

/// A seed from the clock and the process id, when `--seed` is not given.
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id())
}

/// SplitMix64: the next seeded random number.
pub fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Each key of `history`'s value on the node at `port`.
pub fn final_state(
    port: u16,
    history: &History,
) -> Result<HashMap<String, Option<String>>, BenchError> {
    let mut c = cluster::Resp::connect(port)?;
    let mut state = HashMap::new();
    for key in history.keys() {
        let v = match c.call(&[b"GET", key.as_bytes()])? {
            Reply::Bulk(b) => b.map(|b| String::from_utf8_lossy(&b).into_owned()),
            other => return Err(BenchError::Server(format!("GET {key}: {other:?}"))),
        };
        state.insert(key.to_string(), v);
    }
    Ok(state)
}

/// A client connection to 127.0.0.1:`port` whose requests time out after
/// `request_timeout`.
pub fn connect(port: u16, request_timeout: Duration) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(request_timeout))?;
    s.set_write_timeout(Some(request_timeout))?;
    Ok(s)
}

/// `SET key value`: OK, refused (`-READONLY` at admission: it did not
/// happen), or unknown (no answer, or an error after which the write may
/// be in the WAL already, such as a fenced node's answer to a write that
/// was waiting for its synchronous standby).
pub fn set(w: &mut TcpStream, r: &mut BufReader<TcpStream>, key: &str, value: &str) -> Outcome {
    let req = cluster::encode(&[b"SET", key.as_bytes(), value.as_bytes()]);
    if let Err(e) = w.write_all(&req) {
        return Outcome::Unknown(e.to_string());
    }
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) => Outcome::Unknown("connection closed".into()),
        Err(e) => Outcome::Unknown(e.to_string()),
        Ok(_) if line.starts_with("+OK") => Outcome::Ok,
        // A write already in the WAL when its node was fenced is refused
        // with READONLY too, but it "may or may not survive".
        Ok(_) if line.starts_with("-READONLY") && !line.contains("may or may not survive") => {
            Outcome::Fail(line.trim().into())
        }
        Ok(_) => Outcome::Unknown(line.trim().into()),
    }
}

/// Keys each client cycles through in a round.
const KEYS_PER_CLIENT: u64 = 20;

/// The clients of one round: a thread each, writing and recording one
/// history; [`Clients::finish`] stops them all and returns it.
pub struct Clients {
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
    /// Each client's current connection (one slot per client: a new one
    /// replaces the last), shut down by `finish` to end waits at once.
    conns: Arc<Mutex<Vec<Option<TcpStream>>>>,
    handles: Vec<JoinHandle<()>>,
    started: Instant,
}

impl Clients {
    /// Start `clients` threads of `round`, each running `body` with its
    /// own [`Client`] until it returns or the round stops.
    pub fn start(
        clients: u32,
        round: u32,
        body: impl Fn(&mut Client) + Send + Sync + 'static,
    ) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(History::new()));
        let conns: Arc<Mutex<Vec<Option<TcpStream>>>> =
            Arc::new(Mutex::new((0..clients).map(|_| None).collect()));
        let started = Instant::now();
        let body = Arc::new(body);
        let handles = (0..clients as usize)
            .map(|id| {
                let mut client = Client {
                    id,
                    round,
                    seq: 0,
                    started,
                    stop: stop.clone(),
                    history: history.clone(),
                    conns: Arc::clone(&conns),
                };
                let body = body.clone();
                std::thread::spawn(move || body(&mut client))
            })
            .collect();
        Clients {
            stop,
            history,
            conns,
            handles,
            started,
        }
    }

    /// The history's clock now.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// `f` of the history so far.
    pub fn with<T>(&self, f: impl FnOnce(&History) -> T) -> T {
        f(&self.history.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Stop the clients (requests in flight end as indeterminate) and
    /// return their history.
    pub fn finish(self) -> History {
        self.stop.store(true, Ordering::SeqCst);
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
            .filter_map(Option::take)
        {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        for h in self.handles {
            let _ = h.join();
        }
        let history = self
            .history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        history
    }
}

/// One client thread of a round: its own keys (`r<round>c<id>k<i>`),
/// values unique by sequence, every write recorded in the round's history.
pub struct Client {
    /// Which client of the round (0-based).
    pub id: usize,
    round: u32,
    seq: u64,
    started: Instant,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
    conns: Arc<Mutex<Vec<Option<TcpStream>>>>,
}

impl Client {
    /// Whether the round is over.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Make `conn` the connection the round's end shuts down (so a client
    /// waiting on a dead or stalled node ends at once).
    pub fn track(&self, conn: &TcpStream) {
        let Ok(c) = conn.try_clone() else { return };
        if let Some(slot) = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(self.id)
        {
            *slot = Some(c);
        }
    }

    /// The next `SET` of this client to `node` (on `timeline`) over `w` and
    /// `r`, recorded when sent and when answered; its outcome.
    pub fn write_next(
        &mut self,
        node: &str,
        timeline: u32,
        w: &mut TcpStream,
        r: &mut BufReader<TcpStream>,
    ) -> Outcome {
        let (round, client, seq) = (self.round, self.id, self.seq);
        let key = format!("r{round}c{client}k{}", seq % KEYS_PER_CLIENT);
        let value = format!("r{round}c{client}s{seq}");
        let id = self.lock().invoke(HistoryWrite {
            client,
            node: node.into(),
            timeline,
            key: key.clone(),
            seq: seq / KEYS_PER_CLIENT,
            value: value.clone(),
            level: "on".into(),
            invoked: self.started.elapsed(),
            completed: None,
            outcome: Outcome::Pending,
        });
        let outcome = set(w, r, &key, &value);
        let completed = self.started.elapsed();
        self.lock().complete(id, outcome.clone(), completed);
        self.seq += 1;
        outcome
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The soak's own network namespace: entered once at start (the soak's
/// threads and the processes it starts inherit it), so its nftables rules
/// touch nothing outside; it goes when the process exits.
pub struct PrivateNet;

const NFT_TABLE: &str = "walrep_bench_faults";

impl PrivateNet {
    /// Move this thread into a new network namespace with loopback up and
    /// an empty rule table, or say why partitions are unavailable.
    pub fn enter() -> Result<PrivateNet, String> {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        for tool in ["ip", "nft"] {
            if !tool_in_path(tool) {
                return Err(format!("{tool} not found (Debian: iproute2, nftables)"));
            }
        }
        // SAFETY: unshare(2) of the network namespace affects only this
        // thread (and what it starts from now on).
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!("unshare: {}", std::io::Error::last_os_error()));
        }
        let net = PrivateNet;
        let setup = || -> Result<(), BenchError> {
            run_tool("ip", &["link", "set", "lo", "up"])?;
            run_tool("nft", &["add", "table", "inet", NFT_TABLE])?;
            run_tool(
                "nft",
                &[
                    "add",
                    "chain",
                    "inet",
                    NFT_TABLE,
                    "input",
                    "{ type filter hook input priority 0; policy accept; }",
                ],
            )
        };
        setup().map_err(|e| e.to_string())?;
        Ok(net)
    }

    /// Drop every packet to or from each of `ports` (on loopback a port
    /// is one end of every connection it serves, so this cuts them both
    /// ways).
    pub fn cut_ports(&self, ports: &[u16]) -> Result<(), BenchError> {
        for port in ports {
            let p = port.to_string();
            for dir in ["dport", "sport"] {
                run_tool(
                    "nft",
                    &[
                        "add", "rule", "inet", NFT_TABLE, "input", "tcp", dir, &p, "drop",
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// Remove every cut.
    pub fn heal(&self) -> Result<(), BenchError> {
        run_tool("nft", &["flush", "chain", "inet", NFT_TABLE, "input"])
    }
}

/// Whether `tool` is an executable file in a directory of `PATH`.
pub fn tool_in_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

fn run_tool(tool: &str, args: &[&str]) -> Result<(), BenchError> {
    let out = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BenchError::io(format!("run {tool}"), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BenchError::Server(format!(
            "{tool} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The end of a soak: keep its directory when asked (`--keep`), and fail
/// the run when the history checker found a lost write or a violation.
pub fn verdict(
    keep: bool,
    run_dir: super::RunDir,
    what: &str,
    lost: usize,
    violations: usize,
    seed: u64,
) -> Result<(), BenchError> {
    run_dir.finish(keep);
    if lost > 0 || violations > 0 {
        return Err(BenchError::Server(format!(
            "{what} failed ({lost} lost, {violations} violations; seed {seed})"
        )));
    }
    Ok(())
}
