//! Shared helpers of the replication tests: a server over the in-memory
//! source, external tools (found or skipped by WALREP_SKIP_EXTERNAL=1),
//! child processes killed on drop, and deadline polling.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use walrep::config::{HbaEntry, HbaMethod};
use walrep::replication::fake::FakeSource;
use walrep::replication::registry::WalSenderRegistry;
use walrep::replication::server::{self, ServerHandle, ServerOptions};
use walrep::replication::slots::SlotManager;
use walrep::{Lsn, WalSegSize};

/// Generous bound on every wait in these tests.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub const SYSTEM_ID: u64 = 7_301_234_567_890_123_456;

/// 1 MiB segments keep pg_receivewal's files small.
pub fn seg() -> WalSegSize {
    WalSegSize::new(1 << 20).unwrap()
}

/// A replication server over a FakeSource in a temporary data directory.
pub struct FakeServer {
    pub source: Arc<FakeSource>,
    pub slots: Arc<SlotManager>,
    pub registry: Arc<WalSenderRegistry>,
    pub handle: Option<ServerHandle>,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl FakeServer {
    pub fn start(options: ServerOptions) -> FakeServer {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, options)
    }

    /// Start over an existing data directory (slots survive).
    pub fn start_in(dir: tempfile::TempDir, options: ServerOptions) -> FakeServer {
        let source = Arc::new(FakeSource::new(
            SYSTEM_ID,
            seg(),
            dir.path().to_path_buf(),
            Lsn(0),
        ));
        let slots = SlotManager::open(dir.path(), 8, None).unwrap();
        let registry = WalSenderRegistry::new(options.max_wal_senders);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = server::spawn(
            listener,
            Arc::clone(&source),
            Arc::clone(&slots),
            Arc::clone(&registry),
            options,
        )
        .unwrap();
        FakeServer {
            source,
            slots,
            registry,
            handle: Some(handle),
            port,
            dir,
        }
    }

    pub fn conninfo(&self, extra: &str) -> String {
        format!("host=127.0.0.1 port={} user=walrep {extra}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
        }
    }
}

/// Options with a password user and an hba that needs SCRAM for it.
pub fn scram_options() -> ServerOptions {
    let mut o = ServerOptions::default();
    o.passwords.insert("walrep".into(), "sekrit pw".into());
    o.hba = vec![
        HbaEntry {
            address: "127.0.0.1/32".into(),
            method: HbaMethod::Reject,
            user: "rejected".into(),
        },
        HbaEntry {
            address: "127.0.0.1/32".into(),
            method: HbaMethod::ScramSha256,
            user: "walrep".into(),
        },
    ];
    o
}

/// Path of an external tool, or `None` (test skipped) when it is missing
/// and WALREP_SKIP_EXTERNAL=1; otherwise a missing tool fails the test.
pub fn tool(name: &str) -> Option<PathBuf> {
    let candidates = [
        PathBuf::from("/usr/lib/postgresql/15/bin").join(name),
        PathBuf::from("/usr/bin").join(name),
    ];
    if let Some(p) = candidates.into_iter().find(|p| p.exists()) {
        return Some(p);
    }
    if std::env::var("WALREP_SKIP_EXTERNAL").as_deref() == Ok("1") {
        eprintln!("skipping: {name} not installed and WALREP_SKIP_EXTERNAL=1");
        return None;
    }
    panic!("{name} is not installed (apt-get install postgresql-15 postgresql-client-15), or set WALREP_SKIP_EXTERNAL=1");
}

/// A child process killed (and reaped) on drop.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn spawn(cmd: &mut Command) -> ChildGuard {
        ChildGuard(Some(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}")),
        ))
    }

    /// SIGINT (pg_receivewal's clean stop), then wait up to DEADLINE.
    pub fn interrupt(&mut self) -> std::process::ExitStatus {
        let child = self.0.as_mut().expect("running");
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        self.wait_exit()
    }

    /// Wait for the child to exit, at most DEADLINE.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.try_wait_exit().expect("child did not exit in time")
    }

    /// The exit status, or `None` if it did not exit within DEADLINE.
    pub fn try_wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        let child = self.0.as_mut().expect("running");
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.0 = None;
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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

/// Poll `cond` every 20 ms until it holds or DEADLINE passes.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Names of files in `dir`, sorted.
pub fn file_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
