//! Hand-offs of just-written WAL: a walsender that is caught up and idle
//! registers a [`WrittenHook`], and the thread that writes the WAL (a
//! Redis worker leading a lone client's flush, the committer, the WAL
//! writer) calls it right after the write, before the fdatasync, instead
//! of waking the walsender through the written position's watch. The
//! hook sends the new WAL itself or, when it cannot, wakes its walsender:
//! either way no write goes unseen. After each fdatasync the same
//! thread tells the hooks the new flush position (before the flush
//! position's watch wakes anyone), so the hook can tell its standby at
//! once what it may now expose and apply.

use std::sync::{Mutex, Weak};

use crate::{Lsn, TimelineId};

/// Told of every write of WAL (see the module docs).
pub trait WrittenHook: Send + Sync {
    /// WAL up to `end` on `tli` is written, up to `flushed` durable;
    /// `read(start, buf)` fills `buf` from the writer's in-memory tail
    /// (false: not held whole there). Runs under the WAL writer's flush
    /// lock, on a commit's path: it must not block.
    fn written(
        &self,
        tli: TimelineId,
        end: Lsn,
        flushed: Lsn,
        read: &dyn Fn(Lsn, &mut [u8]) -> bool,
    );

    /// WAL up to `flushed` on `tli` is durable (and the local flush's own
    /// hook has run); called before the flush position's watch is
    /// published, under the flush lock: it must not block.
    fn flushed(&self, tli: TimelineId, flushed: Lsn) {
        let _ = (tli, flushed);
    }
}

/// The hooks registered, each dropped with its owner (a walsender's
/// stream): the list never holds more than the live walsenders.
#[derive(Default)]
pub(crate) struct WrittenHooks(Mutex<Vec<Weak<dyn WrittenHook>>>);

impl std::fmt::Debug for WrittenHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WrittenHooks")
    }
}

impl WrittenHooks {
    pub fn add(&self, hook: Weak<dyn WrittenHook>) {
        let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        v.retain(|h| h.strong_count() > 0);
        v.push(hook);
    }

    /// Call every live hook (and forget the dead ones).
    pub fn call(
        &self,
        tli: TimelineId,
        end: Lsn,
        flushed: Lsn,
        read: &dyn Fn(Lsn, &mut [u8]) -> bool,
    ) {
        let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        v.retain(|h| match h.upgrade() {
            Some(h) => {
                h.written(tli, end, flushed, read);
                true
            }
            None => false,
        });
    }

    /// Tell every live hook of a flush.
    pub fn call_flushed(&self, tli: TimelineId, flushed: Lsn) {
        let v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for h in v.iter().filter_map(|h| h.upgrade()) {
            h.flushed(tli, flushed);
        }
    }
}
