//! walrep nodes for the tests: real `walrep start` processes on loopback in
//! temporary data directories ([`TestNode`], stopped by the test or killed
//! when dropped), nodes run in the test's own process for tests that need
//! their internals ([`InProcessNode`]), and the CLI run with a bound.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use walrep::node::{Node, RunningNode, StartOptions};
use walrep::storage::Storage;

use super::process::{ChildGuard, PROCESS_DEADLINE};
use super::wait_for;
use super::wal::seg;

pub fn walrep_bin() -> &'static str {
    env!("CARGO_BIN_EXE_walrep")
}

/// Replace (or append) the line setting `name` in `dir`'s walrep.toml.
pub fn set_config_line(dir: &Path, name: &str, line: &str) {
    let path = dir.join("walrep.toml");
    let text = fs::read_to_string(&path).unwrap();
    let mut found = false;
    let mut out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with(&format!("{name} =")) {
                found = true;
                line.to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        out.push(line.to_string());
    }
    fs::write(&path, out.join("\n") + "\n").unwrap();
}

/// Run `walrep init` in a fresh directory under `parent`.
pub fn init_datadir(parent: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let dir = parent.join(name);
    let out = Command::new(walrep_bin())
        .arg("init")
        .arg(&dir)
        .args(extra)
        .output()
        .expect("run walrep init");
    assert!(
        out.status.success(),
        "walrep init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// A running `walrep start` process.
pub struct TestNode {
    pub datadir: PathBuf,
    /// `None` once stopped or killed.
    child: Option<ChildGuard>,
    pub port: u16,
    pub replication_port: u16,
    pub log: PathBuf,
    pub args: Vec<String>,
}

impl TestNode {
    /// Start a node on `datadir` with free ports and extra `-c` settings.
    pub fn start(datadir: &Path, settings: &[&str]) -> TestNode {
        TestNode::start_logging_to(datadir, settings, &datadir.with_extension("log"))
    }

    /// [`TestNode::start`] with its log in `log` (elsewhere than beside a
    /// data directory on a filesystem a test fills).
    pub fn start_logging_to(datadir: &Path, settings: &[&str], log: &Path) -> TestNode {
        let mut args: Vec<String> = settings.iter().map(|s| s.to_string()).collect();
        // Reserved ports, not port 0: a restart asks for the same ports and
        // must get them (see `ports`).
        for name in ["port", "replication_port"] {
            if !args.iter().any(|a| a.starts_with(&format!("{name}="))) {
                args.push(format!("{name}={}", super::ports::reserve_port()));
            }
        }
        let mut node = TestNode {
            datadir: datadir.to_path_buf(),
            child: None,
            port: 0,
            replication_port: 0,
            log: log.to_path_buf(),
            args,
        };
        node.launch();
        node
    }

    fn launch(&mut self) {
        let child = ChildGuard::spawn(&mut self.command());
        let pid = child.pid();
        self.child = Some(child);
        let (port, rport) = wait_for(
            &format!(
                "node {} to listen (log: {})",
                self.datadir.display(),
                self.log.display()
            ),
            PROCESS_DEADLINE,
            || {
                if let Some(status) = self.child.as_mut().and_then(|c| c.exited()) {
                    panic!(
                        "walrep start exited with {status} during start-up:\n{}",
                        self.log_text()
                    );
                }
                self.listening_ports(pid)
            },
        );
        self.port = port;
        self.replication_port = rport;
        wait_for("the node to answer PING", PROCESS_DEADLINE, || {
            let mut c = self.try_client()?;
            match redis::cmd("PING").query::<String>(&mut c) {
                Ok(_) => Some(()),
                // A node with requirepass answers too, with NOAUTH.
                Err(e) if e.code() == Some("NOAUTH") => Some(()),
                Err(_) => None,
            }
        });
    }

    /// `walrep start` with this node's settings, free ports unless set,
    /// stderr appended to the log.
    fn command(&self) -> Command {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let mut cmd = Command::new(walrep_bin());
        cmd.arg("start").arg(&self.datadir);
        let has = |name: &str| self.args.iter().any(|a| a.starts_with(&format!("{name}=")));
        if !has("port") {
            cmd.args(["-c", "port=0"]);
        }
        if !has("replication_port") {
            cmd.args(["-c", "replication_port=0"]);
        }
        for a in &self.args {
            cmd.args(["-c", a]);
        }
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::null())
        .stderr(log);
        cmd
    }

    /// The ports in `walrep.pid` once process `pid` wrote it with its Redis
    /// port (the replication port is 0 when it has none).
    fn listening_ports(&self, pid: u32) -> Option<(u16, u16)> {
        let text = fs::read_to_string(self.datadir.join("walrep.pid")).ok()?;
        let mut lines = text.lines();
        if lines.next()? != pid.to_string() {
            return None;
        }
        let mut port = 0;
        let mut rport = 0;
        for l in lines.skip(1) {
            match l.split_once('=') {
                Some(("port", p)) => port = p.parse().ok()?,
                Some(("replication_port", p)) => rport = p.parse().ok()?,
                _ => {}
            }
        }
        (port != 0).then_some((port, rport))
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn try_client(&self) -> Option<redis::Connection> {
        let c = redis::Client::open(self.url())
            .ok()?
            .get_connection_with_timeout(Duration::from_secs(5))
            .ok()?;
        c.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        c.set_write_timeout(Some(Duration::from_secs(30))).ok()?;
        Some(c)
    }

    pub fn client(&self) -> redis::Connection {
        self.try_client()
            .unwrap_or_else(|| panic!("could not connect to {}:\n{}", self.url(), self.log_text()))
    }

    pub fn info(&self, section: &str) -> String {
        redis::cmd("INFO")
            .arg(section)
            .query(&mut self.client())
            .expect("INFO")
    }

    /// A field of INFO `section`.
    pub fn info_field(&self, section: &str, field: &str) -> Option<String> {
        let info = self.info(section);
        info.lines().find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_string())
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").pid()
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("node is running");
        c.signal_and_wait(libc::SIGTERM).unwrap_or_else(|| {
            panic!(
                "node did not stop within {PROCESS_DEADLINE:?}:\n{}",
                self.log_text()
            )
        })
    }

    /// Start again on the same data directory, settings and ports (standbys
    /// point at them).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the node first");
        for (name, port) in [
            ("port", self.port),
            ("replication_port", self.replication_port),
        ] {
            if port != 0 && !self.args.iter().any(|a| a.starts_with(&format!("{name}="))) {
                self.args.push(format!("{name}={port}"));
            }
        }
        self.launch();
    }
}

/// A node run in the test's own process, on free ports, for tests that
/// reach into it (checkpoints, pins, the walsender registry); stopped when
/// dropped.
pub struct InProcessNode(Option<RunningNode>);

impl InProcessNode {
    /// Initialise a new system with 1 MiB segments in `dir` and start it
    /// with `settings` (`name=value`).
    pub fn start(dir: &Path, settings: &[&str]) -> InProcessNode {
        walrep::node::init::init(dir, seg()).unwrap();
        InProcessNode::start_existing(dir, settings, None)
    }

    /// Start the node already in `dir` (initialised, perhaps made a
    /// standby), its storage built on `storage` (a test's `FaultyStorage`)
    /// when given.
    pub fn start_existing(
        dir: &Path,
        settings: &[&str],
        storage: Option<Arc<dyn Storage>>,
    ) -> InProcessNode {
        let mut overrides = vec!["port=0".to_string(), "replication_port=0".to_string()];
        overrides.extend(settings.iter().map(|s| s.to_string()));
        let opts = StartOptions { overrides, storage };
        InProcessNode(Some(RunningNode::start(dir, &opts).unwrap()))
    }

    /// The address of its Redis port.
    pub fn redis_url(&self) -> String {
        let port = self.node().ports.lock().unwrap().redis;
        format!("redis://127.0.0.1:{port}/")
    }

    pub fn running(&self) -> &RunningNode {
        self.0.as_ref().unwrap()
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.running().node
    }

    pub fn replication_port(&self) -> u16 {
        self.node().ports.lock().unwrap().replication
    }
}

impl Drop for InProcessNode {
    fn drop(&mut self) {
        if let Some(n) = self.0.take() {
            let _ = n.stop();
        }
    }
}

/// Run the walrep binary with `args` (bounded: killed after
/// [`PROCESS_DEADLINE`]); returns (success, stdout, stderr).
pub fn walrep(args: &[&str]) -> (bool, String, String) {
    walrep_within(args, PROCESS_DEADLINE)
}

/// [`walrep`] killed after `deadline` instead (a benchmark's short run);
/// its output must fit the pipes (tens of kB).
pub fn walrep_within(args: &[&str], deadline: Duration) -> (bool, String, String) {
    let mut child = Command::new(walrep_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run walrep");
    let end = Instant::now() + deadline;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "walrep {args:?} did not finish within {deadline:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("collect output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
