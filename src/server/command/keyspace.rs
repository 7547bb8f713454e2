//! Keyspace commands: EXISTS, DEL, UNLINK, DBSIZE, TYPE, KEYS, SCAN,
//! RENAME, RENAMENX, FLUSHDB, FLUSHALL, and expiry: EXPIRE, PEXPIRE,
//! EXPIREAT, PEXPIREAT, TTL, PTTL, EXPIRETIME, PEXPIRETIME, PERSIST; their
//! parsers and executors.
//!
//! Expiry times are absolute Unix times in milliseconds, by the wall clock
//! of the node that runs the command; the WAL carries the absolute time.
//!
//! KEYS and SCAN walk the ordered store in bounded steps, each under the
//! read lock for that step only, so a large keyspace never stalls writers
//! on other connections. A pattern with a literal start (`user:*`) seeks to
//! it and stops past it instead of walking every key.

use std::borrow::Cow;
use std::ops::{Bound, ControlFlow};

use super::data::{Data, Done};
use super::error::CommandError;
use super::glob::Glob;
use super::parse::{int, is, Args};
use crate::store::record::Op;
use crate::store::{Kind, Reader, Slot, WriteTxn};

/// Keys KEYS examines per step under the read lock.
const KEYS_STEP: usize = 1024;
/// SCAN's COUNT when none is given (Redis's).
pub const SCAN_COUNT_DEFAULT: usize = 10;
/// The most keys one SCAN call examines, whatever COUNT asks (COUNT is a
/// hint in Redis too): bounds the work and the reply of one call.
pub const SCAN_COUNT_MAX: usize = 10_000;

/// Redis's value types, as TYPE and `SCAN ... TYPE` name them (walrep has
/// no sorted sets or streams; a scan for them finds nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    String,
    List,
    Set,
    ZSet,
    Hash,
    Stream,
}

impl KeyType {
    const ALL: [KeyType; 6] = [
        KeyType::String,
        KeyType::List,
        KeyType::Set,
        KeyType::ZSet,
        KeyType::Hash,
        KeyType::Stream,
    ];

    pub fn name(self) -> &'static str {
        match self {
            KeyType::String => "string",
            KeyType::List => "list",
            KeyType::Set => "set",
            KeyType::ZSet => "zset",
            KeyType::Hash => "hash",
            KeyType::Stream => "stream",
        }
    }

    fn of(kind: Kind) -> KeyType {
        match kind {
            Kind::String => KeyType::String,
            Kind::Hash => KeyType::Hash,
            Kind::List => KeyType::List,
            Kind::Set => KeyType::Set,
        }
    }

    fn parse(arg: &[u8]) -> Result<KeyType, CommandError> {
        let unknown = || CommandError::UnknownType(String::from_utf8_lossy(arg).into_owned());
        Self::ALL
            .into_iter()
            .find(|t| is(arg, t.name()))
            .ok_or_else(unknown)
    }
}

/// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan<'a> {
    /// 0 starts a scan; any other value is one this node handed out.
    pub cursor: u64,
    pub pattern: Option<&'a [u8]>,
    /// Keys to examine, at most [`SCAN_COUNT_MAX`].
    pub count: usize,
    pub key_type: Option<KeyType>,
}

/// EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT: the time, resolved to Unix ms
/// when run, and the condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpireCmd<'a> {
    pub key: &'a [u8],
    /// The argument, in the command's unit.
    pub time: i64,
    /// Milliseconds (PEXPIRE, PEXPIREAT) rather than seconds.
    pub ms: bool,
    /// An absolute time (EXPIREAT, PEXPIREAT) rather than one from now.
    pub absolute: bool,
    pub condition: Option<ExpireIf>,
    /// The command's name, for its error.
    pub name: &'static str,
}

/// EXPIRE's NX / XX / GT / LT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpireIf {
    /// NX: only if the key has no expiry.
    NoExpiry,
    /// XX: only if it has one.
    HasExpiry,
    /// GT: only if later than the current one (no expiry = forever).
    Later,
    /// LT: only if sooner.
    Sooner,
}

/// TTL, PTTL, EXPIRETIME, PEXPIRETIME.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlQuery<'a> {
    pub key: &'a [u8],
    pub ms: bool,
    /// EXPIRETIME, PEXPIRETIME: the Unix time rather than what is left.
    pub absolute: bool,
}

/// EXPIRE and friends, checked as Redis checks them: the time must be an
/// integer, the options known and compatible.
pub fn parse_expire<'a>(
    args: Args<'a>,
    name: &'static str,
    ms: bool,
    absolute: bool,
) -> Result<ExpireCmd<'a>, CommandError> {
    let time = int(args[2])?;
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for opt in &args[3..] {
        match () {
            _ if is(opt, "nx") => nx = true,
            _ if is(opt, "xx") => xx = true,
            _ if is(opt, "gt") => gt = true,
            _ if is(opt, "lt") => lt = true,
            _ => {
                return Err(CommandError::Config(format!(
                    "Unsupported option {}",
                    String::from_utf8_lossy(opt)
                )))
            }
        }
    }
    if nx && (xx || gt || lt) {
        return Err(CommandError::ExpireNxWithOthers);
    }
    if gt && lt {
        return Err(CommandError::ExpireGtAndLt);
    }
    let condition = match (nx, xx, gt, lt) {
        (true, ..) => Some(ExpireIf::NoExpiry),
        (_, _, true, _) => Some(ExpireIf::Later),
        (_, _, _, true) => Some(ExpireIf::Sooner),
        (_, true, ..) => Some(ExpireIf::HasExpiry),
        _ => None,
    };
    Ok(ExpireCmd {
        key: args[1],
        time,
        ms,
        absolute,
        condition,
        name,
    })
}

/// FLUSHDB / FLUSHALL `[ASYNC|SYNC]` (the same here: one record).
pub fn parse_flush(args: Args<'_>) -> Result<(), CommandError> {
    match &args[1..] {
        [] => Ok(()),
        [m] if is(m, "async") || is(m, "sync") => Ok(()),
        _ => Err(CommandError::Syntax),
    }
}

pub fn parse_scan<'a>(args: Args<'a>) -> Result<Scan<'a>, CommandError> {
    let cursor = parse_cursor(args[1])?;
    let mut scan = Scan {
        cursor,
        pattern: None,
        count: SCAN_COUNT_DEFAULT,
        key_type: None,
    };
    for opt in args[2..].chunks(2) {
        let [name, value] = opt else {
            return Err(CommandError::Syntax);
        };
        if is(name, "match") {
            scan.pattern = Some(value);
        } else if is(name, "count") {
            let n = int(value)?;
            if n < 1 {
                return Err(CommandError::Syntax);
            }
            scan.count = usize::try_from(n).map_or(SCAN_COUNT_MAX, |n| n.min(SCAN_COUNT_MAX));
        } else if is(name, "type") {
            scan.key_type = Some(KeyType::parse(value)?);
        } else {
            return Err(CommandError::Syntax);
        }
    }
    Ok(scan)
}

/// A cursor as redis-cli sends it back: an unsigned decimal.
fn parse_cursor(arg: &[u8]) -> Result<u64, CommandError> {
    let digits = !arg.is_empty() && arg.iter().all(u8::is_ascii_digit);
    digits
        .then(|| std::str::from_utf8(arg).ok()?.parse().ok())
        .flatten()
        .ok_or(CommandError::InvalidCursor)
}

pub fn exists(r: &mut dyn Reader, d: &mut Data<'_>, keys: Args<'_>) -> Done {
    let count = keys.iter().filter(|k| r.slot(k).is_some()).count();
    d.reply.int(count as i64);
    Ok(())
}

pub fn dbsize(d: &mut Data<'_>) -> Done {
    d.reply.int(d.store.len() as i64);
    Ok(())
}

/// DEL and UNLINK (the same here: nothing is freed lazily).
pub fn del<'a>(t: &mut WriteTxn<'_, 'a>, d: &mut Data<'_>, keys: Args<'a>) -> Done {
    // A key named twice is deleted (and counted) once, as in Redis.
    let mut present: Vec<&'a [u8]> = keys
        .iter()
        .copied()
        .filter(|k| t.get(k).is_some())
        .collect();
    present.sort_unstable();
    present.dedup();
    for k in &present {
        t.apply(Op::Del {
            key: Cow::Borrowed(k),
        });
    }
    d.reply.int(present.len() as i64);
    Ok(())
}

pub fn key_type(r: &mut dyn Reader, d: &mut Data<'_>, key: &[u8]) -> Done {
    let name = r.slot(key).map_or("none", |s| s.value.kind().name());
    d.reply.simple(name);
    Ok(())
}

/// RENAME, RENAMENX: the source's value and expiry move to the
/// destination. Logged as the deletion of the source and the full value
/// of the destination, so replay needs neither key's earlier state.
pub fn rename<'a>(
    t: &mut WriteTxn<'_, 'a>,
    d: &mut Data<'_>,
    from: &'a [u8],
    to: &'a [u8],
    nx: bool,
) -> Done {
    let slot = t.get(from).ok_or(CommandError::NoSuchKey)?;
    if from == to {
        match nx {
            true => d.reply.int(0),
            false => d.reply.ok(),
        }
        return Ok(());
    }
    if nx && t.get(to).is_some() {
        d.reply.int(0);
        return Ok(());
    }
    t.apply(Op::Del {
        key: Cow::Borrowed(from),
    });
    t.apply(Op::Put {
        key: Cow::Borrowed(to),
        value: slot.value,
        expire_ms: slot.expire_ms,
    });
    match nx {
        true => d.reply.int(1),
        false => d.reply.ok(),
    }
    Ok(())
}

/// FLUSHDB, FLUSHALL (one database): one operation for every key.
pub fn flush(t: &mut WriteTxn<'_, '_>, d: &mut Data<'_>) -> Done {
    t.apply(Op::Flush);
    d.reply.ok();
    Ok(())
}

/// EXPIRE and friends: 1 if the expiry was set (or the key deleted
/// because the time is already past), 0 if the key is missing or the
/// condition does not hold.
pub fn expire<'a>(t: &mut WriteTxn<'_, 'a>, d: &mut Data<'_>, e: ExpireCmd<'a>) -> Done {
    let at = expire_at(&e, d.now_ms)?;
    let Some(slot) = t.get(e.key) else {
        d.reply.int(0);
        return Ok(());
    };
    // No expiry counts as forever for GT and LT.
    let current = match slot.expire_ms {
        0 => i64::MAX,
        ms => ms as i64,
    };
    let allowed = match e.condition {
        None => true,
        Some(ExpireIf::NoExpiry) => slot.expire_ms == 0,
        Some(ExpireIf::HasExpiry) => slot.expire_ms != 0,
        Some(ExpireIf::Later) => at > current,
        Some(ExpireIf::Sooner) => at < current,
    };
    if !allowed {
        d.reply.int(0);
        return Ok(());
    }
    let key = Cow::Borrowed(e.key);
    if at <= d.now_ms as i64 {
        t.apply(Op::Del { key });
    } else {
        t.apply(Op::Expire {
            key,
            at_ms: at as u64,
        });
    }
    d.reply.int(1);
    Ok(())
}

/// The absolute time (Unix ms) an EXPIRE asks for, refusing what
/// overflows as Redis does (`invalid expire time`). A time at or before
/// now deletes the key.
fn expire_at(e: &ExpireCmd<'_>, now_ms: u64) -> Result<i64, CommandError> {
    let invalid = CommandError::InvalidExpireTime(e.name);
    let ms = match e.ms {
        true => e.time,
        false => e.time.checked_mul(1000).ok_or(invalid.clone())?,
    };
    match e.absolute {
        true => Ok(ms),
        false => ms.checked_add(now_ms as i64).ok_or(invalid),
    }
}

pub fn persist<'a>(t: &mut WriteTxn<'_, 'a>, d: &mut Data<'_>, key: &'a [u8]) -> Done {
    let had = t.get(key).is_some_and(|s| s.expire_ms != 0);
    if had {
        t.apply(Op::Expire {
            key: Cow::Borrowed(key),
            at_ms: 0,
        });
    }
    d.reply.int(i64::from(had));
    Ok(())
}

/// TTL, PTTL: what is left (-2 missing, -1 no expiry); EXPIRETIME,
/// PEXPIRETIME: the Unix time. TTL rounds to the nearest second, as Redis.
pub fn ttl(r: &mut dyn Reader, d: &mut Data<'_>, q: TtlQuery<'_>) -> Done {
    let n = match r.slot(q.key) {
        None => -2,
        Some(Slot { expire_ms: 0, .. }) => -1,
        Some(s) => {
            let at = s.expire_ms as i64;
            let v = match q.absolute {
                true => at,
                false => (at - d.now_ms as i64).max(0),
            };
            match (q.ms, q.absolute) {
                (true, _) => v,
                (false, true) => v / 1000,
                (false, false) => (v + 500) / 1000,
            }
        }
    };
    d.reply.int(n);
    Ok(())
}

/// KEYS: every key matching, in key order. Unlike Redis's, it is not one
/// atomic snapshot: it walks in steps (when the reader allows it), and
/// (as SCAN) returns every key present for the whole call. The reply is
/// bounded by `client_output_buffer_limit`: the walk stops past it.
pub fn keys(r: &mut dyn Reader, d: &mut Data<'_>, pattern: &[u8]) -> Done {
    let glob = Glob::new(pattern);
    let mut too_large = false;
    let mut body = Vec::new();
    let mut count = 0;
    if let Some(key) = glob.exact() {
        if r.slot(key).is_some() {
            super::super::protocol::reply::bulk(&mut body, key);
            count = 1;
        }
    } else {
        let step = if r.steps() { KEYS_STEP } else { usize::MAX };
        let mut from = seek(None, glob.literal_prefix());
        loop {
            let resume = r.walk(bound(&from), step, &mut |k, _| {
                if d.fits(body.len()).is_err() {
                    too_large = true;
                    return ControlFlow::Break(());
                }
                visit(&glob, k, |k| {
                    super::super::protocol::reply::bulk(&mut body, k);
                    count += 1;
                })
            });
            match resume {
                Some(last) => from = Start::After(last),
                None => break,
            }
        }
    }
    if too_large {
        return Err(CommandError::ReplyTooLarge(d.reply_limit));
    }
    d.reply.array(count);
    d.reply.out.extend_from_slice(&body);
    Ok(())
}

/// SCAN: examine up to `count` keys from where the cursor left off, reply
/// with the next cursor (0 when the walk is over) and the keys matching.
pub fn scan(r: &mut dyn Reader, d: &mut Data<'_>, scan: Scan<'_>) -> Done {
    let resume = match scan.cursor {
        0 => None,
        c => Some(d.scans.resume(c).ok_or(CommandError::UnknownCursor(c))?),
    };
    let glob = Glob::new(scan.pattern.unwrap_or(b"*"));
    let mut found_bytes = 0usize;
    let mut found: Vec<Vec<u8>> = Vec::new();
    let mut next = 0;
    // walrep has no sorted sets or streams: such a scan is over at once.
    if !matches!(scan.key_type, Some(KeyType::ZSet | KeyType::Stream)) {
        let from = seek(resume, glob.literal_prefix());
        let wanted = scan.key_type;
        let last = r.walk(bound(&from), scan.count, &mut |k, slot| {
            if d.fits(found_bytes).is_err() {
                return ControlFlow::Break(());
            }
            visit(&glob, k, |k| {
                if wanted.is_none_or(|t| t == KeyType::of(slot.value.kind())) {
                    // A key's reply: its bytes and its header.
                    found_bytes += super::data::reply_bytes(k);
                    found.push(k.to_vec())
                }
            })
        });
        d.fits(found_bytes)?;
        if let Some(last) = last {
            next = d.scans.issue(last);
        }
    }
    d.reply.array(2);
    d.reply.bulk(next.to_string().as_bytes());
    d.reply.array(found.len());
    for k in &found {
        d.reply.bulk(k);
    }
    Ok(())
}

/// Where a walk starts.
enum Start {
    /// At this key, included (a pattern's literal prefix).
    At(Vec<u8>),
    /// Just after this key (where the previous step stopped).
    After(Vec<u8>),
}

/// The later of "after `resume`" and "at `prefix`": keys before the
/// prefix cannot match.
fn seek(resume: Option<Vec<u8>>, prefix: &[u8]) -> Start {
    match resume {
        Some(r) if r.as_slice() >= prefix => Start::After(r),
        _ => Start::At(prefix.to_vec()),
    }
}

fn bound(from: &Start) -> Bound<&[u8]> {
    match from {
        Start::At(k) => Bound::Included(k),
        Start::After(k) => Bound::Excluded(k),
    }
}

/// One key of a walk: stop once past the pattern's literal prefix, report
/// it if it matches.
fn visit(glob: &Glob, key: &[u8], mut found: impl FnMut(&[u8])) -> ControlFlow<()> {
    if !key.starts_with(glob.literal_prefix()) {
        return ControlFlow::Break(());
    }
    if glob.matches_all() || glob.matches(key) {
        found(key);
    }
    ControlFlow::Continue(())
}
