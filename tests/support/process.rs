//! Child processes of the tests: a guard that kills and reaps its child when
//! dropped (also when the test panics, so no test leaves a process behind),
//! every wait for an exit bounded; and looking at processes the tests did
//! not start themselves (commands run by walrep).

use std::fs;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// How long a process may take to start or to exit when asked.
pub const PROCESS_DEADLINE: Duration = Duration::from_secs(60);

/// A child process, killed (SIGKILL) and reaped when dropped.
pub struct ChildGuard(Child);

impl ChildGuard {
    pub fn spawn(cmd: &mut Command) -> ChildGuard {
        ChildGuard(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}")),
        )
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// The exit status if the child has exited (it is reaped then), without
    /// waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.0.try_wait().expect("wait for a child")
    }

    /// Wait for the child to exit, at most [`PROCESS_DEADLINE`]; `None`
    /// when it is still running then (the guard still kills it on drop).
    pub fn wait_exit(&mut self) -> Option<ExitStatus> {
        let end = Instant::now() + PROCESS_DEADLINE;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send `signal` and wait for the exit (see [`Self::wait_exit`]); a child
    /// still running after that is killed and reaped, and the answer is
    /// `None`. A child that already exited is not signalled (its pid may be
    /// someone else's by now).
    pub fn signal_and_wait(&mut self, signal: libc::c_int) -> Option<ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        // SAFETY: kill(2) on our own child, which is not reaped yet, so the
        // pid is still its.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, signal);
        }
        let status = self.wait_exit();
        if status.is_none() {
            self.kill();
        }
        status
    }

    /// SIGINT (pg_receivewal's and PostgreSQL's clean stop), then the exit
    /// status; fails the test if the child did not exit in time.
    pub fn interrupt(&mut self) -> ExitStatus {
        self.signal_and_wait(libc::SIGINT).unwrap_or_else(|| {
            panic!("the child did not exit within {PROCESS_DEADLINE:?} of SIGINT (killed)")
        })
    }

    /// SIGKILL and reap; nothing when the child already exited.
    pub fn kill(&mut self) {
        // Child::kill does not signal a child already reaped.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a process is gone (or a zombie waiting for its parent to reap
/// it).
pub fn process_gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// The pid a command wrote to `path` (a test's command says who it is this
/// way), once it is there.
pub fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The command lines of the running processes whose command line contains
/// `needle` (as `pgrep -f`, without needing procps).
pub fn processes_running(needle: &str) -> Vec<String> {
    processes(needle)
        .into_iter()
        .map(|(_, line)| line)
        .collect()
}

/// The pids of the running processes whose command line contains
/// `needle` (as `pgrep -f`).
pub fn pids_running(needle: &str) -> Vec<u32> {
    processes(needle).into_iter().map(|(pid, _)| pid).collect()
}

/// (pid, command line) of the running processes whose command line
/// contains `needle`.
fn processes(needle: &str) -> Vec<(u32, String)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let raw = fs::read(e.path().join("cmdline")).ok()?;
            // Arguments are NUL-separated; a zombie's command line is empty.
            let line = String::from_utf8_lossy(&raw)
                .split('\0')
                .filter(|a| !a.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            Some((pid, line))
        })
        .filter(|(_, line)| line.contains(needle))
        .collect()
}
