//! Reading whole protocol messages from a byte stream: a buffer that keeps
//! partial messages across read timeouts and never grows beyond the largest
//! allowed message.

use std::io::{self, Read};

use super::{
    split_startup, split_typed, BackendMessage, CodecError, FrontendMessage, StartupPacket,
    MAX_STARTUP_PACKET_LEN,
};

/// Why no message could be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// End of stream between messages: an orderly close.
    #[error("connection closed by peer")]
    Closed,
    /// End of stream inside a message: the peer died or was cut off.
    #[error("connection closed in the middle of a message")]
    ClosedMidMessage,
    /// The socket's read timeout passed; the partial message is kept and
    /// the next read continues it.
    #[error("timed out waiting for a message")]
    TimedOut,
    /// Any other socket error.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not a valid message (the connection cannot go on).
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Buffered message reader over any `Read` (a `TcpStream` with a read
/// timeout, in practice). A read that times out keeps what was received, so
/// the next call continues the same message.
pub struct MessageReader<R> {
    /// The byte source.
    inner: R,
    /// Received bytes; `buf[start..end]` is not yet consumed.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Largest body accepted for a typed message.
    max_len: usize,
}

/// Initial buffer: one 128 kB XLogData plus headers fits without growing.
const INITIAL_BUF: usize = 160 * 1024;

impl<R: Read> MessageReader<R> {
    /// A reader over `inner` refusing typed messages longer than `max_len`
    /// ([`super::DEFAULT_MAX_MESSAGE_LEN`] unless a caller needs more).
    pub fn new(inner: R, max_len: usize) -> MessageReader<R> {
        MessageReader {
            inner,
            buf: vec![0; INITIAL_BUF.min(max_len + 5).max(64)],
            start: 0,
            end: 0,
            max_len,
        }
    }

    /// The byte source, e.g. to set its read timeout or ask if it is TLS.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Bytes received but not yet returned as messages.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// A whole typed message (or an invalid header, which the next read
    /// reports) is buffered: reading it will not wait for the socket.
    pub fn has_complete_message(&self) -> bool {
        !matches!(split_typed(self.buffered(), self.max_len), Ok(None))
    }

    /// The first packet of a connection (bounded by PostgreSQL's 10000 bytes).
    pub fn read_startup(&mut self) -> Result<StartupPacket, WireError> {
        loop {
            if let Some((body, used)) = split_startup(self.buffered(), MAX_STARTUP_PACKET_LEN)? {
                let p = StartupPacket::decode(body);
                self.start += used;
                return Ok(p?);
            }
            self.fill(MAX_STARTUP_PACKET_LEN + 4)?;
        }
    }

    /// The next typed message sent by a client.
    pub fn read_frontend(&mut self) -> Result<FrontendMessage, WireError> {
        let (tag, body) = self.read_typed()?;
        Ok(FrontendMessage::decode(tag, &self.buf[body.0..body.1])?)
    }

    /// The next typed message sent by a server.
    pub fn read_backend(&mut self) -> Result<BackendMessage, WireError> {
        let (tag, body) = self.read_typed()?;
        Ok(BackendMessage::decode(tag, &self.buf[body.0..body.1])?)
    }

    /// At least `n` bytes buffered (`n` small: a message's header),
    /// reading no more than that from the socket, so what follows can be
    /// read by [`read_into`](Self::read_into) straight into the caller's
    /// buffer.
    pub fn peek(&mut self, n: usize) -> Result<&[u8], WireError> {
        self.peek_upto(n, n)
    }

    /// [`peek`](Self::peek) asking the socket for up to `max` bytes (one
    /// read often brings a header and what decides how to read the rest):
    /// waits only for `n`.
    pub fn peek_upto(&mut self, n: usize, max: usize) -> Result<&[u8], WireError> {
        let max = max.max(n);
        while self.end - self.start < n {
            let want = max - (self.end - self.start);
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            }
            if self.buf.len() - self.end < want {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                if self.buf.len() < max {
                    self.buf.resize(max, 0);
                }
            }
            let got = self.read_inner(self.end, want)?;
            self.end += got;
        }
        Ok(&self.buf[self.start..self.start + n])
    }

    /// Mark `n` buffered bytes as consumed (after [`peek`](Self::peek)).
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    /// Up to `out.len()` bytes of the stream into `out`: what is buffered
    /// first, else one read from the socket straight into `out` (no copy
    /// in between). The caller knows how many bytes belong to the message
    /// it reads and never asks for more.
    pub fn read_into(&mut self, out: &mut [u8]) -> Result<usize, WireError> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.end > self.start {
            let n = out.len().min(self.end - self.start);
            out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
            self.start += n;
            return Ok(n);
        }
        loop {
            match self.inner.read(out) {
                Ok(0) => return Err(WireError::ClosedMidMessage),
                Ok(n) => return Ok(n),
                Err(e) => match io_wire_error(e) {
                    None => continue,
                    Some(e) => return Err(e),
                },
            }
        }
    }

    /// One read into `buf[at..at + want]`; bytes read (never 0).
    fn read_inner(&mut self, at: usize, want: usize) -> Result<usize, WireError> {
        loop {
            match self.inner.read(&mut self.buf[at..at + want]) {
                Ok(0) if self.start == self.end => return Err(WireError::Closed),
                Ok(0) => return Err(WireError::ClosedMidMessage),
                Ok(n) => return Ok(n),
                Err(e) => match io_wire_error(e) {
                    None => continue,
                    Some(e) => return Err(e),
                },
            }
        }
    }

    /// Read exactly one byte (the answer to an SSLRequest).
    pub fn read_byte(&mut self) -> Result<u8, WireError> {
        while self.end == self.start {
            self.fill(1)?;
        }
        self.start += 1;
        Ok(self.buf[self.start - 1])
    }

    /// Split the next typed message; returns its tag and the body's range
    /// in `self.buf` (valid until the next read).
    fn read_typed(&mut self) -> Result<(u8, (usize, usize)), WireError> {
        loop {
            if let Some(m) = split_typed(self.buffered(), self.max_len)? {
                let body_start = self.start + 5;
                let body_end = self.start + m.consumed;
                let tag = m.tag;
                self.start = body_end;
                return Ok((tag, (body_start, body_end)));
            }
            self.fill(self.max_len + 5)?;
        }
    }

    /// Read more bytes; the buffer may grow up to `limit`.
    fn fill(&mut self, limit: usize) -> Result<(), WireError> {
        self.make_room(limit);
        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) if self.start == self.end => return Err(WireError::Closed),
                Ok(0) => return Err(WireError::ClosedMidMessage),
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(WireError::TimedOut)
                }
                Err(e) => return Err(WireError::Io(e)),
            }
        }
    }

    /// Compact and grow so that at least one more byte fits; never beyond
    /// `limit` (the split functions reject larger messages before this).
    fn make_room(&mut self, limit: usize) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end < self.buf.len() {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            return;
        }
        let grown = (self.buf.len() * 2).clamp(64, limit.max(self.buf.len() + 1));
        self.buf.resize(grown, 0);
    }
}

/// A socket error as a [`WireError`]; `None` for EINTR (read again).
fn io_wire_error(e: io::Error) -> Option<WireError> {
    match e.kind() {
        io::ErrorKind::Interrupted => None,
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Some(WireError::TimedOut),
        _ => Some(WireError::Io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out at most `step` bytes per read, as a socket may.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = out.len().min(self.step).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_header_is_peeked_and_the_body_read_into_the_callers_buffer() {
        let body: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        let mut stream = vec![b'd', 0, 0, 0, 0];
        stream[1..5].copy_from_slice(&(4 + body.len() as u32).to_be_bytes());
        stream.extend_from_slice(&body);
        stream.extend_from_slice(&[b'c', 0, 0, 0, 4]);
        for step in [1, 3, 7, 4096, 1 << 20] {
            let mut r = MessageReader::new(
                Trickle {
                    data: &stream,
                    step,
                },
                1 << 20,
            );
            // Asking for a sixth byte leaves one byte of the body buffered
            // (when the read brings it): read_into hands that out first.
            let head = r.peek_upto(5, 6).unwrap();
            assert_eq!(head[0], b'd');
            r.consume(5);
            let mut got = vec![0u8; body.len()];
            let mut at = 0;
            while at < got.len() {
                let end = (at + 999).min(got.len());
                at += r.read_into(&mut got[at..end]).unwrap();
            }
            assert_eq!(got, body, "step {step}");
            // The next message is whole again for the ordinary reader.
            assert!(matches!(
                r.read_backend().unwrap(),
                BackendMessage::CopyDone
            ));
        }
    }

    #[test]
    fn a_stream_ending_inside_a_body_is_an_error() {
        let mut r = MessageReader::new(&[b'd', 0, 0, 0, 9, 1][..], 1 << 20);
        r.peek(5).unwrap();
        r.consume(5);
        let mut out = [0u8; 4];
        assert_eq!(r.read_into(&mut out).unwrap(), 1);
        assert!(matches!(
            r.read_into(&mut out),
            Err(WireError::ClosedMidMessage)
        ));
    }
}
