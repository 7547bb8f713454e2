//! The key-value WAL record (resource manager 1): the operations of one
//! command, of one MULTI/EXEC, or of a run of one connection's pipelined
//! writes, applied together.
//!
//! An operation either replaces a key's state (`Del`, `Set`, `Put`: blind
//! writes; INCR is logged as the SET of its result) or changes a hash,
//! list or set in place (`HSet`, `Push`, `SRem`, ...), so an LPUSH logs the
//! pushed elements, not the whole list. Replay stays idempotent over a fuzzy
//! snapshot because a snapshot stores each key's LSN (the end of the last
//! record that changed it) and replay skips a record's operations on a key
//! whose LSN is at or past the record's end: PostgreSQL's page-LSN rule,
//! per key. docs/wal-format.md ("Key-value records") has the byte layout
//! and the argument.

use std::borrow::Cow;
use std::fmt;

use super::codec::{put_bytes, put_count, put_u64, DecodeError, Reader};
use super::value::{self, Value};

/// Resource manager id of key-value records in the WAL.
pub const RM_KV: u8 = 1;

/// `info` byte: which client command produced the record (for waldump and
/// traces only; replay does not depend on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum KvCommand {
    /// SET and its variants (SETNX, GETSET), APPEND.
    Set = 1,
    /// DEL, UNLINK, GETDEL.
    Del = 2,
    /// MSET.
    MSet = 3,
    /// INCR, DECR, INCRBY, DECRBY.
    Incr = 4,
    /// HSET, HDEL, HINCRBY, ...
    HashWrite = 5,
    /// LPUSH, LPOP, LSET, ...
    ListWrite = 6,
    /// SADD, SREM, SPOP.
    SetWrite = 7,
    /// EXPIRE, PERSIST, GETEX, ...
    Expire = 8,
    /// A whole MULTI/EXEC transaction.
    Exec = 9,
    /// FLUSHDB, FLUSHALL.
    Flush = 10,
    /// RENAME, RENAMENX.
    Rename = 11,
    /// The primary deleting keys whose expiry time passed.
    Expired = 12,
}

impl KvCommand {
    /// The command of a record's `info` byte; `None` for a byte no
    /// version wrote (a waldump prints it as a number).
    pub fn from_info(info: u8) -> Option<KvCommand> {
        use KvCommand::*;
        Some(match info {
            1 => Set,
            2 => Del,
            3 => MSet,
            4 => Incr,
            5 => HashWrite,
            6 => ListWrite,
            7 => SetWrite,
            8 => Expire,
            9 => Exec,
            10 => Flush,
            11 => Rename,
            12 => Expired,
            _ => return None,
        })
    }
}

/// A key, field or element: borrowed from the request (or the record
/// being replayed) where possible.
pub type Bytes<'a> = Cow<'a, [u8]>;

/// One operation of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    /// The key is gone (DEL, an expiry, the source of a RENAME).
    Del {
        /// The key removed.
        key: Bytes<'a>,
    },
    /// The key is this string, without expiry.
    Set {
        /// The key written.
        key: Bytes<'a>,
        /// Its new string value.
        value: Bytes<'a>,
    },
    /// The key is this value, expiring at `expire_ms` (Unix ms, 0 = never).
    Put {
        /// The key written.
        key: Bytes<'a>,
        /// Its whole new value, of any type.
        value: Value,
        /// Its expiry, Unix time in milliseconds; 0 = never.
        expire_ms: u64,
    },
    /// The key (if present) expires at `at_ms` (0 = never: PERSIST).
    Expire {
        /// The key whose expiry changes.
        key: Bytes<'a>,
        /// The new expiry, Unix time in milliseconds; 0 = never.
        at_ms: u64,
    },
    /// HSET: set these fields of the hash (creating it if absent).
    HSet {
        /// The hash's key.
        key: Bytes<'a>,
        /// `(field, value)` pairs in argument order.
        pairs: Vec<(Bytes<'a>, Bytes<'a>)>,
    },
    /// HDEL: remove these fields (the key goes with the last one).
    HDel {
        /// The hash's key.
        key: Bytes<'a>,
        /// The fields removed.
        fields: Vec<Bytes<'a>>,
    },
    /// LPUSH (`front`) or RPUSH, elements in argument order.
    Push {
        /// The list's key.
        key: Bytes<'a>,
        /// Push at the head (LPUSH) rather than the tail.
        front: bool,
        /// The elements pushed, in argument order.
        elems: Vec<Bytes<'a>>,
    },
    /// LPOP (`front`) or RPOP of up to `count` elements.
    Pop {
        /// The list's key.
        key: Bytes<'a>,
        /// Pop from the head (LPOP) rather than the tail.
        front: bool,
        /// How many elements at most.
        count: u64,
    },
    /// LSET at a resolved (non-negative) index.
    LSet {
        /// The list's key.
        key: Bytes<'a>,
        /// Index from the head, already resolved from a negative one.
        index: u64,
        /// The new element.
        elem: Bytes<'a>,
    },
    /// LREM with Redis's count rule.
    LRem {
        /// The list's key.
        key: Bytes<'a>,
        /// Positive: first `count` matches from the head; negative: from
        /// the tail; 0: all.
        count: i64,
        /// The element removed.
        elem: Bytes<'a>,
    },
    /// LTRIM, resolved: keep the elements at `start..end`.
    LTrim {
        /// The list's key.
        key: Bytes<'a>,
        /// First index kept.
        start: u64,
        /// One past the last index kept.
        end: u64,
    },
    /// SADD: add these members (creating the set if absent).
    SAdd {
        /// The set's key.
        key: Bytes<'a>,
        /// The members added.
        members: Vec<Bytes<'a>>,
    },
    /// SREM (and SPOP, with the members it picked): remove these members
    /// (the key goes with the last one).
    SRem {
        /// The set's key.
        key: Bytes<'a>,
        /// The members removed.
        members: Vec<Bytes<'a>>,
    },
    /// FLUSHALL: every key is gone.
    Flush,
}

mod kind {
    pub const DEL: u8 = 0;
    pub const SET: u8 = 1;
    pub const PUT: u8 = 2;
    pub const EXPIRE: u8 = 3;
    pub const HSET: u8 = 4;
    pub const HDEL: u8 = 5;
    pub const LPUSH: u8 = 6;
    pub const RPUSH: u8 = 7;
    pub const LPOP: u8 = 8;
    pub const RPOP: u8 = 9;
    pub const LSET: u8 = 10;
    pub const LREM: u8 = 11;
    pub const LTRIM: u8 = 12;
    pub const SADD: u8 = 13;
    pub const SREM: u8 = 14;
    pub const FLUSH: u8 = 15;
}

impl<'a> Op<'a> {
    /// The key it changes; `None` for FLUSHALL (every key).
    pub fn key(&self) -> Option<&[u8]> {
        use Op::*;
        match self {
            Del { key }
            | Set { key, .. }
            | Put { key, .. }
            | Expire { key, .. }
            | HSet { key, .. }
            | HDel { key, .. }
            | Push { key, .. }
            | Pop { key, .. }
            | LSet { key, .. }
            | LRem { key, .. }
            | LTrim { key, .. }
            | SAdd { key, .. }
            | SRem { key, .. } => Some(key),
            Flush => None,
        }
    }

    fn kind(&self) -> u8 {
        use Op::*;
        match self {
            Del { .. } => kind::DEL,
            Set { .. } => kind::SET,
            Put { .. } => kind::PUT,
            Expire { .. } => kind::EXPIRE,
            HSet { .. } => kind::HSET,
            HDel { .. } => kind::HDEL,
            Push { front: true, .. } => kind::LPUSH,
            Push { front: false, .. } => kind::RPUSH,
            Pop { front: true, .. } => kind::LPOP,
            Pop { front: false, .. } => kind::RPOP,
            LSet { .. } => kind::LSET,
            LRem { .. } => kind::LREM,
            LTrim { .. } => kind::LTRIM,
            SAdd { .. } => kind::SADD,
            SRem { .. } => kind::SREM,
            Flush => kind::FLUSH,
        }
    }

    /// Bytes it takes in a record.
    fn encoded_len(&self) -> usize {
        use Op::*;
        let list = |v: &[Bytes<'_>]| 4 + v.iter().map(|b| 4 + b.len()).sum::<usize>();
        let key = self.key().map_or(0, |k| 4 + k.len());
        1 + key
            + match self {
                Del { .. } | Flush => 0,
                Set { value, .. } => 4 + value.len(),
                Put { value, .. } => 8 + value::encoded_len(value),
                Expire { .. } | Pop { .. } => 8,
                HSet { pairs, .. } => {
                    4 + pairs
                        .iter()
                        .map(|(f, v)| 8 + f.len() + v.len())
                        .sum::<usize>()
                }
                HDel { fields: v, .. }
                | Push { elems: v, .. }
                | SAdd { members: v, .. }
                | SRem { members: v, .. } => list(v),
                LSet { elem, .. } | LRem { elem, .. } => 12 + elem.len(),
                LTrim { .. } => 16,
            }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        use Op::*;
        out.push(self.kind());
        if let Some(k) = self.key() {
            put_bytes(out, k);
        }
        let list = |out: &mut Vec<u8>, v: &[Bytes<'_>]| {
            put_count(out, v.len());
            for b in v {
                put_bytes(out, b);
            }
        };
        match self {
            Del { .. } | Flush => {}
            Set { value, .. } => put_bytes(out, value),
            Put {
                value, expire_ms, ..
            } => {
                put_u64(out, *expire_ms);
                value::encode(value, out);
            }
            Expire { at_ms, .. } => put_u64(out, *at_ms),
            HSet { pairs, .. } => {
                put_count(out, pairs.len());
                for (f, v) in pairs {
                    put_bytes(out, f);
                    put_bytes(out, v);
                }
            }
            HDel { fields: v, .. }
            | Push { elems: v, .. }
            | SAdd { members: v, .. }
            | SRem { members: v, .. } => list(out, v),
            Pop { count, .. } => put_u64(out, *count),
            LSet { index, elem, .. } => {
                put_u64(out, *index);
                put_bytes(out, elem);
            }
            LRem { count, elem, .. } => {
                put_u64(out, *count as u64);
                put_bytes(out, elem);
            }
            LTrim { start, end, .. } => {
                put_u64(out, *start);
                put_u64(out, *end);
            }
        }
    }

    fn decode(r: &mut Reader<'a>) -> Result<Op<'a>, DecodeError> {
        let kind = r.u8()?;
        if kind == kind::FLUSH {
            return Ok(Op::Flush);
        }
        let key = Cow::Borrowed(r.bytes()?);
        let b = |r: &mut Reader<'a>| r.bytes().map(Cow::Borrowed);
        let list = |r: &mut Reader<'a>| -> Result<Vec<Bytes<'a>>, DecodeError> {
            let n = r.count(4)?;
            (0..n).map(|_| r.bytes().map(Cow::Borrowed)).collect()
        };
        Ok(match kind {
            kind::DEL => Op::Del { key },
            kind::SET => Op::Set { key, value: b(r)? },
            kind::PUT => {
                let expire_ms = r.u64()?;
                Op::Put {
                    key,
                    expire_ms,
                    value: value::decode(r)?,
                }
            }
            kind::EXPIRE => Op::Expire {
                key,
                at_ms: r.u64()?,
            },
            kind::HSET => {
                let n = r.count(8)?;
                let pairs = (0..n)
                    .map(|_| Ok((b(r)?, b(r)?)))
                    .collect::<Result<_, DecodeError>>()?;
                Op::HSet { key, pairs }
            }
            kind::HDEL => Op::HDel {
                key,
                fields: list(r)?,
            },
            kind::LPUSH | kind::RPUSH => Op::Push {
                key,
                front: kind == kind::LPUSH,
                elems: list(r)?,
            },
            kind::LPOP | kind::RPOP => Op::Pop {
                key,
                front: kind == kind::LPOP,
                count: r.u64()?,
            },
            kind::LSET => Op::LSet {
                key,
                index: r.u64()?,
                elem: b(r)?,
            },
            kind::LREM => Op::LRem {
                key,
                count: r.u64()? as i64,
                elem: b(r)?,
            },
            kind::LTRIM => Op::LTrim {
                key,
                start: r.u64()?,
                end: r.u64()?,
            },
            kind::SADD => Op::SAdd {
                key,
                members: list(r)?,
            },
            kind::SREM => Op::SRem {
                key,
                members: list(r)?,
            },
            k => return Err(DecodeError(format!("unknown operation kind {k}"))),
        })
    }
}

/// A decoded key-value record, borrowing the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvRecord<'a> {
    /// Commit time on the primary's clock, microseconds since the Unix
    /// epoch.
    pub time_us: u64,
    /// The operations, applied in order and all at once at the record's
    /// LSN.
    pub ops: Vec<Op<'a>>,
}

/// A KV payload that does not decode. The WAL's CRC makes this a bug or a
/// version mismatch rather than disk corruption, but it is still an error,
/// never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed key-value record: {0}")]
pub struct KvDecodeError(pub String);

impl From<DecodeError> for KvDecodeError {
    fn from(e: DecodeError) -> Self {
        KvDecodeError(e.0)
    }
}

/// Encode a record: commit time, operation count, operations.
pub fn encode(time_us: u64, ops: &[Op<'_>]) -> Vec<u8> {
    let len = 12 + ops.iter().map(Op::encoded_len).sum::<usize>();
    let mut b = Vec::with_capacity(len);
    put_u64(&mut b, time_us);
    put_count(&mut b, ops.len());
    for op in ops {
        op.encode(&mut b);
    }
    debug_assert_eq!(b.len(), len, "encoded_len agrees with encode");
    b
}

/// Decode a record's payload (the inverse of [`encode`]); never panics
/// on bad input.
pub fn decode(payload: &[u8]) -> Result<KvRecord<'_>, KvDecodeError> {
    let mut r = Reader::new(payload);
    let time_us = r.u64()?;
    // Each op takes at least 1 byte (a FLUSH).
    let n = r.count(1)?;
    let ops = (0..n)
        .map(|_| Op::decode(&mut r))
        .collect::<Result<Vec<_>, _>>()?;
    if r.remaining() != 0 {
        return Err(KvDecodeError(format!("{} trailing bytes", r.remaining())));
    }
    Ok(KvRecord { time_us, ops })
}

/// Decode a record's operations onto the end of `ops` (redo decodes a
/// whole batch into one vector: no allocation per record). Returns the
/// commit time; on error `ops` is left as it was.
pub fn decode_into<'a>(payload: &'a [u8], ops: &mut Vec<Op<'a>>) -> Result<u64, KvDecodeError> {
    let start = ops.len();
    let result = decode_ops(payload, ops);
    if result.is_err() {
        ops.truncate(start);
    }
    result
}

fn decode_ops<'a>(payload: &'a [u8], ops: &mut Vec<Op<'a>>) -> Result<u64, KvDecodeError> {
    let mut r = Reader::new(payload);
    let time_us = r.u64()?;
    let n = r.count(1)?;
    for _ in 0..n {
        ops.push(Op::decode(&mut r)?);
    }
    if r.remaining() != 0 {
        return Err(KvDecodeError(format!("{} trailing bytes", r.remaining())));
    }
    Ok(time_us)
}

/// Decode a record's operations one at a time, handing each to `each`
/// with the offset of its first byte in the payload (where
/// [`decode_op_at`] finds it again): redo plans a batch on one thread and
/// applies it on another without keeping decoded operations that borrow
/// the payload. Checks the whole payload as [`decode`] does; on an error
/// `each` may have seen some of the record's operations already (the
/// caller drops what it kept of this record).
pub(crate) fn decode_each<'a>(
    payload: &'a [u8],
    mut each: impl FnMut(u32, Op<'a>),
) -> Result<u64, KvDecodeError> {
    let mut r = Reader::new(payload);
    let time_us = r.u64()?;
    let n = r.count(1)?;
    for _ in 0..n {
        let at = u32::try_from(r.position())
            .map_err(|_| KvDecodeError(format!("operation at byte {}", r.position())))?;
        each(at, Op::decode(&mut r)?);
    }
    if r.remaining() != 0 {
        return Err(KvDecodeError(format!("{} trailing bytes", r.remaining())));
    }
    Ok(time_us)
}

/// The operation starting at byte `at` of a record's payload (an offset
/// [`decode_each`] handed out).
pub(crate) fn decode_op_at(payload: &[u8], at: usize) -> Result<Op<'_>, KvDecodeError> {
    let mut r = Reader::new(payload.get(at..).unwrap_or_default());
    Ok(Op::decode(&mut r)?)
}

/// The key of the operation starting at byte `at` of a record's payload
/// (an offset [`decode_each`] handed out), without decoding the rest of
/// it; `None` for FLUSHALL (or bytes that do not decode).
pub(crate) fn key_at(payload: &[u8], at: usize) -> Option<&[u8]> {
    let mut r = Reader::new(payload.get(at..)?);
    if r.u8().ok()? == kind::FLUSH {
        return None;
    }
    r.bytes().ok()
}

impl fmt::Display for KvRecord<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, op) in self.ops.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            fmt::Display::fmt(op, f)?;
        }
        Ok(())
    }
}

impl fmt::Display for Op<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Op::*;
        let name = match self {
            Del { .. } => "DEL",
            Set { .. } => "SET",
            Put { .. } => "PUT",
            Expire { .. } => "EXPIRE",
            HSet { .. } => "HSET",
            HDel { .. } => "HDEL",
            Push { front: true, .. } => "LPUSH",
            Push { .. } => "RPUSH",
            Pop { front: true, .. } => "LPOP",
            Pop { .. } => "RPOP",
            LSet { .. } => "LSET",
            LRem { .. } => "LREM",
            LTrim { .. } => "LTRIM",
            SAdd { .. } => "SADD",
            SRem { .. } => "SREM",
            Flush => return f.write_str("FLUSHALL"),
        };
        let key = String::from_utf8_lossy(self.key().unwrap_or_default());
        match self {
            Set { value, .. } => write!(f, "{name} {key} ({} bytes)", value.len()),
            Put {
                value, expire_ms, ..
            } => write!(
                f,
                "{name} {key} ({}, expires {expire_ms})",
                value.kind().name()
            ),
            Expire { at_ms, .. } => write!(f, "{name} {key} {at_ms}"),
            HSet { pairs, .. } => write!(f, "{name} {key} ({} fields)", pairs.len()),
            HDel { fields: v, .. }
            | Push { elems: v, .. }
            | SAdd { members: v, .. }
            | SRem { members: v, .. } => write!(f, "{name} {key} ({} items)", v.len()),
            Pop { count, .. } => write!(f, "{name} {key} {count}"),
            LSet { index, .. } => write!(f, "{name} {key} {index}"),
            LRem { count, .. } => write!(f, "{name} {key} {count}"),
            LTrim { start, end, .. } => write!(f, "{name} {key} {start}..{end}"),
            _ => write!(f, "{name} {key}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::apply;
    use crate::store::value::Slot;
    use proptest::prelude::*;

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..12)
    }

    fn items() -> impl Strategy<Value = Vec<Vec<u8>>> {
        proptest::collection::vec(bytes(), 1..4)
    }

    /// Every kind of operation, owned.
    pub(crate) fn any_op() -> impl Strategy<Value = Op<'static>> {
        let c = |b: Vec<u8>| Cow::Owned(b);
        let cs = |v: Vec<Vec<u8>>| v.into_iter().map(Cow::Owned).collect::<Vec<_>>();
        prop_oneof![
            bytes().prop_map(move |k| Op::Del { key: c(k) }),
            (bytes(), bytes()).prop_map(move |(k, v)| Op::Set {
                key: c(k),
                value: c(v)
            }),
            (bytes(), items(), any::<u64>()).prop_map(move |(k, v, e)| Op::Put {
                key: c(k),
                value: apply::apply(
                    None,
                    &Op::Push {
                        key: Cow::Borrowed(b""),
                        front: false,
                        elems: cs(v)
                    }
                )
                .map(|s: Slot| s.value)
                .unwrap(),
                expire_ms: e
            }),
            (bytes(), any::<u64>()).prop_map(move |(k, at)| Op::Expire {
                key: c(k),
                at_ms: at
            }),
            (bytes(), proptest::collection::vec((bytes(), bytes()), 0..3)).prop_map(
                move |(k, p)| Op::HSet {
                    key: c(k),
                    pairs: p.into_iter().map(|(f, v)| (c(f), c(v))).collect()
                }
            ),
            (bytes(), items()).prop_map(move |(k, v)| Op::HDel {
                key: c(k),
                fields: cs(v)
            }),
            (bytes(), any::<bool>(), items()).prop_map(move |(k, front, v)| Op::Push {
                key: c(k),
                front,
                elems: cs(v)
            }),
            (bytes(), any::<bool>(), any::<u64>()).prop_map(move |(k, front, n)| Op::Pop {
                key: c(k),
                front,
                count: n
            }),
            (bytes(), any::<u64>(), bytes()).prop_map(move |(k, i, e)| Op::LSet {
                key: c(k),
                index: i,
                elem: c(e)
            }),
            (bytes(), any::<i64>(), bytes()).prop_map(move |(k, n, e)| Op::LRem {
                key: c(k),
                count: n,
                elem: c(e)
            }),
            (bytes(), any::<u64>(), any::<u64>()).prop_map(move |(k, s, e)| Op::LTrim {
                key: c(k),
                start: s,
                end: e
            }),
            (bytes(), items()).prop_map(move |(k, v)| Op::SAdd {
                key: c(k),
                members: cs(v)
            }),
            (bytes(), items()).prop_map(move |(k, v)| Op::SRem {
                key: c(k),
                members: cs(v)
            }),
            Just(Op::Flush),
        ]
    }

    proptest! {
        #[test]
        fn round_trips(time in any::<u64>(), ops in proptest::collection::vec(any_op(), 0..8)) {
            let payload = encode(time, &ops);
            let rec = decode(&payload).unwrap();
            prop_assert_eq!(rec.time_us, time);
            prop_assert_eq!(rec.ops, ops);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn truncation_is_an_error() {
        let ops = [
            Op::Set {
                key: Cow::Borrowed(b"k"),
                value: Cow::Borrowed(b"value"),
            },
            Op::HSet {
                key: Cow::Borrowed(b"h"),
                pairs: vec![(Cow::Borrowed(b"f"), Cow::Borrowed(b"v"))],
            },
        ];
        let full = encode(1, &ops);
        for cut in 0..full.len() {
            assert!(decode(&full[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = full.clone();
        long.push(0);
        assert!(decode(&long).is_err());
    }

    #[test]
    fn a_string_record_keeps_the_first_format() {
        // Kinds 0 and 1 and the header are the format's first version:
        // WAL written before hashes, lists and sets existed still decodes.
        let b = [
            7, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1, 1, 0, 0, 0, b'k', 1, 0, 0, 0, b'v', 0, 1, 0, 0,
            0, b'd',
        ];
        let rec = decode(&b).unwrap();
        assert_eq!(rec.to_string(), "SET k (1 bytes), DEL d");
    }
}
