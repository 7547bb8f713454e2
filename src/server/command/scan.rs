//! SCAN's cursors: a bounded table from cursor to the key where a scan
//! resumes.
//!
//! # Why a table
//! Redis's cursor is a position in its hash table, walked in reverse-binary
//! bucket order so it survives rehashing. walrep's store is an ordered map:
//! its natural position is a key, and a key does not fit in the 64-bit
//! number clients send back (redis-cli reads it with strtoull). The
//! stateless alternatives fail Redis's guarantee or its bounds:
//! - the rank of the key: deleting keys before it shifts every rank down,
//!   so keys present the whole time would be skipped;
//! - the key's first 8 bytes: a call must make progress, so when more than
//!   COUNT keys share those bytes (`session:...`) it would have to return
//!   all of them at once, unbounded.
//!
//! So a SCAN call examines up to COUNT keys after the last key the previous
//! call examined, and the node remembers that key under a fresh cursor.
//! Every key present for the whole scan is returned (each call resumes
//! strictly after the last key examined, in key order; keys added or
//! deleted meanwhile only change what the walk meets later), and a key is
//! returned at most once per scan unless a call is retried.
//!
//! The table is bounded in positions and in bytes. When full it forgets
//! the positions already resumed from first (a client may still retry a
//! call whose reply it lost, while there is room), then the oldest. A
//! cursor the node does not know (forgotten, from before a restart, from
//! another node) gets an error, never a silent restart: a client that
//! restarted silently could loop forever. Cursors are drawn from a
//! per-process random sequence, so one from another process is almost
//! surely unknown rather than someone else's position.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// Positions remembered at most.
pub const MAX_SCAN_CURSORS: usize = 16_384;
/// Bytes of resume keys remembered at most (a single larger key is still
/// remembered, alone).
pub const MAX_SCAN_CURSOR_BYTES: usize = 64 << 20;

/// The node's SCAN positions, shared by every connection (a client may
/// continue a scan on another connection, as with Redis).
#[derive(Debug)]
pub struct ScanCursors {
    table: Mutex<Table>,
}

#[derive(Debug)]
struct Table {
    seed: u64,
    /// Counts positions issued and resumed: their age.
    seq: u64,
    slots: HashMap<u64, Slot>,
    /// Eviction order: positions already resumed from (`false`) first,
    /// then by age.
    order: BTreeMap<(bool, u64), u64>,
    bytes: usize,
}

#[derive(Debug)]
struct Slot {
    key: Vec<u8>,
    /// Not resumed from yet.
    fresh: bool,
    seq: u64,
}

impl Default for ScanCursors {
    fn default() -> Self {
        ScanCursors::new()
    }
}

impl ScanCursors {
    pub fn new() -> ScanCursors {
        ScanCursors {
            table: Mutex::new(Table {
                seed: rand::random(),
                seq: 0,
                slots: HashMap::new(),
                order: BTreeMap::new(),
                bytes: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // Every update leaves the table consistent before it can panic.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remember `key` as where a scan resumes (just after it); returns its
    /// cursor: never 0, below 2^63 (clients that read it as a signed
    /// number work too).
    pub fn issue(&self, key: Vec<u8>) -> u64 {
        let mut t = self.lock();
        while !t.slots.is_empty()
            && (t.slots.len() >= MAX_SCAN_CURSORS || t.bytes + key.len() > MAX_SCAN_CURSOR_BYTES)
        {
            t.evict_one();
        }
        let cursor = loop {
            t.seq += 1;
            let c = mix(t.seed.wrapping_add(t.seq)) >> 1;
            if c != 0 && !t.slots.contains_key(&c) {
                break c;
            }
        };
        let seq = t.seq;
        t.bytes += key.len();
        t.order.insert((true, seq), cursor);
        t.slots.insert(
            cursor,
            Slot {
                key,
                fresh: true,
                seq,
            },
        );
        cursor
    }

    /// The key a scan resumes after, if `cursor` is known.
    pub fn resume(&self, cursor: u64) -> Option<Vec<u8>> {
        let mut t = self.lock();
        t.seq += 1;
        let seq = t.seq;
        let slot = t.slots.get_mut(&cursor)?;
        let old = (slot.fresh, slot.seq);
        slot.fresh = false;
        slot.seq = seq;
        let key = slot.key.clone();
        t.order.remove(&old);
        t.order.insert((false, seq), cursor);
        Some(key)
    }

    /// Positions remembered now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }
}

impl Table {
    fn evict_one(&mut self) {
        if let Some((_, cursor)) = self.order.pop_first() {
            if let Some(slot) = self.slots.remove(&cursor) {
                self.bytes -= slot.key.len();
            }
        }
    }
}

/// SplitMix64's finalizer: a bijection on u64 that scatters a counter.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_resume_where_they_were_issued() {
        let c = ScanCursors::new();
        let a = c.issue(b"apple".to_vec());
        let b = c.issue(b"banana".to_vec());
        assert!(a != 0 && b != 0 && a != b);
        assert!(a < 1 << 63 && b < 1 << 63);
        assert_eq!(c.resume(b).as_deref(), Some(&b"banana"[..]));
        // A retried call resumes from the same place.
        assert_eq!(c.resume(b).as_deref(), Some(&b"banana"[..]));
        assert_eq!(c.resume(a).as_deref(), Some(&b"apple"[..]));
        assert_eq!(c.resume(a ^ 1), None);
    }

    #[test]
    fn a_full_table_forgets_spent_positions_first_then_the_oldest() {
        let c = ScanCursors::new();
        let cursors: Vec<u64> = (0..MAX_SCAN_CURSORS)
            .map(|i| c.issue(i.to_be_bytes().to_vec()))
            .collect();
        let (first, spent) = (cursors[0], cursors[100]);
        assert!(c.resume(spent).is_some());
        let newer = c.issue(b"x".to_vec());
        assert_eq!(c.len(), MAX_SCAN_CURSORS);
        assert_eq!(c.resume(spent), None, "the spent position goes first");
        assert!(c.resume(first).is_some(), "unspent ones stay");
        c.issue(b"y".to_vec());
        // `first` is spent now too, so it goes; then the oldest fresh one.
        assert_eq!(c.resume(first), None);
        c.issue(b"z".to_vec());
        assert_eq!(c.resume(cursors[1]), None);
        assert!(c.resume(newer).is_some());
    }

    #[test]
    fn the_table_is_bounded_in_bytes() {
        let c = ScanCursors::new();
        let big = vec![b'k'; MAX_SCAN_CURSOR_BYTES / 2 + 1];
        let a = c.issue(big.clone());
        let b = c.issue(big.clone());
        assert_eq!(c.resume(a), None, "two halves do not fit");
        assert!(c.resume(b).is_some());
        // A key larger than the bound is still remembered, alone.
        let huge = c.issue(vec![0; MAX_SCAN_CURSOR_BYTES + 1]);
        assert_eq!(c.len(), 1);
        assert!(c.resume(huge).is_some());
    }
}
