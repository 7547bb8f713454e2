//! The servers a benchmark starts: a fresh walrep node from this very
//! binary and a Redis server with AOF. Each is a [`Child`] guard that stops
//! its process (SIGTERM, then SIGKILL after a bound) when dropped, is
//! registered with [`interrupt`] (stopped when SIGINT or SIGTERM interrupts
//! the run), and, started from the main thread, is SIGKILLed by the kernel
//! if the bench itself dies (see [`die_with_bench`]), so no server outlives
//! the run whatever happens.
//!
//! PostgreSQL is the exception to the last point: `pg_ctl start` detaches
//! the postmaster (it forks it, and `runuser` changes credentials, which
//! clears the parent-death signal), so a bench killed by SIGKILL leaves it
//! running; SIGINT and SIGTERM stop it (`interrupt` finds its
//! `postmaster.pid` in the run directory).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::interrupt::{self, Registered};
use super::BenchError;

/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A child process stopped on drop.
pub struct Child {
    what: String,
    child: std::process::Child,
    /// Its entry in the interrupt registry, withdrawn before it is reaped
    /// (after which its pid may be reused).
    registered: Option<Registered>,
}

impl Child {
    /// Start `cmd` (stdin from /dev/null), registered to be stopped if the
    /// run is interrupted; `what` names it in errors.
    pub fn spawn(what: &str, cmd: &mut Command) -> Result<Child, BenchError> {
        cmd.stdin(Stdio::null());
        die_with_bench(cmd);
        let (child, registered) = interrupt::start(
            || {
                cmd.spawn()
                    .map_err(|e| BenchError::io(format!("could not start {what}"), e))
            },
            |c| interrupt::Entry::Process(c.id() as libc::pid_t),
        )?;
        Ok(Child {
            what: what.into(),
            child,
            registered: Some(registered),
        })
    }

    /// The process id (for /proc CPU figures).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, wait up to 30 s, then SIGKILL.
    pub fn stop(&mut self) {
        drop(self.registered.take());
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: kill(2) on our own child's pid, which it cannot have
        // reused: the child is not reaped until `wait` below.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(what = %self.what, "did not stop after SIGTERM; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL, as a crash, and reap.
    pub fn kill(&mut self) {
        drop(self.registered.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process has exited (reaping it).
    pub fn exited(&mut self) -> Result<bool, BenchError> {
        self.child
            .try_wait()
            .map(|s| s.is_some())
            .map_err(|e| BenchError::io("wait for a child process", e))
    }

    /// Fail if the process already exited.
    pub fn check_alive(&mut self) -> Result<(), BenchError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(BenchError::Server(format!(
                "{} exited early ({status})",
                self.what
            ))),
            _ => Ok(()),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where cheap, make the process `cmd` starts die with the bench, even
/// when the bench is SIGKILLed: the kernel sends it SIGKILL when its
/// parent goes (PR_SET_PDEATHSIG). Caveats, why this is not everything:
/// - the signal comes when the *thread* that forked the child ends, not
///   the process, so it is set only for children the main thread starts
///   (the main thread ends only with the process); children of the
///   scenarios' worker threads (short load generators those threads wait
///   for) rely on their guards and on [`interrupt`];
/// - it is cleared when the child execs a set-user-ID program or changes
///   credentials, and not inherited by the child's own children: PostgreSQL
///   under `runuser` and `pg_ctl` is not covered (see the module docs);
/// - `pre_exec` makes std fork instead of posix_spawn: a little slower,
///   nothing more at the bench's spawn rates.
pub fn die_with_bench(cmd: &mut Command) {
    // SAFETY: gettid(2) and getpid(2) have no preconditions.
    let (tid, parent) = unsafe { (libc::gettid(), libc::getpid()) };
    if tid != parent {
        return;
    }
    // SAFETY: the closure runs in the forked child before exec and calls
    // only async-signal-safe functions (prctl, getppid), allocating nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The bench died between the fork and the prctl: do not run
            // as an orphan.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// A loopback port reserved for this process, below the ephemeral range
/// (see `walrep::ports`), for a server told its port before it starts.
pub fn free_port() -> Result<u16, BenchError> {
    walrep::ports::reserve().map_err(|e| BenchError::io("reserve a loopback port", e))
}

/// Wait until `port` answers PING with +PONG.
pub fn wait_ready(child: &mut Child, port: u16) -> Result<(), BenchError> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        child.check_alive()?;
        if let Ok(reply) = query(port, b"PING\r\n") {
            if reply.starts_with("+PONG") {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(BenchError::Server(format!(
                "{} did not answer PING on port {port} within {START_TIMEOUT:?}",
                child.what
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Send one inline command and read one reply (a bulk reply in full), with
/// bounded waits.
pub fn query(port: u16, command: &[u8]) -> Result<String, BenchError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let io = |e| BenchError::io(format!("query 127.0.0.1:{port}"), e);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    s.write_all(command).map_err(io)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = s.read(&mut buf).map_err(io)?;
        out.extend_from_slice(&buf[..n]);
        if n == 0 || reply_complete(&out) || out.len() > 1 << 20 {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Whether `buf` holds one whole simple, error, integer or bulk reply.
fn reply_complete(buf: &[u8]) -> bool {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    if buf.first() != Some(&b'$') {
        return true;
    }
    let len: i64 = std::str::from_utf8(&buf[1..eol])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(-1);
    len < 0 || buf.len() >= eol + 2 + len as usize + 2
}

/// `walrep init DATADIR`.
pub fn init(exe: &Path, datadir: &Path) -> Result<(), BenchError> {
    let status = Command::new(exe)
        .arg("init")
        .arg(datadir)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| BenchError::io("walrep init", e))?;
    if !status.success() {
        return Err(BenchError::Server(format!(
            "walrep init {} failed ({status})",
            datadir.display()
        )));
    }
    Ok(())
}

/// `walrep init` + `walrep start` of a fresh node in `datadir`, with
/// `synchronous_commit` set and logs in `datadir.log`.
pub fn start_walrep(
    exe: &Path,
    datadir: &Path,
    synchronous_commit: &str,
) -> Result<(Child, u16), BenchError> {
    start_walrep_with(exe, datadir, synchronous_commit, &[])
}

/// [`start_walrep`] with `settings` (`name=value`) before its own.
pub fn start_walrep_with(
    exe: &Path,
    datadir: &Path,
    synchronous_commit: &str,
    settings: &[String],
) -> Result<(Child, u16), BenchError> {
    init(exe, datadir)?;
    let port = free_port()?;
    let repl_port = free_port()?;
    let log = log_file(&datadir.with_extension("log"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("start").arg(datadir);
    let own = [
        format!("port={port}"),
        format!("replication_port={repl_port}"),
        format!("synchronous_commit={synchronous_commit}"),
        "log_level=warn".into(),
    ];
    for c in settings.iter().chain(&own) {
        cmd.arg("-c").arg(c);
    }
    cmd.stdout(Stdio::null()).stderr(log);
    let mut child = Child::spawn("walrep start", &mut cmd)?;
    wait_ready(&mut child, port)?;
    Ok((child, port))
}

/// A Redis server with AOF (`appendfsync` = always | no) in `dir`.
pub fn start_redis(dir: &Path, appendfsync: &str) -> Result<(Child, u16), BenchError> {
    let port = free_port()?;
    let mut child = spawn_redis(dir, appendfsync, port, &[])?;
    wait_ready(&mut child, port)?;
    Ok((child, port))
}

/// `redis-server` with AOF in `dir` on `port` and `extra` arguments,
/// not waited for (the restart scenario times its loading itself).
pub fn spawn_redis(
    dir: &Path,
    appendfsync: &str,
    port: u16,
    extra: &[&str],
) -> Result<Child, BenchError> {
    std::fs::create_dir_all(dir).map_err(|e| BenchError::io("create the Redis dir", e))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("redis.log"))
        .map_err(|e| BenchError::io("open the Redis log", e))?;
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--appendonly", "yes", "--appendfsync", appendfsync])
        .args(["--save", "", "--daemonize", "no"])
        .args(extra)
        .arg("--dir")
        .arg(dir)
        .stdout(log)
        .stderr(Stdio::null());
    Child::spawn("redis-server", &mut cmd)
}

fn log_file(path: &Path) -> Result<std::fs::File, BenchError> {
    std::fs::File::create(path)
        .map_err(|e| BenchError::io(format!("create the log {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_complete_only_when_whole() {
        assert!(reply_complete(b"+PONG\r\n"));
        assert!(!reply_complete(b"+PO"));
        assert!(!reply_complete(b"$10\r\nabc"));
        assert!(reply_complete(b"$3\r\nabc\r\n"));
        assert!(reply_complete(b"$-1\r\n"));
        assert!(reply_complete(b"$x\r\n"));
    }
}
