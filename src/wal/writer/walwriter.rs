//! The WAL-writer thread (PostgreSQL's walwriter): flushes WAL that nobody
//! waits for (asynchronous commits) every `wal_writer_delay`, or as soon as
//! `wal_writer_flush_after` bytes are pending, and pre-allocates the next
//! segment ahead of need so that crossing into it costs no file creation.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;

use super::shared::{FlushBy, Shared};

/// Run until shutdown or poisoning.
pub(crate) fn run(shared: Arc<Shared>, kicks: Receiver<()>, delay: Duration) {
    let _span = tracing::info_span!("walwriter", tli = shared.ctx.tli.0).entered();
    shared.preallocate_ahead();
    loop {
        // A timeout and a kick mean the same: look for work.
        let _ = kicks.recv_timeout(delay);
        if shared.poison.get().is_some() {
            break;
        }
        let stopping = shared.stopping.load(Ordering::Acquire);
        if shared.inserted() > shared.flushed() {
            let g = shared.lock_flush();
            if shared.flush_and_release(g, FlushBy::Writer).is_err() {
                break;
            }
        }
        if stopping {
            break;
        }
        shared.preallocate_ahead();
    }
    tracing::debug!("WAL writer exiting");
}
