//! `walrep basebackup`: connect, BASE_BACKUP with the WAL included
//! (pg_basebackup's `-X fetch`), extract the archive stream safely into an
//! empty directory, verify the copy, and optionally make it a standby
//! (`--write-standby-config`). Every file written is checksummed as it is
//! written and listed in the copy's `backup_manifest` (PostgreSQL's format,
//! see the `written` module for why the client builds it), which is written
//! last, read back and checked against every file before the copy is
//! marked complete: `pg_verifybackup -n` passes on a finished copy. On
//! failure the directory is cleaned up as pg_basebackup does (removed if it
//! created it, emptied otherwise).

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::endcheck::{self, EndCheck, EndCheckError};
pub use super::error::BasebackupError;
use super::extract::{self, ExtractStats, Extractor};
use super::manifest::{ManifestError, MANIFEST_FILE};
use super::standby_config::{self, conninfo_string, StandbyConfigError};
use super::verify::{self, Expected};
use super::walfetch::WalFetch;
use super::written::{WrittenError, WrittenFiles, PARTIAL_MANIFEST_FILE};
use crate::replication::client::{
    BackupMessage, BackupRead, BackupStart, BaseBackupRequest, ClientError, ConnInfo,
    ReplicationClient,
};
use crate::standby::pending::PendingBackup;
use crate::storage::Storage;
use crate::{Lsn, TimelineId};

/// How often a parallel backup's progress is refreshed once the leader's
/// own stream is over and other jobs still run.
const PROGRESS_POLL: std::time::Duration = std::time::Duration::from_millis(200);
/// Most bytes accepted after the end of the tar archive (its padding).
const TRAILER_LIMIT: u64 = 1 << 20;
/// Most jobs of one backup (each is a connection and a walsender slot on
/// the server; the server's own bound is the same).
pub const MAX_JOBS: u32 = crate::replication::command::MAX_PARALLEL as u32;
/// What `walrep basebackup` was asked to do.
#[derive(Debug, Clone)]
pub struct BasebackupOptions {
    /// The primary's address (its replication listener).
    pub host: String,
    /// Its `replication_port`.
    pub port: u16,
    /// The directory to create (must be missing or empty).
    pub datadir: PathBuf,
    /// The replication user (`hba` decides whether it may connect).
    pub user: String,
    /// From PGPASSWORD, as libpq does.
    pub password: Option<String>,
    /// The connection's application_name, and the standby's with `-R`.
    pub application_name: Option<String>,
    /// `-R`: standby.signal and primary_conninfo in the copy.
    pub write_standby_config: bool,
    /// The LABEL option (in backup_label).
    pub label: String,
    /// kB/s, 0 = unlimited (MAX_RATE).
    pub max_rate_kbps: u64,
    /// Bound on connecting and on every wait for the server.
    pub timeout: Duration,
    /// Where the copy is written (`StdStorage` outside tests).
    pub storage: Arc<dyn Storage>,
    /// A physical replication slot made on the upstream (RESERVE_WAL)
    /// before the copy starts and named in the copy's `primary_slot_name`
    /// with `-R`, so the upstream keeps every segment the new standby has
    /// not received yet (pg_basebackup's `-C -S`). Dropped again when the
    /// backup fails.
    pub slot: Option<String>,
    /// Connections copying the snapshot at once (1 = one stream, as
    /// pg_basebackup; more use walrep's PARALLEL/JOIN extension).
    pub jobs: u32,
    /// Two phases (with `-R`): as soon as `backup_label` and `walrep.toml`
    /// are written, the standby configuration and the marker saying a
    /// standby may start are written, so the new standby streams WAL while
    /// the bulk is still copied; it starts redo once the copy is complete.
    /// The client fetches no WAL: the standby streams it. The copy is
    /// of the node's last checkpoint (no new one), so phase 1 is written
    /// at once whatever the data size.
    pub two_phase: bool,
    /// Finish the interrupted copy in `datadir` (one- or two-phase) from
    /// the same checkpoint: only what is missing or damaged is copied.
    pub resume: bool,
}

/// What a successful backup produced.
#[derive(Debug, Clone)]
pub struct BasebackupSummary {
    /// The primary's (and so the copy's) system identifier.
    pub system_id: u64,
    /// Where the copy's redo starts.
    pub start: Lsn,
    /// End of the backup: the copy is consistent from here.
    pub end: Lsn,
    /// Timeline of the backup.
    pub tli: TimelineId,
    /// What was written.
    pub extracted: ExtractStats,
    /// Keys in the copied snapshot (verified).
    pub snapshot_keys: u64,
    /// WAL records read from start to end (verified).
    pub wal_records: u64,
    /// Wall time of the whole command.
    pub elapsed: Duration,
    /// Where it went.
    pub phases: Phases,
    /// The connection string written with `--write-standby-config`.
    pub primary_conninfo: Option<String>,
    /// The slot made for the copy on the upstream.
    pub slot: Option<String>,
    /// Archive and WAL bytes received from the upstream (the progress
    /// total).
    pub received_bytes: u64,
    /// With `--resume`: chunk files the interrupted copy already held.
    pub resumed_chunks: Option<u64>,
    /// With `--resume`: their bytes, not copied again.
    pub resumed_bytes: u64,
    /// With `--resume`: every file the interrupted copy held that matched
    /// its manifest entry and was kept (chunks, WAL, phase-one files).
    pub resumed_files: u64,
    /// Their bytes.
    pub resumed_file_bytes: u64,
    /// With `--resume`: WAL segments kept (one-phase: not fetched again).
    pub resumed_wal_segments: u64,
    /// With `--resume`: files whose size or checksum no longer matched
    /// their manifest entry, copied again.
    pub resumed_mismatched: u64,
    /// Files listed in the copy's `backup_manifest`, each read back and
    /// checked against it.
    pub manifest_files: u64,
    /// Of those, the files read back as soon as they were written (while
    /// the other jobs copied) and found unchanged at the end.
    pub manifest_files_early: u64,
}

/// The wall time of a backup's steps, one after another.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Phases {
    /// Connecting to the answer to BASE_BACKUP: the server's checkpoint
    /// (if it takes one) and pin.
    pub start: Duration,
    /// Every job's stream received, written and fsynced, and the WAL.
    pub copy: Duration,
    /// Of `copy`, from the first job's end to the last's (0 with one
    /// job): how unevenly the jobs' parts went.
    pub copy_jobs_spread: Duration,
    /// `backup_manifest` written, and every file read back against it
    /// (the snapshot's chunks checked as chunks in the same read).
    pub end_check: Duration,
    /// The control file, `backup_label`, `walrep.toml` and the WAL's
    /// records checked.
    pub verify: Duration,
}

/// Progress of the transfer.
pub trait Progress {
    /// The transfer starts; `total` is the server's estimate in bytes.
    fn begin(&mut self, total: Option<u64>);
    /// `done` bytes received so far.
    fn advance(&mut self, done: u64);
    /// The transfer is over.
    fn end(&mut self, done: u64);
    /// Bytes received so far by each job of a parallel backup: the leader
    /// first, then each joined part, then the WAL connection.
    fn jobs(&mut self, _done_per_job: &[u64]) {}
    /// A two-phase backup's first phase is done: the standby may start.
    fn phase_one_complete(&mut self, _datadir: &std::path::Path) {}
}

/// No progress output.
pub struct NoProgress;

impl Progress for NoProgress {
    fn begin(&mut self, _: Option<u64>) {}
    fn advance(&mut self, _: u64) {}
    fn end(&mut self, _: u64) {}
}

/// Take a base backup into `opts.datadir`.
pub fn run(
    opts: &BasebackupOptions,
    progress: &mut dyn Progress,
) -> Result<BasebackupSummary, BasebackupError> {
    if !(1..=MAX_JOBS).contains(&opts.jobs) {
        return Err(BasebackupError::Protocol(format!(
            "invalid number of jobs {}: it must be between 1 and {MAX_JOBS}",
            opts.jobs
        )));
    }
    if opts.resume {
        return run_resume(opts, progress);
    }
    check_two_phase(opts)?;
    if crate::standby::pending::in_progress(&opts.datadir) {
        return Err(BasebackupError::Protocol(format!(
            "directory \"{}\" holds an interrupted base backup (backup_in_progress): finish it with --resume, or remove it and take a new one",
            opts.datadir.display()
        )));
    }
    let existed = extract::check_target(&opts.datadir).map_err(BasebackupError::Target)?;
    if !existed {
        extract::create_target(&*opts.storage, &opts.datadir).map_err(BasebackupError::Target)?;
    }
    let mut slot_made = false;
    // Set once a standby may run on the copy (two phases), or once every
    // file is written and the end check reads them back: a failure after
    // either keeps the copy for --resume (a failed end check costs only
    // the files that fail it; the server keeps the checkpoint until the
    // copy is confirmed).
    let phase_one = AtomicBool::new(false);
    let end_check = AtomicBool::new(false);
    let flags = Flags {
        phase_one: &phase_one,
        end_check: &end_check,
    };
    let result = take(opts, progress, &mut slot_made, flags, None);
    if let Err(e) = result {
        if phase_one.load(Ordering::SeqCst) || end_check.load(Ordering::SeqCst) {
            return Err(BasebackupError::Interrupted {
                datadir: opts.datadir.display().to_string(),
                source: Box::new(e),
            });
        }
        extract::clean_target(&opts.datadir, !existed);
        if let Some(name) = opts.slot.as_deref().filter(|_| slot_made) {
            drop_slot_after_failure(opts, name);
        }
        return Err(e);
    }
    result
}

fn check_two_phase(opts: &BasebackupOptions) -> Result<(), BasebackupError> {
    if opts.two_phase && !opts.write_standby_config {
        return Err(BasebackupError::Protocol(
            "--two-phase needs --write-standby-config (-R): the standby it starts streams from the node".into(),
        ));
    }
    Ok(())
}

/// `--resume`: finish the interrupted copy in `opts.datadir` from the
/// checkpoint the server kept for it. The slot and the two phases are the
/// first attempt's (from its marker); whatever happens, the directory is
/// kept, its marker still in place.
fn run_resume(
    opts: &BasebackupOptions,
    progress: &mut dyn Progress,
) -> Result<BasebackupSummary, BasebackupError> {
    let plan = super::resume::prepare(&opts.datadir)?;
    let mut o = opts.clone();
    o.slot = plan.marker.slot.clone();
    if plan.phase_one_done {
        // Its standby configuration is written; a standby may be running.
        o.two_phase = true;
        o.write_standby_config = true;
    }
    check_two_phase(&o)?;
    tracing::info!(backup_id = %plan.backup_id, kept_chunks = plan.kept_chunks.len(), kept_bytes = plan.kept_bytes, removed = plan.removed, "resuming the base backup");
    let phase_one = AtomicBool::new(plan.phase_one_done);
    let end_check = AtomicBool::new(false);
    let flags = Flags {
        phase_one: &phase_one,
        end_check: &end_check,
    };
    let mut slot_made = false;
    take(&o, progress, &mut slot_made, flags, Some(&plan)).map_err(|e| {
        BasebackupError::Interrupted {
            datadir: opts.datadir.display().to_string(),
            source: Box::new(e),
        }
    })
}

/// A slot made for a copy that failed holds WAL for nothing: drop it
/// (best effort; a slot that was never made is not found, which is fine).
fn drop_slot_after_failure(opts: &BasebackupOptions, name: &str) {
    let dropped = ReplicationClient::connect(&conninfo(opts), opts.timeout)
        .and_then(|mut c| c.drop_slot(name, false).map(|()| c.close()));
    if let Err(e) = dropped {
        if e.sqlstate() != Some(crate::replication::sqlstate::UNDEFINED_OBJECT) {
            tracing::warn!(slot = name, error = %e, "could not drop the slot made for the failed backup");
        }
    }
}

/// The slot name `-R` uses when none is given: from the application name
/// when it makes a valid slot name, else from the process and the time, so
/// that backups taken one after another never collide.
pub fn default_slot_name(application_name: Option<&str>) -> String {
    let from_app: String = application_name
        .unwrap_or("")
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .take(40)
        .collect();
    if !from_app.trim_matches('_').is_empty() {
        return format!("walrep_{from_app}");
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("walrep_standby_{}_{secs}", std::process::id())
}

/// CREATE_REPLICATION_SLOT ... PHYSICAL (RESERVE_WAL) before BASE_BACKUP:
/// the slot's restart point is at or before the backup's redo point, so
/// nothing the standby needs is removed before it first connects.
fn create_slot(client: &mut ReplicationClient, name: &str) -> Result<(), BasebackupError> {
    crate::replication::slots::validate_name(name)
        .map_err(|e| BasebackupError::Protocol(format!("invalid slot name \"{name}\": {e}")))?;
    client
        .create_physical_slot(name, false, true)
        .map_err(|source| BasebackupError::Slot {
            name: name.to_string(),
            source,
        })
}

fn conninfo(opts: &BasebackupOptions) -> ConnInfo {
    ConnInfo {
        host: opts.host.clone(),
        port: opts.port,
        user: opts.user.clone(),
        password: opts.password.clone(),
        application_name: Some(
            opts.application_name
                .clone()
                .unwrap_or_else(|| "walrep_basebackup".into()),
        ),
        ..ConnInfo::default()
    }
}

/// The password file `-R` writes into the copy (mode 0600), so the
/// password never sits in walrep.toml.
pub const STANDBY_PASSFILE: &str = "replication.pgpass";

/// `primary_conninfo` for the copy: host, port, user, application_name,
/// the TLS mode and root certificate it connected with; a password (as
/// pg_basebackup -R keeps it) goes to a password file only its owner can
/// read, which the conninfo names with `passfile=`.
fn standby_conninfo(opts: &BasebackupOptions) -> Result<String, StandbyConfigError> {
    let port = opts.port.to_string();
    let info = conninfo(opts);
    let sslmode = match info.sslmode {
        crate::security::tls::SslMode::Prefer => String::new(),
        m => m.as_str().to_string(),
    };
    let rootcert = info
        .sslrootcert
        .as_ref()
        .and_then(|p| std::path::absolute(p).ok())
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let passfile = match &opts.password {
        Some(pw) => {
            let path = std::path::absolute(opts.datadir.join(STANDBY_PASSFILE))
                .unwrap_or_else(|_| opts.datadir.join(STANDBY_PASSFILE));
            let line = crate::security::passfile::line(
                crate::security::passfile::PassQuery {
                    host: &opts.host,
                    port: opts.port,
                    database: "replication",
                    user: &opts.user,
                },
                pw,
            );
            crate::security::secret_file::write_secret_file(
                &*opts.storage,
                &path,
                line.as_bytes(),
            )?;
            path.display().to_string()
        }
        None => String::new(),
    };
    Ok(conninfo_string(&[
        ("host", opts.host.as_str()),
        ("port", port.as_str()),
        ("user", opts.user.as_str()),
        ("passfile", passfile.as_str()),
        ("sslmode", sslmode.as_str()),
        ("sslrootcert", rootcert.as_str()),
        (
            "application_name",
            opts.application_name.as_deref().unwrap_or(""),
        ),
    ]))
}

/// How far a copy got, for what its failure leaves.
#[derive(Clone, Copy)]
struct Flags<'a> {
    /// A two-phase copy's first phase is written: a standby may run on it.
    phase_one: &'a AtomicBool,
    /// Every file is written and durable; the end check reads them back.
    end_check: &'a AtomicBool,
}

/// The backup itself; `slot_made` is set once the slot exists, so that a
/// failure drops only a slot this backup made.
fn take(
    opts: &BasebackupOptions,
    progress: &mut dyn Progress,
    slot_made: &mut bool,
    flags: Flags<'_>,
    plan: Option<&super::resume::ResumePlan>,
) -> Result<BasebackupSummary, BasebackupError> {
    let phase_one = flags.phase_one;
    let started = Instant::now();
    let mut client = ReplicationClient::connect(&conninfo(opts), opts.timeout)?;
    let id = client.identify_system()?;
    if let Some(name) = opts.slot.as_ref().filter(|_| plan.is_none()) {
        create_slot(&mut client, name)?;
        *slot_made = true;
    }
    let phase_one_done = plan.is_some_and(|p| p.phase_one_done);
    // A resumed one-phase copy fetches only the segments it does not
    // hold whole yet, which the archive stream cannot leave out.
    let fetch_wal_apart = !opts.two_phase && (opts.jobs > 1 || plan.is_some());
    let request = BaseBackupRequest {
        label: opts.label.clone(),
        progress: true,
        max_rate_kbps: opts.max_rate_kbps,
        parallel: opts.jobs,
        // With jobs (or resumed), the WAL comes by WAL_RANGE on a
        // connection of its own; with two phases the standby streams it.
        wal: !opts.two_phase && !fetch_wal_apart,
        // Two phases start from the last checkpoint: the standby streams
        // at once, however much a new checkpoint would have to write.
        last_checkpoint: opts.two_phase,
        resumable: plan.is_none(),
        resume: plan.map(|p| p.backup_id.clone()),
        skip_chunks: plan.map(|p| p.kept_chunks.clone()).unwrap_or_default(),
        ..BaseBackupRequest::default()
    };
    let seg = segment_size(&mut client)?;
    let start = client.base_backup(&request)?;
    let started_copy = Instant::now();
    one_tablespace(&start)?;
    if let Some(p) = plan.filter(|p| (p.marker.start, p.marker.tli) != (start.start, start.tli)) {
        return Err(BasebackupError::Protocol(format!(
            "the resumed backup starts at {} on timeline {}, the interrupted copy at {} on timeline {}",
            start.start, start.tli.0, p.marker.start, p.marker.tli.0
        )));
    }
    // First, before any file of the copy: until it is removed (last), the
    // directory is never recovered as if complete.
    let mut marker = PendingBackup {
        system_id: id.system_id,
        start: start.start,
        tli: start.tli,
        wal_segment_size: seg,
        two_phase: phase_one_done,
        backup_id: start.backup_id.clone(),
        slot: opts.slot.clone(),
    };
    marker.write(&*opts.storage, &opts.datadir)?;
    let kept = plan.map(|p| p.kept_files.clone()).unwrap_or_default();
    let written = Arc::new(
        WrittenFiles::start(opts.storage.clone(), &opts.datadir, kept)
            .map_err(WrittenError::from)?,
    );
    let mut standby_conninfo_written = None;
    let mut after_file = |rel: &std::path::Path| -> Result<(), String> {
        if !opts.two_phase
            || phase_one_done
            || rel != std::path::Path::new(crate::datadir::CONFIG_FILE)
        {
            return Ok(());
        }
        let ci = finish_phase_one(opts, &mut marker, &written).map_err(|e| e.to_string())?;
        standby_conninfo_written = Some(ci);
        phase_one.store(true, Ordering::SeqCst);
        Ok(())
    };
    progress.begin(start.tablespaces[0].size_kb.map(|k| k * 1024));
    // Bytes per job: the leader, the joined parts, the WAL connection.
    let per_job: Vec<AtomicU64> = (0..=opts.jobs).map(|_| AtomicU64::new(0)).collect();
    let end_lsn = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    // Each job says on it when it ends (returns, fails or panics).
    let (ended_tx, ended_rx) = crossbeam_channel::bounded::<Instant>(MAX_JOBS as usize + 1);
    // Each large file is read back on its own thread as soon as it is
    // written, while the jobs copy; the end check then reads only what
    // that did not check or what changed since.
    let (early_tx, early_rx) = crossbeam_channel::bounded(super::earlycheck::QUEUE);
    written.feed_early_check(early_tx);
    let early_stop = AtomicBool::new(false);
    let ((extracted, received, end, tli), early, copied, jobs_spread) =
        std::thread::scope(|scope| {
            let dir = &opts.datadir;
            let stop = &early_stop;
            let drain_rx = early_rx.clone();
            let early_job = scope.spawn(move || super::earlycheck::run(dir, early_rx, stop));
            // However the copy ends, the early check's thread is told to end
            // before the scope waits for it.
            let _stop = StopEarlyCheck(&written, &early_stop);
            let wal_job = fetch_wal_apart.then(|| {
                let fetch = WalFetch {
                    storage: &*opts.storage,
                    datadir: &opts.datadir,
                    start: start.start,
                    tli: start.tli,
                    seg,
                    end: &end_lsn,
                    failed: &failed,
                    timeout: opts.timeout,
                    received: &per_job[opts.jobs as usize],
                    written: &written,
                };
                let ended = Ended(ended_tx.clone());
                scope.spawn(move || {
                    let _ended = ended;
                    let mut c = ReplicationClient::connect(&conninfo(opts), opts.timeout)?;
                    let n = fetch.run(&mut c);
                    c.close();
                    n
                })
            });
            let jobs = match (&start.backup_id, opts.jobs) {
                (_, 1) => Vec::new(),
                (Some(id), n) => (1..n)
                    .map(|k| {
                        let counter = &per_job[k as usize];
                        let written = Arc::clone(&written);
                        let ended = Ended(ended_tx.clone());
                        scope.spawn(move || {
                            let _ended = ended;
                            copy_part(opts, id, k, counter, written)
                        })
                    })
                    .collect(),
                (None, _) => {
                    return Err(BasebackupError::Protocol(
                        "the server did not return a backup id for PARALLEL: it is not walrep"
                            .into(),
                    ))
                }
            };
            let mut shared = SharedProgress {
                inner: &mut *progress,
                per_job: &per_job,
            };
            let keep: &[&str] = match phase_one_done {
                true => &[super::label::BACKUP_LABEL_FILE, crate::datadir::CONFIG_FILE],
                false => &[],
            };
            let leader = receive_archive_with(
                &mut client,
                opts,
                &written,
                &mut shared,
                &mut after_file,
                Some(phase_one),
                keep,
            )
            .and_then(|(x, r)| {
                client
                    .backup_end()
                    .map(|(e, t)| (x, r, e, t))
                    .map_err(Into::into)
            });
            let leader_ended = Instant::now();
            match &leader {
                Ok((_, _, end, _)) => end_lsn.store(end.0.max(1), Ordering::Release),
                Err(_) => failed.store(true, Ordering::Relaxed),
            }
            // The first job to end: the leader, or a part that ended before it.
            let mut first_ended = leader_ended;
            // The other jobs may still run: keep their progress moving until
            // each has said it ended (not a sleep: the copy is over as soon
            // as the last job is).
            let mut running = jobs.len() + usize::from(wal_job.is_some());
            while running > 0 {
                shared.refresh();
                match ended_rx.recv_timeout(PROGRESS_POLL) {
                    Ok(at) => {
                        running -= 1;
                        first_ended = first_ended.min(at);
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                }
            }
            let copied = Instant::now();
            let mut total = leader?;
            if let Some(wal) = wal_job {
                wal.join()
                    .map_err(|_| BasebackupError::Protocol("the WAL job panicked".into()))??;
            }
            for job in jobs {
                let (x, r) = job
                    .join()
                    .map_err(|_| BasebackupError::Protocol("a backup job panicked".into()))??;
                total.0.add(&x);
                total.1 += r;
            }
            // Every file is written: no more are queued, and what is still
            // queued is read by the early thread and as many more threads as
            // there are cores, each file whole on one of them (none waits for
            // the file another is reading).
            written.stop_early_check();
            let helpers: Vec<_> = (1..super::earlycheck::drain_threads())
                .map(|_| {
                    let rx = drain_rx.clone();
                    scope.spawn(move || super::earlycheck::run(dir, rx, stop))
                })
                .collect();
            drop(drain_rx);
            let mut early = early_job.join().unwrap_or_default();
            for h in helpers {
                early.merge(h.join().unwrap_or_default());
            }
            Ok((total, early, copied, copied.duration_since(first_ended)))
        })?;
    let received_bytes = per_job
        .iter()
        .map(|j| j.load(Ordering::Relaxed))
        .sum::<u64>()
        .max(received);
    progress.end(received_bytes);
    let expected = Expected {
        system_id: id.system_id,
        start: start.start,
        end,
        tli,
    };
    let primary_conninfo = match standby_conninfo_written {
        Some(ci) => Some(ci),
        None if opts.write_standby_config && !phase_one_done => {
            let ci = standby_conninfo(opts)?;
            standby_config::write(&*opts.storage, &opts.datadir, &ci, opts.slot.as_deref())?;
            record_standby_files(opts, &written)?;
            Some(ci)
        }
        None => None,
    };
    if phase_one_done {
        record_kept_phase_one(opts, &written)?;
    }
    flags.end_check.store(true, Ordering::SeqCst);
    let checked = write_manifest(opts, &written, tli, start.start, end, &early)?;
    let end_checked = Instant::now();
    let verified =
        verify::verify_checked(&opts.datadir, &expected, !opts.two_phase, &checked.chunks)?;
    let phases = Phases {
        start: started_copy.duration_since(started),
        copy: copied.duration_since(started_copy),
        copy_jobs_spread: jobs_spread,
        end_check: end_checked.duration_since(copied),
        verify: end_checked.elapsed(),
    };
    // Last: the copy is complete (a waiting standby starts redo now).
    crate::standby::pending::mark_complete(&*opts.storage, &opts.datadir)?;
    confirm_copy(&mut client, start.backup_id.as_deref());
    client.close();
    Ok(BasebackupSummary {
        system_id: id.system_id,
        start: start.start,
        end,
        tli,
        extracted,
        snapshot_keys: verified.snapshot_keys,
        wal_records: verified.wal_records,
        elapsed: started.elapsed(),
        phases,
        primary_conninfo,
        slot: opts.slot.clone(),
        received_bytes,
        resumed_chunks: plan.map(|p| p.kept_chunks.len() as u64),
        resumed_bytes: plan.map_or(0, |p| p.kept_bytes),
        resumed_files: plan.map_or(0, |p| p.kept_files.len() as u64),
        resumed_file_bytes: plan.map_or(0, |p| p.kept_file_bytes()),
        resumed_wal_segments: plan.map_or(0, |p| p.kept_wal_segments),
        resumed_mismatched: plan.map_or(0, |p| p.mismatched),
        manifest_files: checked.files.files,
        manifest_files_early: checked.early_files,
    })
}

/// Ends a copy's early check when dropped (however the copy ends).
struct StopEarlyCheck<'a>(&'a WrittenFiles, &'a AtomicBool);

impl Drop for StopEarlyCheck<'_> {
    fn drop(&mut self) {
        self.1.store(true, Ordering::Relaxed);
        self.0.stop_early_check();
    }
}

/// The copy's `backup_manifest`, once every file is written and durable
/// (the extractions and the WAL job fsynced theirs): written durably, then
/// read back and every file it lists checked against it (size and
/// CRC-32C, what `pg_verifybackup` checks; the snapshot's chunks as
/// chunks too, in the same read), so a file that changed after it was
/// written fails the copy before it is marked complete. The journal of
/// the unfinished copy goes last.
fn write_manifest(
    opts: &BasebackupOptions,
    written: &WrittenFiles,
    tli: TimelineId,
    start: Lsn,
    end: Lsn,
    early: &super::earlycheck::EarlyChecks,
) -> Result<EndCheck, BasebackupError> {
    let storage = &*opts.storage;
    let path = opts.datadir.join(MANIFEST_FILE);
    crate::storage::durable_replace(storage, &path, &written.manifest(tli, start, end))
        .map_err(WrittenError::from)?;
    let bytes = std::fs::read(&path).map_err(|source| ManifestError::Io {
        op: "read",
        path: path.clone(),
        source,
    })?;
    let manifest = super::manifest::parse(&bytes)?;
    // Its errors are the verification's to report, after the files'.
    let control = crate::store::ControlFile::read(&opts.datadir).ok();
    let checked = endcheck::check(&opts.datadir, &manifest, control.as_ref(), early).map_err(
        |e| match e {
            EndCheckError::Manifest(e) => BasebackupError::ManifestMismatch(e),
            EndCheckError::Verify(e) => BasebackupError::Verify(e),
        },
    )?;
    crate::storage::durable_remove(storage, &opts.datadir.join(PARTIAL_MANIFEST_FILE))
        .map_err(WrittenError::from)?;
    Ok(checked)
}

/// The copy is complete: tell the server, which kept the backup's
/// checkpoint pinned for a resume until now. A failure costs only that
/// pin until its window ends on the server: logged, the copy stands.
fn confirm_copy(client: &mut ReplicationClient, id: Option<&str>) {
    let Some(id) = id else {
        return;
    };
    if let Err(e) = client.confirm_base_backup(id) {
        tracing::warn!(backup_id = id, error = %e, "could not confirm the finished copy to the server: it keeps the backup's checkpoint pinned until its resume window ends");
    }
}

/// A resumed two-phase copy keeps its first phase's files as they are (a
/// standby may run on them): any the interrupted copy's journal had lost
/// is recorded as it is now.
fn record_kept_phase_one(
    opts: &BasebackupOptions,
    written: &WrittenFiles,
) -> Result<(), BasebackupError> {
    let files = [
        super::label::BACKUP_LABEL_FILE,
        crate::datadir::CONFIG_FILE,
        crate::datadir::STANDBY_SIGNAL,
        STANDBY_PASSFILE,
    ];
    for rel in files {
        if !written.contains(rel) && opts.datadir.join(rel).is_file() {
            written.record_from_disk(&opts.datadir, rel)?;
        }
    }
    Ok(())
}

/// `-R`'s files, as written: `walrep.toml` (edited), `standby.signal`,
/// the password file.
fn record_standby_files(
    opts: &BasebackupOptions,
    written: &WrittenFiles,
) -> Result<(), BasebackupError> {
    let files = [
        crate::datadir::CONFIG_FILE,
        crate::datadir::STANDBY_SIGNAL,
        STANDBY_PASSFILE,
    ];
    for rel in files {
        if rel != STANDBY_PASSFILE || opts.datadir.join(rel).is_file() {
            written.record_from_disk(&opts.datadir, rel)?;
        }
    }
    Ok(())
}

/// The end of a two-phase backup's first phase (`walrep.toml` is
/// written): the timeline history files, `wal/`, the standby
/// configuration, then the marker saying a standby may start. Returns the
/// `primary_conninfo` written.
fn finish_phase_one(
    opts: &BasebackupOptions,
    marker: &mut PendingBackup,
    written: &WrittenFiles,
) -> Result<String, BasebackupError> {
    let storage = &*opts.storage;
    let wal = opts.datadir.join(crate::datadir::WAL_DIR);
    let status = opts.datadir.join(crate::datadir::ARCHIVE_STATUS_DIR);
    let slots = opts.datadir.join(crate::datadir::SLOTS_DIR);
    let log = opts.datadir.join(crate::datadir::LOG_DIR);
    // What a starting node opens (the archive brings them later too).
    for dir in [&wal, &status, &slots, &log] {
        crate::storage::durable_create_dir(storage, dir)
            .map_err(|e| BasebackupError::Protocol(format!("could not create {dir:?}: {e}")))?;
    }
    if marker.tli > TimelineId::FIRST {
        let mut c = ReplicationClient::connect(&conninfo(opts), opts.timeout)?;
        for t in 2..=marker.tli.0 {
            let (name, bytes) = c.timeline_history(TimelineId(t))?;
            crate::storage::durable_replace(storage, &wal.join(&name), &bytes)
                .map_err(|e| BasebackupError::Protocol(format!("could not write {name}: {e}")))?;
            written.record_from_disk(
                &opts.datadir,
                &format!("{}/{name}", crate::datadir::WAL_DIR),
            )?;
        }
        c.close();
    }
    let ci = standby_conninfo(opts)?;
    standby_config::write(storage, &opts.datadir, &ci, opts.slot.as_deref())?;
    record_standby_files(opts, written)?;
    marker.two_phase = true;
    marker.write(storage, &opts.datadir)?;
    Ok(ci)
}

/// The server's `wal_segment_size` (the WAL job names its segments).
fn segment_size(client: &mut ReplicationClient) -> Result<crate::WalSegSize, BasebackupError> {
    let text = client.show("wal_segment_size")?;
    crate::config::parse_size(&text)
        .ok()
        .flatten()
        .and_then(|b| crate::WalSegSize::new(b).ok())
        .ok_or_else(|| {
            BasebackupError::Protocol(format!("the server's wal_segment_size {text:?} is invalid"))
        })
}

fn one_tablespace(start: &BackupStart) -> Result<(), BasebackupError> {
    if start.tablespaces.len() != 1 {
        return Err(BasebackupError::Protocol(format!(
            "the server sent {} tablespaces; walrep has exactly one data directory",
            start.tablespaces.len()
        )));
    }
    Ok(())
}

/// One job of a parallel backup: its own connection joins backup `id`
/// and extracts part `part` into the same directory; returns what it wrote
/// and the archive bytes it received (also added to `received` as they
/// arrive, for the progress of the whole backup).
fn copy_part(
    opts: &BasebackupOptions,
    id: &str,
    part: u32,
    received: &AtomicU64,
    written: Arc<WrittenFiles>,
) -> Result<(ExtractStats, u64), BasebackupError> {
    let mut client = ReplicationClient::connect(&conninfo(opts), opts.timeout)?;
    let request = BaseBackupRequest {
        progress: true,
        max_rate_kbps: opts.max_rate_kbps,
        join: Some((id.to_string(), part)),
        ..BaseBackupRequest::default()
    };
    let start = client.base_backup(&request)?;
    one_tablespace(&start)?;
    let mut counter = CountingProgress { received, last: 0 };
    let (stats, bytes) = receive_archive(&mut client, opts, &written, &mut counter)?;
    client.backup_end()?;
    client.close();
    Ok((stats, bytes))
}

/// Held by a job's thread: dropped when the job ends, however it ends,
/// which tells the leader waiting for the jobs.
struct Ended(crossbeam_channel::Sender<Instant>);

impl Drop for Ended {
    fn drop(&mut self) {
        let _ = self.0.try_send(Instant::now());
    }
}

/// A job's progress: its bytes added to the shared total.
struct CountingProgress<'a> {
    received: &'a AtomicU64,
    last: u64,
}

impl Progress for CountingProgress<'_> {
    fn begin(&mut self, _: Option<u64>) {}
    fn advance(&mut self, done: u64) {
        self.received
            .fetch_add(done.saturating_sub(self.last), Ordering::Relaxed);
        self.last = done;
    }
    fn end(&mut self, done: u64) {
        self.advance(done);
    }
}

/// The leader's progress with the other jobs' bytes added.
struct SharedProgress<'a> {
    inner: &'a mut dyn Progress,
    /// Bytes per job; the leader's is `[0]`, kept up to date here.
    per_job: &'a [AtomicU64],
}

impl SharedProgress<'_> {
    /// Report every job's bytes and their sum.
    fn refresh(&mut self) {
        let now: Vec<u64> = self
            .per_job
            .iter()
            .map(|j| j.load(Ordering::Relaxed))
            .collect();
        self.inner.advance(now.iter().sum());
        if now.len() > 2 {
            self.inner.jobs(&now);
        }
    }
}

impl Progress for SharedProgress<'_> {
    fn begin(&mut self, total: Option<u64>) {
        self.inner.begin(total);
    }
    fn phase_one_complete(&mut self, datadir: &std::path::Path) {
        self.inner.phase_one_complete(datadir);
    }
    fn advance(&mut self, done: u64) {
        self.per_job[0].store(done, Ordering::Relaxed);
        self.refresh();
    }
    fn end(&mut self, done: u64) {
        self.advance(done);
    }
}

/// Extract the archive stream into the target; returns what was written
/// and the archive bytes received.
fn receive_archive(
    client: &mut ReplicationClient,
    opts: &BasebackupOptions,
    written: &Arc<WrittenFiles>,
    progress: &mut dyn Progress,
) -> Result<(ExtractStats, u64), BasebackupError> {
    receive_archive_with(client, opts, written, progress, &mut |_| Ok(()), None, &[])
}

/// [`receive_archive`] calling `after_file` after each file; the
/// progress hears of the first phase's end once `phase_one` is set.
#[allow(clippy::too_many_arguments)]
fn receive_archive_with(
    client: &mut ReplicationClient,
    opts: &BasebackupOptions,
    written: &Arc<WrittenFiles>,
    progress: &mut dyn Progress,
    after_file: &mut dyn FnMut(&std::path::Path) -> Result<(), String>,
    phase_one: Option<&AtomicBool>,
    keep: &[&str],
) -> Result<(ExtractStats, u64), BasebackupError> {
    let mut extractor = Extractor::new(opts.storage.clone(), &opts.datadir);
    extractor.record_into(Arc::clone(written));
    for k in keep {
        extractor.keep_existing(std::path::Path::new(k));
    }
    let mut stream = ArchiveStream::new(client, progress);
    stream.phase_one = phase_one.map(|p| (p, false));
    stream.datadir = opts.datadir.clone();
    let extracted = extractor
        .extract_with(&mut stream, after_file)
        .and_then(|()| extract::drain(&mut stream, TRAILER_LIMIT).map(|_| ()));
    if let Err(e) = extracted {
        return Err(stream
            .take_error()
            .map_or(BasebackupError::Extract(e), BasebackupError::Client));
    }
    if !stream.ended {
        return Err(BasebackupError::Protocol(
            "the archive stream did not end".into(),
        ));
    }
    let received = stream.received;
    let stats = extractor.finish().map_err(BasebackupError::Extract)?;
    Ok((stats, received))
}

/// The archive stream as `io::Read`: `d` payloads of the one archive, in
/// order, read from the socket straight into the caller's buffer; EOF at
/// CopyDone. A manifest (not asked for) is skipped.
struct ArchiveStream<'c> {
    client: &'c mut ReplicationClient,
    progress: &'c mut dyn Progress,
    /// Archive bytes received.
    received: u64,
    /// `n` messages seen (walrep sends one).
    archives: u32,
    /// After `m`: `d` messages are the manifest, skipped.
    in_manifest: bool,
    /// CopyDone seen: EOF.
    ended: bool,
    /// The client error behind an `io::Error` returned to the tar reader.
    error: Option<ClientError>,
    /// A two-phase backup's first-phase flag, and whether the progress
    /// was told.
    phase_one: Option<(&'c AtomicBool, bool)>,
    /// The target (for the first phase's message).
    datadir: PathBuf,
}

impl<'c> ArchiveStream<'c> {
    fn new(client: &'c mut ReplicationClient, progress: &'c mut dyn Progress) -> Self {
        ArchiveStream {
            client,
            progress,
            received: 0,
            archives: 0,
            in_manifest: false,
            ended: false,
            error: None,
            phase_one: None,
            datadir: PathBuf::new(),
        }
    }

    fn take_error(&mut self) -> Option<ClientError> {
        self.error.take()
    }

    fn fail(&mut self, e: ClientError) -> io::Error {
        let err = io::Error::other(e.to_string());
        self.error = Some(e);
        err
    }

    /// Tell the progress once a two-phase backup's first phase is done.
    fn check_phase_one(&mut self) {
        if let Some((flag, told)) = &mut self.phase_one {
            if !*told && flag.load(Ordering::SeqCst) {
                *told = true;
                self.progress.phase_one_complete(&self.datadir);
            }
        }
    }

    /// A message of the stream other than data.
    fn message(&mut self, msg: BackupMessage) -> io::Result<()> {
        match msg {
            BackupMessage::NewArchive { name, .. } => {
                self.archives += 1;
                if self.archives > 1 {
                    let e = ClientError::Protocol(format!(
                        "a second archive \"{name}\": walrep backups have one archive"
                    ));
                    return Err(self.fail(e));
                }
            }
            // Only a server that frames data otherwise sends these.
            BackupMessage::Data(d) => {
                let e = ClientError::Protocol(format!(
                    "archive data of {} bytes framed as no server frames it",
                    d.len()
                ));
                return Err(self.fail(e));
            }
            BackupMessage::Progress(_) => {}
            BackupMessage::Manifest => self.in_manifest = true,
            BackupMessage::End => self.ended = true,
        }
        Ok(())
    }
}

impl Read for ArchiveStream<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.check_phase_one();
        while !self.ended && !out.is_empty() {
            let got = match self.client.backup_read(out) {
                Ok(g) => g,
                Err(e) => return Err(self.fail(e)),
            };
            match got {
                BackupRead::Message(m) => self.message(m)?,
                BackupRead::Data(_) if self.in_manifest => {}
                BackupRead::Data(0) => {}
                BackupRead::Data(n) => {
                    if self.archives == 0 {
                        let e = ClientError::Protocol("archive data before any archive".into());
                        return Err(self.fail(e));
                    }
                    self.received += n as u64;
                    self.progress.advance(self.received);
                    return Ok(n);
                }
            }
        }
        Ok(0)
    }
}
