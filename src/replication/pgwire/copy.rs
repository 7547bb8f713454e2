//! The replication messages carried inside CopyData during
//! START_REPLICATION: XLogData `w` and keepalive `k` from the server,
//! standby status update `r` and hot standby feedback `h` from the client.
//! Big-endian; times in microseconds since 2000-01-01 UTC; LSN 0 = invalid.

use std::time::{SystemTime, UNIX_EPOCH};

use walrep_states::Lsn;

use super::buf::Cursor;
use super::CodecError;

/// Bytes of an XLogData message before the WAL: tag + start + end + time.
pub const XLOGDATA_HEADER_LEN: usize = 25;
/// Microseconds from the Unix epoch to PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// Now, in microseconds since 2000-01-01 UTC (PostgreSQL's TimestampTz).
pub fn pg_epoch_micros(now: SystemTime) -> i64 {
    let unix_us = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    };
    unix_us - PG_EPOCH_OFFSET_US
}

/// The fixed part of an XLogData message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XLogDataHeader {
    /// LSN of the first WAL byte in the message.
    pub wal_start: Lsn,
    /// The server's send limit (its flush position) when sent.
    pub wal_end: Lsn,
    /// Server clock when sent.
    pub send_time: i64,
}

impl XLogDataHeader {
    /// Write the 25-byte header (tag included) into `out[..25]`.
    pub fn write(&self, out: &mut [u8; XLOGDATA_HEADER_LEN]) {
        out[0] = b'w';
        out[1..9].copy_from_slice(&self.wal_start.0.to_be_bytes());
        out[9..17].copy_from_slice(&self.wal_end.0.to_be_bytes());
        out[17..25].copy_from_slice(&self.send_time.to_be_bytes());
    }
}

/// Server keepalive `k`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    /// Position the server has sent up to.
    pub wal_end: Lsn,
    /// Server clock when sent (µs since 2000-01-01, [`pg_epoch_micros`]).
    pub send_time: i64,
    /// The client must answer with a status update at once.
    pub reply_requested: bool,
    /// walrep extension, sent only to a standby that asked for it (see
    /// `APPLY_FEEDBACK_PARAMETER`): a commit here waits for this standby's
    /// apply position (`remote_apply`), so it should reply as soon as its
    /// replay moves, up to `wal_end`. Bit 1 of the byte whose bit 0 is
    /// `reply_requested`.
    pub apply_feedback: bool,
    /// walrep extension, sent only to a standby that asked for it (see
    /// `FLUSH_HINT_PARAMETER`): no commit here may wait for this
    /// standby's flush position now, so it may space its fsyncs. Bit 2 of
    /// the same byte; a keepalive without it asks for fsyncs at once.
    pub flush_deferrable: bool,
    /// walrep extension, sent with `flush_deferrable` to a standby that
    /// asked for the flush hint: a commit here waited lately for this
    /// standby's written position alone (`remote_write`), so it should
    /// report that before its fsync. Without it a synchronous standby may
    /// fsync first and report both in one status update. Bit 3.
    pub write_wanted: bool,
}

/// The keepalive byte's bit saying [`PrimaryKeepalive::apply_feedback`].
const APPLY_FEEDBACK_BIT: u8 = 2;
/// The keepalive byte's bit saying [`PrimaryKeepalive::flush_deferrable`].
const FLUSH_DEFERRABLE_BIT: u8 = 4;
/// The keepalive byte's bit saying [`PrimaryKeepalive::write_wanted`].
const WRITE_WANTED_BIT: u8 = 8;

/// A message from the server inside CopyData.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// XLogData `w`, as PostgreSQL's walsender sends it: WAL bytes from
    /// `header.wal_start` on.
    XLogData {
        /// Positions and send time.
        header: XLogDataHeader,
        /// The WAL bytes (walrep's walsender never crosses a segment
        /// boundary within one message).
        data: Vec<u8>,
    },
    /// Primary keepalive `k`: the walsender is alive, maybe asking for a
    /// status update.
    Keepalive(PrimaryKeepalive),
}

impl ReplicationMessage {
    /// Decode a CopyData payload sent by a walsender.
    pub fn decode(payload: &[u8]) -> Result<ReplicationMessage, CodecError> {
        let mut c = Cursor::new(payload, "replication");
        match c.u8()? {
            b'w' => {
                let header = XLogDataHeader {
                    wal_start: Lsn(c.u64()?),
                    wal_end: Lsn(c.u64()?),
                    send_time: c.i64()?,
                };
                Ok(ReplicationMessage::XLogData {
                    header,
                    data: c.rest().to_vec(),
                })
            }
            b'k' => {
                let wal_end = Lsn(c.u64()?);
                let send_time = c.i64()?;
                let flags = c.u8()?;
                let k = PrimaryKeepalive {
                    wal_end,
                    send_time,
                    // PostgreSQL reads any non-zero byte as a request; only
                    // a walrep standby that asked is sent the other bits.
                    reply_requested: flags
                        & !(APPLY_FEEDBACK_BIT | FLUSH_DEFERRABLE_BIT | WRITE_WANTED_BIT)
                        != 0,
                    apply_feedback: flags & APPLY_FEEDBACK_BIT != 0,
                    flush_deferrable: flags & FLUSH_DEFERRABLE_BIT != 0,
                    write_wanted: flags & WRITE_WANTED_BIT != 0,
                };
                c.finish()?;
                Ok(ReplicationMessage::Keepalive(k))
            }
            tag => Err(CodecError::UnknownType {
                tag,
                side: "replication stream",
            }),
        }
    }

    /// The CopyData payload.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ReplicationMessage::XLogData { header, data } => {
                let mut out = vec![0u8; XLOGDATA_HEADER_LEN + data.len()];
                let mut h = [0u8; XLOGDATA_HEADER_LEN];
                header.write(&mut h);
                out[..XLOGDATA_HEADER_LEN].copy_from_slice(&h);
                out[XLOGDATA_HEADER_LEN..].copy_from_slice(data);
                out
            }
            ReplicationMessage::Keepalive(k) => {
                let mut out = Vec::with_capacity(18);
                out.push(b'k');
                out.extend_from_slice(&k.wal_end.0.to_be_bytes());
                out.extend_from_slice(&k.send_time.to_be_bytes());
                let apply = if k.apply_feedback {
                    APPLY_FEEDBACK_BIT
                } else {
                    0
                };
                let deferrable = if k.flush_deferrable {
                    FLUSH_DEFERRABLE_BIT
                } else {
                    0
                };
                let write = if k.write_wanted { WRITE_WANTED_BIT } else { 0 };
                out.push(k.reply_requested as u8 | apply | deferrable | write);
                out
            }
        }
    }
}

/// Standby status update `r`: how far the client has written, flushed and
/// applied (0/0 = not reported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyStatusUpdate {
    /// End of WAL written to disk (not necessarily flushed).
    pub write: Lsn,
    /// End of WAL flushed to durable storage: what synchronous commit and
    /// slots advance on.
    pub flush: Lsn,
    /// End of WAL replayed (applied).
    pub apply: Lsn,
    /// Client clock when sent (µs since 2000-01-01).
    pub client_time: i64,
    /// The server must answer with a keepalive at once.
    pub reply_requested: bool,
}

/// Hot standby feedback `h`: the standby's oldest transaction ids in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotStandbyFeedback {
    /// Client clock when sent (µs since 2000-01-01).
    pub client_time: i64,
    /// Oldest transaction id still needed by the standby's queries (0 =
    /// none); the walsender records it for the status page.
    pub xmin: u32,
    /// Epoch of `xmin`.
    pub xmin_epoch: u32,
    /// Oldest catalog xid needed (logical decoding; 0 on walrep).
    pub catalog_xmin: u32,
    /// Epoch of `catalog_xmin`.
    pub catalog_xmin_epoch: u32,
}

/// A message from the client inside CopyData.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandbyMessage {
    /// Standby status update `r`.
    Status(StandbyStatusUpdate),
    /// Hot standby feedback `h`.
    Feedback(HotStandbyFeedback),
}

impl StandbyMessage {
    /// Decode a CopyData payload sent by a walreceiver / pg_receivewal.
    pub fn decode(payload: &[u8]) -> Result<StandbyMessage, CodecError> {
        let mut c = Cursor::new(payload, "standby reply");
        let msg = match c.u8()? {
            b'r' => StandbyMessage::Status(StandbyStatusUpdate {
                write: Lsn(c.u64()?),
                flush: Lsn(c.u64()?),
                apply: Lsn(c.u64()?),
                client_time: c.i64()?,
                reply_requested: c.u8()? != 0,
            }),
            b'h' => StandbyMessage::Feedback(HotStandbyFeedback {
                client_time: c.i64()?,
                xmin: c.u32()?,
                xmin_epoch: c.u32()?,
                catalog_xmin: c.u32()?,
                catalog_xmin_epoch: c.u32()?,
            }),
            tag => {
                return Err(CodecError::UnknownType {
                    tag,
                    side: "standby reply",
                })
            }
        };
        c.finish()?;
        Ok(msg)
    }

    /// The CopyData payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(34);
        match self {
            StandbyMessage::Status(s) => {
                out.push(b'r');
                for v in [s.write.0, s.flush.0, s.apply.0] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
                out.extend_from_slice(&s.client_time.to_be_bytes());
                out.push(s.reply_requested as u8);
            }
            StandbyMessage::Feedback(h) => {
                out.push(b'h');
                out.extend_from_slice(&h.client_time.to_be_bytes());
                for v in [h.xmin, h.xmin_epoch, h.catalog_xmin, h.catalog_xmin_epoch] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
            }
        }
        out
    }
}
