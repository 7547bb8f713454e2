//! `backup_label`: the first file of a base backup, with PostgreSQL 15's
//! fields and wording, so tools and people reading it find what they know:
//!
//! ```text
//! START WAL LOCATION: 0/2000028 (file 000000010000000000000002)
//! CHECKPOINT LOCATION: 0/2000060
//! BACKUP METHOD: streamed
//! BACKUP FROM: primary
//! START TIME: 2024-05-01 12:00:00 UTC
//! LABEL: pg_basebackup base backup
//! START TIMELINE: 1
//! ```

use std::fmt::Write as _;

use crate::{Lsn, TimelineId, WalSegSize};

/// The file name inside the data directory.
pub const BACKUP_LABEL_FILE: &str = "backup_label";

/// Longest label accepted (PostgreSQL's MAXPGPATH).
pub const MAX_LABEL_LEN: usize = 1024;

/// The contents of `backup_label`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupLabel {
    /// Where redo starts: the redo point of the backup's checkpoint.
    pub start: Lsn,
    /// The checkpoint record the copy recovers from.
    pub checkpoint: Lsn,
    /// Timeline of `start`.
    pub start_tli: TimelineId,
    /// Taken from a standby (PostgreSQL's `BACKUP FROM: standby`).
    pub from_standby: bool,
    /// Seconds since the Unix epoch when the backup started.
    pub start_time_unix: u64,
    /// The LABEL option.
    pub label: String,
}

/// Why a `backup_label` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("invalid data in file \"backup_label\": {0}")]
    Invalid(String),
}

impl BackupLabel {
    /// The text, with the start segment's file name computed for `seg_size`.
    pub fn to_text(&self, seg_size: WalSegSize) -> String {
        let file = self
            .start
            .segno(seg_size)
            .file_name(self.start_tli, seg_size);
        let mut s = String::new();
        let _ = writeln!(s, "START WAL LOCATION: {} (file {file})", self.start);
        let _ = writeln!(s, "CHECKPOINT LOCATION: {}", self.checkpoint);
        s.push_str("BACKUP METHOD: streamed\n");
        let from = if self.from_standby {
            "standby"
        } else {
            "primary"
        };
        let _ = writeln!(s, "BACKUP FROM: {from}");
        let _ = writeln!(s, "START TIME: {}", format_utc(self.start_time_unix));
        let _ = writeln!(s, "LABEL: {}", self.label);
        let _ = writeln!(s, "START TIMELINE: {}", self.start_tli.0);
        s
    }

    /// Read the fields PostgreSQL's read_backup_label reads (the start
    /// location and its file, the checkpoint, the start timeline); the
    /// others are informational.
    pub fn parse(text: &str) -> Result<BackupLabel, LabelError> {
        let bad = |m: String| LabelError::Invalid(m);
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
                .ok_or_else(|| bad(format!("no {name} line")))
        };
        let start_line = field("START WAL LOCATION")?;
        let (start, rest) = start_line
            .split_once(' ')
            .ok_or_else(|| bad(format!("START WAL LOCATION {start_line:?}")))?;
        let start: Lsn = start
            .parse()
            .map_err(|_| bad(format!("START WAL LOCATION {start:?}")))?;
        let file = rest
            .strip_prefix("(file ")
            .and_then(|r| r.strip_suffix(')'))
            .filter(|f| f.len() == 24 && f.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| bad(format!("START WAL LOCATION file {rest:?}")))?;
        let file_tli = u32::from_str_radix(&file[..8], 16)
            .map_err(|_| bad(format!("START WAL LOCATION file {file:?}")))?;
        let checkpoint = field("CHECKPOINT LOCATION")?
            .parse()
            .map_err(|_| bad("CHECKPOINT LOCATION".into()))?;
        let start_tli = match field("START TIMELINE") {
            Ok(t) => TimelineId(
                t.parse()
                    .map_err(|_| bad(format!("START TIMELINE {t:?}")))?,
            ),
            Err(_) => TimelineId(file_tli),
        };
        if start_tli.0 != file_tli {
            return Err(bad(format!(
                "START TIMELINE {} differs from the timeline of {file}",
                start_tli.0
            )));
        }
        Ok(BackupLabel {
            start,
            checkpoint,
            start_tli,
            from_standby: field("BACKUP FROM").is_ok_and(|f| f == "standby"),
            start_time_unix: 0,
            label: field("LABEL").unwrap_or_default().to_string(),
        })
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` (PostgreSQL's `%Y-%m-%d %H:%M:%S %Z` in UTC).
pub fn format_utc(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Howard Hinnant's days-to-civil: days since 1970-01-01 to (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_postgres_shaped_and_parses_back() {
        let l = BackupLabel {
            start: Lsn(0x2000028),
            checkpoint: Lsn(0x2000060),
            start_tli: TimelineId(1),
            from_standby: false,
            start_time_unix: 1_714_564_800,
            label: "pg_basebackup base backup".into(),
        };
        let text = l.to_text(WalSegSize::DEFAULT);
        assert_eq!(
            text,
            "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
             CHECKPOINT LOCATION: 0/2000060\n\
             BACKUP METHOD: streamed\n\
             BACKUP FROM: primary\n\
             START TIME: 2024-05-01 12:00:00 UTC\n\
             LABEL: pg_basebackup base backup\n\
             START TIMELINE: 1\n"
        );
        let back = BackupLabel::parse(&text).unwrap();
        assert_eq!(back.start, l.start);
        assert_eq!(back.checkpoint, l.checkpoint);
        assert_eq!(back.start_tli, l.start_tli);
        assert_eq!(back.label, l.label);
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(4_102_444_799), "2099-12-31 23:59:59 UTC");
    }

    #[test]
    fn garbage_is_refused() {
        for t in [
            "",
            "START WAL LOCATION: x (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/1\n",
            "START WAL LOCATION: 0/1 (file 00000001)\nCHECKPOINT LOCATION: 0/1\n",
            "START WAL LOCATION: 0/1 (file 000000010000000000000002)\n",
            "START WAL LOCATION: 0/1 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/1\nSTART TIMELINE: 2\n",
        ] {
            assert!(BackupLabel::parse(t).is_err(), "{t:?}");
        }
    }
}
