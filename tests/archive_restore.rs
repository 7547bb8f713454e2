//! restore_command against real shell commands: restored, not in archive,
//! command not found, killed by a signal, hanging (timed out, process group
//! killed), wrong size, placeholders, and installing the restored file.

mod support;

use std::fs;
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use crossbeam_channel::bounded;
use support::process::{process_gone, read_pid};
use support::wait_until;
use walrep::archive::{
    is_archived, keep_restored_file, ArchiveMark, NotFoundReason, RestoreCommand, RestoreFailure,
    RestoreOutcome, RestoredFile,
};
use walrep::states::WalSegSize;
use walrep::storage::StdStorage;

const SEG_BYTES: u64 = 1 << 20;
const SEG: &str = "000000010000000000000003";
const HISTORY: &str = "00000002.history";
const HISTORY_TEXT: &str = "1\t0/3000100\tno recovery target specified\n";

/// A standby data directory and an archive holding one segment and one
/// history file; both paths contain spaces.
struct Fixture {
    _tmp: tempfile::TempDir,
    datadir: PathBuf,
    archive: PathBuf,
    segment: Vec<u8>,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let datadir = tmp.path().join("stand by");
        let archive = tmp.path().join("wal archive");
        fs::create_dir_all(datadir.join("wal/archive_status")).unwrap();
        fs::create_dir_all(&archive).unwrap();
        let segment: Vec<u8> = (0..SEG_BYTES).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(archive.join(SEG), &segment).unwrap();
        fs::write(archive.join(HISTORY), HISTORY_TEXT).unwrap();
        Fixture {
            _tmp: tmp,
            datadir,
            archive,
            segment,
        }
    }

    fn runner(&self, command: &str) -> RestoreCommand {
        RestoreCommand::new(
            &self.datadir,
            command,
            Duration::from_secs(30),
            WalSegSize::new(SEG_BYTES).unwrap(),
        )
    }

    /// `cp "<archive>/%f" %p`: the documented restore_command.
    fn copy_command(&self) -> String {
        format!("cp '{}/%f' %p", self.archive.display())
    }

    fn wal(&self, name: &str) -> PathBuf {
        self.datadir.join("wal").join(name)
    }
}

fn failure(outcome: &RestoreOutcome) -> &RestoreFailure {
    match outcome {
        RestoreOutcome::Failed { reason, .. } => reason,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn a_segment_is_restored_checked_and_installed_durably() {
    let fx = Fixture::new();
    // A stale temporary file from an earlier attempt must not survive.
    fs::write(fx.wal("RECOVERYXLOG"), b"stale").unwrap();
    let outcome = fx.runner(&fx.copy_command()).restore(SEG, None, None);
    let restored = match &outcome {
        RestoreOutcome::Restored(r) => r.clone(),
        other => panic!("expected restored, got {other:?}"),
    };
    assert_eq!(
        restored,
        RestoredFile {
            file_name: SEG.into(),
            temp_path: "wal/RECOVERYXLOG".into(),
            size_bytes: SEG_BYTES,
        }
    );
    assert!(
        !fx.wal(SEG).exists(),
        "the real name is the caller's decision"
    );
    let path = keep_restored_file(&StdStorage, &fx.datadir, &restored, ArchiveMark::Done).unwrap();
    assert_eq!(path, fx.wal(SEG));
    assert_eq!(fs::read(&path).unwrap(), fx.segment);
    assert!(!fx.wal("RECOVERYXLOG").exists());
    // Restored from the archive: never archived again by this node.
    assert!(is_archived(&fx.datadir, SEG));
}

#[test]
fn a_prefetch_restores_beside_the_file_replay_reads_and_installs_the_same() {
    let fx = Fixture::new();
    // The file replay is reading stays untouched by a prefetch.
    fs::write(fx.wal("RECOVERYXLOG"), b"being read").unwrap();
    let runner = fx.runner(&fx.copy_command());
    let outcome = runner.prefetch(SEG, None, None);
    let restored = match &outcome {
        RestoreOutcome::Restored(r) => r.clone(),
        other => panic!("expected restored, got {other:?}"),
    };
    assert_eq!(restored.temp_path, "wal/RECOVERYXLOG.prefetch");
    assert_eq!(fs::read(fx.wal("RECOVERYXLOG")).unwrap(), b"being read");
    let path = keep_restored_file(&StdStorage, &fx.datadir, &restored, ArchiveMark::Done).unwrap();
    assert_eq!(fs::read(&path).unwrap(), fx.segment);
    assert!(!fx.wal("RECOVERYXLOG.prefetch").exists());
    // Only segments are prefetched; a missing one is simply not there.
    assert!(matches!(
        runner.prefetch(HISTORY, None, None),
        RestoreOutcome::Failed { .. }
    ));
    assert!(matches!(
        runner.prefetch("000000010000000000000009", None, None),
        RestoreOutcome::NotInArchive { .. }
    ));
    assert!(!fx.wal("RECOVERYXLOG.prefetch").exists());
}

#[test]
fn a_history_file_of_any_size_is_restored_and_can_be_queued_for_archiving() {
    let fx = Fixture::new();
    let outcome = fx.runner(&fx.copy_command()).restore(HISTORY, None, None);
    let RestoreOutcome::Restored(restored) = outcome else {
        panic!("expected restored, got {outcome:?}");
    };
    assert_eq!(restored.temp_path, "wal/RECOVERYHISTORY");
    assert_eq!(restored.size_bytes, HISTORY_TEXT.len() as u64);
    keep_restored_file(&StdStorage, &fx.datadir, &restored, ArchiveMark::Ready).unwrap();
    assert_eq!(fs::read_to_string(fx.wal(HISTORY)).unwrap(), HISTORY_TEXT);
    assert!(fx
        .datadir
        .join("wal/archive_status/00000002.history.ready")
        .exists());
}

#[test]
fn a_missing_file_is_not_in_archive() {
    let fx = Fixture::new();
    let outcome = fx
        .runner(&fx.copy_command())
        .restore("000000010000000000000009", None, None);
    match outcome {
        RestoreOutcome::NotInArchive {
            file_name,
            reason: NotFoundReason::NonZeroExit { code: 1 },
            stderr,
        } => {
            assert_eq!(file_name, "000000010000000000000009");
            assert!(stderr.contains("No such file"), "{stderr}");
        }
        other => panic!("expected not in archive (exit 1), got {other:?}"),
    }
    assert!(!fx.wal("RECOVERYXLOG").exists());
}

#[test]
fn exit_zero_without_a_file_is_not_in_archive() {
    let fx = Fixture::new();
    let outcome = fx.runner("true").restore(SEG, None, None);
    assert!(
        matches!(
            outcome,
            RestoreOutcome::NotInArchive {
                reason: NotFoundReason::NoFileAfterSuccess,
                ..
            }
        ),
        "{outcome:?}"
    );
}

#[test]
fn an_empty_restore_command_means_no_archive() {
    let fx = Fixture::new();
    let outcome = fx.runner("").restore(SEG, None, None);
    assert!(
        matches!(
            outcome,
            RestoreOutcome::NotInArchive {
                reason: NotFoundReason::NotConfigured,
                ..
            }
        ),
        "{outcome:?}"
    );
}

#[test]
fn command_not_found_is_a_failure_not_a_missing_file() {
    let fx = Fixture::new();
    let outcome = fx
        .runner("walrep_no_such_command_anywhere %f %p")
        .restore(SEG, None, None);
    assert_eq!(failure(&outcome), &RestoreFailure::ShellError { code: 127 });
    let RestoreOutcome::Failed { stderr, .. } = &outcome else {
        unreachable!()
    };
    assert!(
        stderr.contains("walrep_no_such_command_anywhere"),
        "{stderr}"
    );
}

#[test]
fn a_command_that_cannot_execute_is_a_failure() {
    let fx = Fixture::new();
    let script = fx.datadir.join("not-executable.sh");
    fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    let outcome = fx
        .runner("./not-executable.sh %f %p")
        .restore(SEG, None, None);
    assert_eq!(failure(&outcome), &RestoreFailure::ShellError { code: 126 });
}

#[test]
fn killed_by_a_signal_is_a_failure() {
    let fx = Fixture::new();
    // The shell itself dies of SIGKILL.
    let outcome = fx.runner("kill -9 $$").restore(SEG, None, None);
    assert_eq!(failure(&outcome), &RestoreFailure::Signaled { signal: 9 });
    // A command run by the shell dies of SIGTERM: the shell exits 128+15.
    let outcome = fx
        .runner("sh -c 'kill -TERM $$'; exit $?")
        .restore(SEG, None, None);
    assert_eq!(failure(&outcome), &RestoreFailure::ShellError { code: 143 });
}

#[test]
fn a_hanging_command_is_timed_out_and_its_process_group_killed() {
    let fx = Fixture::new();
    let pid_file = fx.datadir.join("sleeper.pid");
    let mut runner = fx.runner("sleep 600 & echo $! > sleeper.pid; wait");
    // Long enough for the shell to start and write the pid, even on a busy machine.
    runner.timeout = Duration::from_secs(2);
    let outcome = runner.restore(SEG, None, None);
    assert_eq!(
        failure(&outcome),
        &RestoreFailure::TimedOut { timeout_ms: 2000 }
    );
    let pid = read_pid(&pid_file).expect("the command wrote its child's pid");
    wait_until("the hanging child to be killed", || process_gone(pid));
    assert!(!fx.wal("RECOVERYXLOG").exists());
}

#[test]
fn shutdown_cancels_a_running_restore() {
    let fx = Fixture::new();
    let pid_file = fx.datadir.join("sleeper.pid");
    let (tx, rx) = bounded::<()>(1);
    let canceller = {
        let pid_file = pid_file.clone();
        thread::spawn(move || {
            wait_until("the restore command to start", || {
                read_pid(&pid_file).is_some()
            });
            drop(tx);
        })
    };
    let outcome = fx
        .runner("sleep 600 & echo $! > sleeper.pid; wait")
        .restore(SEG, None, Some(&rx));
    canceller.join().unwrap();
    assert_eq!(failure(&outcome), &RestoreFailure::Cancelled);
    let pid = read_pid(&pid_file).unwrap();
    wait_until("the cancelled child to be killed", || process_gone(pid));
}

#[test]
fn a_segment_of_the_wrong_size_is_never_restored() {
    let fx = Fixture::new();
    let command = format!("head -c 1000 '{}/%f' > %p", fx.archive.display());
    let outcome = fx.runner(&command).restore(SEG, None, None);
    assert_eq!(
        failure(&outcome),
        &RestoreFailure::WrongSize {
            size_bytes: 1000,
            expected_bytes: SEG_BYTES
        }
    );
    assert!(
        !fx.wal("RECOVERYXLOG").exists(),
        "a partial copy was left behind"
    );
    assert!(!fx.wal(SEG).exists());
}

#[test]
fn placeholders_are_substituted_in_a_datadir_with_spaces() {
    let fx = Fixture::new();
    let restartpoint = "000000010000000000000002";
    // The command records what it got, then restores with "%p" quoted (allowed).
    let command = format!(
        "printf '%%s|%%s|%%s|100%%%%\\n' %f %p %r > placeholders.txt && cp '{}/%f' \"%p\"",
        fx.archive.display()
    );
    let outcome = fx.runner(&command).restore(SEG, Some(restartpoint), None);
    assert!(
        matches!(outcome, RestoreOutcome::Restored(_)),
        "{outcome:?}"
    );
    assert_eq!(
        fs::read_to_string(fx.datadir.join("placeholders.txt")).unwrap(),
        format!("{SEG}|wal/RECOVERYXLOG|{restartpoint}|100%\n")
    );
}

#[test]
fn requests_that_cannot_be_built_are_failures() {
    let fx = Fixture::new();
    let outcome = fx.runner("cp /a/%f %p # %r").restore(SEG, None, None);
    assert!(
        matches!(failure(&outcome), RestoreFailure::InvalidRequest { message } if message.contains("%r")),
        "{outcome:?}"
    );
    let outcome = fx
        .runner(&fx.copy_command())
        .restore(SEG, Some("x; rm -rf /"), None);
    assert!(
        matches!(failure(&outcome), RestoreFailure::InvalidRequest { .. }),
        "{outcome:?}"
    );
    let outcome = fx
        .runner(&fx.copy_command())
        .restore("../control", None, None);
    assert!(
        matches!(failure(&outcome), RestoreFailure::InvalidRequest { .. }),
        "{outcome:?}"
    );
}
