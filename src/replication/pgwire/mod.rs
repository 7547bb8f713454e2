//! PostgreSQL frontend/backend protocol v3 as typed messages: framing with a
//! maximum message length, frontend and backend messages in both directions,
//! and the replication messages carried inside CopyData.
//!
//! Decoding is incremental and pure: [`split_typed`] / [`split_startup`]
//! look at a byte buffer and either say "need more bytes", return one
//! complete message, or fail. A length field larger than the configured
//! maximum fails as soon as the 5-byte header is seen, so a hostile length
//! never causes a large allocation. Nothing here panics on any input.

mod backend;
mod buf;
mod copy;
mod frontend;
pub mod io;

pub use backend::{
    Authentication, BackendMessage, ErrorFields, FieldDescription, TransactionStatus,
};
pub use copy::{
    pg_epoch_micros, HotStandbyFeedback, PrimaryKeepalive, ReplicationMessage, StandbyMessage,
    StandbyStatusUpdate, XLogDataHeader, XLOGDATA_HEADER_LEN,
};
pub use frontend::{FrontendMessage, SaslInitialResponse, StartupPacket};
pub use io::MessageReader;

/// Protocol version 3.0 as sent in a StartupMessage.
pub const PROTOCOL_V3: i32 = 196_608;
/// SSLRequest code (answered with a single `N`).
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
/// GSSENCRequest code (answered with a single `N`).
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
/// CancelRequest code.
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// PostgreSQL's MAX_STARTUP_PACKET_LENGTH: a longer startup packet is refused.
pub const MAX_STARTUP_PACKET_LEN: usize = 10_000;
/// Default bound on any other message body: a little over one 128 kB
/// XLogData plus headers would do for streaming, but error texts and
/// result rows are also small, so 1 MiB leaves room without risk.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 1 << 20;

/// Why bytes are not a valid protocol message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The length field counts less than itself (4 bytes).
    #[error("invalid message length {len} (must be at least 4)")]
    BadLength {
        /// The length field as sent.
        len: i64,
    },
    /// The length field exceeds the reader's maximum; refused from the
    /// header alone, before anything is allocated.
    #[error("message of {len} bytes exceeds the maximum of {max} bytes")]
    Oversized {
        /// The length field as sent.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A field runs past the end of the body (a lying count or length).
    #[error("{what} message is truncated: needed {need} more bytes, {have} left")]
    Truncated {
        /// Which message was being decoded.
        what: &'static str,
        /// Bytes the next field needs.
        need: usize,
        /// Bytes left in the body.
        have: usize,
    },
    /// A C string has no terminating NUL before the body ends.
    #[error("{what} message has a string without its terminating NUL")]
    MissingNul {
        /// Which message was being decoded.
        what: &'static str,
    },
    /// A string is not valid UTF-8.
    #[error("{what} message has a string that is not valid UTF-8")]
    NotUtf8 {
        /// Which message was being decoded.
        what: &'static str,
    },
    /// Well framed, but a value is out of range or trailing bytes remain.
    #[error("invalid {what} message: {reason}")]
    Invalid {
        /// Which message was being decoded.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A type byte this side of the protocol does not know.
    #[error("unexpected message type 0x{tag:02X} ({side})")]
    UnknownType {
        /// The type byte.
        tag: u8,
        /// Which stream it came in: `frontend`, `backend`, `replication
        /// stream` (walsender's CopyData) or `standby reply`.
        side: &'static str,
    },
}

/// One complete typed message split from the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct RawMessage<'a> {
    /// The type byte.
    pub tag: u8,
    /// The body, without type byte and length word.
    pub body: &'a [u8],
    /// Bytes of the buffer this message used (5 + body length).
    pub consumed: usize,
}

/// Split one typed message (`tag`, int32 length, body) off the front of
/// `buf`. `Ok(None)` means more bytes are needed; a length below 4 or a body
/// above `max_len` is an error as soon as the header is complete.
pub fn split_typed(buf: &[u8], max_len: usize) -> Result<Option<RawMessage<'_>>, CodecError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let body_len = body_length(&buf[1..5], max_len)?;
    let total = 5 + body_len;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some(RawMessage {
        tag: buf[0],
        body: &buf[5..total],
        consumed: total,
    }))
}

/// Split one untyped startup-phase packet (int32 length, body) off the
/// front of `buf`. Returns the body and the bytes consumed.
pub fn split_startup(buf: &[u8], max_len: usize) -> Result<Option<(&[u8], usize)>, CodecError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let body_len = body_length(&buf[0..4], max_len)?;
    let total = 4 + body_len;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((&buf[4..total], total)))
}

fn body_length(len_bytes: &[u8], max_len: usize) -> Result<usize, CodecError> {
    let mut a = [0u8; 4];
    a.copy_from_slice(len_bytes);
    let len = i32::from_be_bytes(a);
    if len < 4 {
        return Err(CodecError::BadLength { len: len.into() });
    }
    let body = (len - 4) as usize;
    if body > max_len {
        return Err(CodecError::Oversized {
            len: body,
            max: max_len,
        });
    }
    Ok(body)
}
