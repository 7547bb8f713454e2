//! Bounds-checked reading of message bodies and helpers for writing them:
//! every read returns a typed error instead of panicking on short input.

use super::CodecError;

/// A read position in one message body. Every getter checks the remaining
/// length first, so a truncated or lying body becomes [`CodecError`].
pub struct Cursor<'a> {
    /// The whole body being parsed.
    buf: &'a [u8],
    /// Bytes consumed so far.
    pos: usize,
    /// Message name for error messages ("RowDescription", ...).
    what: &'static str,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Cursor<'a> {
        Cursor { buf, pos: 0, what }
    }

    fn short(&self, need: usize) -> CodecError {
        CodecError::Truncated {
            what: self.what,
            need,
            have: self.remaining(),
        }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.remaining() < n {
            return Err(self.short(n));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.array::<1>()?[0])
    }
    pub fn i16(&mut self) -> Result<i16, CodecError> {
        Ok(i16::from_be_bytes(self.array()?))
    }
    pub fn i32(&mut self) -> Result<i32, CodecError> {
        Ok(i32::from_be_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub fn i64(&mut self) -> Result<i64, CodecError> {
        Ok(i64::from_be_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A NUL-terminated string, which must be UTF-8.
    pub fn cstr(&mut self) -> Result<String, CodecError> {
        let rest = &self.buf[self.pos..];
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(CodecError::MissingNul { what: self.what })?;
        let s = std::str::from_utf8(&rest[..nul])
            .map_err(|_| CodecError::NotUtf8 { what: self.what })?
            .to_string();
        self.pos += nul + 1;
        Ok(s)
    }

    /// Everything not yet consumed.
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }

    /// A count read from the wire, checked against what could possibly fit
    /// in the rest of the body (each element needs at least `min_size`
    /// bytes), so a lying count never drives a large allocation.
    pub fn count(&mut self, raw: i64, min_size: usize) -> Result<usize, CodecError> {
        let n = usize::try_from(raw).map_err(|_| CodecError::Invalid {
            what: self.what,
            reason: format!("negative count {raw}"),
        })?;
        if n.saturating_mul(min_size.max(1)) > self.remaining() {
            return Err(self.short(n.saturating_mul(min_size.max(1))));
        }
        Ok(n)
    }

    /// Fail unless the whole body was consumed.
    pub fn finish(&self) -> Result<(), CodecError> {
        if self.remaining() != 0 {
            return Err(CodecError::Invalid {
                what: self.what,
                reason: format!("{} unexpected trailing bytes", self.remaining()),
            });
        }
        Ok(())
    }
}

/// Appends a typed message (`tag`, int32 length, body) to `out`; `body`
/// writes the body. The length is patched in afterwards.
pub fn typed_message(out: &mut Vec<u8>, tag: u8, body: impl FnOnce(&mut Vec<u8>)) {
    out.push(tag);
    let len_at = out.len();
    out.extend_from_slice(&[0; 4]);
    body(out);
    patch_len(out, len_at);
}

/// Writes the big-endian length of everything from `len_at` to the end
/// (the length word included, as the protocol counts it).
pub fn patch_len(out: &mut [u8], len_at: usize) {
    let len = (out.len() - len_at) as u32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn put_cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}
