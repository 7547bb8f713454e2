//! What the two fault soaks (`failover` and `ha`) share: the seed and its
//! random numbers, a client's `SET` with the three outcomes the history
//! checker knows, each key's final value on the surviving node, and the
//! private network namespace where partitions are cut with nftables.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use walrep::history::{History, Outcome};

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
    run_dir: tempfile::TempDir,
    what: &str,
    lost: usize,
    violations: usize,
    seed: u64,
) -> Result<(), BenchError> {
    if keep {
        let kept = run_dir.keep();
        println!("data directories and logs kept in {}", kept.display());
    }
    if lost > 0 || violations > 0 {
        return Err(BenchError::Server(format!(
            "{what} failed ({lost} lost, {violations} violations; seed {seed})"
        )));
    }
    Ok(())
}
