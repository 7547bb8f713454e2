//! The archiver thread against real shell commands in temporary directories:
//! a failing archive_command keeps the segment until it succeeds, order,
//! back-off, signals, orphans, wake-ups and shutdown.

mod support;

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};
use support::process::{process_gone, read_pid};
use support::{wait_until, DEADLINE};
use walrep::archive::{
    mark_ready, retry_delay, segment_removable, spawn_archiver, ArchiverConfig, ArchiverHandle,
    ArchiverStats,
};
use walrep::config::ArchiveMode;
use walrep::storage::StdStorage;

const SEG_BYTES: usize = 1 << 20;

/// Everything logged by this test binary (all tests share one global subscriber).
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;
    fn make_writer(&'a self) -> LogBuf {
        self.clone()
    }
}

impl LogBuf {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn logs() -> &'static LogBuf {
    static LOGS: OnceLock<LogBuf> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = LogBuf::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buf.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buf
    })
}

/// A data directory whose path contains a space, with `wal/archive_status/`,
/// and an archive directory beside it (also with a space).
struct Fixture {
    _tmp: tempfile::TempDir,
    datadir: PathBuf,
    archive: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let datadir = tmp.path().join("data dir");
        let archive = tmp.path().join("the archive");
        fs::create_dir_all(datadir.join("wal/archive_status")).unwrap();
        fs::create_dir_all(&archive).unwrap();
        Fixture {
            _tmp: tmp,
            datadir,
            archive,
        }
    }

    /// Write a completed segment (distinct content per name) and its `.ready`.
    fn complete_segment(&self, name: &str) -> Vec<u8> {
        let seed = name
            .bytes()
            .fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
        let bytes: Vec<u8> = (0..SEG_BYTES)
            .map(|i| (seed.wrapping_add(i as u32).wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        fs::write(self.datadir.join("wal").join(name), &bytes).unwrap();
        mark_ready(&StdStorage, &self.datadir, name).unwrap();
        bytes
    }

    fn status(&self, name: &str, suffix: &str) -> PathBuf {
        self.datadir
            .join("wal/archive_status")
            .join(format!("{name}{suffix}"))
    }

    fn config(&self, command: String) -> ArchiverConfig {
        ArchiverConfig {
            scan_interval: Duration::from_secs(600),
            retry_delay_min: Duration::from_millis(10),
            retry_delay_max: Duration::from_millis(80),
            shutdown_grace: Duration::from_millis(100),
            ..ArchiverConfig::new(&self.datadir, command)
        }
    }

    /// `cp %p "<archive>/%f"`, refusing to overwrite (the documented safe form).
    fn copy_command(&self) -> String {
        let a = self.archive.display();
        format!("test ! -f '{a}/%f' && cp %p '{a}/%f'")
    }
}

/// An archiver with its shutdown channel; dropping it stops and joins the
/// thread with a bound, so no test leaves a thread or command behind.
struct Running {
    handle: Option<ArchiverHandle>,
    shutdown: Option<Sender<()>>,
}

impl Running {
    fn start(config: ArchiverConfig) -> Running {
        let (tx, rx): (Sender<()>, Receiver<()>) = bounded(1);
        Running {
            handle: Some(spawn_archiver(config, rx).unwrap()),
            shutdown: Some(tx),
        }
    }

    fn stats(&self) -> ArchiverStats {
        self.handle.as_ref().unwrap().stats()
    }

    fn notify(&self) {
        self.handle.as_ref().unwrap().notifier().segment_completed();
    }

    /// Signal shutdown and join within [`DEADLINE`].
    fn stop(&mut self) {
        drop(self.shutdown.take());
        if let Some(handle) = self.handle.take() {
            let (done_tx, done_rx) = bounded(1);
            thread::spawn(move || {
                let _ = done_tx.send(handle.join());
            });
            let joined = done_rx
                .recv_timeout(DEADLINE)
                .expect("archiver did not stop within the deadline");
            joined.expect("archiver ended with an error");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !thread::panicking() {
            self.stop();
        } else {
            drop(self.shutdown.take());
        }
    }
}

#[test]
fn failing_archive_command_keeps_the_segment_until_it_succeeds() {
    let logs = logs();
    let fx = Fixture::new();
    let seg = "000000010000000000000001";
    let bytes = fx.complete_segment(seg);
    // Fails while the gate file exists, saying why on stderr.
    let gate = fx.datadir.join("archive-broken");
    fs::write(&gate, b"").unwrap();
    let command = format!(
        "if [ -e archive-broken ]; then echo \"simulated failure for %f\" >&2; exit 1; fi; {}",
        fx.copy_command()
    );
    let mut archiver = Running::start(fx.config(command));

    wait_until("three failed attempts", || {
        archiver.stats().failed_count >= 3
    });
    let s = archiver.stats();
    assert_eq!(s.archived_count, 0);
    assert_eq!(s.last_failed_wal.as_deref(), Some(seg));
    assert_eq!(
        s.last_failed_reason.as_deref(),
        Some("archive command failed with exit code 1")
    );
    assert_eq!(
        s.last_failed_stderr.as_deref(),
        Some(format!("simulated failure for {seg}").as_str())
    );
    assert!(s.last_failed_time.is_some());
    // The log says which segment, why, and what the command printed.
    let log = logs.text();
    let warning = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains(&format!("simulated failure for {seg}")))
        .unwrap_or_else(|| panic!("no warning with the command's stderr in:\n{log}"));
    assert!(
        warning.contains("archive command failed with exit code 1"),
        "{warning}"
    );
    assert!(
        warning.contains(&format!("file=\"{seg}\"")) || warning.contains(&format!("file={seg}")),
        "{warning}"
    );
    // The segment is kept: .ready stays, removal is refused, nothing archived.
    assert!(fx.status(seg, ".ready").exists());
    assert!(!fx.status(seg, ".done").exists());
    assert!(fx.datadir.join("wal").join(seg).exists());
    assert!(!segment_removable(&StdStorage, &fx.datadir, seg, ArchiveMode::On, false).unwrap());
    assert!(!fx.archive.join(seg).exists());

    fs::remove_file(&gate).unwrap();
    wait_until("the segment to be archived", || {
        fx.status(seg, ".done").exists()
    });
    assert!(!fx.status(seg, ".ready").exists());
    assert_eq!(
        fs::read(fx.archive.join(seg)).unwrap(),
        bytes,
        "archive copy differs"
    );
    assert!(segment_removable(&StdStorage, &fx.datadir, seg, ArchiveMode::On, false).unwrap());
    wait_until("stats to show the success", || {
        archiver.stats().archived_count == 1
    });
    let s = archiver.stats();
    assert_eq!(s.last_archived_wal.as_deref(), Some(seg));
    assert!(s.last_archived_time.is_some());
    assert_eq!(s.consecutive_failures, 0);
    assert_eq!(s.retry_delay_ms, 0);
    assert!(s.failed_count >= 3);
    archiver.stop();
}

#[test]
fn history_files_go_first_then_segments_oldest_first() {
    let fx = Fixture::new();
    let names = [
        "000000020000000000000004",
        "000000010000000000000003",
        "00000002.history",
        "000000010000000000000002",
    ];
    for n in names {
        if n.ends_with(".history") {
            fs::write(
                fx.datadir.join("wal").join(n),
                b"1\t0/4000000\tno recovery target specified\n",
            )
            .unwrap();
            mark_ready(&StdStorage, &fx.datadir, n).unwrap();
        } else {
            fx.complete_segment(n);
        }
    }
    let command = format!("echo %f >> ../order.log && {}", fx.copy_command());
    let _archiver = Running::start(fx.config(command));
    wait_until("all four files archived", || {
        names.iter().all(|n| fx.status(n, ".done").exists())
    });
    let order = fs::read_to_string(fx.datadir.join("../order.log")).unwrap();
    assert_eq!(
        order.lines().collect::<Vec<_>>(),
        vec![
            "00000002.history",
            "000000010000000000000002",
            "000000010000000000000003",
            "000000020000000000000004",
        ]
    );
    for n in names {
        assert_eq!(
            fs::read(fx.archive.join(n)).unwrap(),
            fs::read(fx.datadir.join("wal").join(n)).unwrap()
        );
    }
}

#[test]
fn backoff_grows_to_its_cap_and_every_failure_is_counted() {
    let fx = Fixture::new();
    let seg = "000000010000000000000005";
    fx.complete_segment(seg);
    let config = fx.config("echo 'No space left on device' >&2; exit 2".into());
    let (min, max) = (config.retry_delay_min, config.retry_delay_max);
    let archiver = Running::start(config);
    let mut seen: Vec<(u32, u64)> = Vec::new();
    wait_until("seven failed attempts", || {
        let s = archiver.stats();
        if s.consecutive_failures > 0 && seen.last().map(|l| l.0) != Some(s.consecutive_failures) {
            seen.push((s.consecutive_failures, s.retry_delay_ms));
        }
        s.failed_count >= 7
    });
    let s = archiver.stats();
    // One file, always failing: every failure counted, in one streak.
    assert_eq!(u64::from(s.consecutive_failures), s.failed_count);
    assert_eq!(
        s.last_failed_stderr.as_deref(),
        Some("No space left on device")
    );
    for (n, delay_ms) in &seen {
        assert_eq!(
            *delay_ms as u128,
            retry_delay(min, max, *n).as_millis(),
            "delay after failure {n}"
        );
    }
    assert!(
        seen.windows(2).all(|w| w[0].1 <= w[1].1),
        "back-off shrank: {seen:?}"
    );
    assert_eq!(
        s.retry_delay_ms as u128,
        max.as_millis(),
        "back-off did not reach its cap"
    );
    assert!(fx.status(seg, ".ready").exists());
}

#[test]
fn a_command_killed_by_a_signal_is_reported_as_such() {
    let fx = Fixture::new();
    let seg = "000000010000000000000006";
    fx.complete_segment(seg);
    let archiver = Running::start(fx.config("echo dying >&2; kill -9 $$".into()));
    wait_until("a failed attempt", || archiver.stats().failed_count >= 1);
    let s = archiver.stats();
    assert_eq!(
        s.last_failed_reason.as_deref(),
        Some("archive command was terminated by signal 9: Killed")
    );
    assert_eq!(s.last_failed_stderr.as_deref(), Some("dying"));
    assert!(fx.status(seg, ".ready").exists());
}

#[test]
fn a_notification_wakes_the_archiver() {
    let fx = Fixture::new();
    // The periodic scan is 10 minutes away: only the notification can do it.
    let archiver = Running::start(fx.config(fx.copy_command()));
    // A file created after a completed scan is only found through a wake-up.
    wait_until("the first (empty) scan", || {
        archiver.stats().directory_scans >= 1
    });
    let seg = "000000010000000000000007";
    let bytes = fx.complete_segment(seg);
    archiver.notify();
    wait_until("the notified segment to be archived", || {
        fx.status(seg, ".done").exists()
    });
    assert_eq!(fs::read(fx.archive.join(seg)).unwrap(), bytes);
}

#[test]
fn an_orphan_ready_file_is_removed_and_archiving_goes_on() {
    let fx = Fixture::new();
    let orphan = "000000010000000000000001";
    mark_ready(&StdStorage, &fx.datadir, orphan).unwrap();
    let seg = "000000010000000000000002";
    fx.complete_segment(seg);
    let _archiver = Running::start(fx.config(fx.copy_command()));
    wait_until("the real segment to be archived", || {
        fx.status(seg, ".done").exists()
    });
    assert!(!fx.status(orphan, ".ready").exists());
    assert!(!fx.status(orphan, ".done").exists());
}

#[test]
fn shutdown_kills_a_hanging_command_and_keeps_the_segment() {
    let fx = Fixture::new();
    let seg = "000000010000000000000008";
    fx.complete_segment(seg);
    let pid_file = fx.datadir.join("../sleep.pid");
    let mut archiver = Running::start(fx.config("sleep 600 & echo $! > ../sleep.pid; wait".into()));
    wait_until("the command to start", || read_pid(&pid_file).is_some());
    let pid = read_pid(&pid_file).unwrap();
    archiver.stop();
    wait_until("the hanging command to be killed", || process_gone(pid));
    assert!(fx.status(seg, ".ready").exists());
    assert!(!fx.status(seg, ".done").exists());
}

#[test]
fn the_documented_idempotent_command_survives_a_lost_done_file() {
    let fx = Fixture::new();
    let seg = "000000010000000000000009";
    let bytes = fx.complete_segment(seg);
    let a = fx.archive.display();
    // docs/archiving.md: refuse to overwrite, accept an identical copy.
    let command = format!("test ! -f '{a}/%f' && cp %p '{a}/%f' || cmp -s %p '{a}/%f'");
    // A crash after the copy but before `.done`: the archive already has it.
    fs::write(fx.archive.join(seg), &bytes).unwrap();
    // And a different file is in the archive under the next name.
    let other = "00000001000000000000000A";
    fx.complete_segment(other);
    fs::write(fx.archive.join(other), b"not the same segment").unwrap();

    let archiver = Running::start(fx.config(command));
    wait_until("the identical copy to count as archived", || {
        fx.status(seg, ".done").exists()
    });
    wait_until("the conflicting copy to fail", || {
        archiver.stats().last_failed_wal.as_deref() == Some(other)
    });
    assert!(fx.status(other, ".ready").exists());
    assert_eq!(
        fs::read(fx.archive.join(other)).unwrap(),
        b"not the same segment"
    );
}
