//! The segment header at the start of every WAL segment (PostgreSQL's long
//! page header idea) and the arithmetic of the WAL byte stream: which bytes
//! are headers and where record data lands (docs/wal-format.md).
//!
//! The header is what makes a segment file self-identifying: a file from
//! another system, another timeline or another position (a recycled file
//! whose old contents are still there) is recognised by its header alone.

use thiserror::Error;

use crate::{Lsn, TimelineId, WalSegSize};

/// Bytes of the segment header; a multiple of 8 so that record alignment
/// inside the segment is the same as alignment of the LSN.
pub const SEG_HEADER_SIZE: u64 = 40;
/// First bytes of every segment ("WAL of walRep").
pub const SEG_MAGIC: [u8; 4] = *b"WALR";
/// Format version; bumped on any incompatible change of segment or record layout.
pub const SEG_VERSION: u16 = 1;
/// The segment begins with the continuation of a record started in an
/// earlier segment (`rem_len` bytes of it); PostgreSQL's XLP_FIRST_IS_CONTRECORD.
pub const FLAG_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// Records (and thus record positions) are aligned to this many bytes.
pub const WAL_ALIGN: u64 = 8;

const _: () = assert!(SEG_HEADER_SIZE % WAL_ALIGN == 0);
const _: () = assert!(WalSegSize::MIN % WAL_ALIGN == 0);

/// The decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Flags, see `FLAG_*`.
    pub flags: u16,
    /// Timeline of the file this header was written into.
    pub tli: TimelineId,
    /// Bytes of a record continued from the previous segment that follow
    /// this header (may exceed the segment: a record spanning it whole).
    pub rem_len: u32,
    /// LSN of the first byte of the segment: tells a recycled file apart.
    pub pageaddr: Lsn,
    /// The system this WAL belongs to (from `walrep init`).
    pub system_id: u64,
    /// The segment size the system was created with.
    pub seg_size: WalSegSize,
}

/// What is wrong with a segment header, in the order the checks run.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeaderProblem {
    /// All zero bytes: a pre-allocated segment nothing was written to yet.
    #[error("segment header is all zeroes (pre-allocated, never written)")]
    Zero,
    /// Fewer bytes than a header ([`SEG_HEADER_SIZE`]).
    #[error("segment is shorter than its header ({len} bytes)")]
    Truncated {
        /// The bytes there are.
        len: usize,
    },
    /// Not a walrep segment (PostgreSQL's `xlp_magic` check).
    #[error("invalid magic number {found:02X?} (expected {SEG_MAGIC:02X?})")]
    Magic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// A walrep segment of a format version this build does not read.
    #[error("unsupported WAL format version {found} (this build reads {SEG_VERSION})")]
    Version {
        /// The version in the header.
        found: u16,
    },
    /// The header's own CRC32 does not match its bytes.
    #[error("incorrect segment header checksum: computed {computed:08X}, stored {stored:08X}")]
    Crc {
        /// CRC32 of the header bytes read.
        computed: u32,
        /// CRC32 stored in the header.
        stored: u32,
    },
    /// Flag bits this format does not define are set.
    #[error("invalid segment header flags {found:04X}")]
    Flags {
        /// The flags field.
        found: u16,
    },
    /// The segment size field is not a power of two from 1 MiB to 1 GiB.
    #[error("WAL segment size {found} in the header is not a valid size")]
    BadSegSize {
        /// The size field, in bytes.
        found: u32,
    },
    /// `rem_len` is non-zero without the continuation flag, or zero with
    /// it.
    #[error("rem_len {rem_len} does not agree with the continuation flag")]
    RemLen {
        /// Bytes of a record continued from the previous segment, as
        /// stored (PostgreSQL's `xlp_rem_len`).
        rem_len: u32,
    },
    /// The segment belongs to another system (another `walrep init`).
    #[error("WAL file is from a different database system: WAL file system identifier is {found}, expected {expected}")]
    SystemId {
        /// This system's identifier, from the control file.
        expected: u64,
        /// The identifier in the segment header.
        found: u64,
    },
    /// The header's segment size is not this system's.
    #[error("WAL segment size {found} differs from the system's {expected}")]
    SegSize {
        /// This system's `wal_segment_size`, in bytes.
        expected: u64,
        /// The header's, in bytes.
        found: u64,
    },
    /// The header names another timeline than the file name does.
    #[error("unexpected timeline ID {found} in segment header (expected {expected})")]
    Timeline {
        /// The timeline of the file name.
        expected: u32,
        /// The timeline in the header.
        found: u32,
    },
    /// The header's start LSN is not the segment's: a recycled file not
    /// rewritten yet, or a file renamed by hand (PostgreSQL's
    /// `xlp_pageaddr` check).
    #[error("unexpected pageaddr {found} in segment header (expected {expected}): a recycled or misplaced file")]
    PageAddr {
        /// The start LSN of the segment the file name says.
        expected: Lsn,
        /// The start LSN in the header.
        found: Lsn,
    },
    /// The segment continues a different amount of the previous segment's
    /// last record than that record has left.
    #[error("segment continues {found} bytes of a record, expected {expected}")]
    Continuation {
        /// Bytes of the record still to come, from the previous segment.
        expected: u32,
        /// The header's `rem_len`.
        found: u32,
    },
}

/// What a reader expects of the header of the segment it enters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedHeader {
    /// The system the reader belongs to.
    pub system_id: u64,
    /// The system's segment size.
    pub seg_size: WalSegSize,
    /// Timeline of the file being read.
    pub tli: TimelineId,
    /// Start LSN of the segment.
    pub pageaddr: Lsn,
    /// Bytes of a record the reader is in the middle of; 0 at a record boundary.
    pub rem_len: u32,
}

impl SegmentHeader {
    /// The 40 bytes as they are on disk (little-endian), CRC included.
    pub fn encode(&self) -> [u8; SEG_HEADER_SIZE as usize] {
        let mut b = [0u8; SEG_HEADER_SIZE as usize];
        b[0..4].copy_from_slice(&SEG_MAGIC);
        b[4..6].copy_from_slice(&SEG_VERSION.to_le_bytes());
        b[6..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..12].copy_from_slice(&self.tli.0.to_le_bytes());
        b[12..16].copy_from_slice(&self.rem_len.to_le_bytes());
        b[16..24].copy_from_slice(&self.pageaddr.0.to_le_bytes());
        b[24..32].copy_from_slice(&self.system_id.to_le_bytes());
        // seg_size <= 1 GiB always fits.
        b[32..36].copy_from_slice(&(self.seg_size.bytes() as u32).to_le_bytes());
        let crc = crc32fast::hash(&b[0..36]);
        b[36..40].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decode and check what a header can say about itself (magic, version,
    /// CRC, flags, size), without knowing where it was found.
    pub fn decode(b: &[u8]) -> Result<SegmentHeader, HeaderProblem> {
        let Some(b) = b.get(..SEG_HEADER_SIZE as usize) else {
            return Err(HeaderProblem::Truncated { len: b.len() });
        };
        if b.iter().all(|&x| x == 0) {
            return Err(HeaderProblem::Zero);
        }
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let magic = [b[0], b[1], b[2], b[3]];
        if magic != SEG_MAGIC {
            return Err(HeaderProblem::Magic { found: magic });
        }
        if u16_at(4) != SEG_VERSION {
            return Err(HeaderProblem::Version { found: u16_at(4) });
        }
        let computed = crc32fast::hash(&b[0..36]);
        if computed != u32_at(36) {
            return Err(HeaderProblem::Crc {
                computed,
                stored: u32_at(36),
            });
        }
        let flags = u16_at(6);
        if flags & !FLAG_FIRST_IS_CONTRECORD != 0 {
            return Err(HeaderProblem::Flags { found: flags });
        }
        let rem_len = u32_at(12);
        if (rem_len != 0) != (flags & FLAG_FIRST_IS_CONTRECORD != 0) {
            return Err(HeaderProblem::RemLen { rem_len });
        }
        let seg_size = WalSegSize::new(u64::from(u32_at(32)))
            .map_err(|_| HeaderProblem::BadSegSize { found: u32_at(32) })?;
        Ok(SegmentHeader {
            flags,
            tli: TimelineId(u32_at(8)),
            rem_len,
            pageaddr: Lsn(u64_at(16)),
            system_id: u64_at(24),
            seg_size,
        })
    }

    /// Check a decoded header against where it was found.
    pub fn check(&self, want: &ExpectedHeader) -> Result<(), HeaderProblem> {
        if self.system_id != want.system_id {
            return Err(HeaderProblem::SystemId {
                expected: want.system_id,
                found: self.system_id,
            });
        }
        if self.seg_size != want.seg_size {
            return Err(HeaderProblem::SegSize {
                expected: want.seg_size.bytes(),
                found: self.seg_size.bytes(),
            });
        }
        if self.tli != want.tli {
            return Err(HeaderProblem::Timeline {
                expected: want.tli.0,
                found: self.tli.0,
            });
        }
        if self.pageaddr != want.pageaddr {
            return Err(HeaderProblem::PageAddr {
                expected: want.pageaddr,
                found: self.pageaddr,
            });
        }
        if self.rem_len != want.rem_len {
            return Err(HeaderProblem::Continuation {
                expected: want.rem_len,
                found: self.rem_len,
            });
        }
        Ok(())
    }

    /// Decode and check in one step.
    pub fn validate(b: &[u8], want: &ExpectedHeader) -> Result<SegmentHeader, HeaderProblem> {
        let h = SegmentHeader::decode(b)?;
        h.check(want)?;
        Ok(h)
    }
}

/// Round `lsn` up to the record alignment; `None` past the end of the LSN space.
pub fn align_up(lsn: Lsn) -> Option<Lsn> {
    lsn.checked_add(WAL_ALIGN - 1)
        .map(|l| Lsn(l.0 & !(WAL_ALIGN - 1)))
}

/// Whether a record may start at `lsn`: aligned, and not inside a segment
/// header. A segment start counts: the record then follows the header.
pub fn is_record_position(lsn: Lsn, seg_size: WalSegSize) -> bool {
    let off = lsn.segment_offset(seg_size);
    lsn.is_valid() && lsn.0 % WAL_ALIGN == 0 && (off == 0 || off >= SEG_HEADER_SIZE)
}

/// Skip a segment header if `pos` is at a segment start: where the next
/// byte of record data goes.
pub fn skip_header(pos: Lsn, seg_size: WalSegSize) -> Option<Lsn> {
    if pos.segment_offset(seg_size) == 0 {
        pos.checked_add(SEG_HEADER_SIZE)
    } else {
        Some(pos)
    }
}

/// The position just after `n` bytes of record data placed from `pos`,
/// skipping the headers of the segments entered on the way. Ends exactly at
/// a segment boundary when the data fills its segment (the next header is
/// not counted). `None` past the end of the LSN space.
pub fn data_end(pos: Lsn, n: u64, seg_size: WalSegSize) -> Option<Lsn> {
    let seg = seg_size.bytes();
    let mut pos = if n == 0 {
        pos
    } else {
        skip_header(pos, seg_size)?
    };
    let mut left = n;
    loop {
        let room = seg - pos.segment_offset(seg_size);
        if left <= room {
            return pos.checked_add(left);
        }
        left -= room;
        pos = pos.checked_add(room + SEG_HEADER_SIZE)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SegmentHeader {
        SegmentHeader {
            flags: FLAG_FIRST_IS_CONTRECORD,
            tli: TimelineId(3),
            rem_len: 77,
            pageaddr: Lsn(5 << 20),
            system_id: 0xDEAD_BEEF_0123_4567,
            seg_size: WalSegSize::new(1 << 20).unwrap(),
        }
    }

    #[test]
    fn header_round_trips() {
        let h = header();
        assert_eq!(SegmentHeader::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn every_corrupted_header_byte_is_detected() {
        let good = header().encode();
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut b = good;
                b[i] ^= 1 << bit;
                assert!(SegmentHeader::decode(&b).is_err(), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn header_checks_name_the_field() {
        let h = header();
        let want = ExpectedHeader {
            system_id: h.system_id,
            seg_size: h.seg_size,
            tli: h.tli,
            pageaddr: h.pageaddr,
            rem_len: h.rem_len,
        };
        assert_eq!(h.check(&want), Ok(()));
        let bad = |w: ExpectedHeader| h.check(&w).unwrap_err();
        assert!(matches!(
            bad(ExpectedHeader {
                system_id: 1,
                ..want
            }),
            HeaderProblem::SystemId { .. }
        ));
        assert!(matches!(
            bad(ExpectedHeader {
                tli: TimelineId(2),
                ..want
            }),
            HeaderProblem::Timeline {
                expected: 2,
                found: 3
            }
        ));
        assert!(matches!(
            bad(ExpectedHeader {
                pageaddr: Lsn(9 << 20),
                ..want
            }),
            HeaderProblem::PageAddr { .. }
        ));
        assert!(matches!(
            bad(ExpectedHeader { rem_len: 0, ..want }),
            HeaderProblem::Continuation { .. }
        ));
        assert_eq!(SegmentHeader::decode(&[0u8; 40]), Err(HeaderProblem::Zero));
        assert_eq!(
            SegmentHeader::decode(&[1u8; 10]),
            Err(HeaderProblem::Truncated { len: 10 })
        );
    }

    #[test]
    fn data_end_skips_headers() {
        let s = WalSegSize::new(1 << 20).unwrap();
        let seg = 1u64 << 20;
        // From a segment start, the header comes first.
        assert_eq!(data_end(Lsn(seg), 8, s), Some(Lsn(seg + 48)));
        // Filling a segment exactly ends at the boundary.
        assert_eq!(data_end(Lsn(seg + 40), seg - 40, s), Some(Lsn(2 * seg)));
        // One more byte goes after the next segment's header.
        assert_eq!(
            data_end(Lsn(seg + 40), seg - 39, s),
            Some(Lsn(2 * seg + 41))
        );
        // Spanning two whole segments.
        assert_eq!(
            data_end(Lsn(2 * seg - 8), 8 + 2 * (seg - 40), s),
            Some(Lsn(4 * seg))
        );
        assert!(is_record_position(Lsn(seg), s));
        assert!(!is_record_position(Lsn(seg + 8), s));
        assert!(is_record_position(Lsn(seg + 40), s));
        assert!(!is_record_position(Lsn(seg + 44), s));
    }
}
