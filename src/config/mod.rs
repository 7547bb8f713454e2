//! `walrep.toml`: every parameter of a node, named after PostgreSQL's where
//! PostgreSQL has one, with its default, its unit and its documentation.
//!
//! The file is read with serde and unknown keys are rejected with the key's
//! name; `-c name=value` overrides any parameter, as with `postgres -c`.
//! [`PARAMETERS`] is the single list the generated `walrep.toml` template and
//! `docs/configuration.md` are checked against. [`conninfo`] parses libpq
//! connection strings (`primary_conninfo`) with libpq's rules.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

pub mod conninfo;
pub mod status_url;

pub use crate::security::roles::{RedisAccess, RoleEntry};
pub use crate::security::REDACTED;

/// Errors reading or validating configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `walrep.toml` could not be read.
    #[error("could not read configuration file {path}: {source}")]
    Read {
        /// The configuration file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The text is not valid TOML, or a value is wrong in a way no single
    /// parameter can be blamed for.
    #[error("invalid configuration in {origin}: {message}")]
    Invalid {
        /// Where the text came from: the file's path, or `-c` options.
        origin: String,
        /// The parser's message.
        message: String,
    },
    /// A key that is no parameter (PostgreSQL's "unrecognized
    /// configuration parameter"); holds the key, so a typo is found at
    /// start-up rather than silently ignored.
    #[error("unrecognized configuration parameter \"{0}\"")]
    UnknownParameter(String),
    /// A `-c` option without `=`; holds the option as given.
    #[error("invalid -c option {0:?}: expected name=value")]
    BadOverride(String),
    /// A parameter's value has the wrong type or is out of range, alone
    /// or together with others ([`Config::validate`]).
    #[error("invalid value for parameter \"{name}\": {message}")]
    BadValue {
        /// The parameter.
        name: String,
        /// What is wrong with its value.
        message: String,
    },
}

/// `synchronous_commit`: what a write waits for before its client is told "OK".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SynchronousCommit {
    /// Answer at once; the WAL writer flushes within `wal_writer_delay`.
    /// A crash can lose the last writes, never corrupt the store.
    Off,
    /// Wait for the local WAL flush only.
    Local,
    /// Also wait until the synchronous standbys have written the WAL (not flushed).
    RemoteWrite,
    /// Also wait until the synchronous standbys have flushed the WAL (PostgreSQL's `on`).
    On,
    /// Also wait until the synchronous standbys have applied the WAL, so a read
    /// on them sees the write.
    RemoteApply,
}

impl SynchronousCommit {
    /// The values, for the message of a bad one.
    pub(crate) const NAMES: &'static str = "off, local, remote_write, on, remote_apply";

    /// PostgreSQL's spelling (`remote_apply`), as SHOW prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            SynchronousCommit::Off => "off",
            SynchronousCommit::Local => "local",
            SynchronousCommit::RemoteWrite => "remote_write",
            SynchronousCommit::On => "on",
            SynchronousCommit::RemoteApply => "remote_apply",
        }
    }
}

impl FromStr for SynchronousCommit {
    type Err = String;
    /// PostgreSQL's spellings, including its boolean aliases for `on`/`off`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "off" | "false" | "no" | "0" => Ok(SynchronousCommit::Off),
            "local" => Ok(SynchronousCommit::Local),
            "remote_write" => Ok(SynchronousCommit::RemoteWrite),
            "on" | "true" | "yes" | "1" => Ok(SynchronousCommit::On),
            "remote_apply" => Ok(SynchronousCommit::RemoteApply),
            _ => Err(format!(
                "invalid value for parameter \"synchronous_commit\": \"{s}\" (available values: {})",
                Self::NAMES
            )),
        }
    }
}

impl fmt::Display for SynchronousCommit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `archive_mode`: whether completed segments are handed to `archive_command`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveMode {
    /// No archiving; `.ready` files are not made.
    Off,
    /// Archive on a primary; a standby archives only after promotion.
    On,
    /// Archive on standbys too (every segment received or restored).
    Always,
}

impl FromStr for ArchiveMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "off" | "false" | "no" => Ok(ArchiveMode::Off),
            "on" | "true" | "yes" => Ok(ArchiveMode::On),
            "always" => Ok(ArchiveMode::Always),
            _ => Err(format!("\"{s}\" (available values: off, on, always)")),
        }
    }
}

impl ArchiveMode {
    /// PostgreSQL's spelling (`off`, `on`, `always`).
    pub fn as_str(self) -> &'static str {
        match self {
            ArchiveMode::Off => "off",
            ArchiveMode::On => "on",
            ArchiveMode::Always => "always",
        }
    }
}

/// `recovery_target_timeline`: which timeline a standby follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryTargetTimeline {
    /// Follow the newest timeline found in the archive or upstream (the default).
    Latest,
    /// Stay on the timeline of the checkpoint we started from.
    Current,
    /// Recover along the history of this timeline.
    Id(u32),
}

impl FromStr for RecoveryTargetTimeline {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "latest" => Ok(RecoveryTargetTimeline::Latest),
            "current" => Ok(RecoveryTargetTimeline::Current),
            n => match n.parse::<u32>() {
                Ok(id) if id >= 1 => Ok(RecoveryTargetTimeline::Id(id)),
                _ => Err(format!(
                    "\"{s}\": recovery_target_timeline is not a valid number (use latest, current or a timeline id)"
                )),
            },
        }
    }
}

impl fmt::Display for RecoveryTargetTimeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryTargetTimeline::Latest => f.write_str("latest"),
            RecoveryTargetTimeline::Current => f.write_str("current"),
            RecoveryTargetTimeline::Id(n) => write!(f, "{n}"),
        }
    }
}

/// Implements serde for the enums above through their text form, so the file
/// says `synchronous_commit = "on"` as postgresql.conf would.
macro_rules! text_serde {
    ($t:ty, $display:expr) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let v = TextOrScalar::deserialize(d)?;
                v.0.parse().map_err(de::Error::custom)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let f: fn(&$t) -> String = $display;
                s.serialize_str(&f(self))
            }
        }
    };
}
text_serde!(SynchronousCommit, |v| v.as_str().to_string());
text_serde!(ArchiveMode, |v| v.as_str().to_string());
text_serde!(RecoveryTargetTimeline, |v| v.to_string());

/// A TOML string, integer or boolean, kept as text (how `-c` values and
/// postgresql.conf values arrive).
struct TextOrScalar(String);

impl<'de> Deserialize<'de> for TextOrScalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = TextOrScalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, integer or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TextOrScalar, E> {
                Ok(TextOrScalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<TextOrScalar, E> {
                Ok(TextOrScalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TextOrScalar, E> {
                Ok(TextOrScalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<TextOrScalar, E> {
                Ok(TextOrScalar(if v { "on" } else { "off" }.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A boolean parameter: TOML `true`/`false` or PostgreSQL's `on`, `off`,
/// `yes`, `no`, `1`, `0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bool(pub bool);

impl<'de> Deserialize<'de> for Bool {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = TextOrScalar::deserialize(d)?;
        match v.0.to_ascii_lowercase().as_str() {
            "on" | "true" | "yes" | "1" => Ok(Bool(true)),
            "off" | "false" | "no" | "0" => Ok(Bool(false)),
            other => Err(de::Error::custom(format!(
                "\"{other}\" is not a boolean (use on or off)"
            ))),
        }
    }
}

impl Serialize for Bool {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(self.0)
    }
}

/// A time parameter. Text takes PostgreSQL's units (`ms`, `s`, `min`, `h`,
/// `d`); a bare integer is in the parameter's base unit `BASE_MS`.
/// Negative values are kept as `None` ("disabled", PostgreSQL's -1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time<const BASE_MS: u64>(pub Option<Duration>);

impl<const BASE_MS: u64> Time<BASE_MS> {
    /// A time of `ms` milliseconds, whatever the base unit (the base unit
    /// only says how a bare number in the file is read).
    pub const fn ms(ms: u64) -> Self {
        Time(Some(Duration::from_millis(ms)))
    }
    /// -1: the feature the parameter bounds is off (or waits forever).
    pub const DISABLED: Self = Time(None);

    /// The duration, or `None` when the parameter is -1 (disabled).
    pub fn get(self) -> Option<Duration> {
        self.0
    }
}

/// Parse a PostgreSQL time value: `250ms`, `5s`, `5min`, `1h`, `1d`, or a
/// bare number in `base_ms` milliseconds; `-1` means disabled.
pub fn parse_time(text: &str, base_ms: u64) -> Result<Option<Duration>, String> {
    let t = text.trim();
    if t == "-1" {
        return Ok(None);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("\"{text}\" is not a valid time (e.g. 200ms, 5s, 5min)"))?;
    let unit_ms = match unit.trim() {
        "" => base_ms,
        "ms" => 1,
        "s" => 1_000,
        "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        u => {
            return Err(format!(
                "invalid unit {u:?} in \"{text}\": valid units are ms, s, min, h, d"
            ))
        }
    };
    n.checked_mul(unit_ms)
        .map(|ms| Some(Duration::from_millis(ms)))
        .ok_or_else(|| format!("\"{text}\" is out of range"))
}

fn format_time(d: Option<Duration>) -> String {
    match d {
        None => "-1".to_string(),
        Some(d) => {
            let ms = d.as_millis() as u64;
            if ms == 0 {
                "0".into()
            } else if ms % 60_000 == 0 {
                format!("{}min", ms / 60_000)
            } else if ms % 1000 == 0 {
                format!("{}s", ms / 1000)
            } else {
                format!("{ms}ms")
            }
        }
    }
}

impl<'de, const B: u64> Deserialize<'de> for Time<B> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = TextOrScalar::deserialize(d)?;
        parse_time(&v.0, B).map(Time).map_err(de::Error::custom)
    }
}

impl<const B: u64> Serialize for Time<B> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_time(self.0))
    }
}

impl<const B: u64> fmt::Display for Time<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_time(self.0))
    }
}

/// A size parameter. Text takes PostgreSQL's units (`B`, `kB`, `MB`, `GB`,
/// `TB`); a bare integer is in megabytes, as for PostgreSQL's WAL sizes.
/// `-1` means unlimited / disabled (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub Option<u64>);

impl Size {
    /// A size of `mb` mebibytes.
    pub const fn mb(mb: u64) -> Size {
        Size(Some(mb << 20))
    }
    /// -1: no limit.
    pub const UNLIMITED: Size = Size(None);
    /// The size in bytes, or `None` when unlimited (-1).
    pub fn bytes(self) -> Option<u64> {
        self.0
    }
}

/// Parse a PostgreSQL size: `512kB`, `16MB`, `1GB`, or a bare number of megabytes.
pub fn parse_size(text: &str) -> Result<Option<u64>, String> {
    let t = text.trim();
    if t == "-1" {
        return Ok(None);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("\"{text}\" is not a valid size (e.g. 16MB, 1GB)"))?;
    let mult: u64 = match unit.trim() {
        "" | "MB" => 1 << 20,
        "B" => 1,
        "kB" => 1 << 10,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        u => {
            return Err(format!(
                "invalid unit {u:?} in \"{text}\": valid units are B, kB, MB, GB, TB"
            ))
        }
    };
    n.checked_mul(mult)
        .map(Some)
        .ok_or_else(|| format!("\"{text}\" is out of range"))
}

/// A size as the file would say it: the largest unit that divides it
/// (`16MB`, `512kB`), `-1` for unlimited; [`parse_size`] reads it back.
pub(crate) fn format_size(bytes: Option<u64>) -> String {
    match bytes {
        None => "-1".into(),
        Some(0) => "0".into(),
        Some(b) if b % (1 << 30) == 0 => format!("{}GB", b >> 30),
        Some(b) if b % (1 << 20) == 0 => format!("{}MB", b >> 20),
        Some(b) if b % (1 << 10) == 0 => format!("{}kB", b >> 10),
        Some(b) => format!("{b}B"),
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = TextOrScalar::deserialize(d)?;
        parse_size(&v.0).map(Size).map_err(de::Error::custom)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_size(self.0))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_size(self.0))
    }
}

/// Authentication method of an `[[hba]]` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HbaMethod {
    /// Let the connection in without a password (for loopback and
    /// trusted networks only).
    #[serde(rename = "trust")]
    Trust,
    /// SCRAM-SHA-256 against the role's verifier; a role without one is
    /// refused.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// Refuse the connection.
    #[serde(rename = "reject")]
    Reject,
}

/// The connection type of an `[[hba]]` line (`pg_hba.conf`'s first column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum HbaConnection {
    /// TLS or not.
    #[default]
    #[serde(rename = "host")]
    Host,
    /// TLS only.
    #[serde(rename = "hostssl")]
    HostSsl,
    /// Without TLS only.
    #[serde(rename = "hostnossl")]
    HostNoSsl,
}

/// One line of the replication connection allow-list, like a `pg_hba.conf`
/// line for the `replication` database: the first line whose connection
/// type, address range and user match decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HbaEntry {
    /// `host` (the default), `hostssl` or `hostnossl`.
    #[serde(rename = "type", default, skip_serializing_if = "is_host")]
    pub connection: HbaConnection,
    /// An address range in CIDR notation (`127.0.0.1/32`, `10.0.0.0/8`, `::1/128`).
    pub address: String,
    /// `trust`, `scram-sha-256` or `reject`.
    pub method: HbaMethod,
    /// The user this line applies to; `all` matches every user.
    #[serde(default = "all_users")]
    pub user: String,
    /// PostgreSQL's `clientcert=verify-ca`: the client must also present a
    /// certificate that chains to `ssl_ca_file` (TLS lines only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clientcert: bool,
}

fn is_host(c: &HbaConnection) -> bool {
    *c == HbaConnection::Host
}

fn all_users() -> String {
    "all".to_string()
}

/// A list parameter given as a list, or as one string (`-c name=value`).
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) if s.trim().is_empty() => Vec::new(),
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// A list parameter as TOML: an empty one as `""`, so that `walrep.toml`
/// lists it among the plain parameters and not as a table.
fn empty_as_text<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
    match v {
        [] => s.serialize_str(""),
        v => v.serialize(s),
    }
}

/// Every parameter of a node. Field names are the parameter names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    // -- Connections
    /// Address the Redis-protocol and replication listeners bind to.
    pub listen_addresses: String,
    /// TCP port of the Redis-protocol (RESP2) front end.
    pub port: u16,
    /// TCP port of the PostgreSQL replication protocol (walsenders, base
    /// backups).
    pub replication_port: u16,
    /// Most concurrent client connections; more are refused with "-ERR max
    /// number of clients reached".
    pub max_connections: u32,
    /// Largest single bulk string (key or value) a client may send; larger
    /// requests are refused and the connection closed.
    pub proto_max_bulk_len: Size,
    /// Most concurrent replication connections (walsenders).
    pub max_wal_senders: u32,
    /// Most replication slots (slots/) this node keeps.
    pub max_replication_slots: u32,
    /// Replication connection allow-list: `[[hba]]` lines with type (host,
    /// hostssl, hostnossl; default host), address (CIDR), method (trust, scram-
    /// sha-256, reject), user (default all) and clientcert (true: a client
    /// certificate chained to ssl_ca_file is also required). The first matching
    /// line decides; no match is refused.
    pub hba: Vec<HbaEntry>,

    // -- Write-ahead log
    /// What a write waits for before it is acknowledged: off, local,
    /// remote_write, on (remote flush) or remote_apply. Without
    /// synchronous_standby_names the remote levels mean local.
    pub synchronous_commit: SynchronousCommit,
    /// How often the WAL writer flushes WAL written with synchronous_commit =
    /// off. A bare number is milliseconds.
    pub wal_writer_delay: Time<1>,
    /// Longest time between automatic checkpoints. A bare number is seconds.
    pub checkpoint_timeout: Time<1000>,
    /// WAL written since the last checkpoint that triggers a new checkpoint.
    pub max_wal_size: Size,
    /// Fraction of the time between checkpoints (and of the WAL that
    /// triggers one) over which an automatic checkpoint spreads its writes,
    /// so it never competes with commits for the disk all at once.
    pub checkpoint_completion_target: f64,
    /// WAL kept for recycling as future segments instead of being removed.
    pub min_wal_size: Size,
    /// Number of chunk files a checkpoint of the store is split into under
    /// base/ (so base backups can copy them in parallel).
    pub checkpoint_chunks: u32,
    /// WAL kept behind the current position for standbys, whatever slots and
    /// checkpoints say.
    pub wal_keep_size: Size,
    /// Most WAL a replication slot may hold back; a slot past it is
    /// invalidated. -1 = unlimited.
    pub max_slot_wal_keep_size: Size,

    // -- Archiving
    /// off, on (archive completed segments on a primary) or always (on standbys
    /// too).
    pub archive_mode: ArchiveMode,
    /// Shell command run for each completed segment; %p = path of the file, %f
    /// = its name. Exit status 0 = archived.
    pub archive_command: String,
    /// Force a segment switch after this long with unarchived WAL (0 = never).
    /// A bare number is seconds.
    pub archive_timeout: Time<1000>,

    // -- Replication: primary side
    /// Standbys that acknowledge synchronous writes: 'FIRST n (a, b)', 'ANY n
    /// (a, b)', 'n (a, b)', 'a, b' or '*', matched against application_name.
    pub synchronous_standby_names: String,
    /// How long a write waits for synchronous standbys before the node degrades
    /// to local commits (-1 = wait forever, as PostgreSQL). A bare number is
    /// milliseconds.
    pub synchronous_standby_timeout: Time<1>,
    /// Close a replication connection silent for this long. A bare number is
    /// milliseconds.
    pub wal_sender_timeout: Time<1>,
    /// An asynchronous walrep standby (no commit waits for it) is sent WAL
    /// at most once per this delay: the flushes of several commits go in
    /// one message (0 = each flush at once, as PostgreSQL). A bare number
    /// is milliseconds.
    pub wal_sender_async_delay: Time<1>,

    // -- Replication: standby side
    /// libpq-style connection string of the upstream: host=... port=...
    /// user=... application_name=... password=...
    pub primary_conninfo: String,
    /// Replication slot to use on the upstream.
    pub primary_slot_name: String,
    /// Shell command that fetches an archived file; %f = file name, %p =
    /// destination path. Non-zero exit = not in the archive; killed by a signal
    /// or timed out = failure.
    pub restore_command: String,
    /// A restore_command running longer than this is killed and counted as a
    /// failure. A bare number is seconds.
    pub restore_command_timeout: Time<1000>,
    /// latest (follow new timelines), current, or a timeline id.
    pub recovery_target_timeline: RecoveryTargetTimeline,
    /// A file whose appearance promotes the standby.
    pub promote_trigger_file: String,
    /// How long to wait before retrying to get WAL after every source failed. A
    /// bare number is milliseconds.
    pub wal_retrieve_retry_interval: Time<1>,
    /// Longest time between standby status updates sent upstream. A bare number
    /// is seconds.
    pub wal_receiver_status_interval: Time<1000>,
    /// Give up on an upstream silent for this long. A bare number is
    /// milliseconds.
    pub wal_receiver_timeout: Time<1>,
    /// Answer reads on a standby.
    pub hot_standby: Bool,
    /// Send hot standby feedback ('h') messages upstream.
    pub hot_standby_feedback: Bool,
    /// Ask a walrep upstream for WAL while it is still flushing it (its
    /// flush position comes along; nothing past it is exposed or applied
    /// here before the upstream confirms it). The upstream sends it early
    /// only while this standby is a candidate in its
    /// `synchronous_standby_names`. Off: only flushed WAL, as
    /// PostgreSQL's walreceiver gets.
    pub wal_receiver_unflushed: Bool,
    /// Nodes a damaged WAL segment may be fetched again from at start-up
    /// (libpq connection strings, asked with WAL_RANGE): a primary has no
    /// standby connected then, so it must be told where they are. A standby
    /// also asks its primary_conninfo.
    #[serde(deserialize_with = "one_or_many", serialize_with = "empty_as_text")]
    pub wal_repair_sources: Vec<String>,

    // -- Security (docs/security.md)
    /// `[[roles]]` of both ports: name, password (a SCRAM-SHA-256 verifier made
    /// by `walrep passwd`, never a clear password), replication (may stream WAL
    /// and take base backups; a role not listed may only through a trust line)
    /// and redis (none, readonly, readwrite or admin: its Redis ACL).
    pub roles: Vec<RoleEntry>,
    /// SCRAM-SHA-256 verifier of the Redis port's default user (`AUTH
    /// <password>`); empty: the default user needs no password (and
    /// protected_mode applies). A role named default overrides it.
    pub requirepass: String,
    /// While the default user has no password, serve only loopback clients
    /// (127.0.0.1, ::1) on the Redis port; others get Redis's DENIED error.
    pub protected_mode: Bool,
    /// Longest time a replication connection may take to send its startup
    /// packet, finish TLS and authenticate. A bare number is seconds.
    pub authentication_timeout: Time<1000>,
    /// Replication connections still authenticating at once, counted apart from
    /// max_wal_senders; when full, the oldest one is closed for the newcomer,
    /// so idle sockets cannot lock standbys out.
    pub max_startup_connections: u32,
    /// Serve TLS on the replication port (answer SSLRequest with S).
    pub ssl: Bool,
    /// PEM certificate chain of the replication port (relative paths are in the
    /// data directory).
    pub ssl_cert_file: String,
    /// PEM private key of ssl_cert_file; should be mode 0600.
    pub ssl_key_file: String,
    /// PEM certificates of the CAs client certificates must chain to (empty: no
    /// client certificates are asked for).
    pub ssl_ca_file: String,
    /// TCP port of the Redis protocol over TLS (0 = off), as Redis's tls-port.
    pub tls_port: u16,
    /// PEM certificate chain of tls_port (empty: ssl_cert_file).
    pub tls_cert_file: String,
    /// PEM private key of tls_cert_file (empty: ssl_key_file).
    pub tls_key_file: String,
    /// Close a Redis client idle for this long (0 = never), as Redis's timeout;
    /// a bare number is seconds. A bare number is seconds.
    pub timeout: Time<1000>,
    /// Most request bytes buffered for one Redis client (a partial request
    /// included); past it the client is closed.
    pub client_query_buffer_limit: Size,
    /// Most reply bytes held for one Redis client: a command whose reply would
    /// grow past it gets an error instead, and a client that does not read is
    /// closed.
    pub client_output_buffer_limit: Size,
    /// Most bytes all Redis clients may hold in query and reply buffers
    /// together; past it the largest clients are closed, as Redis's maxmemory-
    /// clients.
    pub maxmemory_clients: Size,

    // -- Observability
    /// Log filter when RUST_LOG is not set (error, warn, info, debug, trace, or
    /// tracing directives).
    pub log_level: String,
    /// Log each client connection (key-value port) at info, with its id and
    /// peer address, as PostgreSQL's log_connections.
    pub log_connections: Bool,
    /// Log each client disconnection at info, with the session's duration, as
    /// PostgreSQL's log_disconnections.
    pub log_disconnections: Bool,
    /// TCP port of the HTTP /status and /metrics endpoint (0 = off).
    pub status_port: u16,
    /// Address of this node's status pages as other nodes and people should
    /// use it, told to its upstream and downstreams so their pages link
    /// here (empty = http://LISTEN:status_port/; an address that names no
    /// host, such as 0.0.0.0, is replaced by the host the other side sees).
    pub status_advertise_url: String,
    /// Log a warning (and repeat it every minute) while the data
    /// directory's filesystem has less free space than this; -1 = never.
    pub disk_free_warning_size: Size,

    // -- Error handling
    /// After a failure that stops the WAL writer (a failed write or fsync,
    /// a full disk), close client sessions, rerun crash recovery in the
    /// same process and serve again (PostgreSQL's restart_after_crash).
    pub restart_after_crash: Bool,

    // -- High availability (docs/ha.md)
    /// Automatic failover on etcd: this node takes part in the leader race
    /// and fences itself when it cannot renew its lease.
    pub ha_enabled: Bool,
    /// etcd client URLs, comma separated (http://host:port), tried in turn.
    pub ha_endpoints: String,
    /// Prefix of every key in etcd (Patroni's namespace).
    pub ha_namespace: String,
    /// Name of the cluster under ha_namespace (Patroni's scope).
    pub ha_cluster_name: String,
    /// This member's name in etcd; also the application_name it streams
    /// with, so synchronous_standby_names can name it (empty: the
    /// application_name of primary_conninfo).
    pub ha_name: String,
    /// Lease time to live: how long after its last renewal another node may
    /// take over. A bare number is seconds.
    pub ha_ttl: Time<1000>,
    /// Time between two HA cycles. A bare number is seconds.
    pub ha_loop_wait: Time<1000>,
    /// Bound of each etcd request. A bare number is seconds.
    pub ha_retry_timeout: Time<1000>,
    /// How long before the lease can expire the primary stops admitting
    /// and acknowledging writes. A bare number is seconds.
    pub ha_fence_margin: Time<1000>,
    /// Let an asynchronous standby promote when no synchronous standby is
    /// alive (may lose acknowledged writes).
    pub ha_allow_async_failover: Bool,
    /// Never promote this node automatically.
    pub ha_nofailover: Bool,
    /// host:port other members stream from (empty: listen_addresses and
    /// replication_port, when listen_addresses names one host).
    pub ha_repl_address: String,
    /// host:port clients reach this node's Redis port at (empty: derived
    /// like ha_repl_address).
    pub ha_client_address: String,
    /// The leader keeps a physical replication slot for every other member
    /// and members stream on theirs (Patroni's use_slots).
    pub ha_use_slots: Bool,
    /// How long the leader keeps the slot of a member whose key is gone
    /// (Patroni's member_slots_ttl); 0 drops it as soon as the key expires.
    /// A bare number is seconds.
    pub ha_member_slots_ttl: Time<1000>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen_addresses: "127.0.0.1".into(),
            port: 6380,
            replication_port: 5433,
            max_connections: 1000,
            proto_max_bulk_len: Size::mb(64),
            max_wal_senders: 10,
            max_replication_slots: 10,
            hba: vec![
                HbaEntry {
                    connection: HbaConnection::Host,
                    address: "127.0.0.0/8".into(),
                    method: HbaMethod::Trust,
                    user: all_users(),
                    clientcert: false,
                },
                HbaEntry {
                    connection: HbaConnection::Host,
                    address: "::1/128".into(),
                    method: HbaMethod::Trust,
                    user: all_users(),
                    clientcert: false,
                },
            ],
            synchronous_commit: SynchronousCommit::On,
            wal_writer_delay: Time::ms(200),
            checkpoint_timeout: Time::ms(300_000),
            max_wal_size: Size::mb(1024),
            checkpoint_completion_target: 0.9,
            min_wal_size: Size::mb(80),
            checkpoint_chunks: 16,
            wal_keep_size: Size::mb(0),
            max_slot_wal_keep_size: Size::mb(10 * 1024),
            archive_mode: ArchiveMode::Off,
            archive_command: String::new(),
            archive_timeout: Time::ms(0),
            synchronous_standby_names: String::new(),
            synchronous_standby_timeout: Time::DISABLED,
            wal_sender_timeout: Time::ms(60_000),
            wal_sender_async_delay: Time::ms(0),
            primary_conninfo: String::new(),
            primary_slot_name: String::new(),
            restore_command: String::new(),
            restore_command_timeout: Time::ms(60_000),
            recovery_target_timeline: RecoveryTargetTimeline::Latest,
            promote_trigger_file: String::new(),
            wal_retrieve_retry_interval: Time::ms(5_000),
            wal_receiver_status_interval: Time::ms(10_000),
            wal_receiver_timeout: Time::ms(60_000),
            hot_standby: Bool(true),
            hot_standby_feedback: Bool(false),
            wal_receiver_unflushed: Bool(true),
            wal_repair_sources: Vec::new(),
            roles: Vec::new(),
            requirepass: String::new(),
            protected_mode: Bool(true),
            authentication_timeout: Time::ms(60_000),
            max_startup_connections: 16,
            ssl: Bool(false),
            ssl_cert_file: "server.crt".into(),
            ssl_key_file: "server.key".into(),
            ssl_ca_file: String::new(),
            tls_port: 0,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            timeout: Time::ms(0),
            client_query_buffer_limit: Size::mb(1024),
            client_output_buffer_limit: Size::mb(512),
            maxmemory_clients: Size::mb(2048),
            log_level: "info".into(),
            log_connections: Bool(false),
            log_disconnections: Bool(false),
            status_port: 0,
            status_advertise_url: String::new(),
            disk_free_warning_size: Size::mb(1024),
            restart_after_crash: Bool(true),
            ha_enabled: Bool(false),
            ha_endpoints: String::new(),
            ha_namespace: "/walrep".into(),
            ha_cluster_name: "main".into(),
            ha_name: String::new(),
            ha_ttl: Time::ms(10_000),
            ha_loop_wait: Time::ms(1_000),
            ha_retry_timeout: Time::ms(3_000),
            ha_fence_margin: Time::ms(2_000),
            ha_allow_async_failover: Bool(false),
            ha_nofailover: Bool(false),
            ha_repl_address: String::new(),
            ha_client_address: String::new(),
            ha_use_slots: Bool(false),
            ha_member_slots_ttl: Time::ms(30 * 60 * 1000),
        }
    }
}

/// Documentation of one parameter: the template, `--help`-style listings and
/// `docs/configuration.md` are all checked against this list.
pub struct ParamDoc {
    /// The parameter's name, as in the file, in `-c` and in SHOW.
    pub name: &'static str,
    /// The heading it is listed under in the template and the docs
    /// ("Write-ahead log", "Security", ...).
    pub section: &'static str,
    /// One paragraph for operators: what it does, its unit and special
    /// values.
    pub help: &'static str,
}

/// Every parameter, in the order the template lists them.
pub const PARAMETERS: &[ParamDoc] = &[
    ParamDoc { name: "listen_addresses", section: "Connections", help: "Address the Redis-protocol and replication listeners bind to." },
    ParamDoc { name: "port", section: "Connections", help: "TCP port of the Redis-protocol (RESP2) front end." },
    ParamDoc { name: "replication_port", section: "Connections", help: "TCP port of the PostgreSQL replication protocol (walsenders, base backups)." },
    ParamDoc { name: "max_connections", section: "Connections", help: "Most concurrent client connections; more are refused with \"-ERR max number of clients reached\"." },
    ParamDoc { name: "proto_max_bulk_len", section: "Connections", help: "Largest single bulk string (key or value) a client may send; larger requests are refused and the connection closed." },
    ParamDoc { name: "max_wal_senders", section: "Connections", help: "Most concurrent replication connections (walsenders)." },
    ParamDoc { name: "max_replication_slots", section: "Connections", help: "Most replication slots (slots/) this node keeps." },
    ParamDoc { name: "hba", section: "Connections", help: "Replication connection allow-list: [[hba]] lines with type (host, hostssl, hostnossl; default host), address (CIDR), method (trust, scram-sha-256, reject), user (default all) and clientcert (true: a client certificate chained to ssl_ca_file is also required). The first matching line decides; no match is refused." },
    ParamDoc { name: "synchronous_commit", section: "Write-ahead log", help: "What a write waits for before it is acknowledged: off, local, remote_write, on (remote flush) or remote_apply. Without synchronous_standby_names the remote levels mean local." },
    ParamDoc { name: "wal_writer_delay", section: "Write-ahead log", help: "How often the WAL writer flushes WAL written with synchronous_commit = off." },
    ParamDoc { name: "checkpoint_timeout", section: "Write-ahead log", help: "Longest time between automatic checkpoints." },
    ParamDoc { name: "max_wal_size", section: "Write-ahead log", help: "WAL written since the last checkpoint that triggers a new checkpoint." },
    ParamDoc { name: "checkpoint_completion_target", section: "Write-ahead log", help: "Fraction of checkpoint_timeout (and of the WAL that triggers a checkpoint) over which an automatic checkpoint spreads its writes; shutdown, end-of-recovery and requested checkpoints run at full speed." },
    ParamDoc { name: "min_wal_size", section: "Write-ahead log", help: "WAL kept for recycling as future segments instead of being removed." },
    ParamDoc { name: "checkpoint_chunks", section: "Write-ahead log", help: "Number of chunk files a checkpoint of the store is split into under base/ (so base backups can copy them in parallel)." },
    ParamDoc { name: "wal_keep_size", section: "Write-ahead log", help: "WAL kept behind the current position for standbys, whatever slots and checkpoints say." },
    ParamDoc { name: "max_slot_wal_keep_size", section: "Write-ahead log", help: "Most WAL a replication slot may hold back; a slot past it is invalidated, so a forgotten standby cannot fill the disk (PostgreSQL defaults to -1 = unlimited)." },
    ParamDoc { name: "archive_mode", section: "Archiving", help: "off, on (archive completed segments on a primary) or always (on standbys too)." },
    ParamDoc { name: "archive_command", section: "Archiving", help: "Shell command run for each completed segment; %p = path of the file, %f = its name. Exit status 0 = archived." },
    ParamDoc { name: "archive_timeout", section: "Archiving", help: "Force a segment switch after this long with unarchived WAL (0 = never)." },
    ParamDoc { name: "synchronous_standby_names", section: "Replication (primary)", help: "Standbys that acknowledge synchronous writes: 'FIRST n (a, b)', 'ANY n (a, b)', 'n (a, b)', 'a, b' or '*', matched against application_name." },
    ParamDoc { name: "synchronous_standby_timeout", section: "Replication (primary)", help: "How long a write waits for synchronous standbys before the node degrades to local commits (-1 = wait forever, as PostgreSQL)." },
    ParamDoc { name: "wal_sender_timeout", section: "Replication (primary)", help: "Close a replication connection silent for this long." },
    ParamDoc { name: "wal_sender_async_delay", section: "Replication (primary)", help: "An asynchronous walrep standby (no commit waits for it) is sent small flushes (less than 4 kB of WAL waiting) at most once per this delay, the flushes of several commits in one message; larger ones go at once. Its replay lag and key visibility grow by up to the delay while the primary flushes little at a time (0 = each flush at once, as PostgreSQL). 0 by default: at one client with `local` and such a standby, 1ms halved the standby's wake-ups and gained 11 % on a quiet machine, but lost 40-60 % on a loaded one and batched nothing below ~1,000 commits/s, while the lag targets (replay lag and visibility p99 <= 5 ms) have no millisecond to spare; try it with `walrep bench --walrep-setting wal_sender_async_delay=1ms`." },
    ParamDoc { name: "primary_conninfo", section: "Replication (standby)", help: "libpq-style connection string of the upstream: host=... port=... user=... application_name=... password=..." },
    ParamDoc { name: "primary_slot_name", section: "Replication (standby)", help: "Replication slot to use on the upstream." },
    ParamDoc { name: "restore_command", section: "Replication (standby)", help: "Shell command that fetches an archived file; %f = file name, %p = destination path. Non-zero exit = not in the archive; killed by a signal or timed out = failure." },
    ParamDoc { name: "restore_command_timeout", section: "Replication (standby)", help: "A restore_command running longer than this is killed and counted as a failure." },
    ParamDoc { name: "recovery_target_timeline", section: "Replication (standby)", help: "latest (follow new timelines), current, or a timeline id." },
    ParamDoc { name: "promote_trigger_file", section: "Replication (standby)", help: "A file whose appearance promotes the standby." },
    ParamDoc { name: "wal_retrieve_retry_interval", section: "Replication (standby)", help: "How long to wait before retrying to get WAL after every source failed." },
    ParamDoc { name: "wal_receiver_status_interval", section: "Replication (standby)", help: "Longest time between standby status updates sent upstream." },
    ParamDoc { name: "wal_receiver_timeout", section: "Replication (standby)", help: "Give up on an upstream silent for this long." },
    ParamDoc { name: "hot_standby", section: "Replication (standby)", help: "Answer reads on a standby." },
    ParamDoc { name: "hot_standby_feedback", section: "Replication (standby)", help: "Send hot standby feedback ('h') messages upstream." },
    ParamDoc { name: "wal_receiver_unflushed", section: "Replication (standby)", help: "Ask a walrep upstream for WAL while it is still flushing it (a commit at `on` then costs one fdatasync plus a round trip, not two fdatasyncs); the upstream does so only while this standby is a candidate in its `synchronous_standby_names`; nothing past the upstream's flush position is exposed or applied. Off: only flushed WAL, as PostgreSQL." },
    ParamDoc { name: "wal_repair_sources", section: "Replication (standby)", help: "Connection strings of nodes (standbys, an upstream) a damaged WAL segment may be fetched again from at start-up with WAL_RANGE, after restore_command: a list, or one string. A standby also asks its primary_conninfo." },
    ParamDoc { name: "roles", section: "Security", help: "[[roles]] of both ports: name, password (a SCRAM-SHA-256 verifier made by `walrep passwd`, never a clear password), replication (may stream WAL and take base backups; a role not listed may only through a trust line) and redis (none, readonly, readwrite or admin: its Redis ACL)." },
    ParamDoc { name: "requirepass", section: "Security", help: "SCRAM-SHA-256 verifier of the Redis port's default user (AUTH <password>); empty: the default user needs no password (and protected_mode applies). A role named default overrides it." },
    ParamDoc { name: "protected_mode", section: "Security", help: "While the default user has no password, serve only loopback clients (127.0.0.1, ::1) on the Redis port; others get Redis's DENIED error." },
    ParamDoc { name: "authentication_timeout", section: "Security", help: "Longest time a replication connection may take to send its startup packet, finish TLS and authenticate." },
    ParamDoc { name: "max_startup_connections", section: "Security", help: "Replication connections still authenticating at once, counted apart from max_wal_senders; when full, the oldest one is closed for the newcomer, so idle sockets cannot lock standbys out." },
    ParamDoc { name: "ssl", section: "Security", help: "Serve TLS on the replication port (answer SSLRequest with S)." },
    ParamDoc { name: "ssl_cert_file", section: "Security", help: "PEM certificate chain of the replication port (relative paths are in the data directory)." },
    ParamDoc { name: "ssl_key_file", section: "Security", help: "PEM private key of ssl_cert_file; should be mode 0600." },
    ParamDoc { name: "ssl_ca_file", section: "Security", help: "PEM certificates of the CAs client certificates must chain to (empty: no client certificates are asked for)." },
    ParamDoc { name: "tls_port", section: "Security", help: "TCP port of the Redis protocol over TLS (0 = off), as Redis's tls-port." },
    ParamDoc { name: "tls_cert_file", section: "Security", help: "PEM certificate chain of tls_port (empty: ssl_cert_file)." },
    ParamDoc { name: "tls_key_file", section: "Security", help: "PEM private key of tls_cert_file (empty: ssl_key_file)." },
    ParamDoc { name: "timeout", section: "Security", help: "Close a Redis client idle for this long (0 = never), as Redis's timeout; a bare number is seconds." },
    ParamDoc { name: "client_query_buffer_limit", section: "Security", help: "Most request bytes buffered for one Redis client (a partial request included); past it the client is closed." },
    ParamDoc { name: "client_output_buffer_limit", section: "Security", help: "Most reply bytes held for one Redis client: a command whose reply would grow past it gets an error instead, and a client that does not read is closed." },
    ParamDoc { name: "maxmemory_clients", section: "Security", help: "Most bytes all Redis clients may hold in query and reply buffers together; past it the largest clients are closed, as Redis's maxmemory-clients." },
    ParamDoc { name: "log_level", section: "Observability", help: "Log filter when RUST_LOG is not set (error, warn, info, debug, trace, or tracing directives)." },
    ParamDoc { name: "log_connections", section: "Observability", help: "Log each client connection (key-value port) at info, with its id and peer address, as PostgreSQL's log_connections." },
    ParamDoc { name: "log_disconnections", section: "Observability", help: "Log each client disconnection at info, with the session's duration, as PostgreSQL's log_disconnections." },
    ParamDoc { name: "status_port", section: "Observability", help: "TCP port of the HTTP /status and /metrics endpoint (0 = off)." },
    ParamDoc { name: "status_advertise_url", section: "Observability", help: "Address of this node's status pages as other nodes and people should use it, told to its upstream and downstreams so their pages link here (empty = http://LISTEN:status_port/; an address that names no host, such as 0.0.0.0, is replaced by the host the other side sees)." },
    ParamDoc { name: "disk_free_warning_size", section: "Observability", help: "Log a warning, repeated every minute, while the data directory's filesystem has less free space than this, naming what holds WAL (each slot, the archive backlog, wal_keep_size, the WAL since the last checkpoint); -1 = never." },
    ParamDoc { name: "restart_after_crash", section: "Error handling", help: "After a failure that stops the WAL writer (a failed write or fsync, a full disk), close client sessions, rerun crash recovery in the same process and serve again, as PostgreSQL's restart_after_crash; while the disk is still full, retry with back-off, saying what is full and what holds WAL. off: the node stops instead." },
    ParamDoc { name: "ha_enabled", section: "High availability", help: "Automatic failover on etcd (docs/ha.md): the node takes part in the leader race, holds the leader key under a lease while primary, and fences itself (refuses and stops acknowledging writes) when it cannot renew the lease in time. A primary started with it on admits no write until it holds the leader key." },
    ParamDoc { name: "ha_endpoints", section: "High availability", help: "etcd client URLs (http://host:port), comma separated, tried in turn; required with ha_enabled." },
    ParamDoc { name: "ha_namespace", section: "High availability", help: "Prefix of every key in etcd; keys live under ha_namespace/ha_cluster_name/ (Patroni's namespace)." },
    ParamDoc { name: "ha_cluster_name", section: "High availability", help: "Name of the cluster under ha_namespace (Patroni's scope); every member of one cluster uses the same." },
    ParamDoc { name: "ha_name", section: "High availability", help: "This member's name in etcd, unique in the cluster; a standby streams with it as application_name, so synchronous_standby_names names members by it. Empty: the application_name of primary_conninfo." },
    ParamDoc { name: "ha_ttl", section: "High availability", help: "Time to live of the node's etcd lease (at least 2s, etcd's minimum): a primary that cannot renew it loses the leader key this long after its last renewal, and then a standby may take over. Must be at least ha_loop_wait + 2 * ha_retry_timeout." },
    ParamDoc { name: "ha_loop_wait", section: "High availability", help: "Time between two HA cycles (read the cluster from etcd, decide, act, renew the lease)." },
    ParamDoc { name: "ha_retry_timeout", section: "High availability", help: "Bound of each etcd request; a write that times out is settled by a read." },
    ParamDoc { name: "ha_fence_margin", section: "High availability", help: "The primary stops admitting and acknowledging writes at (send time of its last successful lease renewal) + ha_ttl - ha_fence_margin, on the monotonic clock, whether or not its HA thread runs: the margin covers clock-rate error and a stalled process. Must leave ha_ttl - ha_fence_margin > ha_loop_wait + ha_retry_timeout." },
    ParamDoc { name: "ha_allow_async_failover", section: "High availability", help: "Let an asynchronous standby promote when no synchronous standby is alive. Writes acknowledged by the old primary may then be lost: off by default, and a warning is logged when on." },
    ParamDoc { name: "ha_nofailover", section: "High availability", help: "Never promote this node automatically (Patroni's nofailover tag); it still follows the leader." },
    ParamDoc { name: "ha_repl_address", section: "High availability", help: "host:port other members stream WAL from, published in this member's key (empty: listen_addresses:replication_port, when listen_addresses names one concrete host)." },
    ParamDoc { name: "ha_client_address", section: "High availability", help: "host:port clients reach this node's Redis port at, published in this member's key (empty: listen_addresses:port, when listen_addresses names one concrete host)." },
    ParamDoc { name: "ha_use_slots", section: "High availability", help: "The leader keeps a physical replication slot for every other member (named after it: lower case, other characters than a-z, 0-9 and _ replaced), and each member streams from the leader on its own slot (primary_slot_name, set by the HA loop), so the leader keeps the WAL a member has not received yet; max_slot_wal_keep_size still bounds it (Patroni's use_slots). Every member of a cluster must use the same setting." },
    ParamDoc { name: "ha_member_slots_ttl", section: "High availability", help: "How long the leader keeps the slot of a member whose key has gone from etcd (the member stopped, or lost etcd), so a member that is only briefly away finds its WAL kept; 0 drops the slot as soon as the key expires, -1 never drops it (Patroni's member_slots_ttl)." },
];

/// Parameters a running node re-reads on `walrep reload` or SIGHUP
/// (PostgreSQL's `sighup` context); every other parameter takes effect only
/// at the next start (`postmaster` context).
pub const RELOADABLE: &[&str] = &[
    "synchronous_commit",
    "wal_keep_size",
    "max_slot_wal_keep_size",
    "archive_command",
    "synchronous_standby_names",
    "primary_conninfo",
    "primary_slot_name",
    "restore_command",
    "log_level",
    "disk_free_warning_size",
];

/// The configuration a running node works with: replaced whole by a
/// reload, read fresh by whoever needs a reloadable parameter, and watched
/// (`subscribe`) by the threads that act on a change (the walreceiver's
/// upstream, the log filter).
pub type LiveConfig = std::sync::Arc<crate::watch::Watch<std::sync::Arc<Config>>>;

/// Whether `name` takes effect on reload (else only at the next start).
pub fn is_reloadable(name: &str) -> bool {
    RELOADABLE.contains(&name)
}

/// What a reload of `walrep.toml` does to the running configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Reload {
    /// The configuration to run with from now on: the running one with
    /// every reloadable parameter taken from the new file.
    pub config: Config,
    /// Reloadable parameters whose value changed (now in effect).
    pub changed: Vec<&'static str>,
    /// Restart-only parameters the file changes: ignored until the next
    /// start, as PostgreSQL's "cannot be changed without restarting the
    /// server".
    pub pending_restart: Vec<&'static str>,
}

impl Config {
    /// Apply `new` (a whole, valid file) to this running configuration:
    /// the reloadable parameters that differ change, the restart-only ones
    /// keep their running value and are listed.
    pub fn reload(&self, new: &Config) -> Result<Reload, ConfigError> {
        let table = |c: &Config| {
            toml::Table::try_from(c).map_err(|e| ConfigError::Invalid {
                origin: "reload".into(),
                message: e.to_string(),
            })
        };
        let (mut merged, fresh) = (table(self)?, table(new)?);
        let mut changed = Vec::new();
        let mut pending_restart = Vec::new();
        for p in PARAMETERS {
            let (old, now) = (merged.get(p.name), fresh.get(p.name));
            if old == now {
                continue;
            }
            if !is_reloadable(p.name) {
                pending_restart.push(p.name);
                continue;
            }
            changed.push(p.name);
            match now {
                Some(v) => merged.insert(p.name.to_string(), v.clone()),
                None => merged.remove(p.name),
            };
        }
        let config: Config =
            merged
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    origin: "reload".into(),
                    message: e.message().to_string(),
                })?;
        config.validate()?;
        Ok(Reload {
            config,
            changed,
            pending_restart,
        })
    }
}

impl Config {
    /// Read `walrep.toml` at `path`, then apply `-c name=value` overrides.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml_with_overrides(&text, &path.display().to_string(), overrides)
    }

    /// Parse configuration text, then apply overrides. Unknown keys are
    /// rejected with their name.
    pub fn from_toml_with_overrides(
        text: &str,
        origin: &str,
        overrides: &[String],
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    origin: origin.to_string(),
                    message: e.to_string(),
                })?;
        for key in table.keys() {
            if !PARAMETERS.iter().any(|p| p.name == key) {
                return Err(ConfigError::UnknownParameter(key.clone()));
            }
        }
        for o in overrides {
            let (name, value) = o
                .split_once('=')
                .ok_or_else(|| ConfigError::BadOverride(o.clone()))?;
            let name = name.trim();
            if !PARAMETERS.iter().any(|p| p.name == name) {
                return Err(ConfigError::UnknownParameter(name.to_string()));
            }
            table.insert(name.to_string(), override_value(name, value.trim()));
        }
        let config: Config = table.clone().try_into().map_err(|e: toml::de::Error| {
            // toml does not say which key of a table failed: find it by
            // deserializing each key alone, so the error names the parameter.
            let culprit = table.iter().find(|(k, v)| {
                let mut one = toml::Table::new();
                one.insert((*k).clone(), (*v).clone());
                one.try_into::<Config>().is_err()
            });
            match culprit {
                Some((name, _)) => ConfigError::BadValue {
                    name: name.clone(),
                    message: e.message().to_string(),
                },
                None => ConfigError::Invalid {
                    origin: origin.to_string(),
                    message: e.message().to_string(),
                },
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Relationships between parameters that serde cannot check.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |name: &str, message: String| {
            Err(ConfigError::BadValue {
                name: name.into(),
                message,
            })
        };
        if self.checkpoint_chunks == 0 || self.checkpoint_chunks > 4096 {
            return bad(
                "checkpoint_chunks",
                format!(
                    "{} is outside the valid range 1..4096",
                    self.checkpoint_chunks
                ),
            );
        }
        if !(0.0..=1.0).contains(&self.checkpoint_completion_target) {
            return bad(
                "checkpoint_completion_target",
                format!(
                    "{} is outside the valid range 0..1",
                    self.checkpoint_completion_target
                ),
            );
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1".into());
        }
        match self.proto_max_bulk_len.bytes() {
            Some(b) if (1024..=(512 << 20)).contains(&b) => {}
            _ => return bad("proto_max_bulk_len", "must be between 1kB and 512MB".into()),
        }
        if self.max_wal_size.bytes().is_none()
            || self.min_wal_size.bytes().is_none()
            || self.wal_keep_size.bytes().is_none()
        {
            return bad(
                "max_wal_size",
                "max_wal_size, min_wal_size and wal_keep_size cannot be -1".into(),
            );
        }
        if self
            .checkpoint_timeout
            .get()
            .is_none_or(|d| d < Duration::from_secs(1))
        {
            return bad("checkpoint_timeout", "must be at least 1s".into());
        }
        if let Some(problem) = status_url::config_problem(&self.status_advertise_url) {
            return bad("status_advertise_url", problem);
        }
        self.validate_security()?;
        for s in &self.wal_repair_sources {
            if let Err(e) = conninfo::ConnInfo::parse(s) {
                let shown = conninfo::redact_conninfo(s);
                return bad("wal_repair_sources", format!("\"{shown}\": {e}"));
            }
        }
        self.validate_ha()?;
        for h in &self.hba {
            if crate::util::Cidr::parse(&h.address).is_none() {
                return bad(
                    "hba",
                    format!("\"{}\" is not an address range in CIDR notation", h.address),
                );
            }
        }
        Ok(())
    }

    /// The HA parameters, checked only with `ha_enabled`: the timing rule
    /// that keeps the fence ahead of the lease (Patroni's `loop_wait + 2 *
    /// retry_timeout <= ttl`, plus the margin), endpoints that parse, a
    /// member name, and no setting that would acknowledge a write no
    /// failover candidate holds.
    fn validate_ha(&self) -> Result<(), ConfigError> {
        if !self.ha_enabled.0 {
            return Ok(());
        }
        let bad = |name: &str, message: String| {
            Err(ConfigError::BadValue {
                name: name.into(),
                message,
            })
        };
        if let Err(e) = self.ha_endpoint_list() {
            return bad("ha_endpoints", e);
        }
        let secs = |t: Time<1000>| t.get().unwrap_or(Duration::ZERO);
        let (ttl, loop_wait) = (secs(self.ha_ttl), secs(self.ha_loop_wait));
        let (retry, margin) = (secs(self.ha_retry_timeout), secs(self.ha_fence_margin));
        if ttl < Duration::from_secs(2) {
            return bad(
                "ha_ttl",
                format!(
                    "{} is below etcd's minimum lease time to live of 2s",
                    self.ha_ttl
                ),
            );
        }
        if loop_wait.is_zero() || retry.is_zero() {
            return bad(
                "ha_loop_wait",
                "ha_loop_wait and ha_retry_timeout must be positive".into(),
            );
        }
        if loop_wait + 2 * retry > ttl {
            return bad(
                "ha_ttl",
                format!(
                    "ha_loop_wait ({}) + 2 * ha_retry_timeout ({}) must not exceed ha_ttl ({}): the primary must be able to renew its lease before it expires",
                    self.ha_loop_wait, self.ha_retry_timeout, self.ha_ttl
                ),
            );
        }
        if margin >= ttl || ttl - margin <= loop_wait + retry {
            return bad(
                "ha_fence_margin",
                format!(
                    "ha_ttl ({}) - ha_fence_margin ({}) must exceed ha_loop_wait ({}) + ha_retry_timeout ({}), or the primary fences itself between two renewals",
                    self.ha_ttl, self.ha_fence_margin, self.ha_loop_wait, self.ha_retry_timeout
                ),
            );
        }
        if self.ha_member_name().is_none() {
            return bad(
                "ha_name",
                "set ha_name (or application_name in primary_conninfo): every member needs a name unique in its cluster".into(),
            );
        }
        if !self.ha_namespace.starts_with('/') {
            return bad(
                "ha_namespace",
                format!("\"{}\" must start with /", self.ha_namespace),
            );
        }
        if self.ha_cluster_name.is_empty() || self.ha_cluster_name.contains('/') {
            return bad(
                "ha_cluster_name",
                "must be a non-empty name without /".into(),
            );
        }
        for (name, value) in [
            ("ha_repl_address", &self.ha_repl_address),
            ("ha_client_address", &self.ha_client_address),
        ] {
            if !value.is_empty() && parse_host_port(value).is_none() {
                return bad(name, format!("\"{value}\" is not host:port"));
            }
        }
        if self.synchronous_standby_timeout.get().is_some() {
            return bad(
                "synchronous_standby_timeout",
                "must be -1 with ha_enabled: degrading to local commits would acknowledge writes no failover candidate holds".into(),
            );
        }
        if self
            .synchronous_standby_names
            .trim_start()
            .to_ascii_uppercase()
            .starts_with("ANY")
        {
            return bad(
                "synchronous_standby_names",
                "ANY (quorum commit) is not supported with ha_enabled yet: use FIRST n (...)"
                    .into(),
            );
        }
        Ok(())
    }

    /// `ha_endpoints` as a list of `http://host:port` URLs, or why not.
    pub fn ha_endpoint_list(&self) -> Result<Vec<String>, String> {
        let list: Vec<String> = self
            .ha_endpoints
            .split(',')
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if list.is_empty() {
            return Err(
                "at least one etcd endpoint (http://host:port) is required with ha_enabled".into(),
            );
        }
        for e in &list {
            let rest = e
                .strip_prefix("http://")
                .ok_or_else(|| format!("\"{e}\": only http://host:port endpoints are supported"))?;
            if parse_host_port(rest).is_none() {
                return Err(format!("\"{e}\" is not http://host:port"));
            }
        }
        Ok(list)
    }

    /// This member's name: `ha_name`, else the application_name of
    /// `primary_conninfo`.
    pub fn ha_member_name(&self) -> Option<String> {
        if !self.ha_name.is_empty() {
            return Some(self.ha_name.clone());
        }
        conninfo::ConnInfo::parse(&self.primary_conninfo)
            .ok()
            .and_then(|c| c.application_name)
            .filter(|n| !n.is_empty())
    }

    /// Secrets are verifiers, roles are unique, limits are sane. A clear
    /// password where a verifier belongs is refused without repeating it.
    fn validate_security(&self) -> Result<(), ConfigError> {
        use crate::security::ScramVerifier;
        let bad = |name: &str, message: String| ConfigError::BadValue {
            name: name.into(),
            message,
        };
        let verifier = |name: &str, what: String, text: &str| {
            if text.is_empty() {
                return Ok(());
            }
            ScramVerifier::parse(text)
                .map(|_| ())
                .map_err(|e| bad(name, format!("{what}: {e}")))
        };
        verifier("requirepass", "requirepass".into(), &self.requirepass)?;
        let mut names = std::collections::BTreeSet::new();
        for r in &self.roles {
            if r.name.is_empty() || r.name.len() > 63 || r.name.chars().any(char::is_control) {
                return Err(bad(
                    "roles",
                    "a role name must be 1 to 63 printable characters".into(),
                ));
            }
            if !names.insert(r.name.as_str()) {
                return Err(bad("roles", format!("role \"{}\" is listed twice", r.name)));
            }
            verifier(
                "roles",
                format!("password of role \"{}\"", r.name),
                &r.password,
            )?;
        }
        if self.max_startup_connections == 0 {
            return Err(bad("max_startup_connections", "must be at least 1".into()));
        }
        if self
            .authentication_timeout
            .get()
            .is_none_or(|d| d < Duration::from_secs(1) || d > Duration::from_secs(600))
        {
            return Err(bad(
                "authentication_timeout",
                "must be between 1s and 10min".into(),
            ));
        }
        if self.tls_port != 0 && self.tls_port == self.port {
            return Err(bad("tls_port", "must differ from port".into()));
        }
        for (name, size) in [
            ("client_query_buffer_limit", self.client_query_buffer_limit),
            (
                "client_output_buffer_limit",
                self.client_output_buffer_limit,
            ),
            ("maxmemory_clients", self.maxmemory_clients),
        ] {
            if size.bytes().is_none_or(|b| b < 1 << 20) {
                return Err(bad(name, "must be at least 1MB".into()));
            }
        }
        let query = self.client_query_buffer_limit.bytes().unwrap_or(0);
        if query < self.proto_max_bulk_len.bytes().unwrap_or(0) {
            return Err(bad(
                "client_query_buffer_limit",
                "must be at least proto_max_bulk_len".into(),
            ));
        }
        Ok(())
    }

    /// This configuration with every secret masked: what CONFIG GET shows
    /// and what may be logged. Verifiers are masked too: whoever holds one
    /// can guess passwords offline.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        if !c.requirepass.is_empty() {
            c.requirepass = REDACTED.into();
        }
        for r in &mut c.roles {
            if !r.password.is_empty() {
                r.password = REDACTED.into();
            }
        }
        c.primary_conninfo = conninfo::redact_conninfo(&c.primary_conninfo);
        for s in &mut c.wal_repair_sources {
            *s = conninfo::redact_conninfo(s);
        }
        c
    }

    /// The `walrep.toml` written by `walrep init`: every parameter with its
    /// default value and a comment, grouped by section.
    pub fn template() -> String {
        let defaults = toml::Table::try_from(Config::default()).expect("defaults serialize");
        let mut out = String::from(
            "# walrep.toml: configuration of one walrep node.\n\
             # Every parameter is listed with its default. Names follow PostgreSQL's.\n\
             # Sizes take B, kB, MB, GB (bare numbers are MB); times take ms, s, min, h, d.\n\
             # Any parameter can be overridden at start: walrep start DATADIR -c name=value\n",
        );
        let mut section = "";
        let mut tables = String::new();
        for p in PARAMETERS {
            if p.section != section {
                section = p.section;
                out.push_str(&format!("\n# ---- {section}\n"));
            }
            let value = &defaults[p.name];
            match value {
                toml::Value::Array(items) if items.iter().all(|i| i.is_table()) => {
                    tables.push_str(&format!("\n# {}\n", p.help));
                    for item in items {
                        let mut wrapper = toml::Table::new();
                        wrapper.insert(p.name.to_string(), toml::Value::Array(vec![item.clone()]));
                        tables.push_str(&toml::to_string(&wrapper).expect("hba serializes"));
                    }
                }
                toml::Value::Table(t) => {
                    tables.push_str(&format!("\n# {}\n[{}]\n", p.help, p.name));
                    for (k, v) in t {
                        tables.push_str(&format!("{k} = {v}\n"));
                    }
                }
                v => out.push_str(&format!("\n# {}\n{} = {}\n", p.help, p.name, v)),
            }
        }
        out.push_str(&tables);
        out
    }
}

/// A `-c` value: TOML if it parses as a TOML scalar (`5433`, `true`,
/// `"quoted"`), otherwise the raw text (`off`, `16MB`, `FIRST 1 (s1)`).
fn override_value(name: &str, raw: &str) -> toml::Value {
    let raw_string = toml::Value::String(raw.to_string());
    let Ok(t) = format!("v = {raw}").parse::<toml::Table>() else {
        return raw_string;
    };
    match t.get("v") {
        // `-c archive_command=true` means the command `true`, as with
        // `postgres -c`: a value TOML reads as another type stays text
        // when the parameter takes text.
        Some(v) if !v.is_table() && (v.is_str() || accepts(name, v)) => v.clone(),
        _ => raw_string,
    }
}

/// Whether parameter `name` deserializes from `value` alone.
fn accepts(name: &str, value: &toml::Value) -> bool {
    let mut one = toml::Table::new();
    one.insert(name.to_string(), value.clone());
    one.try_into::<Config>().is_ok()
}

/// `host:port` (a bracketed IPv6 host allowed) with a port above 0.
pub fn parse_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty() && !host.contains('/')).then(|| (host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_override_that_looks_like_another_type_stays_text_for_a_text_parameter() {
        let c = Config::from_toml_with_overrides(
            "",
            "x",
            &["archive_command=true".into(), "archive_mode=true".into()],
        )
        .unwrap();
        assert_eq!(c.archive_command, "true");
        let e = Config::from_toml_with_overrides("", "x", &["port=true".into()]).unwrap_err();
        assert!(e.to_string().contains("port"), "{e}");
    }

    #[test]
    fn ha_parameters_are_checked_only_with_ha_on() {
        let ha = |extra: &[&str]| {
            let mut o: Vec<String> = vec![
                "ha_enabled=on".into(),
                "ha_endpoints=http://127.0.0.1:2379, http://127.0.0.1:22379".into(),
                "ha_name=n1".into(),
            ];
            o.extend(extra.iter().map(|s| s.to_string()));
            Config::from_toml_with_overrides("", "x", &o)
        };
        let c = ha(&[]).unwrap();
        assert_eq!(c.ha_endpoint_list().unwrap().len(), 2);
        assert_eq!(c.ha_ttl.get(), Some(Duration::from_secs(10)));
        let err = |extra: &[&str], name: &str| {
            let e = ha(extra).unwrap_err().to_string();
            assert!(e.contains(name), "{extra:?}: {e}");
            e
        };
        err(&["ha_ttl=1"], "ha_ttl");
        let e = err(&["ha_ttl=6", "ha_retry_timeout=3"], "ha_ttl");
        assert!(e.contains("2 * ha_retry_timeout"), "{e}");
        err(&["ha_fence_margin=6"], "ha_fence_margin");
        err(&["ha_endpoints=127.0.0.1:2379"], "ha_endpoints");
        err(&["ha_endpoints=http://127.0.0.1:x"], "ha_endpoints");
        err(&["ha_endpoints="], "ha_endpoints");
        err(&["ha_name="], "ha_name");
        err(&["ha_namespace=walrep"], "ha_namespace");
        err(
            &["synchronous_standby_timeout=5s"],
            "synchronous_standby_timeout",
        );
        err(
            &["synchronous_standby_names=ANY 1 (a, b)"],
            "synchronous_standby_names",
        );
        err(&["ha_repl_address=nohost"], "ha_repl_address");
        // The member name may come from primary_conninfo.
        let c = ha(&[
            "ha_name=",
            "primary_conninfo=host=h port=1 application_name=n2",
        ])
        .unwrap();
        assert_eq!(c.ha_member_name().as_deref(), Some("n2"));
        // HA off: nothing is checked.
        Config::from_toml_with_overrides("", "x", &["ha_ttl=1".into()]).unwrap();
    }

    #[test]
    fn template_parses_to_the_defaults() {
        let t = Config::template();
        let c = Config::from_toml_with_overrides(&t, "template", &[]).unwrap();
        assert_eq!(c, Config::default());
        for p in PARAMETERS {
            assert!(t.contains(p.name), "template lacks {}", p.name);
        }
    }

    #[test]
    fn every_field_is_documented() {
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for key in defaults.keys() {
            assert!(
                PARAMETERS.iter().any(|p| p.name == key),
                "{key} has no ParamDoc"
            );
        }
        assert_eq!(defaults.len(), PARAMETERS.len());
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::from_toml_with_overrides("prot = 1\n", "x", &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unrecognized configuration parameter \"prot\""
        );
        let e = Config::from_toml_with_overrides("", "x", &["nope=1".into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unrecognized configuration parameter \"nope\""
        );
        let e = Config::from_toml_with_overrides("", "x", &["port".into()]).unwrap_err();
        assert!(e.to_string().contains("expected name=value"), "{e}");
    }

    #[test]
    fn overrides_take_postgres_spellings() {
        let c = Config::from_toml_with_overrides(
            "port = 7000\n",
            "x",
            &[
                "port=7001".into(),
                "synchronous_commit=remote_apply".into(),
                "checkpoint_timeout=30s".into(),
                "wal_keep_size=64MB".into(),
                "hot_standby=off".into(),
                "synchronous_standby_names=FIRST 1 (s1, s2)".into(),
                "wal_retrieve_retry_interval=250".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.port, 7001);
        assert_eq!(c.synchronous_commit, SynchronousCommit::RemoteApply);
        assert_eq!(c.checkpoint_timeout.get(), Some(Duration::from_secs(30)));
        assert_eq!(c.wal_keep_size.bytes(), Some(64 << 20));
        assert_eq!(c.hot_standby, Bool(false));
        assert_eq!(c.synchronous_standby_names, "FIRST 1 (s1, s2)");
        assert_eq!(
            c.wal_retrieve_retry_interval.get(),
            Some(Duration::from_millis(250))
        );
    }

    #[test]
    fn bad_values_name_the_parameter() {
        let e = Config::from_toml_with_overrides("", "x", &["synchronous_commit=sometimes".into()])
            .unwrap_err();
        assert!(e.to_string().contains("synchronous_commit"), "{e}");
        let e =
            Config::from_toml_with_overrides("checkpoint_timeout = \"5 fortnights\"\n", "x", &[])
                .unwrap_err();
        assert!(e.to_string().contains("checkpoint_timeout"), "{e}");
        let e = Config::from_toml_with_overrides("port = \"abc\"\n", "x", &[]).unwrap_err();
        assert!(e.to_string().contains("port"), "{e}");
        let e = Config::from_toml_with_overrides("port = \n", "x", &[]).unwrap_err();
        assert!(e.to_string().contains("invalid configuration"), "{e}");
        let e = Config::from_toml_with_overrides("checkpoint_chunks = 0\n", "x", &[]).unwrap_err();
        assert!(e.to_string().contains("checkpoint_chunks"), "{e}");
    }

    #[test]
    fn reload_takes_reloadable_parameters_and_names_the_others() {
        let running = Config::from_toml_with_overrides("port = 7000\n", "x", &[]).unwrap();
        let file = Config::from_toml_with_overrides(
            "port = 7001\nprimary_conninfo = \"host=a port=5\"\nwal_keep_size = \"64MB\"\n",
            "x",
            &[],
        )
        .unwrap();
        let r = running.reload(&file).unwrap();
        assert_eq!(r.changed, vec!["wal_keep_size", "primary_conninfo"]);
        assert_eq!(r.pending_restart, vec!["port"]);
        assert_eq!(
            r.config.port, 7000,
            "a restart-only parameter keeps its running value"
        );
        assert_eq!(r.config.primary_conninfo, "host=a port=5");
        assert_eq!(r.config.wal_keep_size.bytes(), Some(64 << 20));
        let same = running.reload(&running).unwrap();
        assert!(same.changed.is_empty() && same.pending_restart.is_empty());
        for p in RELOADABLE {
            assert!(
                PARAMETERS.iter().any(|d| d.name == *p),
                "{p} is not a parameter"
            );
        }
    }

    #[test]
    fn units_parse_like_postgres() {
        assert_eq!(
            parse_time("200ms", 1).unwrap(),
            Some(Duration::from_millis(200))
        );
        assert_eq!(
            parse_time("5min", 1000).unwrap(),
            Some(Duration::from_secs(300))
        );
        assert_eq!(parse_time("7", 1000).unwrap(), Some(Duration::from_secs(7)));
        assert_eq!(parse_time("-1", 1).unwrap(), None);
        assert!(parse_time("5 parsecs", 1).is_err());
        assert!(parse_time("", 1).is_err());
        assert_eq!(parse_size("16MB").unwrap(), Some(16 << 20));
        assert_eq!(parse_size("512kB").unwrap(), Some(512 << 10));
        assert_eq!(parse_size("2").unwrap(), Some(2 << 20));
        assert!(parse_size("1XB").is_err());
        assert!(parse_size("99999999999999TB").is_err());
        assert_eq!(format_size(Some(1 << 30)), "1GB");
        assert_eq!(format_time(Some(Duration::from_millis(1500))), "1500ms");
    }
}

/// `docs/configuration.md`, generated from [`PARAMETERS`] and the defaults
/// so the reference cannot drift from the code (a test compares them).
pub fn reference_markdown() -> String {
    let defaults = toml::Table::try_from(Config::default()).expect("defaults serialize");
    let mut out = String::from(
        "# Configuration reference\n\n\
         <!-- Generated from src/config/mod.rs (PARAMETERS); regenerate with\n     \
         `cargo run -- default-config --markdown > docs/configuration.md`. -->\n\n\
         Every node reads `DATADIR/walrep.toml`, written by `walrep init` with every\n\
         parameter at its default. Names follow PostgreSQL's wherever PostgreSQL has\n\
         the parameter, with the same meaning. Unknown names are rejected with the\n\
         name (`unrecognized configuration parameter \"...\"`), as are bad values.\n\n\
         Any parameter can be overridden for one run, as with `postgres -c`:\n\n\
         ```sh\nwalrep start DATADIR -c synchronous_commit=remote_apply -c port=6390\n```\n\n\
         Units: sizes take `B`, `kB`, `MB`, `GB`, `TB` (a bare number is megabytes);\n\
         times take `ms`, `s`, `min`, `h`, `d` (a bare number is in PostgreSQL's base unit:\n\
         seconds for `checkpoint_timeout`, `archive_timeout`, `restore_command_timeout` and\n\
         `wal_receiver_status_interval`, milliseconds for the other times). `-1` means disabled / unlimited where allowed. Booleans take\n\
         `on`/`off`, `true`/`false`, `yes`/`no`.\n\n\
         A running node re-reads `walrep.toml` on `walrep reload DATADIR` or SIGHUP\n\
         (PostgreSQL's `pg_ctl reload`): parameters marked *reload* take effect at once;\n\
         those marked *restart* keep their running value until the next start (the log\n\
         names them). A file with an error is rejected whole and nothing changes.\n\
         `-c` overrides given at start still win over the file after a reload.\n",
    );
    let mut section = "";
    for p in PARAMETERS {
        if p.section != section {
            section = p.section;
            out.push_str(&format!(
                "\n## {section}\n\n| parameter | default | change takes effect | meaning |\n|---|---|---|---|\n"
            ));
        }
        let default = match &defaults[p.name] {
            toml::Value::String(s) if s.is_empty() => "(empty)".to_string(),
            toml::Value::String(s) => s.clone(),
            toml::Value::Array(a) if a.is_empty() => "(none)".to_string(),
            toml::Value::Array(a) => a
                .iter()
                .map(|v| {
                    v.as_table()
                        .map(|t| {
                            t.values()
                                .map(|x| x.to_string().replace('"', ""))
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
                .join("; "),
            toml::Value::Table(t) if t.is_empty() => "(none)".to_string(),
            v => v.to_string(),
        };
        let context = if is_reloadable(p.name) {
            "reload"
        } else {
            "restart"
        };
        out.push_str(&format!(
            "| `{}` | `{}` | {} | {} |\n",
            p.name,
            default,
            context,
            p.help.replace('|', "\\|")
        ));
    }
    out
}

#[cfg(test)]
mod reference_tests {
    #[test]
    fn docs_configuration_md_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == super::reference_markdown(),
            "docs/configuration.md is stale: run `cargo run -- default-config --markdown > docs/configuration.md`"
        );
    }
}
