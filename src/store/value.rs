//! What a key holds: a string, a hash, a list or a set, with its expiry
//! time; how each WAL operation changes it; and its byte encoding (shared
//! by the `Put` operation of WAL records and by snapshot chunks).
//!
//! Collections are persistent structures (`imbl`): a new version of a key
//! shares all but the changed path with the version readers still see, so
//! keeping the released version beside a pending one costs O(log n), and
//! an LPUSH onto a list of millions stays cheap.

use std::hash::Hasher;
use std::sync::Arc;

use super::codec::{put_bytes, put_count, DecodeError, Reader};

/// A string, field, list element or member.
pub type Elem = Arc<[u8]>;

/// A list: a persistent deque (RRB vector).
pub type List = imbl::Vector<Elem>;
/// A hash: field to value.
pub type Hash = HashedMap<Elem>;
/// A set of members.
pub type Set = HashedMap<()>;

/// Bytes kept inline up to this length: a [`Str`] of at most this many
/// bytes needs no heap allocation (the common short key and short value).
pub const INLINE_LEN: usize = 22;

/// A byte string stored inline when short (no allocation, no pointer to
/// follow) and shared behind a reference count otherwise (so a clone of a
/// large value is O(1)). 24 bytes either way: the store's keys and string
/// values, where the per-key cost is what matters.
#[derive(Clone)]
pub struct Str(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, buf: [u8; INLINE_LEN] },
    Shared(Arc<[u8]>),
}

impl Str {
    /// A copy of `b`: inline when it fits.
    pub fn new(b: &[u8]) -> Str {
        if b.len() <= INLINE_LEN {
            let mut buf = [0; INLINE_LEN];
            buf[..b.len()].copy_from_slice(b);
            return Str(Repr::Inline {
                len: b.len() as u8,
                buf,
            });
        }
        Str(Repr::Shared(Arc::from(b)))
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, buf } => &buf[..usize::from(*len)],
            Repr::Shared(b) => b,
        }
    }

    /// Heap bytes this string owns beyond its 24 (0 when inline; shared
    /// bytes counted in full), for memory accounting.
    pub fn heap_len(&self) -> usize {
        match &self.0 {
            Repr::Inline { .. } => 0,
            Repr::Shared(b) => 16 + b.len(),
        }
    }
}

impl std::ops::Deref for Str {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for Str {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl std::borrow::Borrow<[u8]> for Str {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl From<&[u8]> for Str {
    fn from(b: &[u8]) -> Str {
        Str::new(b)
    }
}

impl PartialEq for Str {
    fn eq(&self, other: &Str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Str {}

impl PartialOrd for Str {
    fn partial_cmp(&self, other: &Str) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Byte order, as `[u8]`'s: a map keyed by `Str` is looked up by `&[u8]`.
///
/// Two inline strings compare as big-endian words, first to last, and
/// then their lengths, without a call to `memcmp`: the comparisons of a key
/// lookup in the store's B-tree (redo's and the writers') were a quarter of
/// redo's instructions. Same order as the bytes': the buffers are
/// zero-padded, so where one string is a prefix of the other the padded
/// buffers compare equal or the shorter lower, and the length then puts
/// the shorter first.
impl Ord for Str {
    fn cmp(&self, other: &Str) -> std::cmp::Ordering {
        match (&self.0, &other.0) {
            (Repr::Inline { len: a, buf: x }, Repr::Inline { len: b, buf: y }) => {
                cmp_inline(x, y).then(a.cmp(b))
            }
            _ => self.as_bytes().cmp(other.as_bytes()),
        }
    }
}

/// Two inline buffers in byte order, a word at a time (most keys differ
/// in the first or second word). The last word overlaps the one before:
/// its first bytes are equal by then, so they do not change the order.
#[inline]
fn cmp_inline(x: &[u8; INLINE_LEN], y: &[u8; INLINE_LEN]) -> std::cmp::Ordering {
    const LAST: usize = INLINE_LEN - 8;
    const _: () = assert!(INLINE_LEN > 16 && INLINE_LEN <= 24);
    let word = |b: &[u8; INLINE_LEN], at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[at..at + 8]);
        u64::from_be_bytes(w)
    };
    for at in [0, 8, LAST] {
        let (p, q) = (word(x, at), word(y, at));
        if p != q {
            return p.cmp(&q);
        }
    }
    std::cmp::Ordering::Equal
}

impl std::hash::Hash for Str {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.as_bytes().hash(h)
    }
}

impl std::fmt::Debug for Str {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// A key's value. Cloning is O(1) (reference counts, or 24 inline bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A string (Redis's strings are binary-safe bytes; INCR parses them).
    Str(Str),
    /// A hash of fields to values (HSET, HGET, ...).
    Hash(Arc<Hash>),
    /// A list (LPUSH, LRANGE, ...), persistent so a clone shares it.
    List(Arc<List>),
    /// A set of members (SADD, SMEMBERS, ...).
    Set(Arc<Set>),
}

/// Redis's value types, as TYPE names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// [`Value::Str`]. The discriminants are the type bytes of the
    /// checkpoint and WAL encodings: never renumber them.
    String = 0,
    /// [`Value::Hash`].
    Hash = 1,
    /// [`Value::List`].
    List = 2,
    /// [`Value::Set`].
    Set = 3,
}

impl Kind {
    /// The name TYPE replies with (`"string"`, `"hash"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Kind::String => "string",
            Kind::Hash => "hash",
            Kind::List => "list",
            Kind::Set => "set",
        }
    }
}

impl Value {
    /// Which of Redis's types this is (TYPE, WRONGTYPE checks).
    pub fn kind(&self) -> Kind {
        match self {
            Value::Str(_) => Kind::String,
            Value::Hash(_) => Kind::Hash,
            Value::List(_) => Kind::List,
            Value::Set(_) => Kind::Set,
        }
    }

    /// A string value holding a copy of `b`.
    pub fn string(b: &[u8]) -> Value {
        Value::Str(Str::new(b))
    }
}

/// A key's state: its value and when it expires (Unix time in ms, 0 =
/// never).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// What the key holds.
    pub value: Value,
    /// When the key expires, Unix time in milliseconds; 0 = never
    /// (Redis's PEXPIREAT time, as PEXPIRETIME reports it).
    pub expire_ms: u64,
}

impl Slot {
    /// A slot holding `value` with no expiry.
    pub fn new(value: Value) -> Slot {
        Slot {
            value,
            expire_ms: 0,
        }
    }

    /// Whether its time has passed at `now_ms`: readers treat it as gone.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expire_ms != 0 && self.expire_ms <= now_ms
    }
}

/// The 64-bit hash that orders a hash's fields and a set's members. Fixed
/// (std's SipHash-1-3 with zero keys), so every node and every run orders
/// them alike: HSCAN and SSCAN cursors are positions in this order.
pub fn member_hash(b: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    h.write(b);
    h.finish()
}

/// A persistent map from byte strings, ordered by [`member_hash`]: the
/// hash and set types. Ordering by hash (a B-tree keyed by it, with the
/// rare colliding members in one bucket) makes three things cheap that a
/// hash table would not give a persistent structure: a scan cursor that
/// is just a hash value, a random member (the first at or after a random
/// hash), and versions that share structure.
#[derive(Debug, Clone)]
pub struct HashedMap<V: Clone> {
    buckets: imbl::OrdMap<u64, Bucket<V>>,
    len: usize,
}

/// The members of one hash value: almost always one.
#[derive(Debug, Clone)]
enum Bucket<V> {
    One((Elem, V)),
    Many(Arc<Vec<(Elem, V)>>),
}

impl<V: Clone> Bucket<V> {
    fn entries(&self) -> &[(Elem, V)] {
        match self {
            Bucket::One(pair) => std::slice::from_ref(pair),
            Bucket::Many(v) => v,
        }
    }
}

impl<V: Clone> Default for HashedMap<V> {
    fn default() -> Self {
        HashedMap {
            buckets: imbl::OrdMap::new(),
            len: 0,
        }
    }
}

impl<V: Clone + PartialEq> PartialEq for HashedMap<V> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl<V: Clone + Eq> Eq for HashedMap<V> {}

impl<V: Clone> HashedMap<V> {
    /// Number of members (HLEN, SCARD).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no members; an empty hash or set is removed
    /// with its key, as Redis does.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value of `member` (a hash's field), if present.
    pub fn get(&self, member: &[u8]) -> Option<&V> {
        let bucket = self.buckets.get(&member_hash(member))?;
        bucket
            .entries()
            .iter()
            .find(|(m, _)| &**m == member)
            .map(|(_, v)| v)
    }

    /// Whether `member` is present (SISMEMBER, HEXISTS).
    pub fn contains(&self, member: &[u8]) -> bool {
        self.get(member).is_some()
    }

    /// Insert or replace; true if `member` is new. One descent of the
    /// tree when the hash is new (almost always); colliding members are
    /// merged into one bucket.
    pub fn insert(&mut self, member: &[u8], value: V) -> bool {
        let h = member_hash(member);
        let pair = (Elem::from(member), value);
        let Some(old) = self.buckets.insert(h, Bucket::One(pair.clone())) else {
            self.len += 1;
            return true;
        };
        let mut entries = old.entries().to_vec();
        let fresh = match entries.iter_mut().find(|(m, _)| &**m == member) {
            Some(e) => {
                e.1 = pair.1;
                false
            }
            None => {
                entries.push(pair);
                true
            }
        };
        if entries.len() > 1 {
            self.buckets.insert(h, bucket_of(entries));
        }
        self.len += usize::from(fresh);
        fresh
    }

    /// Remove `member`; true if it was there.
    pub fn remove(&mut self, member: &[u8]) -> bool {
        let h = member_hash(member);
        let Some(old) = self.buckets.remove(&h) else {
            return false;
        };
        let mut entries = old.entries().to_vec();
        let found = entries.iter().position(|(m, _)| &**m == member);
        if let Some(i) = found {
            entries.remove(i);
            self.len -= 1;
        }
        if !entries.is_empty() {
            self.buckets.insert(h, bucket_of(entries));
        }
        found.is_some()
    }

    /// Every member, in hash order.
    pub fn iter(&self) -> impl Iterator<Item = (&Elem, &V)> + '_ {
        self.buckets
            .values()
            .flat_map(|b| b.entries().iter().map(|(m, v)| (m, v)))
    }

    /// Members from hash position `from` on (a scan step): up to `limit`
    /// buckets, and the position after the last one (`None` at the end).
    /// A bucket is never split, so a resumed scan repeats nothing.
    pub fn scan_from(&self, from: u64, limit: usize) -> (Vec<(&Elem, &V)>, Option<u64>) {
        let mut out = Vec::new();
        let mut range = self.buckets.range(from..);
        for (_, b) in range.by_ref().take(limit.max(1)) {
            out.extend(b.entries().iter().map(|(m, v)| (m, v)));
        }
        (out, range.next().map(|(h, _)| *h))
    }

    /// A member chosen by `r` (a random number): the first at or after hash
    /// `r`, wrapping around. Each member's chance is the width of the hash
    /// gap before it: random, not exactly uniform (as Redis's is not).
    pub fn pick(&self, r: u64) -> Option<(&Elem, &V)> {
        let (_, b) = self
            .buckets
            .range(r..)
            .next()
            .or_else(|| self.buckets.iter().next())?;
        let entries = b.entries();
        let (m, v) = &entries[(r as usize) % entries.len()];
        Some((m, v))
    }
}

fn bucket_of<V: Clone>(mut entries: Vec<(Elem, V)>) -> Bucket<V> {
    match entries.len() {
        1 => Bucket::One(entries.pop().expect("one entry")),
        _ => Bucket::Many(Arc::new(entries)),
    }
}

/// LREM: remove the first `count` elements equal to `elem` (from the tail
/// when negative; all when 0).
pub fn list_remove(l: &mut List, count: i64, elem: &[u8]) {
    let limit = match count {
        0 => usize::MAX,
        c => usize::try_from(c.unsigned_abs()).unwrap_or(usize::MAX),
    };
    let matches = |e: &Elem| &**e == elem;
    let mut hits: Vec<usize> = if count >= 0 {
        l.iter()
            .enumerate()
            .filter(|(_, e)| matches(e))
            .map(|(i, _)| i)
            .take(limit)
            .collect()
    } else {
        l.iter()
            .enumerate()
            .rev()
            .filter(|(_, e)| matches(e))
            .map(|(i, _)| i)
            .take(limit)
            .collect()
    };
    // Remove from the back so earlier indexes stay valid.
    hits.sort_unstable_by(|a, b| b.cmp(a));
    for i in hits {
        l.remove(i);
    }
}

/// How many elements LREM removes (the same rule as [`list_remove`]).
pub fn list_remove_count(l: &List, count: i64, elem: &[u8]) -> usize {
    let limit = match count {
        0 => usize::MAX,
        c => usize::try_from(c.unsigned_abs()).unwrap_or(usize::MAX),
    };
    l.iter().filter(|e| &***e == elem).count().min(limit)
}

const TAG_STRING: u8 = Kind::String as u8;
const TAG_HASH: u8 = Kind::Hash as u8;
const TAG_LIST: u8 = Kind::List as u8;
const TAG_SET: u8 = Kind::Set as u8;

/// Encode a value: a type byte, then a string's bytes or a collection's
/// count and items (docs/wal-format.md, "Values").
pub(crate) fn encode(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Str(s) => {
            out.push(TAG_STRING);
            put_bytes(out, s);
        }
        Value::Hash(h) => {
            out.push(TAG_HASH);
            put_count(out, h.len());
            for (f, v) in h.iter() {
                put_bytes(out, f);
                put_bytes(out, v);
            }
        }
        Value::List(l) => {
            out.push(TAG_LIST);
            put_count(out, l.len());
            for e in l.iter() {
                put_bytes(out, e);
            }
        }
        Value::Set(s) => {
            out.push(TAG_SET);
            put_count(out, s.len());
            for (m, _) in s.iter() {
                put_bytes(out, m);
            }
        }
    }
}

/// The encoded size of a value, to size buffers.
pub(crate) fn encoded_len(v: &Value) -> usize {
    1 + match v {
        Value::Str(s) => 4 + s.len(),
        Value::Hash(h) => 4 + h.iter().map(|(f, v)| 8 + f.len() + v.len()).sum::<usize>(),
        Value::List(l) => 4 + l.iter().map(|e| 4 + e.len()).sum::<usize>(),
        Value::Set(s) => 4 + s.iter().map(|(m, _)| 4 + m.len()).sum::<usize>(),
    }
}

/// Decode a value written by [`encode`]. An empty collection is refused:
/// the store never holds one (the key is deleted instead).
pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Value, DecodeError> {
    let tag = r.u8()?;
    if tag == TAG_STRING {
        return Ok(Value::string(r.bytes()?));
    }
    let at = r.position();
    let n = r.count(4)?;
    if n == 0 {
        return Err(DecodeError(format!("empty collection at byte {at}")));
    }
    Ok(match tag {
        TAG_HASH => {
            let mut h = Hash::default();
            for _ in 0..n {
                let f = r.bytes()?;
                let v = r.bytes()?;
                h.insert(f, Elem::from(v));
            }
            Value::Hash(Arc::new(h))
        }
        TAG_LIST => {
            let mut l = List::new();
            for _ in 0..n {
                l.push_back(Elem::from(r.bytes()?));
            }
            Value::List(Arc::new(l))
        }
        TAG_SET => {
            let mut s = Set::default();
            for _ in 0..n {
                s.insert(r.bytes()?, ());
            }
            Value::Set(Arc::new(s))
        }
        t => return Err(DecodeError(format!("unknown value type {t}"))),
    })
}

/// Step over a value written by [`encode`], refusing exactly what
/// [`decode`] refuses, without building it (a base backup's check of a
/// copied chunk only counts its entries).
pub(crate) fn skip(r: &mut Reader<'_>) -> Result<(), DecodeError> {
    let tag = r.u8()?;
    if tag == TAG_STRING {
        return r.bytes().map(drop);
    }
    let at = r.position();
    let n = r.count(4)?;
    if n == 0 {
        return Err(DecodeError(format!("empty collection at byte {at}")));
    }
    let per_item = match tag {
        TAG_HASH => 2,
        TAG_LIST | TAG_SET => 1,
        t => return Err(DecodeError(format!("unknown value type {t}"))),
    };
    for _ in 0..n * per_item {
        r.bytes()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Bytes around the inline limit, rich in zeroes and shared prefixes,
    /// where padded comparison could go wrong.
    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(255u8)], 0..30)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// `Str`'s order is its bytes' (the store's map is looked up by
        /// `&[u8]` and by `Str` alike).
        #[test]
        fn str_orders_as_its_bytes(a in bytes(), b in bytes()) {
            prop_assert_eq!(Str::new(&a).cmp(&Str::new(&b)), a.cmp(&b));
            prop_assert_eq!(Str::new(&a) == Str::new(&b), a == b);
        }
    }

    #[test]
    fn buckets_keep_colliding_members_apart() {
        // Two members in one bucket, as a hash collision would put them.
        let mut s = Set::default();
        s.insert(b"a", ());
        let h = member_hash(b"a");
        let (k, _) = s.buckets.get(&h).unwrap().entries()[0].clone();
        s.buckets
            .insert(h, bucket_of(vec![(k, ()), (Elem::from(&b"b"[..]), ())]));
        s.len = 2;
        assert!(
            s.contains(b"a") && s.get(b"b").is_none(),
            "b lives under a's hash here"
        );
        assert!(!s.insert(b"a", ()), "a is there");
        assert_eq!(s.len(), 2);
        assert_eq!(s.buckets.get(&h).unwrap().entries().len(), 2);
        assert!(s.remove(b"a"));
        assert_eq!(s.len(), 1);
        assert!(!s.remove(b"a"));
        assert_eq!(s.buckets.get(&h).unwrap().entries().len(), 1);
        let mut m = Hash::default();
        assert!(m.insert(b"f", Elem::from(&b"1"[..])));
        assert!(!m.insert(b"f", Elem::from(&b"2"[..])));
        assert_eq!(m.get(b"f").map(|v| v.to_vec()), Some(b"2".to_vec()));
        assert_eq!(m.len(), 1);
    }
}
