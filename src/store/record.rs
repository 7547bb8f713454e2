//! The key-value WAL record (resource manager 1): a list of blind writes.
//!
//! Every KV record sets keys to full values or deletes them; nothing is
//! relative (INCR is logged as the SET of its result). Replaying a record
//! twice, or over a snapshot that already contains it, therefore gives the
//! same store: that is what lets checkpoints and restartpoints be fuzzy.
//!
//! Payload layout (little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 8 | commit time, microseconds since the Unix epoch (replay lag in time) |
//! | 4 | number of operations n |
//! | n × | op: 1 byte kind (0 = delete, 1 = set), 4 bytes key length, key, and for a set 4 bytes value length, value |

use std::fmt;

/// Resource manager id of key-value records in the WAL.
pub const RM_KV: u8 = 1;

/// `info` byte: which client command produced the record (for waldump and
/// traces only; replay does not depend on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum KvCommand {
    Set = 1,
    Del = 2,
    MSet = 3,
    Incr = 4,
}

impl KvCommand {
    pub fn from_info(info: u8) -> Option<KvCommand> {
        Some(match info {
            1 => KvCommand::Set,
            2 => KvCommand::Del,
            3 => KvCommand::MSet,
            4 => KvCommand::Incr,
            _ => return None,
        })
    }
}

/// One blind write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvOp {
    Set { key: Vec<u8>, value: Vec<u8> },
    Del { key: Vec<u8> },
}

impl KvOp {
    pub fn key(&self) -> &[u8] {
        match self {
            KvOp::Set { key, .. } | KvOp::Del { key } => key,
        }
    }
}

/// A decoded key-value record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvRecord {
    pub time_us: u64,
    pub ops: Vec<KvOp>,
}

/// A KV payload that does not decode. The WAL's CRC makes this a bug or a
/// version mismatch rather than disk corruption, but it is still an error,
/// never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed key-value record: {0}")]
pub struct KvDecodeError(pub String);

/// Encode ops borrowed from the caller (no copies of keys and values).
pub fn encode(time_us: u64, ops: &[(&[u8], Option<&[u8]>)]) -> Vec<u8> {
    let len: usize = 12
        + ops
            .iter()
            .map(|(k, v)| 5 + k.len() + v.map_or(0, |v| 4 + v.len()))
            .sum::<usize>();
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&time_us.to_le_bytes());
    b.extend_from_slice(&(ops.len() as u32).to_le_bytes());
    for (k, v) in ops {
        b.push(v.is_some() as u8);
        b.extend_from_slice(&(k.len() as u32).to_le_bytes());
        b.extend_from_slice(k);
        if let Some(v) = v {
            b.extend_from_slice(&(v.len() as u32).to_le_bytes());
            b.extend_from_slice(v);
        }
    }
    b
}

pub fn decode(payload: &[u8]) -> Result<KvRecord, KvDecodeError> {
    let mut r = Reader { b: payload, at: 0 };
    let time_us = r.u64()?;
    let n = r.u32()? as usize;
    // Each op takes at least 5 bytes: refuse counts the payload cannot hold
    // before allocating for them.
    if n > payload.len() / 5 {
        return Err(KvDecodeError(format!(
            "{n} operations in {} bytes",
            payload.len()
        )));
    }
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        let kind = r.u8()?;
        let key = r.bytes()?.to_vec();
        ops.push(match kind {
            0 => KvOp::Del { key },
            1 => KvOp::Set {
                key,
                value: r.bytes()?.to_vec(),
            },
            k => return Err(KvDecodeError(format!("unknown operation kind {k}"))),
        });
    }
    if r.at != payload.len() {
        return Err(KvDecodeError(format!(
            "{} trailing bytes",
            payload.len() - r.at
        )));
    }
    Ok(KvRecord { time_us, ops })
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], KvDecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| {
                KvDecodeError(format!("truncated at byte {} (wanted {n} more)", self.at))
            })?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, KvDecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, KvDecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, KvDecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn bytes(&mut self) -> Result<&'a [u8], KvDecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

impl fmt::Display for KvRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, op) in self.ops.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match op {
                KvOp::Set { key, value } => write!(
                    f,
                    "SET {} ({} bytes)",
                    String::from_utf8_lossy(key),
                    value.len()
                )?,
                KvOp::Del { key } => write!(f, "DEL {}", String::from_utf8_lossy(key))?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(time in any::<u64>(), ops in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..40), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..80))), 0..8)) {
            let borrowed: Vec<(&[u8], Option<&[u8]>)> = ops.iter().map(|(k, v)| (k.as_slice(), v.as_deref())).collect();
            let rec = decode(&encode(time, &borrowed)).unwrap();
            prop_assert_eq!(rec.time_us, time);
            prop_assert_eq!(rec.ops.len(), ops.len());
            for (op, (k, v)) in rec.ops.iter().zip(&ops) {
                match (op, v) {
                    (KvOp::Set { key, value }, Some(v)) => { prop_assert_eq!(key, k); prop_assert_eq!(value, v); }
                    (KvOp::Del { key }, None) => prop_assert_eq!(key, k),
                    _ => prop_assert!(false, "kind mismatch"),
                }
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn truncation_is_an_error() {
        let full = encode(1, &[(b"k", Some(b"value"))]);
        for cut in 0..full.len() {
            assert!(decode(&full[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = full.clone();
        long.push(0);
        assert!(decode(&long).is_err());
    }
}
