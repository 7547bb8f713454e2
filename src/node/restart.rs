//! `restart_after_crash`: a node run the way PostgreSQL's postmaster runs
//! its processes. After a failure that stops the WAL writer (a failed write
//! or fsync, a full disk) the node stops serving — every session is ended
//! at once and told why (a Redis client reads an `ERR`, a write waiting
//! for its level gets that error as its reply, a replication session gets
//! PostgreSQL's FATAL 57P02), no shutdown checkpoint is written — and
//! starts again in this process, so crash recovery reads what is really
//! on disk: a file whose fsync failed is reopened from disk, never fsynced
//! again. While a start fails because the disk is full, it is retried
//! with a counted back-off, each attempt saying what is full and what
//! holds WAL. SIGINT and SIGTERM end the loop at any point, within one
//! back-off step.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::disk;
use super::{ExitRequest, FatalError, NodeError, RunningNode, StartOptions, Termination};
use crate::replication::sqlstate::{self, PgError};

/// First wait before retrying a start that failed on a full disk.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between two attempts: an operator who freed space waits
/// at most this long for the node to notice.
const RETRY_MAX: Duration = Duration::from_secs(15);
/// How often a back-off wait looks for a shutdown request.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// Run the node in `datadir` until it is told to stop or fails in a way a
/// restart does not cure. `on_start` runs after every (re)start and what it
/// returns lives as long as that run (the log-level follower).
pub fn run<T>(
    datadir: &Path,
    opts: &StartOptions,
    mut on_start: impl FnMut(&RunningNode) -> T,
) -> Result<ExitRequest, NodeError> {
    let stop = shutdown_flag()?;
    let datadir = datadir.to_path_buf();
    let mut opts = opts.clone();
    let mut node = RunningNode::start(&datadir, &opts)?;
    pin_ports(&node, &mut opts);
    let mut restarts = 0u64;
    loop {
        let held = on_start(&node);
        if stop.load(Ordering::SeqCst) {
            node.stop()?;
            return Ok(ExitRequest::Signal(signal_hook::consts::SIGTERM));
        }
        let why = node.wait_for_exit()?;
        let crash = match &why {
            ExitRequest::Fatal(e) if e.restartable() => Some(e),
            _ => None,
        };
        let restart = crash.is_some() && node.node.settings().restart_after_crash.0;
        if !restart {
            tracing::info!(reason = ?why, "shutdown requested");
            match crash {
                Some(e) => node.terminate(termination(e, false))?,
                None => node.stop()?,
            }
            drop(held);
            return Ok(why);
        }
        if let Some(e) = crash {
            tracing::error!("{e}");
            tracing::error!("terminating client sessions because the WAL writer stopped; all server threads will stop and crash recovery will run again (restart_after_crash)");
            if let Err(e) = node.terminate(termination(e, true)) {
                tracing::warn!(error = %e, "stopping after the failure reported an error");
            }
        }
        drop(held);
        restarts += 1;
        match start_again(&datadir, &opts, &stop, restarts)? {
            Some(n) => node = n,
            None => return Ok(ExitRequest::Signal(signal_hook::consts::SIGTERM)),
        }
    }
}

/// What every session is told when the node ends them after `failure`:
/// Redis clients an `ERR` naming the failure and what to do, replication
/// sessions PostgreSQL's FATAL after a crash (57P02, its wording).
pub fn termination(failure: &FatalError, restarting: bool) -> Termination {
    let (what, cause) = failure.what_and_cause();
    let (verb, hint, next) = if restarting {
        (
            "restarting",
            "reconnect in a moment",
            "the server runs crash recovery and serves again (restart_after_crash)",
        )
    } else {
        (
            "shutting down",
            "the server stays down until it is started again (restart_after_crash is off)",
            "the server shuts down (restart_after_crash is off)",
        )
    };
    let replication = PgError::fatal(
        sqlstate::CRASH_SHUTDOWN,
        "terminating connection because of crash of another server process",
    )
    .with_detail(format!(
        "The WAL writer stopped after {what}: {cause}; {next}."
    ));
    let replication = if restarting {
        replication.with_hint(
            "In a moment you should be able to reconnect to the database and repeat your command.",
        )
    } else {
        replication
    };
    Termination {
        redis: crate::server::Termination {
            reason: format!("server is {verb} after {what}: {cause}"),
            hint: hint.into(),
        },
        replication,
    }
}

/// A flag SIGINT and SIGTERM set, for the times no node is running to
/// catch them (between a failure and a successful start).
pub(crate) fn shutdown_flag() -> Result<Arc<AtomicBool>, NodeError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register(sig, flag.clone()).map_err(|source| NodeError::Spawn {
            what: "signal handler",
            source,
        })?;
    }
    Ok(flag)
}

/// Restart on the ports the first start bound (port 0 in the file picks a
/// free port once): clients reconnect where they were.
pub(crate) fn pin_ports(node: &RunningNode, opts: &mut StartOptions) {
    let ports = *node.node.ports.lock().unwrap_or_else(|e| e.into_inner());
    opts.overrides.push(format!("port={}", ports.redis));
    if ports.replication != 0 {
        opts.overrides
            .push(format!("replication_port={}", ports.replication));
    }
}

/// Start again until it works, retrying a full disk with back-off; `None`
/// when a shutdown was requested meanwhile.
fn start_again(
    datadir: &PathBuf,
    opts: &StartOptions,
    stop: &AtomicBool,
    restarts: u64,
) -> Result<Option<RunningNode>, NodeError> {
    let mut delay = RETRY_FIRST;
    for attempt in 1u64.. {
        if stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        tracing::info!(
            restart = restarts,
            attempt,
            "all server threads stopped; reinitializing"
        );
        match RunningNode::start(datadir, opts) {
            Ok(node) => {
                tracing::info!(
                    restart = restarts,
                    attempt,
                    "database system is ready to accept connections again after the failure"
                );
                return Ok(Some(node));
            }
            Err(e) if disk::is_disk_full(&e) => {
                tracing::error!(
                    restart = restarts,
                    attempt,
                    retry_in_ms = delay.as_millis() as u64,
                    "could not restart: the disk is full ({e}); {}. Free space on that filesystem; the node retries by itself",
                    offline_usage(datadir, &opts.overrides).describe(datadir)
                );
            }
            Err(e) => return Err(e),
        }
        if wait_or_stop(delay, stop) {
            return Ok(None);
        }
        delay = (delay * 2).min(RETRY_MAX);
    }
    Ok(None)
}

/// Sleep `delay` unless a shutdown is requested first (then true).
fn wait_or_stop(delay: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + delay;
    while Instant::now() < until {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        std::thread::sleep(SIGNAL_POLL.min(until.saturating_duration_since(Instant::now())));
    }
    stop.load(Ordering::SeqCst)
}

/// What holds the disk while no node runs: the files themselves (slots,
/// `.ready` files, the control file's redo point, the newest segment).
pub fn offline_usage(datadir: &Path, overrides: &[String]) -> disk::DiskUsage {
    let control = crate::store::ControlFile::read(datadir).ok();
    let config_file = super::DataDir::new(datadir).config_file();
    let config = crate::config::Config::load(&config_file, overrides).ok();
    let slots = crate::replication::slots::SlotManager::open(
        Arc::new(crate::storage::StdStorage),
        datadir,
        config
            .as_ref()
            .map_or(10, |c| c.max_replication_slots as usize),
        None,
    )
    .map(|m| m.list())
    .unwrap_or_default();
    let seg_size = control.as_ref().map(|c| c.wal_segment_size);
    let end = seg_size
        .and_then(|s| newest_segment_end(datadir, s))
        .unwrap_or_default();
    let inputs = disk::HoldInputs {
        end,
        redo: control
            .as_ref()
            .map(|c| c.oldest_redo_lsn())
            .unwrap_or_default(),
        seg_size_bytes: seg_size.map_or(0, |s| s.bytes()),
        slots,
        ready_segments: disk::ready_segments(datadir),
        wal_keep_bytes: config
            .as_ref()
            .and_then(|c| c.wal_keep_size.bytes())
            .unwrap_or(0),
        standbys: Vec::new(),
    };
    disk::measure(datadir, &inputs)
}

/// The end of the newest WAL segment file in `wal/`.
fn newest_segment_end(datadir: &Path, seg_size: crate::WalSegSize) -> Option<crate::Lsn> {
    std::fs::read_dir(datadir.join("wal"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            crate::SegNo::parse_file_name(name.to_str()?, seg_size)
        })
        .map(|(_, segno)| segno.next().start_lsn(seg_size))
        .max()
}
