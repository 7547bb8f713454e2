//! What `walrep bench` does when it is interrupted (SIGINT, SIGTERM): a
//! registry of what the run started (its servers and tools, the anchor
//! scripts' process groups, its run directories) and a signal thread that
//! stops all of it, removes the run directories (unless `--keep`) and
//! exits with 128 + the signal (130, 143), as a shell expects.
//!
//! The signal thread does the work itself, because the main thread may be
//! blocked for minutes in a load generator or in `pg_ctl`: once the
//! processes it waits on are gone, its calls fail and it waits in
//! [`exit_if_interrupted`] for the cleanup to finish instead of printing
//! an error and exiting on its own.
//!
//! In order, bounded: SIGTERM to every registered process and group and
//! SIGQUIT to every PostgreSQL postmaster found by its `postmaster.pid`
//! under a run directory (`pg_ctl stop -m immediate`, without pg_ctl:
//! PostgreSQL detaches from the bench, see [`super::procs`]); then, after
//! 10 s of grace, SIGKILL to whatever is left and to any process whose command
//! line names a run directory (pg_ctl, runuser, pg_receivewal, a postmaster
//! that ignored SIGQUIT); then the directories go.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::BenchError;

/// How long processes get to exit after SIGTERM / SIGQUIT.
const GRACE: Duration = Duration::from_secs(10);
/// How long SIGKILLed processes get to disappear.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How deep a run directory is searched for `postmaster.pid`.
const MAX_DEPTH: usize = 6;
/// Tries to remove a run directory.
const REMOVE_TRIES: u32 = 5;

/// What the run started, and whether a signal interrupted it.
static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next_id: 0,
    interrupted: None,
    keep: false,
    entries: Vec::new(),
});

struct Registry {
    next_id: u64,
    /// The signal that interrupted the run, once one did: nothing new is
    /// started from then on.
    interrupted: Option<i32>,
    /// `--keep`: the run directories stay.
    keep: bool,
    entries: Vec<(u64, Entry)>,
}

/// One thing to stop or remove when interrupted.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A process the bench started (a server, a load generator).
    Process(libc::pid_t),
    /// A process group the bench started (an anchor script and what it
    /// runs).
    Group(libc::pid_t),
    /// A run directory: the PostgreSQL clusters in it are stopped, every
    /// process naming it is killed, and it is removed unless `--keep`.
    Dir(PathBuf),
}

/// A registration, withdrawn when dropped (the thing stopped or removed
/// by its owner as usual).
#[derive(Debug)]
pub struct Registered(u64);

impl Drop for Registered {
    fn drop(&mut self) {
        lock().entries.retain(|(id, _)| *id != self.0);
    }
}

fn lock() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Start `make` (a spawn: quick) and register what it made in one step,
/// so that a signal either finds it registered or refuses it; refused
/// with [`BenchError::Interrupted`] once the run is interrupted.
pub fn start<T>(
    make: impl FnOnce() -> Result<T, BenchError>,
    entry: impl FnOnce(&T) -> Entry,
) -> Result<(T, Registered), BenchError> {
    let mut reg = lock();
    if let Some(signal) = reg.interrupted {
        return Err(BenchError::Interrupted(signal));
    }
    let made = make()?;
    let id = reg.next_id;
    reg.next_id += 1;
    reg.entries.push((id, entry(&made)));
    Ok((made, Registered(id)))
}

/// Catch SIGINT and SIGTERM for the rest of the run: a thread that stops
/// what the registry holds and exits (see the module docs). Once per
/// process; `keep` is the run's `--keep`.
pub fn install(keep: bool) -> Result<(), BenchError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    lock().keep = keep;
    let mut result = Ok(());
    INSTALLED.call_once(|| {
        result = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
            .and_then(|mut signals| {
                std::thread::Builder::new()
                    .name("bench-signals".into())
                    .spawn(move || {
                        if let Some(signal) = signals.forever().next() {
                            on_signal(signal);
                        }
                    })
                    .map(|_| ())
            })
            .map_err(|e| BenchError::io("catch SIGINT and SIGTERM", e));
    });
    result
}

/// Whether a signal interrupted the run.
pub fn interrupted() -> Option<i32> {
    lock().interrupted
}

/// When a signal interrupted the run, wait for the signal thread, which
/// exits the process once everything is stopped (bounded: then exit here
/// with the same status); otherwise return.
pub fn exit_if_interrupted() {
    let Some(signal) = interrupted() else { return };
    std::thread::sleep(GRACE + KILL_WAIT + Duration::from_secs(30));
    std::process::exit(128 + signal);
}

fn on_signal(signal: i32) -> ! {
    let (entries, keep) = {
        let mut reg = lock();
        reg.interrupted = Some(signal);
        (std::mem::take(&mut reg.entries), reg.keep)
    };
    let name = if signal == libc::SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    eprintln!("walrep bench: {name}: stopping the servers it started");
    stop(entries.into_iter().map(|(_, e)| e).collect(), keep);
    std::process::exit(128 + signal);
}

/// Stop every process of `entries`, kill what names a directory of them,
/// and remove those directories unless `keep`.
fn stop(entries: Vec<Entry>, keep: bool) {
    let dirs: Vec<&Path> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Dir(d) => Some(d.as_path()),
            _ => None,
        })
        .collect();
    let mut pids = Vec::new();
    for e in &entries {
        match e {
            Entry::Process(pid) => {
                signal(*pid, libc::SIGTERM);
                pids.push(*pid);
            }
            Entry::Group(pgid) => signal(-pgid, libc::SIGTERM),
            Entry::Dir(_) => {}
        }
    }
    for dir in &dirs {
        for pid in postmasters(dir, MAX_DEPTH) {
            // PostgreSQL's immediate shutdown, as `pg_ctl stop -m immediate`.
            signal(pid, libc::SIGQUIT);
            pids.push(pid);
        }
    }
    wait_gone(&pids, GRACE);
    for e in &entries {
        match e {
            Entry::Process(pid) => signal(*pid, libc::SIGKILL),
            Entry::Group(pgid) => signal(-pgid, libc::SIGKILL),
            Entry::Dir(_) => {}
        }
    }
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        let left: Vec<libc::pid_t> = dirs.iter().flat_map(|d| naming(d)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            for pid in &left {
                eprintln!("walrep bench: process {pid} still names the run directory");
            }
            break;
        }
        for &pid in &left {
            signal(pid, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for dir in &dirs {
        if keep {
            eprintln!(
                "walrep bench: data directories and logs kept in {}",
                dir.display()
            );
        } else {
            remove(dir);
        }
    }
}

/// Remove `dir`, which the main thread may be removing at the same time
/// (its run ending in an error): a few bounded tries, quiet once it is gone.
fn remove(dir: &Path) {
    for attempt in 1..=REMOVE_TRIES {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return,
            Err(_) if !dir.exists() => return,
            Err(e) if attempt == REMOVE_TRIES => {
                eprintln!("walrep bench: could not remove {}: {e}", dir.display());
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn signal(pid: libc::pid_t, signal: i32) {
    // SAFETY: kill(2) has no memory preconditions. The pid is one the
    // bench started (or a postmaster's, from its own pid file): its owner
    // may have reaped it a moment ago, and the pid could then in principle
    // be reused within this bounded cleanup; an accepted risk of signalling
    // by pid from another thread.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Whether `pid` still runs (a zombie, exited but not yet reaped by its
/// parent, does not).
fn running(pid: libc::pid_t) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn wait_gone(pids: &[libc::pid_t], limit: Duration) {
    let deadline = Instant::now() + limit;
    while pids.iter().any(|&p| running(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The postmasters of the PostgreSQL clusters under `dir`: the first line
/// of each `postmaster.pid`, searched at most `depth` levels down.
fn postmasters(dir: &Path, depth: usize) -> Vec<libc::pid_t> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() && depth > 0 {
            out.extend(postmasters(&path, depth - 1));
        } else if kind.is_file() && e.file_name() == "postmaster.pid" {
            let pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse::<libc::pid_t>().ok());
            out.extend(pid.filter(|&p| p > 0));
        }
    }
    out
}

/// The processes other than this one whose command line names `dir`.
pub fn naming(dir: &Path) -> Vec<libc::pid_t> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let me = std::process::id() as libc::pid_t;
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postmasters_are_found_by_their_pid_files_within_the_depth() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("postgresql-r1").join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("postmaster.pid"), "4242\n/x\n").unwrap();
        let deep = d.path().join("a/b/c/d/e/f/g/h");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("postmaster.pid"), "7\n").unwrap();
        std::fs::write(d.path().join("postmaster.pid"), "garbage\n").unwrap();
        assert_eq!(postmasters(d.path(), MAX_DEPTH), vec![4242]);
    }

    #[test]
    fn a_process_naming_a_directory_is_found_and_a_zombie_does_not_run() {
        let d = tempfile::tempdir().unwrap();
        assert!(naming(d.path()).is_empty());
        // A shell blocked in its builtin `read` on a pipe this test holds:
        // it never forks, so no child of it (briefly still carrying the
        // shell's command line between fork and exec) can be found too.
        let mut named = std::process::Command::new("sh")
            .args(["-c", "read x", "sh"])
            .arg(d.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = named.id() as libc::pid_t;
        // Until the child has exec'd, its command line is this test's.
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while naming(d.path()).is_empty() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(naming(d.path()), vec![pid]);
        assert!(running(pid));
        signal(pid, libc::SIGKILL);
        wait_gone(&[pid], Duration::from_secs(10));
        assert!(!running(pid), "a killed, unreaped child is a zombie");
        named.wait().unwrap();
        assert!(naming(d.path()).is_empty());
    }
}
