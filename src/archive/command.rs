//! Running `archive_command` and `restore_command`: placeholder substitution
//! and one `/bin/sh -c` child in its own process group, with a bounded wait,
//! a kill of the whole group on timeout or cancellation, and its stderr kept.
//!
//! The child's exit is observed by a small thread blocked in
//! `waitid(WNOWAIT)`, which sees the exit without reaping the child. The
//! process-group id therefore stays reserved by the zombie until this module
//! reaps it, so a `kill(-pgid)` can never hit an unrelated group that reused
//! the id.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{after, bounded, never, select, Receiver, TryRecvError};
use serde::{Deserialize, Serialize};

use super::ArchiveError;

/// How much of a command's stderr is kept: the tail, where the reason for a
/// failure usually is. Bounded so a chatty command cannot grow our memory.
pub const STDERR_TAIL_BYTES: u64 = 8 * 1024;

/// After SIGKILL, how long to wait for the child to be reported dead before
/// leaving its reaping to a background thread. SIGKILL cannot be caught, so
/// only a process stuck in uninterruptible IO takes longer.
pub const KILL_REAP_WAIT: Duration = Duration::from_secs(10);

/// Replace `%<c>` for each `(c, value)` in `values` and `%%` by `%` in
/// `template`, as PostgreSQL builds archive and restore commands. Any other
/// `%` is kept as is. Values are substituted unquoted (as PostgreSQL does),
/// so they must be plain names or relative paths: anything else is refused.
/// A placeholder listed with `None` is known but has no value: using it is an
/// error, not an empty substitution.
pub fn substitute(template: &str, values: &[(char, Option<&str>)]) -> Result<String, ArchiveError> {
    for (placeholder, value) in values {
        if let Some(v) = value {
            check_safe(*placeholder, v)?;
        }
    }
    let mut out = String::with_capacity(template.len() + 64);
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(&next) = chars.peek() else {
            out.push('%');
            break;
        };
        if next == '%' {
            out.push('%');
            chars.next();
        } else if let Some((p, value)) = values.iter().find(|(p, _)| *p == next) {
            let v = value.ok_or(ArchiveError::MissingValue { placeholder: *p })?;
            out.push_str(v);
            chars.next();
        } else {
            out.push('%');
        }
    }
    Ok(out)
}

/// A value is safe to paste into a shell command unquoted if it is made only
/// of characters the shell never interprets, and cannot be taken for an option.
fn check_safe(placeholder: char, value: &str) -> Result<(), ArchiveError> {
    let safe = !value.is_empty()
        && !value.starts_with('-')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    if safe {
        Ok(())
    } else {
        Err(ArchiveError::UnsafeValue {
            placeholder,
            value: value.to_string(),
        })
    }
}

/// One shell command to run.
#[derive(Debug, Clone)]
pub struct ShellCommand<'a> {
    /// The command line, placeholders already substituted.
    pub command_line: &'a str,
    /// Working directory: the data directory, so `%p` can be relative as in PostgreSQL.
    pub cwd: &'a Path,
    /// Kill the command (its whole process group) after this long; `None` =
    /// no limit (`archive_command` has none in PostgreSQL; the caller's
    /// `cancel` is then its bound).
    pub timeout: Option<Duration>,
    /// A message or a disconnect on this channel asks the command to stop
    /// (node shutdown). The command gets `cancel_grace` to finish, then is killed.
    pub cancel: Option<&'a Receiver<()>>,
    /// How long a running command may still finish after `cancel` fires.
    pub cancel_grace: Duration,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Termination {
    /// The shell exited with this status. The shell reports a command it
    /// could not execute as 126, one it could not find as 127, and a child
    /// killed by signal N as 128+N.
    Exited {
        /// The shell's exit status (0 to 255).
        code: i32,
    },
    /// The shell itself was killed by this signal.
    Signaled {
        /// The signal number (`SIGKILL` = 9, ...).
        signal: i32,
    },
    /// Killed by us after `timeout`.
    TimedOut,
    /// Killed by us after `cancel` fired and `cancel_grace` passed.
    Cancelled,
}

impl Termination {
    /// Exit status 0.
    pub fn success(self) -> bool {
        self == Termination::Exited { code: 0 }
    }

    /// PostgreSQL's `wait_result_is_any_signal(status, include_command_not_found = true)`:
    /// killed by a signal, or an exit status above 125 (126 cannot execute,
    /// 127 not found, 128+N a child killed by signal N). PostgreSQL treats
    /// these as "something is badly wrong", never as "file not in archive".
    pub fn is_hard_failure(self) -> bool {
        match self {
            Termination::Exited { code } => code > 125,
            Termination::Signaled { .. } | Termination::TimedOut | Termination::Cancelled => true,
        }
    }

    /// The reason in PostgreSQL's words (`wait_result_to_str`).
    pub fn describe(self) -> String {
        match self {
            Termination::Exited { code: 126 } => {
                "command not executable (child process exited with exit code 126)".into()
            }
            Termination::Exited { code: 127 } => {
                "command not found (child process exited with exit code 127)".into()
            }
            Termination::Exited { code } => format!("child process exited with exit code {code}"),
            Termination::Signaled { signal } => format!(
                "child process was terminated by signal {signal}: {}",
                signal_name(signal)
            ),
            Termination::TimedOut => "child process timed out and was killed".into(),
            Termination::Cancelled => "child process was killed at shutdown".into(),
        }
    }
}

/// A readable name for the signals a command is likely to die of.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "Hangup",
        libc::SIGINT => "Interrupt",
        libc::SIGQUIT => "Quit",
        libc::SIGILL => "Illegal instruction",
        libc::SIGABRT => "Aborted",
        libc::SIGBUS => "Bus error",
        libc::SIGFPE => "Floating point exception",
        libc::SIGKILL => "Killed",
        libc::SIGUSR1 => "User defined signal 1",
        libc::SIGSEGV => "Segmentation fault",
        libc::SIGUSR2 => "User defined signal 2",
        libc::SIGPIPE => "Broken pipe",
        libc::SIGALRM => "Alarm clock",
        libc::SIGTERM => "Terminated",
        _ => "unknown signal",
    }
}

/// What running a command gave.
#[derive(Debug, Clone)]
pub struct ShellRun {
    /// How it ended.
    pub termination: Termination,
    /// The last [`STDERR_TAIL_BYTES`] of its stderr, lossily decoded, trimmed.
    pub stderr: String,
    /// Wall time from spawn to reap, for logs.
    pub elapsed: Duration,
    /// Process id of the shell (also its process-group id), so tests can
    /// check that a killed command is really gone.
    pub pid: u32,
    /// `cancel` fired while the command ran (even if it then finished in
    /// its grace time): the caller must stop too, since a cancel message was
    /// consumed here.
    pub cancel_requested: bool,
}

/// Run `cmd` through `/bin/sh -c` in a new process group, with stdin and
/// stdout on /dev/null and stderr captured, and wait for it within the
/// command's bounds. Only a failure to start the shell is an error; every way
/// the command itself can end is a [`Termination`].
pub fn run_shell(cmd: &ShellCommand<'_>) -> Result<ShellRun, ArchiveError> {
    let started = Instant::now();
    let stderr_file = tempfile::tempfile()
        .map_err(|e| ArchiveError::io("create a temporary file for stderr", "$TMPDIR", e))?;
    let stderr_for_child = stderr_file
        .try_clone()
        .map_err(|e| ArchiveError::io("duplicate", "stderr temporary file", e))?;
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd.command_line)
        .current_dir(cmd.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr_for_child))
        .process_group(0)
        .spawn()
        .map_err(|source| ArchiveError::Spawn {
            command: cmd.command_line.to_string(),
            source,
        })?;
    let pid = child.id();
    let (termination, cancel_requested) = wait_bounded(child, cmd)?;
    Ok(ShellRun {
        termination,
        stderr: read_tail(stderr_file),
        elapsed: started.elapsed(),
        pid,
        cancel_requested,
    })
}

/// Wait for `child` within the bounds of `cmd`; kill its group when one is hit.
fn wait_bounded(
    mut child: Child,
    cmd: &ShellCommand<'_>,
) -> Result<(Termination, bool), ArchiveError> {
    let exited = match spawn_exit_watcher(child.id()) {
        Ok(rx) => rx,
        Err(e) => {
            kill_group(child.id());
            // SIGKILL cannot be ignored: this wait ends unless the child is
            // stuck in uninterruptible IO.
            let _ = child.wait();
            return Err(ArchiveError::Thread(e));
        }
    };
    let deadline = cmd.timeout.map(after).unwrap_or_else(never);
    let cancel = cmd.cancel.cloned().unwrap_or_else(never);
    select! {
        // Both may be ready at once (a quick command, a cancel already
        // sent) and select picks either: a pending cancel is still one.
        recv(exited) -> _ => {
            let requested = !matches!(cancel.try_recv(), Err(TryRecvError::Empty));
            Ok((reap(child), requested))
        }
        recv(deadline) -> _ => Ok((kill_and_reap(child, &exited, Termination::TimedOut), false)),
        recv(cancel) -> _ => {
            let t = select! {
                recv(exited) -> _ => reap(child),
                default(cmd.cancel_grace) => kill_and_reap(child, &exited, Termination::Cancelled),
            };
            Ok((t, true))
        }
    }
}

/// Start a thread that reports (without reaping) when process `pid` exits.
fn spawn_exit_watcher(pid: u32) -> io::Result<Receiver<()>> {
    let (tx, rx) = bounded(1);
    thread::Builder::new()
        .name(format!("cmd-wait-{pid}"))
        .spawn(move || {
            wait_exited_no_reap(pid);
            // Capacity 1 and one send: never blocks, even if nobody listens.
            let _ = tx.try_send(());
        })?;
    Ok(rx)
}

/// Block until `pid` has exited, leaving it a zombie (`WNOWAIT`).
fn wait_exited_no_reap(pid: u32) {
    // id_t is u32 on Linux: the pid converts as is.
    let id: libc::id_t = pid;
    loop {
        // SAFETY: siginfo_t is plain data; zeroed is a valid value, and
        // waitid only writes into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: a plain syscall with a valid out-pointer.
        let rc = unsafe { libc::waitid(libc::P_PID, id, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// SIGKILL every process of the group led by `pid`.
fn kill_group(pid: u32) {
    if let Ok(pgid) = i32::try_from(pid) {
        // SAFETY: a plain syscall. The group id is still owned by our
        // unreaped child, so it cannot name another group.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Kill the group, then reap the shell within [`KILL_REAP_WAIT`]. If it does
/// not die in time, a background thread reaps it later so no zombie is left.
fn kill_and_reap(mut child: Child, exited: &Receiver<()>, why: Termination) -> Termination {
    kill_group(child.id());
    select! {
        recv(exited) -> _ => { let _ = child.wait(); }
        default(KILL_REAP_WAIT) => {
            tracing::warn!(pid = child.id(), "killed command did not exit within {KILL_REAP_WAIT:?}; reaping it in the background");
            let _ = thread::Builder::new()
                .name("cmd-reaper".into())
                .spawn(move || { let _ = child.wait(); });
        }
    }
    why
}

/// Reap an exited child and translate its status.
fn reap(mut child: Child) -> Termination {
    match child.wait() {
        Ok(status) => termination_of(status),
        // Only possible if someone else reaped it; report it as killed.
        Err(_) => Termination::Signaled {
            signal: libc::SIGKILL,
        },
    }
}

fn termination_of(status: ExitStatus) -> Termination {
    match (status.code(), status.signal()) {
        (Some(code), _) => Termination::Exited { code },
        (None, Some(signal)) => Termination::Signaled { signal },
        (None, None) => Termination::Exited { code: -1 },
    }
}

/// The last [`STDERR_TAIL_BYTES`] of the captured stderr.
fn read_tail(mut file: File) -> String {
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(STDERR_TAIL_BYTES);
    let mut buf = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err()
        || file.take(STDERR_TAIL_BYTES).read_to_end(&mut buf).is_err()
    {
        return String::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let text = text.trim();
    if start > 0 {
        format!("...{text}")
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PF: [(char, Option<&str>); 2] = [
        ('p', Some("wal/000000010000000000000003")),
        ('f', Some("000000010000000000000003")),
    ];

    #[test]
    fn substitutes_like_postgres() {
        let s = substitute("cp %p /a/%f && echo 100%% %x %", &PF).unwrap();
        assert_eq!(
            s,
            "cp wal/000000010000000000000003 /a/000000010000000000000003 && echo 100% %x %"
        );
        // %r is not an archive_command placeholder: kept as is.
        assert_eq!(substitute("x %r", &PF).unwrap(), "x %r");
        // "%%p" is a literal "%p", not a substitution.
        assert_eq!(substitute("%%p", &PF).unwrap(), "%p");
    }

    #[test]
    fn refuses_unsafe_or_missing_values() {
        let e = substitute("cp %p x", &[('p', Some("a b"))]).unwrap_err();
        assert!(
            matches!(
                e,
                ArchiveError::UnsafeValue {
                    placeholder: 'p',
                    ..
                }
            ),
            "{e}"
        );
        let e = substitute("cp %p x", &[('p', Some("$(reboot)"))]).unwrap_err();
        assert!(matches!(e, ArchiveError::UnsafeValue { .. }), "{e}");
        let e = substitute("cp %p x", &[('p', Some("-rf"))]).unwrap_err();
        assert!(matches!(e, ArchiveError::UnsafeValue { .. }), "{e}");
        let e = substitute("x %r", &[('r', None)]).unwrap_err();
        assert!(
            matches!(e, ArchiveError::MissingValue { placeholder: 'r' }),
            "{e}"
        );
        // An unused placeholder without a value is fine.
        assert_eq!(substitute("x", &[('r', None)]).unwrap(), "x");
    }

    #[test]
    fn hard_failures_follow_postgres() {
        assert!(!Termination::Exited { code: 1 }.is_hard_failure());
        assert!(!Termination::Exited { code: 125 }.is_hard_failure());
        assert!(Termination::Exited { code: 126 }.is_hard_failure());
        assert!(Termination::Exited { code: 127 }.is_hard_failure());
        assert!(Termination::Signaled { signal: 9 }.is_hard_failure());
        assert!(Termination::TimedOut.is_hard_failure());
        assert!(Termination::Exited { code: 0 }.success());
        assert!(Termination::Signaled { signal: 9 }
            .describe()
            .contains("signal 9: Killed"));
    }

    #[test]
    fn runs_in_cwd_and_keeps_stderr_tail() {
        let dir = tempfile::tempdir().unwrap();
        let run = run_shell(&ShellCommand {
            command_line: "pwd >&2; echo oops >&2; exit 3",
            cwd: dir.path(),
            timeout: Some(Duration::from_secs(30)),
            cancel: None,
            cancel_grace: Duration::ZERO,
        })
        .unwrap();
        assert_eq!(run.termination, Termination::Exited { code: 3 });
        let cwd = dir.path().canonicalize().unwrap();
        assert_eq!(run.stderr, format!("{}\noops", cwd.display()));
        assert!(!run.cancel_requested);
    }

    #[test]
    fn long_stderr_is_truncated_to_its_tail() {
        let dir = tempfile::tempdir().unwrap();
        let run = run_shell(&ShellCommand {
            command_line:
                "i=0; while [ $i -lt 2000 ]; do echo line-$i >&2; i=$((i+1)); done; echo LAST >&2",
            cwd: dir.path(),
            timeout: Some(Duration::from_secs(30)),
            cancel: None,
            cancel_grace: Duration::ZERO,
        })
        .unwrap();
        assert!(run.stderr.starts_with("..."), "{}", &run.stderr[..40]);
        assert!(run.stderr.ends_with("LAST"));
        assert!(run.stderr.len() as u64 <= STDERR_TAIL_BYTES + 3);
    }

    #[test]
    fn cancel_lets_a_quick_command_finish() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = bounded::<()>(1);
        tx.send(()).unwrap();
        let run = run_shell(&ShellCommand {
            command_line: "exit 0",
            cwd: dir.path(),
            timeout: None,
            cancel: Some(&rx),
            cancel_grace: Duration::from_secs(30),
        })
        .unwrap();
        assert_eq!(run.termination, Termination::Exited { code: 0 });
        assert!(run.cancel_requested);
    }

    #[test]
    fn cancel_kills_a_command_after_the_grace_time() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = bounded::<()>(1);
        drop(tx);
        let run = run_shell(&ShellCommand {
            command_line: "sleep 600",
            cwd: dir.path(),
            timeout: None,
            cancel: Some(&rx),
            cancel_grace: Duration::from_millis(50),
        })
        .unwrap();
        assert_eq!(run.termination, Termination::Cancelled);
        assert!(run.cancel_requested);
    }
}
