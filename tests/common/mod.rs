//! Test harness: real `walrep` processes on loopback, in temporary data
//! directories, always stopped by the test (a Drop guard kills them).

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a node may take to start or stop before the test fails.
pub const NODE_DEADLINE: Duration = Duration::from_secs(60);

pub fn walrep_bin() -> &'static str {
    env!("CARGO_BIN_EXE_walrep")
}

/// Poll `f` until it returns `Some`, or fail with `what` after `deadline`.
pub fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Require an external tool, or skip the test when WALREP_SKIP_EXTERNAL=1.
/// Returns false when the caller should return early (skip).
pub fn require_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if found {
        return true;
    }
    if std::env::var("WALREP_SKIP_EXTERNAL").as_deref() == Ok("1") {
        eprintln!("skipping: {tool} is not installed and WALREP_SKIP_EXTERNAL=1");
        return false;
    }
    panic!("this test needs `{tool}` (Debian: apt-get install redis-tools postgresql-client-15); set WALREP_SKIP_EXTERNAL=1 to skip it");
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
    pub child: Option<Child>,
    pub port: u16,
    pub replication_port: u16,
    pub log: PathBuf,
    pub args: Vec<String>,
}

impl TestNode {
    /// Start a node on `datadir` with free ports and extra `-c` settings.
    pub fn start(datadir: &Path, settings: &[&str]) -> TestNode {
        let mut node = TestNode {
            datadir: datadir.to_path_buf(),
            child: None,
            port: 0,
            replication_port: 0,
            log: datadir.with_extension("log"),
            args: settings.iter().map(|s| s.to_string()).collect(),
        };
        node.launch();
        node
    }

    fn launch(&mut self) {
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
        let child = cmd.spawn().expect("spawn walrep start");
        let pid = child.id();
        self.child = Some(child);
        let lock = self.datadir.join("walrep.pid");
        let (port, rport) = wait_for(
            &format!(
                "node {} to listen (log: {})",
                self.datadir.display(),
                self.log.display()
            ),
            NODE_DEADLINE,
            || {
                if let Some(status) = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    panic!(
                        "walrep start exited with {status} during start-up:\n{}",
                        self.log_text()
                    );
                }
                let text = fs::read_to_string(&lock).ok()?;
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
            },
        );
        self.port = port;
        self.replication_port = rport;
        wait_for("the node to answer PING", NODE_DEADLINE, || {
            let mut c = self.try_client()?;
            redis::cmd("PING").query::<String>(&mut c).ok()
        });
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
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("node is running");
        signal_and_wait(&mut c, libc::SIGTERM).unwrap_or_else(|| {
            panic!(
                "node did not stop within {NODE_DEADLINE:?}:\n{}",
                self.log_text()
            )
        })
    }

    /// Start again on the same data directory and settings.
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

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Run the walrep binary with `args` (bounded: killed after
/// [`NODE_DEADLINE`]); returns (success, stdout, stderr).
pub fn walrep(args: &[&str]) -> (bool, String, String) {
    let mut child = Command::new(walrep_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run walrep");
    let end = Instant::now() + NODE_DEADLINE;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "walrep {args:?} did not finish within {NODE_DEADLINE:?}: {}",
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

/// A PostgreSQL 15 client tool (pg_receivewal, psql, pg_basebackup):
/// Debian's versioned directory first, then PATH. Fails the test when it is
/// missing, unless WALREP_SKIP_EXTERNAL=1 (then `None`: skip).
pub fn pg_tool(name: &str) -> Option<PathBuf> {
    let versioned = PathBuf::from("/usr/lib/postgresql/15/bin").join(name);
    if versioned.exists() {
        return Some(versioned);
    }
    require_tool(name).then(|| PathBuf::from(name))
}

/// A child process killed when dropped.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn spawn(cmd: &mut Command) -> ChildGuard {
        ChildGuard(Some(cmd.spawn().expect("spawn child")))
    }

    /// SIGINT (pg_receivewal's clean stop), then wait (bounded).
    pub fn interrupt(&mut self) -> ExitStatus {
        let mut c = self.0.take().expect("running");
        signal_and_wait(&mut c, libc::SIGINT).expect("child did not exit after SIGINT")
    }
}

/// Send `signal` to our child and wait for its exit status, at most
/// `NODE_DEADLINE`; `None` (after SIGKILL) when it did not exit in time.
fn signal_and_wait(c: &mut Child, signal: libc::c_int) -> Option<ExitStatus> {
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(c.id() as i32, signal);
    }
    let end = Instant::now() + NODE_DEADLINE;
    loop {
        if let Some(s) = c.try_wait().expect("wait") {
            return Some(s);
        }
        if Instant::now() > end {
            let _ = c.kill();
            let _ = c.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sorted file names in `dir`.
pub fn file_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The WAL files of a `wal/` directory: [`file_names`] without the
/// `xlogtemp.` temporaries (segments being pre-allocated, a standby's spare
/// segments for promotion), which hold no WAL.
pub fn wal_file_names(dir: &Path) -> Vec<String> {
    file_names(dir)
        .into_iter()
        .filter(|n| !n.starts_with("xlogtemp."))
        .collect()
}

pub mod cluster;
pub mod proxy;
