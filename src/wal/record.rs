//! The WAL record header: length, resource manager, previous-record link and
//! a CRC that covers the record's own LSN, so that bytes of an older use of
//! the same file can never validate at a new position (docs/wal-format.md).

use thiserror::Error;

use crate::Lsn;

/// Bytes of the record header.
pub const RECORD_HEADER_SIZE: usize = 24;
/// Largest record, header included (PostgreSQL's XLogRecordMaxSize is also 1 GiB).
pub const MAX_RECORD_LEN: u64 = 1 << 30;
/// Largest payload of one record.
pub const MAX_PAYLOAD_LEN: usize = MAX_RECORD_LEN as usize - RECORD_HEADER_SIZE;
/// Resource manager of the records the WAL itself defines (see `xlog`).
pub const RM_XLOG: u8 = 0;
/// Resource manager of key-value records (payload defined by the store).
pub const RM_KV: u8 = 1;

const CRC_OFFSET: usize = 20;
const _: () = assert!(CRC_OFFSET + 4 == RECORD_HEADER_SIZE);
const _: () = assert!(MAX_RECORD_LEN <= u32::MAX as u64);

/// A record header as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Header plus payload bytes (not counting alignment padding).
    pub tot_len: u32,
    /// Resource manager: who interprets the payload.
    pub rmid: u8,
    /// Record type inside the resource manager.
    pub info: u8,
    /// Start LSN of the previous record; ties records into one chain.
    pub prev: Lsn,
    /// CRC32 of payload, own LSN and header bytes 0..20.
    pub crc: u32,
}

/// Why a record header or payload is unacceptable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordError {
    /// A payload to insert is larger than a record may carry.
    #[error("record payload of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The payload's length in bytes.
        len: usize,
        /// [`MAX_PAYLOAD_LEN`].
        max: usize,
    },
    /// A header's total length is shorter than a header or longer than
    /// [`MAX_RECORD_LEN`].
    #[error("invalid record length {tot_len}: expected at least {RECORD_HEADER_SIZE} and at most {MAX_RECORD_LEN}")]
    BadLength {
        /// The total length as stored, in bytes.
        tot_len: u32,
    },
    /// The reserved header bytes are not zero: not a header this format
    /// writes.
    #[error("non-zero reserved bytes in record header")]
    Reserved,
}

impl RecordHeader {
    /// The total length of a record with `payload_len` payload bytes.
    pub fn tot_len_for(payload_len: usize) -> Result<u32, RecordError> {
        if payload_len > MAX_PAYLOAD_LEN {
            return Err(RecordError::TooLarge {
                len: payload_len,
                max: MAX_PAYLOAD_LEN,
            });
        }
        Ok((payload_len + RECORD_HEADER_SIZE) as u32)
    }

    /// Whether a stored total length can be a record's: checked before the
    /// reader trusts it to read further.
    pub fn check_tot_len(tot_len: u32) -> Result<(), RecordError> {
        if (tot_len as usize) < RECORD_HEADER_SIZE || u64::from(tot_len) > MAX_RECORD_LEN {
            return Err(RecordError::BadLength { tot_len });
        }
        Ok(())
    }

    /// Payload bytes of this record.
    pub fn payload_len(&self) -> usize {
        self.tot_len as usize - RECORD_HEADER_SIZE
    }

    /// The header bytes without the CRC (set it with `encode_with_crc`).
    fn encode_fields(&self) -> [u8; RECORD_HEADER_SIZE] {
        let mut b = [0u8; RECORD_HEADER_SIZE];
        b[0..4].copy_from_slice(&self.tot_len.to_le_bytes());
        b[4] = self.rmid;
        b[5] = self.info;
        b[8..16].copy_from_slice(&self.prev.0.to_le_bytes());
        b
    }

    /// Build the header of a record at `lsn`: `payload_crc` is the CRC state
    /// after the payload (computed outside any lock by the inserter).
    pub fn encode(
        lsn: Lsn,
        prev: Lsn,
        rmid: u8,
        info: u8,
        tot_len: u32,
        payload_crc: &crc32fast::Hasher,
    ) -> [u8; RECORD_HEADER_SIZE] {
        let h = RecordHeader {
            tot_len,
            rmid,
            info,
            prev,
            crc: 0,
        };
        let mut b = h.encode_fields();
        let crc = finish_crc(payload_crc.clone(), lsn, &b);
        b[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decode a header; checks length bounds and reserved bytes, not the CRC.
    pub fn decode(b: &[u8; RECORD_HEADER_SIZE]) -> Result<RecordHeader, RecordError> {
        let tot_len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        RecordHeader::check_tot_len(tot_len)?;
        if b[6] != 0 || b[7] != 0 || b[16..20].iter().any(|&x| x != 0) {
            return Err(RecordError::Reserved);
        }
        let mut prev = [0u8; 8];
        prev.copy_from_slice(&b[8..16]);
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&b[CRC_OFFSET..]);
        Ok(RecordHeader {
            tot_len,
            rmid: b[4],
            info: b[5],
            prev: Lsn(u64::from_le_bytes(prev)),
            crc: u32::from_le_bytes(crc),
        })
    }

    /// The CRC this record must carry if it sits at `lsn` with `payload`.
    pub fn compute_crc(&self, lsn: Lsn, payload: &[u8]) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(payload);
        finish_crc(h, lsn, &self.encode_fields())
    }
}

/// The CRC state after the payload: the part of the CRC an inserter can
/// compute before it knows the record's position.
pub fn payload_crc(payload: &[u8]) -> crc32fast::Hasher {
    let mut h = crc32fast::Hasher::new();
    h.update(payload);
    h
}

fn finish_crc(mut h: crc32fast::Hasher, lsn: Lsn, header: &[u8; RECORD_HEADER_SIZE]) -> u32 {
    h.update(&lsn.0.to_le_bytes());
    h.update(&header[..CRC_OFFSET]);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_crc_binds_position() {
        let payload = b"hello";
        let tot = RecordHeader::tot_len_for(payload.len()).unwrap();
        let b = RecordHeader::encode(
            Lsn(0x1000),
            Lsn(0x800),
            RM_KV,
            7,
            tot,
            &payload_crc(payload),
        );
        let h = RecordHeader::decode(&b).unwrap();
        assert_eq!(h.tot_len, 29);
        assert_eq!((h.rmid, h.info, h.prev), (RM_KV, 7, Lsn(0x800)));
        assert_eq!(h.compute_crc(Lsn(0x1000), payload), h.crc);
        // The same bytes at another LSN do not validate.
        assert_ne!(h.compute_crc(Lsn(0x1008), payload), h.crc);
        assert_ne!(h.compute_crc(Lsn(0x1000), b"hellO"), h.crc);
    }

    #[test]
    fn lengths_are_bounded() {
        assert!(RecordHeader::tot_len_for(MAX_PAYLOAD_LEN).is_ok());
        assert_eq!(
            RecordHeader::tot_len_for(MAX_PAYLOAD_LEN + 1),
            Err(RecordError::TooLarge {
                len: MAX_PAYLOAD_LEN + 1,
                max: MAX_PAYLOAD_LEN
            })
        );
        let mut b = [0u8; RECORD_HEADER_SIZE];
        b[0] = 23;
        assert_eq!(
            RecordHeader::decode(&b),
            Err(RecordError::BadLength { tot_len: 23 })
        );
        b[0..4].copy_from_slice(&((MAX_RECORD_LEN + 1) as u32).to_le_bytes());
        assert!(RecordHeader::decode(&b).is_err());
        b[0..4].copy_from_slice(&24u32.to_le_bytes());
        b[17] = 1;
        assert_eq!(RecordHeader::decode(&b), Err(RecordError::Reserved));
    }
}
