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
