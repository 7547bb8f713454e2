//! The little-endian byte codec that WAL records and snapshot chunks share:
//! a bounds-checked reader (bad input is an error, never a panic) and the
//! matching writers.

/// Bytes that do not decode: truncated, a count larger than what follows,
/// an unknown tag. The message says what and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

/// Reads fields from a byte slice, checking every length against what is
/// left.
pub struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub fn new(b: &'a [u8]) -> Reader<'a> {
        Reader { b, at: 0 }
    }

    /// Offset of the next byte.
    pub fn position(&self) -> usize {
        self.at
    }

    pub fn remaining(&self) -> usize {
        self.b.len() - self.at
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| {
                DecodeError(format!("truncated at byte {} (wanted {n} more)", self.at))
            })?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    /// A length-prefixed (u32) byte string.
    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// A count of items that take at least `min_item_len` bytes each:
    /// refused when what is left cannot hold them, so a garbage count
    /// never makes the decoder allocate for it.
    pub fn count(&mut self, min_item_len: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item_len.max(1)) > self.remaining() {
            return Err(DecodeError(format!(
                "{n} items cannot fit in the {} bytes left at byte {}",
                self.remaining(),
                self.at
            )));
        }
        Ok(n)
    }
}

pub fn put_u32(out: &mut Vec<u8>, n: u32) {
    out.extend_from_slice(&n.to_le_bytes());
}

pub fn put_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_le_bytes());
}

/// A length-prefixed byte string. Keys and values are at most
/// `proto_max_bulk_len` (< 4 GiB), so the length fits.
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_count(out, b.len());
    out.extend_from_slice(b);
}

/// A count or length as u32. No collection or string can reach 2^32
/// items in a record or snapshot (a record is at most 1 GiB, a string at
/// most `proto_max_bulk_len`); reaching it is a bug, so it stops here
/// rather than write a wrong length.
pub fn put_count(out: &mut Vec<u8>, n: usize) {
    let n = u32::try_from(n).expect("a count or length below 2^32");
    put_u32(out, n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_was_written_and_refuses_overruns() {
        let mut b = Vec::new();
        put_u32(&mut b, 7);
        put_u64(&mut b, u64::MAX);
        put_bytes(&mut b, b"abc");
        let mut r = Reader::new(&b);
        assert_eq!(r.u32().unwrap(), 7);
        assert_eq!(r.u64().unwrap(), u64::MAX);
        assert_eq!(r.bytes().unwrap(), b"abc");
        assert_eq!(r.remaining(), 0);
        assert!(r.u8().is_err());
        let mut r = Reader::new(&[255, 255, 255, 255]);
        assert!(r.count(1).is_err(), "a count larger than the input");
    }
}
