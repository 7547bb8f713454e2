//! The archive fetcher: executes the recovery machine's file requests —
//! restore a segment or history file with `restore_command`, or look for
//! one in local `wal/` — and turns each result (IO errors included) into an
//! event. Retries and back-off are the machine's, not ours.
//!
//! Prefetch: once a segment is restored, `restore_command` for the next
//! one runs in the background (into `wal/RECOVERYXLOG.prefetch`) while
//! replay reads the first, so copying from the archive overlaps replay
//! instead of alternating with it. Its result is used only if the machine
//! asks for exactly that segment next, and only if it was restored; any
//! other answer (not there yet, failed) is dropped and the command is run
//! again when asked, so the machine sees the same events as without
//! prefetching. A prefetch no longer wanted is killed.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use super::NodeHooks;
use crate::archive::{
    keep_restored_file, ArchiveMark, RestoreCommand, RestoreOutcome, RestoredFile,
    RECOVERYXLOG_PREFETCH,
};
use crate::config::ArchiveMode;
use crate::datadir::WAL_DIR;
use crate::states::recovery::{Event, WalFile};
use crate::storage::Storage;
use crate::store::ControlFileOwner;
use crate::wal::{HeaderProblem, SegmentHeader, SEG_HEADER_SIZE};
use crate::{SegNo, TimelineHistory, TimelineId, WalSegSize};

/// A file request from the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchRequest {
    RestoreSegment {
        tli: TimelineId,
        segno: SegNo,
    },
    FindLocalSegment {
        tli: TimelineId,
        segno: SegNo,
    },
    RestoreHistory {
        tli: TimelineId,
    },
    /// Asked here only when the startup process could not queue its own
    /// answer (its event queue full: see `find_local_history`).
    FindLocalHistory {
        tli: TimelineId,
    },
}

/// Whether `wal_dir` holds a readable history file of `tli`: a stat and
/// a small read, which the startup process also runs itself, without a
/// round trip through this thread (a promotion asks it on the way to the
/// first write).
pub(crate) fn find_local_history(wal_dir: &std::path::Path, tli: TimelineId) -> Event {
    match crate::wal::read_history(wal_dir, tli) {
        Ok(history) if wal_dir.join(tli.history_file_name()).exists() => {
            Event::HistoryFoundLocally { tli, history }
        }
        Ok(_) => Event::HistoryNotFoundLocally { tli },
        Err(e) => {
            tracing::warn!(tli = tli.0, error = %e, "ignoring an unreadable local history file");
            Event::HistoryNotFoundLocally { tli }
        }
    }
}

/// Runs requests one at a time until the request channel closes.
pub struct Fetcher {
    /// The data directory restored files go into (`wal/`).
    pub datadir: PathBuf,
    /// Where restored files are made durable.
    pub storage: Arc<dyn Storage>,
    /// For `%r`: the restartpoint's segment.
    pub control: Arc<ControlFileOwner>,
    /// Wakes the archiver for files marked `.ready`.
    pub hooks: Arc<dyn NodeHooks>,
    pub restore: RestoreCommand,
    /// The running configuration: a reloaded restore_command is picked up
    /// before the next request.
    pub config: crate::config::LiveConfig,
    pub system_id: u64,
    pub seg_size: WalSegSize,
    pub archive_mode: ArchiveMode,
    pub events: crate::standby::events::EventSender<Event>,
    /// Closed at shutdown: an in-flight restore_command is killed.
    pub cancel: Receiver<()>,
}

/// The background restore of the segment after the last one restored.
struct Prefetch {
    tli: TimelineId,
    segno: SegNo,
    /// Dropped to kill the command (`run_shell` watches for disconnection).
    cancel: Sender<()>,
    /// The restored file, durable under the prefetch name; `None` when the
    /// segment was not restored (not there yet, failed, cancelled).
    thread: JoinHandle<Option<RestoredFile>>,
}

impl Prefetch {
    /// Kill the command if it still runs, wait for the thread and remove
    /// whatever it left under the prefetch name.
    fn discard(self, datadir: &Path) {
        drop(self.cancel);
        let _ = self.thread.join();
        let _ = std::fs::remove_file(datadir.join(WAL_DIR).join(RECOVERYXLOG_PREFETCH));
    }
}

impl Fetcher {
    pub fn run(mut self, requests: Receiver<FetchRequest>) {
        let _span = tracing::info_span!("archive-fetcher").entered();
        let mut prefetch = None;
        let mut version = self.config.version();
        for req in requests.iter() {
            if self.config.version() != version {
                version = self.config.version();
                self.reload_restore_command(&mut prefetch);
            }
            let ev = self.execute(req, &mut prefetch);
            if self.events.send(ev).is_err() {
                break;
            }
        }
        if let Some(p) = prefetch {
            p.discard(&self.datadir);
        }
    }

    /// Take restore_command and its timeout from a reloaded configuration;
    /// a prefetch by the old command is discarded.
    fn reload_restore_command(&mut self, prefetch: &mut Option<Prefetch>) {
        let fresh = RestoreCommand::from_config(&self.datadir, &self.config.get(), self.seg_size);
        if fresh.restore_command != self.restore.restore_command {
            tracing::info!("restore_command changed by a reload: using the new command");
            if let Some(p) = prefetch.take() {
                p.discard(&self.datadir);
            }
        }
        self.restore = fresh;
    }

    fn wal_dir(&self) -> PathBuf {
        self.datadir.join(WAL_DIR)
    }

    fn execute(&self, req: FetchRequest, prefetch: &mut Option<Prefetch>) -> Event {
        match req {
            FetchRequest::RestoreSegment { tli, segno } => {
                let ev = self.restore_segment(tli, segno, prefetch.take());
                if let (Event::SegmentRestored { .. }, Some(next)) =
                    (&ev, segno.checked_next(self.seg_size))
                {
                    *prefetch = self.start_prefetch(tli, next);
                }
                ev
            }
            FetchRequest::FindLocalSegment { tli, segno } => {
                find_local_segment(&self.wal_dir(), (self.system_id, self.seg_size), tli, segno)
            }
            FetchRequest::RestoreHistory { tli } => self.restore_history(tli),
            FetchRequest::FindLocalHistory { tli } => find_local_history(&self.wal_dir(), tli),
        }
    }

    /// The restartpoint's segment for `%r` (files before it are not needed).
    fn restartpoint_file(&self) -> String {
        self.control.read(|c| {
            c.redo_lsn
                .segno(self.seg_size)
                .file_name(c.checkpoint_timeline, self.seg_size)
        })
    }

    fn mark(&self) -> ArchiveMark {
        ArchiveMark::for_mode(self.archive_mode)
    }

    /// Run `restore_command` for the segment after `tli`/`segno - 1` in the
    /// background; `None` without a restore_command or if no thread starts.
    fn start_prefetch(&self, tli: TimelineId, segno: SegNo) -> Option<Prefetch> {
        if self.restore.restore_command.trim().is_empty() {
            return None;
        }
        let (cancel, cancelled) = crossbeam_channel::bounded::<()>(0);
        let restore = self.restore.clone();
        let name = segno.file_name(tli, self.seg_size);
        let restartpoint = self.restartpoint_file();
        let datadir = self.datadir.clone();
        let storage = self.storage.clone();
        let thread = std::thread::Builder::new()
            .name("archive-prefetch".into())
            .spawn(move || {
                let RestoreOutcome::Restored(r) =
                    restore.prefetch(&name, Some(&restartpoint), Some(&cancelled))
                else {
                    return None;
                };
                // Make the copy durable here, off the replay path: installing
                // it (a durable rename) then only syncs the directory. If
                // that fails, the file is not used (the segment is restored
                // again on request, into a new file).
                let path = datadir.join(&r.temp_path);
                if let Err(e) = crate::storage::sync_file(&*storage, &path) {
                    tracing::warn!(file = %name, error = %e, "could not fsync a prefetched segment; not using it");
                    let _ = storage.remove_file(&path);
                    return None;
                }
                Some(r)
            })
            .ok()?;
        Some(Prefetch {
            tli,
            segno,
            cancel,
            thread,
        })
    }

    /// The prefetch's outcome if it restored exactly this segment; any
    /// other prefetch is discarded.
    fn take_prefetched(
        &self,
        tli: TimelineId,
        segno: SegNo,
        prefetch: Option<Prefetch>,
    ) -> Option<RestoreOutcome> {
        let p = prefetch?;
        if (p.tli, p.segno) != (tli, segno) {
            p.discard(&self.datadir);
            return None;
        }
        p.thread.join().ok().flatten().map(RestoreOutcome::Restored)
    }

    fn restore_segment(&self, tli: TimelineId, segno: SegNo, prefetch: Option<Prefetch>) -> Event {
        let name = segno.file_name(tli, self.seg_size);
        let file = WalFile::Segment { tli, segno };
        let prefetched = self.take_prefetched(tli, segno, prefetch);
        let how = if prefetched.is_some() {
            "prefetched"
        } else {
            "on request"
        };
        let outcome = prefetched.unwrap_or_else(|| {
            self.restore
                .restore(&name, Some(&self.restartpoint_file()), Some(&self.cancel))
        });
        match outcome {
            RestoreOutcome::Restored(r) => {
                match keep_restored_file(&*self.storage, &self.datadir, &r, self.mark()) {
                    Ok(_) => {
                        tracing::info!(file = %name, how, "restored log file from archive");
                        if self.mark() == ArchiveMark::Ready {
                            self.hooks.wake_archiver();
                        }
                        Event::SegmentRestored { tli, segno }
                    }
                    Err(e) => Event::RestoreCommandFailed {
                        file,
                        reason: format!("could not install restored file: {e}"),
                    },
                }
            }
            RestoreOutcome::NotInArchive { .. } => Event::SegmentNotInArchive { tli, segno },
            RestoreOutcome::Failed { reason, stderr, .. } => Event::RestoreCommandFailed {
                file,
                reason: with_stderr(reason.to_string(), &stderr),
            },
        }
    }

    fn restore_history(&self, tli: TimelineId) -> Event {
        let name = tli.history_file_name();
        let file = WalFile::History { tli };
        match self
            .restore
            .restore(&name, Some(&self.restartpoint_file()), Some(&self.cancel))
        {
            RestoreOutcome::Restored(r) => {
                let text = std::fs::read_to_string(self.datadir.join(&r.temp_path));
                let parsed = text
                    .map_err(|e| e.to_string())
                    .and_then(|t| TimelineHistory::parse(tli, &t).map_err(|e| e.to_string()));
                match parsed {
                    Ok(history) => {
                        match keep_restored_file(&*self.storage, &self.datadir, &r, self.mark()) {
                            Ok(_) => {
                                tracing::info!(file = %name, "restored history file from archive");
                                Event::HistoryRestored { tli, history }
                            }
                            Err(e) => Event::RestoreCommandFailed {
                                file,
                                reason: format!("could not install restored file: {e}"),
                            },
                        }
                    }
                    Err(e) => Event::RestoreCommandFailed {
                        file,
                        reason: format!("restored history file {name} is invalid: {e}"),
                    },
                }
            }
            RestoreOutcome::NotInArchive { .. } => Event::HistoryNotInArchive { tli },
            RestoreOutcome::Failed { reason, stderr, .. } => Event::RestoreCommandFailed {
                file,
                reason: with_stderr(reason.to_string(), &stderr),
            },
        }
    }
}

/// Whether `wal_dir` holds `segno` of `tli` as a whole segment of this
/// system: full size, and its header says it is this system's segment
/// `segno` of timeline `tli` (replay checks the records). An
/// open, a stat and a 40-byte read. The startup process runs it itself
/// too, without a round trip through this thread (a promotion asks it on
/// the way to the first write). Safe beside this thread: the machine has
/// one file request out at a time, so this thread is idle meanwhile, and
/// a background prefetch writes only `RECOVERYXLOG.prefetch`, installed
/// under a segment's name by this thread when a request asks for it.
pub(crate) fn find_local_segment(
    wal_dir: &Path,
    (system_id, seg_size): (u64, WalSegSize),
    tli: TimelineId,
    segno: SegNo,
) -> Event {
    match check_local_segment(wal_dir, (system_id, seg_size), tli, segno) {
        Ok(()) => Event::SegmentFoundLocally { tli, segno },
        Err(why) => {
            tracing::debug!(tli = tli.0, segno = segno.0, %why, "segment not usable locally");
            Event::SegmentNotFoundLocally { tli, segno }
        }
    }
}

fn check_local_segment(
    wal_dir: &Path,
    (system_id, seg_size): (u64, WalSegSize),
    tli: TimelineId,
    segno: SegNo,
) -> Result<(), LocalSegment> {
    let path = wal_dir.join(segno.file_name(tli, seg_size));
    let mut f = File::open(&path)?;
    let len = f.metadata()?.len();
    if len != seg_size.bytes() {
        return Err(LocalSegment::Size {
            found: len,
            expected: seg_size.bytes(),
        });
    }
    let mut buf = vec![0u8; SEG_HEADER_SIZE as usize];
    f.read_exact(&mut buf)?;
    let h = SegmentHeader::decode(&buf)?;
    if h.system_id != system_id {
        return Err(LocalSegment::System(h.system_id));
    }
    if h.tli != tli || h.pageaddr != segno.start_lsn(seg_size) {
        return Err(LocalSegment::Position {
            tli: h.tli,
            at: h.pageaddr,
        });
    }
    Ok(())
}

/// Why a file in local `wal/` is not the segment asked for (logged; the
/// machine only hears "not found locally").
#[derive(Debug, thiserror::Error)]
enum LocalSegment {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{found} bytes, expected {expected}")]
    Size { found: u64, expected: u64 },
    #[error(transparent)]
    Header(#[from] HeaderProblem),
    #[error("system identifier {0} differs")]
    System(u64),
    #[error("header says timeline {tli} at {at}")]
    Position { tli: TimelineId, at: crate::Lsn },
}

fn with_stderr(reason: String, stderr: &str) -> String {
    let tail = stderr.trim();
    if tail.is_empty() {
        reason
    } else {
        format!("{reason}: {}", tail.lines().last().unwrap_or(tail))
    }
}
