//! WAL positions, timelines, segment numbers and WAL file names, spelled the
//! way PostgreSQL spells them so that tools which handle PostgreSQL WAL files
//! by name (pg_receivewal, pg_archivecleanup, archive scripts) handle ours.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A byte position in the WAL stream ("log sequence number").
///
/// Printed and parsed as PostgreSQL's `%X/%X`: the high and low 32 bits in
/// upper-case hexadecimal without padding (`16/B374D848`). Parsing also
/// accepts padded and lower-case forms, as `sscanf("%X/%X")` does.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Lsn(pub u64);

impl Lsn {
    /// The invalid LSN, PostgreSQL's `InvalidXLogRecPtr`.
    pub const INVALID: Lsn = Lsn(0);

    /// Whether this is a real position (not `INVALID`).
    pub fn is_valid(self) -> bool {
        self.0 != 0
    }

    /// The segment this position falls in.
    pub fn segno(self, seg_size: WalSegSize) -> SegNo {
        SegNo(self.0 / seg_size.bytes())
    }

    /// Offset of this position inside its segment.
    pub fn segment_offset(self, seg_size: WalSegSize) -> u64 {
        self.0 % seg_size.bytes()
    }

    /// This position rounded down to the start of its segment (what
    /// PostgreSQL's walreceiver asks a walsender for).
    pub fn segment_start(self, seg_size: WalSegSize) -> Lsn {
        Lsn(self.0 - self.segment_offset(seg_size))
    }

    /// `self + bytes`, or `None` past the end of the LSN space.
    pub fn checked_add(self, bytes: u64) -> Option<Lsn> {
        self.0.checked_add(bytes).map(Lsn)
    }

    /// Bytes from `earlier` to `self`, zero if `earlier` is not earlier.
    pub fn saturating_sub(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 as u32)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a string is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseLsnError(pub String);

impl fmt::Display for ParseLsnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid LSN {:?}: expected two hexadecimal numbers of at most 8 digits as X/X",
            self.0
        )
    }
}

impl std::error::Error for ParseLsnError {}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let part = |p: &str| -> Result<u64, ParseLsnError> {
            if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            u64::from_str_radix(p, 16).map_err(|_| err())
        };
        Ok(Lsn((part(hi)? << 32) | part(lo)?))
    }
}

impl From<Lsn> for String {
    fn from(lsn: Lsn) -> String {
        lsn.to_string()
    }
}

impl TryFrom<String> for Lsn {
    type Error = ParseLsnError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// A timeline: the history branch a WAL position belongs to. Timeline 1 is the
/// one `walrep init` starts; every promotion starts a higher one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TimelineId(pub u32);

impl TimelineId {
    /// The first timeline of every system.
    pub const FIRST: TimelineId = TimelineId(1);

    /// The next timeline, as chosen at promotion.
    pub fn next(self) -> TimelineId {
        TimelineId(self.0 + 1)
    }

    /// The next timeline, `None` after the last one.
    pub fn checked_next(self) -> Option<TimelineId> {
        self.0.checked_add(1).map(TimelineId)
    }

    /// `TTTTTTTT.history`, the name of this timeline's history file.
    pub fn history_file_name(self) -> String {
        format!("{:08X}.history", self.0)
    }
}

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TLI {}", self.0)
    }
}

/// The size of every WAL segment of one system: a power of two from 1 MiB to
/// 1 GiB, fixed at `walrep init` time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct WalSegSize(u64);

/// A segment size outside PostgreSQL's allowed set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalSegSizeError(pub u64);

impl fmt::Display for WalSegSizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid WAL segment size {} bytes: must be a power of two between 1MB and 1GB",
            self.0
        )
    }
}

impl std::error::Error for WalSegSizeError {}

impl WalSegSize {
    /// The smallest segment size PostgreSQL allows (1 MiB).
    pub const MIN: u64 = 1 << 20;
    /// The largest segment size PostgreSQL allows (1 GiB).
    pub const MAX: u64 = 1 << 30;
    /// PostgreSQL's default, 16 MiB.
    pub const DEFAULT: WalSegSize = WalSegSize(16 << 20);

    /// A segment size of `bytes`, if PostgreSQL allows it.
    pub fn new(bytes: u64) -> Result<WalSegSize, WalSegSizeError> {
        if bytes.is_power_of_two() && (Self::MIN..=Self::MAX).contains(&bytes) {
            Ok(WalSegSize(bytes))
        } else {
            Err(WalSegSizeError(bytes))
        }
    }

    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Segments per 4 GiB "xlogid", the middle part of a WAL file name.
    pub fn segments_per_xlogid(self) -> u64 {
        0x1_0000_0000 / self.0
    }
}

impl TryFrom<u64> for WalSegSize {
    type Error = WalSegSizeError;
    fn try_from(v: u64) -> Result<Self, Self::Error> {
        WalSegSize::new(v)
    }
}

impl From<WalSegSize> for u64 {
    fn from(s: WalSegSize) -> u64 {
        s.0
    }
}

impl fmt::Debug for WalSegSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}MB", self.0 >> 20)
    }
}

/// A WAL segment number: `lsn / wal_segment_size`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug)]
#[serde(transparent)]
pub struct SegNo(pub u64);

impl SegNo {
    /// The first byte position of this segment.
    pub fn start_lsn(self, seg_size: WalSegSize) -> Lsn {
        Lsn(self.0 * seg_size.bytes())
    }

    /// The following segment.
    pub fn next(self) -> SegNo {
        SegNo(self.0 + 1)
    }

    /// The last segment of the LSN space: the one holding
    /// `FFFFFFFF/FFFFFFFF`. No segment after it has a position, so no file
    /// can hold WAL there.
    pub fn last(seg_size: WalSegSize) -> SegNo {
        Lsn(u64::MAX).segno(seg_size)
    }

    /// The following segment, `None` after [`SegNo::last`].
    pub fn checked_next(self, seg_size: WalSegSize) -> Option<SegNo> {
        (self < SegNo::last(seg_size)).then(|| self.next())
    }

    /// PostgreSQL's WAL file name: `%08X%08X%08X` of (timeline,
    /// segno / segments-per-xlogid, segno % segments-per-xlogid).
    pub fn file_name(self, tli: TimelineId, seg_size: WalSegSize) -> String {
        let per = seg_size.segments_per_xlogid();
        format!("{:08X}{:08X}{:08X}", tli.0, self.0 / per, self.0 % per)
    }

    /// Parse a 24-hex-digit WAL file name (no suffix) into its timeline and
    /// segment number; `None` if it is not one.
    pub fn parse_file_name(name: &str, seg_size: WalSegSize) -> Option<(TimelineId, SegNo)> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let tli = u32::from_str_radix(&name[0..8], 16).ok()?;
        let log = u64::from_str_radix(&name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
        let per = seg_size.segments_per_xlogid();
        if seg >= per {
            return None;
        }
        Some((
            TimelineId(tli),
            SegNo(log.checked_mul(per)?.checked_add(seg)?),
        ))
    }
}

impl fmt::Display for SegNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_prints_like_postgres() {
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(0x150_0790).to_string(), "0/1500790");
        assert_eq!(Lsn(0).to_string(), "0/0");
    }

    #[test]
    fn lsn_parses_padded_and_lower_case() {
        assert_eq!("16/B374D848".parse::<Lsn>().unwrap(), Lsn(0x16_B374_D848));
        assert_eq!("00000000/01500790".parse::<Lsn>().unwrap(), Lsn(0x150_0790));
        assert_eq!("0/abc".parse::<Lsn>().unwrap(), Lsn(0xABC));
        for bad in [
            "",
            "/",
            "1/",
            "/1",
            "1/2/3",
            "x/1",
            "123456789/0",
            "1 /2",
            "+1/2",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn segment_names_match_postgres() {
        let s = WalSegSize::DEFAULT;
        let seg = Lsn(0x400_0000).segno(s);
        assert_eq!(seg.file_name(TimelineId(1), s), "000000010000000000000004");
        // 16 MiB: 256 segments per xlogid.
        assert_eq!(
            SegNo(0x1FF).file_name(TimelineId(3), s),
            "0000000300000001000000FF"
        );
        assert_eq!(
            SegNo::parse_file_name("0000000300000001000000FF", s),
            Some((TimelineId(3), SegNo(0x1FF)))
        );
        assert_eq!(SegNo::parse_file_name("000000030000000100000100", s), None);
        assert_eq!(SegNo::parse_file_name("00000003000000010000000G", s), None);
        assert_eq!(TimelineId(10).history_file_name(), "0000000A.history");
    }

    #[test]
    fn segment_sizes_are_postgres_ones() {
        assert!(WalSegSize::new(1 << 20).is_ok());
        assert!(WalSegSize::new(1 << 30).is_ok());
        assert!(WalSegSize::new(3 << 20).is_err());
        assert!(WalSegSize::new(1 << 19).is_err());
        assert!(WalSegSize::new(1 << 31).is_err());
    }

    #[test]
    fn no_segment_follows_the_last_one() {
        for shift in 20..=30 {
            let size = WalSegSize::new(1 << shift).unwrap();
            let last = SegNo::last(size);
            assert_eq!(last.0, (u64::MAX >> shift), "{size:?}");
            assert_eq!(last.start_lsn(size).segno(size), last);
            assert_eq!(last.checked_next(size), None, "{size:?}");
            assert_eq!(SegNo(last.0 - 1).checked_next(size), Some(last));
            assert_eq!(SegNo(0).checked_next(size), Some(SegNo(1)));
        }
        // The last file name is still one PostgreSQL could write.
        let s = WalSegSize::DEFAULT;
        assert_eq!(
            SegNo::last(s).file_name(TimelineId(1), s),
            "00000001FFFFFFFF000000FF"
        );
    }

    proptest::proptest! {
        #[test]
        fn lsn_text_round_trips(v: u64) {
            proptest::prop_assert_eq!(Lsn(v).to_string().parse::<Lsn>().unwrap(), Lsn(v));
        }

        #[test]
        fn file_names_round_trip(seg in 0u64..(1u64 << 34), tli in 1u32..u32::MAX, shift in 20u32..=30) {
            let size = WalSegSize::new(1 << shift).unwrap();
            let name = SegNo(seg).file_name(TimelineId(tli), size);
            proptest::prop_assert_eq!(SegNo::parse_file_name(&name, size), Some((TimelineId(tli), SegNo(seg))));
        }
    }
}
