//! A walreceiver's look-ahead pre-allocation: a helper thread that creates
//! the segment after the one being written (zero-filled, fsynced, renamed
//! into place, directory fsynced) before the stream reaches it, as the
//! primary's WAL writer does for its own segments.
//!
//! # Why zero-filled and why ahead
//! Created on the walreceiver's path, a segment cost a file creation, a
//! rename and two fsyncs at every segment boundary, each a journal commit
//! that on a shared disk waits for every other writer's data (10-40 ms
//! under load). And a segment only reserved with fallocate(2) makes every
//! later fdatasync into it a journal commit as well (the first write to
//! each reserved block changes its extent from unwritten to written),
//! where an fdatasync into zero-filled blocks writes only data: the
//! standby's fdatasync tail was several times the primary's on the same
//! disk (docs/benchmarks/replication-lag.md, "The standby's segment
//! files"). So the segment is zero-filled, as PostgreSQL's XLogFileInit
//! does, but by this thread, never by the walreceiver unless the stream
//! overtakes it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{bounded, Sender};

use super::segdir::SegmentDir;
use crate::{SegNo, TimelineId};

/// Segments asked for and not yet taken up by the thread, at most: a
/// dropped ask only means the walreceiver creates that segment itself.
const PENDING_ASKS: usize = 1;

/// The way to ask the helper thread for a segment. The thread ends when
/// this is dropped, once the segment it is creating (if any) is in place;
/// nothing waits for that, so the end of a walreceiver (at promotion, say)
/// is never held up by a zero-fill. A temporary file it leaves behind in
/// a crash is removed at the next start like any `xlogtemp.`.
#[derive(Debug)]
pub(crate) struct Lookahead {
    asks: Option<Sender<(TimelineId, SegNo)>>,
    /// Set when dropped: an ask still queued is not taken up.
    ended: Arc<AtomicBool>,
}

impl Lookahead {
    /// Start the helper for `segdir`. Without a thread (spawning failed)
    /// it asks nothing, and the walreceiver creates every segment itself.
    pub(crate) fn start(segdir: Arc<SegmentDir>) -> Lookahead {
        let (tx, rx) = bounded::<(TimelineId, SegNo)>(PENDING_ASKS);
        let ended = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&ended);
        let spawned = std::thread::Builder::new()
            .name("walrcv-prealloc".into())
            .spawn(move || {
                for (tli, segno) in rx {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    if let Err(e) = segdir.preallocate(tli, segno) {
                        // The walreceiver creates it itself when it gets there.
                        tracing::warn!(error = %e, "could not pre-allocate the next received WAL segment");
                    }
                }
            });
        match spawned {
            Ok(_) => Lookahead {
                asks: Some(tx),
                ended,
            },
            Err(e) => {
                tracing::warn!(error = %e, "could not start the WAL pre-allocation thread; received segments are created as they are reached");
                Lookahead { asks: None, ended }
            }
        }
    }

    /// Ask for `(tli, segno)` to be created if it does not exist. Never
    /// blocks: with the thread busy and asks pending, this one is dropped.
    pub(crate) fn ask(&self, tli: TimelineId, segno: SegNo) {
        if let Some(tx) = &self.asks {
            let _ = tx.try_send((tli, segno));
        }
    }
}

impl Drop for Lookahead {
    fn drop(&mut self) {
        self.ended.store(true, Ordering::Release);
    }
}
