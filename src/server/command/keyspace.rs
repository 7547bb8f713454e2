//! Keyspace commands: EXISTS, DEL, UNLINK, DBSIZE, TYPE, KEYS and SCAN,
//! their parsers and executors.
//!
//! KEYS and SCAN walk the ordered store in bounded steps, each under the
//! read lock for that step only, so a large keyspace never stalls writers
//! on other connections. A pattern with a literal start (`user:*`) seeks to
//! it and stops past it instead of walking every key.

use std::borrow::Cow;
use std::ops::{Bound, ControlFlow};

use super::exec::{write, Done};
use super::glob::Glob;
use super::parse::{int, is};
use super::{Args, CommandError};
use crate::server::protocol::reply;
use crate::server::session::Session;
use crate::store::record::KvCommand;

/// Keys KEYS examines per step under the read lock.
const KEYS_STEP: usize = 1024;
/// SCAN's COUNT when none is given (Redis's).
pub const SCAN_COUNT_DEFAULT: usize = 10;
/// The most keys one SCAN call examines, whatever COUNT asks (COUNT is a
/// hint in Redis too): bounds the work and the reply of one call.
pub const SCAN_COUNT_MAX: usize = 10_000;

/// Redis's value types, as TYPE names them. Every walrep value is a string
/// today; the others are known so `SCAN ... TYPE hash` is valid.
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

pub fn exists(s: &mut Session, keys: Args<'_>) {
    let store = s.ctx.backend.store();
    let count = keys.iter().filter(|k| store.get(k).is_some()).count();
    reply::integer(&mut s.out, count as i64);
}

pub fn dbsize(s: &mut Session) {
    reply::integer(&mut s.out, s.ctx.backend.store().len() as i64);
}

/// DEL and UNLINK (the same here: nothing is freed lazily).
pub fn del(s: &mut Session, keys: Args<'_>) -> Done {
    let removed = write(s, KvCommand::Del, |txn| {
        // A key named twice is deleted (and counted) once, as in Redis.
        let mut present: Vec<&[u8]> = keys
            .iter()
            .copied()
            .filter(|k| txn.latest(k).is_some())
            .collect();
        present.sort_unstable();
        present.dedup();
        let count = present.len();
        Ok((
            present.into_iter().map(|k| (k, None::<Cow<_>>)).collect(),
            count,
        ))
    })?;
    reply::integer(&mut s.out, removed as i64);
    Ok(())
}

pub fn key_type(s: &mut Session, key: &[u8]) {
    let name = match s.ctx.backend.store().get(key) {
        Some(_) => KeyType::String.name(),
        None => "none",
    };
    reply::simple(&mut s.out, name);
}

/// KEYS: every key matching, in key order. Unlike Redis's, it is not one
/// atomic snapshot: it walks in steps, and (as SCAN) returns every key
/// present for the whole call.
pub fn keys(s: &mut Session, pattern: &[u8]) -> Done {
    let glob = Glob::new(pattern);
    let limit = s.reply_limit();
    let mut too_large = false;
    let store = s.ctx.backend.store();
    let mut body = Vec::new();
    let mut count = 0;
    if let Some(key) = glob.exact() {
        if store.get(key).is_some() {
            reply::bulk(&mut body, key);
            count = 1;
        }
    } else {
        let mut from = seek(None, glob.literal_prefix());
        loop {
            let resume = store.walk_visible(bound(&from), KEYS_STEP, |k, _| {
                if body.len() > limit {
                    too_large = true;
                    return ControlFlow::Break(());
                }
                visit(&glob, k, |k| {
                    reply::bulk(&mut body, k);
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
        return Err(CommandError::ReplyTooLarge(limit));
    }
    reply::array_header(&mut s.out, count);
    s.out.extend_from_slice(&body);
    Ok(())
}

/// SCAN: examine up to `count` keys from where the cursor left off, reply
/// with the next cursor (0 when the walk is over) and the keys matching.
pub fn scan(s: &mut Session, scan: Scan<'_>) -> Done {
    let resume = match scan.cursor {
        0 => None,
        c => Some(
            s.ctx
                .scans
                .resume(c)
                .ok_or(CommandError::UnknownCursor(c))?,
        ),
    };
    let glob = Glob::new(scan.pattern.unwrap_or(b"*"));
    let limit = s.reply_limit();
    let mut found_bytes = 0usize;
    let mut found: Vec<Vec<u8>> = Vec::new();
    let mut next = 0;
    // Only strings exist: a scan for another type is over at once.
    if scan.key_type.is_none_or(|t| t == KeyType::String) {
        let from = seek(resume, glob.literal_prefix());
        let store = s.ctx.backend.store();
        let last = store.walk_visible(bound(&from), scan.count, |k, _| {
            if found_bytes > limit {
                return ControlFlow::Break(());
            }
            visit(&glob, k, |k| {
                found_bytes += k.len();
                found.push(k.to_vec())
            })
        });
        if found_bytes > limit {
            return Err(CommandError::ReplyTooLarge(limit));
        }
        if let Some(last) = last {
            next = s.ctx.scans.issue(last);
        }
    }
    reply::array_header(&mut s.out, 2);
    reply::bulk(&mut s.out, next.to_string().as_bytes());
    reply::array_header(&mut s.out, found.len());
    for k in &found {
        reply::bulk(&mut s.out, k);
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
