//! Running `walrep start` as a child process (the demo kills nodes with -9,
//! which only a separate process allows), with bounded waits.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
