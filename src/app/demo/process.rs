//! Running `walrep start` as a child process (the demo kills nodes with -9,
//! which only a separate process allows), with bounded waits; children die
//! with the demo, and SIGINT/SIGTERM make the demo's waits give up so its
//! guards stop everything it started.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::client::RespClient;

/// How long a node may take to start or stop.
pub const NODE_DEADLINE: Duration = Duration::from_secs(60);

/// A `walrep start` child process.
pub struct NodeProcess {
    pub name: String,
    pub datadir: PathBuf,
    pub log: PathBuf,
    pub settings: Vec<String>,
    child: Option<Child>,
    pub port: u16,
    pub replication_port: u16,
    /// The live page's port (`status_port` among the settings; 0 = off).
    pub status_port: u16,
}

impl NodeProcess {
    /// Start `walrep start datadir` with `-c` settings (free ports unless set).
    pub fn start(name: &str, datadir: &Path, settings: &[String]) -> anyhow::Result<NodeProcess> {
        let mut p = NodeProcess {
            name: name.to_string(),
            datadir: datadir.to_path_buf(),
            log: datadir.with_extension("log"),
            settings: settings.to_vec(),
            child: None,
            port: 0,
            replication_port: 0,
            status_port: settings
                .iter()
                .find_map(|s| s.strip_prefix("status_port=")?.parse().ok())
                .unwrap_or(0),
        };
        p.launch()?;
        Ok(p)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(std::env::current_exe().context("locate the walrep binary")?);
        cmd.arg("start").arg(&self.datadir);
        for default in ["port=0", "replication_port=0"] {
            let name = default.split('=').next().unwrap_or_default();
            if !self
                .settings
                .iter()
                .any(|s| s.starts_with(&format!("{name}=")))
            {
                cmd.args(["-c", default]);
            }
        }
        for s in &self.settings {
            cmd.args(["-c", s]);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().context("start walrep")?;
        let pid = child.id();
        self.child = Some(child);
        let dir = walrep::node::DataDir::new(&self.datadir);
        let deadline = Instant::now() + NODE_DEADLINE;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "{} exited with {status} during start-up; see {}",
                    self.name,
                    self.log.display()
                );
            }
            let holder = walrep::node::DataDirLock::read_holder(&dir);
            if let Some(h) = holder.filter(|h| h.pid == pid) {
                self.port = h.port("port").unwrap_or(0);
                self.replication_port = h.port("replication_port").unwrap_or(0);
                if self.port != 0 && self.client().is_ok() {
                    return Ok(());
                }
            }
            check_interrupted()?;
            if Instant::now() > deadline {
                bail!(
                    "{} did not start within {NODE_DEADLINE:?}; see {}",
                    self.name,
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start the node again on its data directory with the same settings
    /// (after [`Self::kill9`] or [`Self::stop`]).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("{} is still running", self.name);
        }
        self.status_port = self
            .settings
            .iter()
            .find_map(|s| s.strip_prefix("status_port=")?.parse().ok())
            .unwrap_or(0);
        self.launch()
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn client(&self) -> std::io::Result<RespClient> {
        RespClient::connect(self.addr(), Duration::from_secs(10))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL: a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + NODE_DEADLINE;
        loop {
            if let Some(s) = c.try_wait()? {
                if !s.success() {
                    bail!("{} exited with {s}; see {}", self.name, self.log.display());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                bail!("{} did not stop within {NODE_DEADLINE:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Have the child killed (SIGKILL) when the demo's process dies, however it
/// dies (kill -9 included), so no node or etcd member outlives it.
pub(super) fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: prctl is async-signal-safe; the closure touches no memory of
    // the parent. Children are spawned from the main thread, whose exit is
    // the process's (PR_SET_PDEATHSIG follows the spawning thread).
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Set by SIGINT or SIGTERM once [`catch_interrupts`] ran.
static INTERRUPTED: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Catch SIGINT and SIGTERM: the demo's waits then fail with
/// "interrupted" and its guards stop every process it started and remove
/// its temporary directory. A second signal ends the demo at once (its
/// children die with it).
pub(super) fn catch_interrupts() -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = INTERRUPTED.get_or_init(Arc::default).clone();
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, flag.clone())?;
        signal_hook::flag::register(sig, flag.clone())?;
    }
    Ok(())
}

/// An error once SIGINT or SIGTERM arrived (see [`catch_interrupts`]).
pub(super) fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.get().is_some_and(|f| f.load(Ordering::Relaxed)) {
        bail!("interrupted: stopping every process the demo started");
    }
    Ok(())
}

/// The last `lines` lines of a log file (for an error message).
pub(super) fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
