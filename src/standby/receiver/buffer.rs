//! The received-WAL buffer: the walreceiver copies every byte it writes
//! into segment files here too, and redo reads records from here instead
//! of from the files (PostgreSQL's design note: "WALreceiver would receive
//! WAL and then write them to WAL buffers and also to disk ... allows the
//! Startup process to read data from shared memory rather than from
//! files").
//!
//! It holds the last [`WAL_BUFFER_BYTES`] bytes of one timeline's stream,
//! contiguous, in a ring indexed by LSN. It hands over bytes only: how far
//! redo may apply is still its limit (the flush position the machine
//! gives), checked before any byte is read, so WAL the standby has not made
//! durable is never applied whichever source the bytes come from. What the
//! buffer does not hold (redo behind by more than the buffer, a restart,
//! archive or local files, another timeline) is read from the files.
//!
//! A new walreceiver session or timeline clears it: bytes are only ever
//! appended to the stream they continue, so the buffer never holds bytes
//! that differ from the files at the same position of the same timeline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::wal::WalMemory;
use crate::{Lsn, TimelineId};

/// Bytes of received WAL kept in memory (one per node, allocated at the
/// first byte received). Redo normally trails the walreceiver by one
/// batch (at most 16 MB, usually a few kB); 16 MB more covers catch-up
/// bursts without holding more than one segment's worth of memory twice.
pub const WAL_BUFFER_BYTES: usize = 32 << 20;

/// The ring: byte `lsn` lives at `lsn % capacity`.
#[derive(Debug)]
struct Ring {
    /// Allocated at the first append (a standby that never streams pays
    /// nothing).
    bytes: Vec<u8>,
    /// The timeline of the bytes held.
    tli: TimelineId,
    /// The oldest byte held.
    start: Lsn,
    /// One past the newest byte held.
    end: Lsn,
}

/// Received WAL in memory for redo; see the module documentation.
#[derive(Debug)]
pub struct WalBuffer {
    capacity: usize,
    ring: Mutex<Ring>,
    /// Bytes redo took from here, and bytes it asked for that were not
    /// here (it read them from files): how well the buffer serves.
    hit_bytes: AtomicU64,
    miss_bytes: AtomicU64,
}

impl Default for WalBuffer {
    fn default() -> Self {
        WalBuffer::new(WAL_BUFFER_BYTES)
    }
}

impl WalBuffer {
    /// A buffer of `capacity` bytes (at least 1).
    pub fn new(capacity: usize) -> WalBuffer {
        WalBuffer {
            capacity: capacity.max(1),
            ring: Mutex::new(Ring {
                bytes: Vec::new(),
                tli: TimelineId(0),
                start: Lsn(0),
                end: Lsn(0),
            }),
            hit_bytes: AtomicU64::new(0),
            miss_bytes: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forget everything held (a new session or timeline starts).
    pub fn clear(&self) {
        let mut r = self.lock();
        r.start = r.end;
    }

    /// `data`, of timeline `tli`, was written at `at`. Bytes that do not
    /// continue what is held (another timeline, a gap, a rewrite) replace
    /// it.
    pub fn append(&self, tli: TimelineId, at: Lsn, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let cap = self.capacity;
        let mut r = self.lock();
        if r.bytes.is_empty() {
            r.bytes = vec![0; cap];
        }
        if r.tli != tli || r.end != at || r.start == r.end {
            r.tli = tli;
            r.start = at;
            r.end = at;
        }
        // Only the newest `cap` bytes can be held.
        let skip = data.len().saturating_sub(cap);
        let mut pos = at.0 + skip as u64;
        let mut rest = &data[skip..];
        while !rest.is_empty() {
            let idx = (pos % cap as u64) as usize;
            let n = rest.len().min(cap - idx);
            r.bytes[idx..idx + n].copy_from_slice(&rest[..n]);
            pos += n as u64;
            rest = &rest[n..];
        }
        r.end = Lsn(at.0 + data.len() as u64);
        r.start = Lsn(r.start.0.max(r.end.0.saturating_sub(cap as u64)));
    }

    /// The range held now and its timeline (for tests and logs).
    pub fn held(&self) -> (TimelineId, Lsn, Lsn) {
        let r = self.lock();
        (r.tli, r.start, r.end)
    }

    /// Bytes redo read from here so far.
    pub fn hit_bytes(&self) -> u64 {
        self.hit_bytes.load(Ordering::Relaxed)
    }

    /// Bytes redo asked for that were not here (read from files) so far.
    pub fn miss_bytes(&self) -> u64 {
        self.miss_bytes.load(Ordering::Relaxed)
    }
}

impl WalMemory for WalBuffer {
    fn copy_to(&self, tli: TimelineId, at: Lsn, len: usize, out: &mut Vec<u8>) -> bool {
        let r = self.lock();
        let wanted_end = at.0.saturating_add(len as u64);
        let held = r.tli == tli && at >= r.start && wanted_end <= r.end.0 && !r.bytes.is_empty();
        if !held {
            drop(r);
            self.miss_bytes.fetch_add(len as u64, Ordering::Relaxed);
            return false;
        }
        let cap = self.capacity;
        let mut pos = at.0;
        let mut left = len;
        while left > 0 {
            let idx = (pos % cap as u64) as usize;
            let n = left.min(cap - idx);
            out.extend_from_slice(&r.bytes[idx..idx + n]);
            pos += n as u64;
            left -= n;
        }
        drop(r);
        self.hit_bytes.fetch_add(len as u64, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const TLI: TimelineId = TimelineId(1);

    fn get(b: &WalBuffer, at: u64, len: usize) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        b.copy_to(TLI, Lsn(at), len, &mut out).then_some(out)
    }

    #[test]
    fn holds_the_newest_bytes_across_the_wrap() {
        let b = WalBuffer::new(8);
        b.append(TLI, Lsn(100), b"abcdef");
        b.append(TLI, Lsn(106), b"ghij");
        assert_eq!(b.held(), (TLI, Lsn(102), Lsn(110)));
        assert_eq!(get(&b, 102, 8).as_deref(), Some(&b"cdefghij"[..]));
        assert_eq!(get(&b, 101, 2), None, "evicted");
        assert_eq!(get(&b, 109, 2), None, "not received yet");
        assert_eq!(b.hit_bytes(), 8);
        assert_eq!(b.miss_bytes(), 4);
    }

    #[test]
    fn another_timeline_or_a_gap_starts_over() {
        let b = WalBuffer::new(64);
        b.append(TLI, Lsn(0), b"abcd");
        b.append(TimelineId(2), Lsn(4), b"efgh");
        assert_eq!(b.held(), (TimelineId(2), Lsn(4), Lsn(8)));
        assert_eq!(get(&b, 4, 4), None, "asked on timeline 1");
        b.append(TimelineId(2), Lsn(20), b"xy");
        assert_eq!(b.held(), (TimelineId(2), Lsn(20), Lsn(22)));
        b.clear();
        let mut out = Vec::new();
        assert!(!b.copy_to(TimelineId(2), Lsn(20), 1, &mut out));
    }

    #[test]
    fn a_write_larger_than_the_buffer_keeps_its_tail() {
        let b = WalBuffer::new(4);
        b.append(TLI, Lsn(10), b"0123456789");
        assert_eq!(b.held(), (TLI, Lsn(16), Lsn(20)));
        assert_eq!(get(&b, 16, 4).as_deref(), Some(&b"6789"[..]));
    }

    proptest! {
        /// Whatever the chunking, wrap-arounds and restarts, every range the
        /// buffer says it holds has exactly the bytes last written there,
        /// and it holds the newest `cap` bytes of the current stream.
        #[test]
        fn hands_over_exactly_the_bytes_written(
            cap in 1usize..64,
            steps in proptest::collection::vec((0u8..8, 1usize..40, any::<u8>()), 1..60),
            probes in proptest::collection::vec((0u64..600, 0usize..70), 1..40),
        ) {
            let b = WalBuffer::new(cap);
            let mut model: BTreeMap<u64, u8> = BTreeMap::new();
            let mut stream_start = 0u64;
            let mut end = 0u64;
            for (kind, len, seed) in steps {
                if kind == 0 {
                    // A new session: restream from an earlier position.
                    end = end.saturating_sub(len as u64);
                    stream_start = end;
                    model.retain(|k, _| *k < end);
                }
                let data: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
                b.append(TLI, Lsn(end), &data);
                for (i, v) in data.iter().enumerate() {
                    model.insert(end + i as u64, *v);
                }
                end += len as u64;
            }
            let (_, start, held_end) = b.held();
            prop_assert_eq!(held_end.0, end);
            prop_assert_eq!(start.0, stream_start.max(end.saturating_sub(cap as u64)));
            for (at, len) in probes {
                let inside = at >= start.0 && at + len as u64 <= end;
                match get(&b, at, len) {
                    Some(got) => {
                        prop_assert!(inside);
                        let want: Vec<u8> = (at..at + len as u64).map(|k| model[&k]).collect();
                        prop_assert_eq!(got, want);
                    }
                    None => prop_assert!(!inside),
                }
            }
        }
    }
}
