//! The tail of the WAL written: the most recent bytes this writer wrote to
//! its segment files, kept in memory (a ring indexed by LSN) so that
//! walsenders send just-written WAL without reading it back from the file
//! (one `pread` per message otherwise, on every commit's path). Only a
//! cache: every byte in it is also in the segment file at the same LSN,
//! and a read it cannot serve whole goes to the file.
//!
//! The writer appends under its flush lock, so it never waits for a
//! walsender copying out of the tail ([`SharedTail::append`]): on two
//! busy cores a walsender preempted while it copies would otherwise
//! hold up every commit behind the flush lock.

use std::sync::{Mutex, TryLockError};

use super::buffer::{Batch, Piece};
use crate::Lsn;

/// Bytes kept: eight of the walsender's largest messages (128 kB), so a
/// standby that keeps up never reads the file.
pub(crate) const TAIL_BYTES: usize = 1 << 20;

/// The [`Tail`] shared by the WAL writer and walsenders.
#[derive(Debug)]
pub(crate) struct SharedTail(Mutex<Tail>);

impl SharedTail {
    /// An empty tail whose next byte is `at`.
    pub fn new(at: Lsn) -> SharedTail {
        SharedTail(Mutex::new(Tail::new(at)))
    }

    /// Keep `batch`, unless a walsender is reading the tail right now:
    /// then the batch is not kept, and the next batch, which does not
    /// continue the tail, replaces it ([`Tail::append`]). Until then
    /// the tail still serves what it held, and reads past it go to the
    /// segment file: nothing is served that the file does not hold at
    /// the same LSN.
    pub fn append(&self, batch: &Batch) {
        match self.0.try_lock() {
            Ok(mut tail) => tail.append(batch),
            Err(TryLockError::Poisoned(p)) => p.into_inner().append(batch),
            Err(TryLockError::WouldBlock) => {}
        }
    }

    /// [`Tail::read`].
    pub fn read(&self, start: Lsn, out: &mut [u8]) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .read(start, out)
    }
}

#[derive(Debug)]
pub(crate) struct Tail {
    /// `TAIL_BYTES` long once anything was written (empty before: a writer
    /// that writes nothing holds no memory). The byte of LSN `l` is at
    /// `l % TAIL_BYTES`.
    ring: Vec<u8>,
    /// The oldest LSN held.
    start: Lsn,
    /// The LSN after the newest byte held.
    end: Lsn,
}

impl Tail {
    /// An empty tail whose next byte is `at`.
    pub fn new(at: Lsn) -> Tail {
        Tail {
            ring: Vec::new(),
            start: at,
            end: at,
        }
    }

    /// Keep the bytes of `batch`, just written to the segment files. A
    /// batch that does not continue the tail replaces it.
    pub fn append(&mut self, batch: &Batch) {
        if self.ring.is_empty() {
            self.ring = vec![0; TAIL_BYTES];
        }
        if batch.start != self.end {
            self.start = batch.start;
            self.end = batch.start;
        }
        for piece in batch.pieces() {
            match piece {
                Piece::Bytes { at, len } => self.push(&batch.bytes[at..at + len]),
                Piece::Zeroes { len } => self.push_zeroes(len),
            }
        }
        debug_assert_eq!(self.end, batch.end);
    }

    fn push(&mut self, mut data: &[u8]) {
        if data.len() > TAIL_BYTES {
            let skip = data.len() - TAIL_BYTES;
            self.end = Lsn(self.end.0 + skip as u64);
            data = &data[skip..];
        }
        while !data.is_empty() {
            let at = (self.end.0 % TAIL_BYTES as u64) as usize;
            let n = data.len().min(TAIL_BYTES - at);
            self.ring[at..at + n].copy_from_slice(&data[..n]);
            data = &data[n..];
            self.advance(n as u64);
        }
    }

    fn push_zeroes(&mut self, mut len: u64) {
        if len > TAIL_BYTES as u64 {
            self.end = Lsn(self.end.0 + (len - TAIL_BYTES as u64));
            len = TAIL_BYTES as u64;
        }
        while len > 0 {
            let at = (self.end.0 % TAIL_BYTES as u64) as usize;
            let n = (len as usize).min(TAIL_BYTES - at);
            self.ring[at..at + n].fill(0);
            len -= n as u64;
            self.advance(n as u64);
        }
    }

    fn advance(&mut self, n: u64) {
        self.end = Lsn(self.end.0 + n);
        let oldest = self.end.0.saturating_sub(TAIL_BYTES as u64);
        self.start = Lsn(self.start.0.max(oldest));
    }

    /// Fill `out` with the WAL at `start` if the tail holds all of it;
    /// false (and `out` untouched) otherwise.
    pub fn read(&self, start: Lsn, out: &mut [u8]) -> bool {
        let Some(end) = start.0.checked_add(out.len() as u64) else {
            return false;
        };
        if start < self.start || end > self.end.0 || self.ring.is_empty() {
            return false;
        }
        let mut lsn = start.0;
        let mut done = 0;
        while done < out.len() {
            let at = (lsn % TAIL_BYTES as u64) as usize;
            let n = (out.len() - done).min(TAIL_BYTES - at);
            out[done..done + n].copy_from_slice(&self.ring[at..at + n]);
            done += n;
            lsn += n as u64;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(start: u64, bytes: &[u8], gaps: Vec<(usize, u64)>) -> Batch {
        let gap_len: u64 = gaps.iter().map(|g| g.1).sum();
        Batch {
            start: Lsn(start),
            end: Lsn(start + bytes.len() as u64 + gap_len),
            bytes: bytes.to_vec(),
            gaps,
            records: 1,
        }
    }

    #[test]
    fn serves_what_it_holds_and_nothing_else() {
        let mut t = Tail::new(Lsn(100));
        let mut out = [0u8; 4];
        assert!(!t.read(Lsn(100), &mut out));
        t.append(&batch(100, b"abcdefgh", vec![]));
        assert!(t.read(Lsn(102), &mut out));
        assert_eq!(&out, b"cdef");
        assert!(!t.read(Lsn(106), &mut out), "past the end");
        assert!(!t.read(Lsn(98), &mut out), "before the start");
        t.append(&batch(108, b"ij", vec![(1, 3)]));
        let mut five = [9u8; 5];
        assert!(t.read(Lsn(108), &mut five));
        assert_eq!(&five, b"i\0\0\0j");
    }

    #[test]
    fn wraps_and_forgets_the_oldest() {
        let mut t = Tail::new(Lsn(0));
        let chunk: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
        let mut lsn = 0u64;
        for _ in 0..5 {
            t.append(&batch(lsn, &chunk, vec![]));
            lsn += chunk.len() as u64;
        }
        let mut out = vec![0u8; 1000];
        assert!(!t.read(Lsn(lsn - TAIL_BYTES as u64 - 1), &mut out));
        let at = lsn - 500_000;
        assert!(t.read(Lsn(at), &mut out));
        let want: Vec<u8> = (0..1000u64)
            .map(|i| ((at + i) % 300_000 % 256) as u8)
            .collect();
        assert_eq!(out, want);
    }

    #[test]
    fn a_batch_skipped_while_read_is_never_served() {
        let shared = SharedTail::new(Lsn(0));
        shared.append(&batch(0, b"abcd", vec![]));
        {
            // A walsender copying out of the tail: the writer skips.
            let _reading = shared.0.lock().unwrap();
            shared.append(&batch(4, b"efgh", vec![]));
        }
        let mut out = [0u8; 2];
        assert!(shared.read(Lsn(2), &mut out), "what it held before");
        assert_eq!(&out, b"cd");
        assert!(!shared.read(Lsn(4), &mut out), "the skipped batch");
        shared.append(&batch(8, b"ijkl", vec![]));
        assert!(!shared.read(Lsn(2), &mut out), "replaced by the next batch");
        assert!(!shared.read(Lsn(6), &mut out), "the skipped batch");
        assert!(shared.read(Lsn(9), &mut out));
        assert_eq!(&out, b"jk");
    }

    #[test]
    fn a_batch_elsewhere_replaces_it() {
        let mut t = Tail::new(Lsn(0));
        t.append(&batch(0, b"abcd", vec![]));
        t.append(&batch(1000, b"wxyz", vec![]));
        let mut out = [0u8; 2];
        assert!(!t.read(Lsn(0), &mut out));
        assert!(t.read(Lsn(1002), &mut out));
        assert_eq!(&out, b"yz");
    }
}
