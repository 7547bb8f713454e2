//! Generic `( name value, ... )` options of CREATE_REPLICATION_SLOT and
//! BASE_BACKUP, checked as PostgreSQL 15 checks them (duplicates, unknown
//! names, booleans as `defGetBoolean` reads them).

use crate::replication::sqlstate::{
    PgError, INTERNAL_ERROR, INVALID_PARAMETER_VALUE, SYNTAX_ERROR,
};

/// The value of a generic option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptValue {
    Ident(String),
    Str(String),
    Num(u64),
}

impl OptValue {
    fn text(&self) -> String {
        match self {
            OptValue::Ident(s) | OptValue::Str(s) => s.clone(),
            OptValue::Num(n) => n.to_string(),
        }
    }
}

type Opts = [(String, Option<OptValue>)];

/// `defGetBoolean`: no value = true; 1/0; true/false/on/off/yes/no.
fn boolean(name: &str, v: &Option<OptValue>) -> Result<bool, PgError> {
    let bad = || PgError::error(SYNTAX_ERROR, format!("{name} requires a Boolean value"));
    match v {
        None => Ok(true),
        Some(OptValue::Num(0)) => Ok(false),
        Some(OptValue::Num(1)) => Ok(true),
        Some(OptValue::Num(_)) => Err(bad()),
        Some(v) => match v.text().to_ascii_lowercase().as_str() {
            "true" | "on" | "yes" => Ok(true),
            "false" | "off" | "no" => Ok(false),
            _ => Err(bad()),
        },
    }
}

fn string(name: &str, v: &Option<OptValue>) -> Result<String, PgError> {
    v.as_ref()
        .map(OptValue::text)
        .ok_or_else(|| PgError::error(SYNTAX_ERROR, format!("{name} requires a parameter")))
}

fn check_duplicate(seen: &mut Vec<String>, name: &str, message: &str) -> Result<(), PgError> {
    if seen.iter().any(|s| s == name) {
        return Err(PgError::error(SYNTAX_ERROR, message.replace("%s", name)));
    }
    seen.push(name.to_string());
    Ok(())
}

/// The options of CREATE_REPLICATION_SLOT ... PHYSICAL: only `reserve_wal`.
pub fn physical_slot_options(opts: &Opts) -> Result<bool, PgError> {
    let mut seen = Vec::new();
    let mut reserve = false;
    for (name, v) in opts {
        check_duplicate(&mut seen, name, "conflicting or redundant options")?;
        match name.as_str() {
            "reserve_wal" => reserve = boolean(name, v)?,
            _ => {
                return Err(PgError::error(
                    INTERNAL_ERROR,
                    format!("unrecognized option: {name}"),
                ))
            }
        }
    }
    Ok(reserve)
}

/// `CHECKPOINT 'fast' | 'spread' | 'last'`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckpointMode {
    /// Checkpoint at once, at full IO speed (`pg_basebackup -c fast`).
    Fast,
    /// Let the checkpoint spread its writes (PostgreSQL's default).
    #[default]
    Spread,
    /// walrep's `'last'`: no new checkpoint; copy the last completed one
    /// (pinned for the backup), so the backup starts at once whatever the
    /// data size. A fresh one only when the node has none yet.
    Last,
}

/// BASE_BACKUP's options (PostgreSQL 15 names and defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseBackupOptions {
    /// `LABEL`: written into `backup_label`.
    pub label: String,
    /// `PROGRESS`: estimate the total size first and send `p` messages.
    pub progress: bool,
    /// `CHECKPOINT`: PostgreSQL's fast or spread starting checkpoint;
    /// accepted for pg_basebackup, walrep checkpoints the same way for both.
    pub checkpoint: CheckpointMode,
    /// Wait for the WAL of the backup to be archived.
    pub wait: bool,
    /// Include the WAL in the tar (`-X fetch`).
    pub wal: bool,
    /// kB/s, 0 = unlimited.
    pub max_rate_kbps: u64,
    /// `TABLESPACE_MAP`: include a `tablespace_map` file; accepted and
    /// ignored (walrep has no tablespaces).
    pub tablespace_map: bool,
    /// `VERIFY_CHECKSUMS`: verify data page checksums while reading;
    /// accepted and ignored (walrep has no PostgreSQL pages; its files
    /// carry their own CRCs).
    pub verify_checksums: bool,
    /// `yes`, `no` or `force-encode`.
    pub manifest: String,
    /// `MANIFEST_CHECKSUMS`: the manifest's per-file checksum algorithm
    /// (`CRC32C` by default, `NONE`, `SHA256`, ...).
    pub manifest_checksums: String,
    /// `TARGET`: where the server puts the backup; only `client` is
    /// supported.
    pub target: Option<String>,
    /// `TARGET_DETAIL`: e.g. the server directory of `TARGET 'server'`.
    pub target_detail: Option<String>,
    /// `COMPRESSION`: server-side compression; refused unless `none`.
    pub compression: Option<String>,
    /// `COMPRESSION_DETAIL`: level and options of that compression.
    pub compression_detail: Option<String>,
    /// walrep's `PARALLEL n`: the snapshot is split in `n` parts; this
    /// connection sends part 0 and the others join with `JOIN`/`PART`.
    pub parallel: u32,
    /// walrep's `JOIN 'token'`: send one part of a running parallel backup.
    pub join: Option<String>,
    /// walrep's `PART k` with `JOIN`: which part (1 to n-1).
    pub part: u32,
    /// walrep's `RESUMABLE`: the first result set carries a `backup_id`,
    /// and if the backup fails its pinned checkpoint is kept for a while
    /// under that id so `RESUME` can finish it.
    pub resumable: bool,
    /// walrep's `RESUME 'id'` (and `SKIP_CHUNKS`): finish an interrupted
    /// backup from the same pinned checkpoint (no new checkpoint).
    pub resume: Option<Box<ResumeRequest>>,
}

/// `RESUME 'id', SKIP_CHUNKS '0-3,7'`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumeRequest {
    /// The interrupted backup's `backup_id`.
    pub id: String,
    /// Snapshot chunks the client already holds intact, not sent again.
    pub skip_chunks: Vec<u32>,
}

/// Most parts of a parallel backup (each is a connection).
pub const MAX_PARALLEL: u64 = 64;

impl Default for BaseBackupOptions {
    fn default() -> Self {
        BaseBackupOptions {
            label: "base backup".into(),
            progress: false,
            checkpoint: CheckpointMode::Spread,
            wait: true,
            wal: false,
            max_rate_kbps: 0,
            tablespace_map: false,
            verify_checksums: true,
            manifest: "no".into(),
            manifest_checksums: "CRC32C".into(),
            target: None,
            target_detail: None,
            compression: None,
            compression_detail: None,
            parallel: 1,
            join: None,
            part: 0,
            resumable: false,
            resume: None,
        }
    }
}

impl BaseBackupOptions {
    /// Check and collect the options, with PostgreSQL's errors.
    pub(crate) fn from_options(opts: &Opts) -> Result<BaseBackupOptions, PgError> {
        let mut o = BaseBackupOptions::default();
        let mut seen = Vec::new();
        for (name, v) in opts {
            check_duplicate(&mut seen, name, "duplicate option \"%s\"")?;
            o.set(name, v)?;
        }
        if o.join.is_some() != (o.part > 0) || (o.join.is_some() && o.parallel > 1) {
            return Err(PgError::error(
                SYNTAX_ERROR,
                "JOIN and PART go together, and not with PARALLEL",
            ));
        }
        if o.join.is_some() && (o.resume.is_some() || o.resumable) {
            return Err(PgError::error(
                SYNTAX_ERROR,
                "JOIN does not go with RESUME or RESUMABLE (the leader's backup is resumed)",
            ));
        }
        if o.resume.as_ref().is_some_and(|r| r.id.is_empty()) {
            return Err(PgError::error(
                SYNTAX_ERROR,
                "SKIP_CHUNKS needs RESUME 'backup_id': only a resumed backup has chunks already copied",
            ));
        }
        Ok(o)
    }

    fn set(&mut self, name: &str, v: &Option<OptValue>) -> Result<(), PgError> {
        match name {
            "label" => self.label = string(name, v)?,
            "progress" => self.progress = boolean(name, v)?,
            "checkpoint" => self.checkpoint = checkpoint(&string(name, v)?)?,
            "wait" => self.wait = boolean(name, v)?,
            "wal" => self.wal = boolean(name, v)?,
            "max_rate" => self.max_rate_kbps = max_rate(v)?,
            "tablespace_map" => self.tablespace_map = boolean(name, v)?,
            "verify_checksums" => self.verify_checksums = boolean(name, v)?,
            "manifest" => self.manifest = manifest(&string(name, v)?)?,
            "manifest_checksums" => self.manifest_checksums = string(name, v)?,
            "target" => self.target = Some(string(name, v)?),
            "target_detail" => self.target_detail = Some(string(name, v)?),
            "compression" => self.compression = Some(string(name, v)?),
            "compression_detail" => self.compression_detail = Some(string(name, v)?),
            "parallel" => self.parallel = ranged(name, v, 1, MAX_PARALLEL)?,
            "join" => self.join = Some(string(name, v)?),
            "part" => self.part = ranged(name, v, 1, MAX_PARALLEL - 1)?,
            "resumable" => self.resumable = boolean(name, v)?,
            "resume" => self.resume.get_or_insert_default().id = string(name, v)?,
            "skip_chunks" => {
                self.resume.get_or_insert_default().skip_chunks = chunk_list(&string(name, v)?)?
            }
            _ => {
                return Err(PgError::error(
                    SYNTAX_ERROR,
                    format!("unrecognized base backup option: \"{name}\""),
                ))
            }
        }
        Ok(())
    }
}

fn checkpoint(s: &str) -> Result<CheckpointMode, PgError> {
    match s.to_ascii_lowercase().as_str() {
        "fast" => Ok(CheckpointMode::Fast),
        "spread" => Ok(CheckpointMode::Spread),
        "last" => Ok(CheckpointMode::Last),
        _ => Err(PgError::error(
            INVALID_PARAMETER_VALUE,
            format!("unrecognized checkpoint type: \"{s}\""),
        )),
    }
}

/// Most chunk numbers one `SKIP_CHUNKS` may name (a snapshot has at most
/// as many chunks as `checkpoint_chunks` allows).
pub const MAX_SKIP_CHUNKS: usize = 1 << 16;

/// `SKIP_CHUNKS`: comma-separated chunk numbers and inclusive ranges
/// (`0-3,7`), ascending; `""` is none.
pub fn chunk_list(s: &str) -> Result<Vec<u32>, PgError> {
    let bad = |why: String| {
        PgError::error(
            INVALID_PARAMETER_VALUE,
            format!(
                "invalid SKIP_CHUNKS \"{}\": {why}",
                s.chars().take(64).collect::<String>()
            ),
        )
    };
    let mut out: Vec<u32> = Vec::new();
    for item in s.split(',').filter(|i| !i.is_empty()) {
        let (a, b) = item.split_once('-').unwrap_or((item, item));
        let num = |t: &str| {
            t.parse::<u32>()
                .map_err(|_| bad(format!("\"{t}\" is not a chunk number")))
        };
        let (a, b) = (num(a)?, num(b)?);
        if b < a || out.last().is_some_and(|l| *l >= a) {
            return Err(bad("chunk numbers must ascend".into()));
        }
        if out.len() + (b - a) as usize >= MAX_SKIP_CHUNKS {
            return Err(bad(format!("more than {MAX_SKIP_CHUNKS} chunks")));
        }
        out.extend(a..=b);
    }
    Ok(out)
}

/// The text of [`chunk_list`] for ascending `chunks`.
pub fn chunk_list_text(chunks: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < chunks.len() {
        let mut j = i;
        while j + 1 < chunks.len() && chunks[j + 1] == chunks[j] + 1 {
            j += 1;
        }
        parts.push(match i == j {
            true => chunks[i].to_string(),
            false => format!("{}-{}", chunks[i], chunks[j]),
        });
        i = j + 1;
    }
    parts.join(",")
}

fn manifest(s: &str) -> Result<String, PgError> {
    let l = s.to_ascii_lowercase();
    match l.as_str() {
        "yes" | "true" | "on" | "1" => Ok("yes".into()),
        "no" | "false" | "off" | "0" => Ok("no".into()),
        "force-encode" => Ok(l),
        _ => Err(PgError::error(
            INVALID_PARAMETER_VALUE,
            format!("unrecognized manifest option: \"{s}\""),
        )),
    }
}

/// A numeric option within `min ..= max`.
fn ranged(name: &str, v: &Option<OptValue>, min: u64, max: u64) -> Result<u32, PgError> {
    let Some(OptValue::Num(n)) = v else {
        return Err(PgError::error(
            SYNTAX_ERROR,
            format!("{name} requires a numeric value"),
        ));
    };
    if !(min..=max).contains(n) {
        return Err(PgError::error(
            "22003",
            format!("{n} is outside the valid range for parameter \"{name}\" ({min} .. {max})"),
        ));
    }
    Ok(*n as u32)
}

/// MAX_RATE in kB/s: PostgreSQL's range 32 .. 1048576.
fn max_rate(v: &Option<OptValue>) -> Result<u64, PgError> {
    let Some(OptValue::Num(n)) = v else {
        return Err(PgError::error(
            SYNTAX_ERROR,
            "max_rate requires a numeric value",
        ));
    };
    if !(32..=1_048_576).contains(n) {
        return Err(PgError::error(
            "22003",
            format!("{n} is outside the valid range for parameter \"max_rate\" (32 .. 1048576)"),
        ));
    }
    Ok(*n)
}
