//! String commands: GET, MGET, SET, SETNX, MSET, INCR, DECR, INCRBY,
//! DECRBY, APPEND and STRLEN, their parsers and executors. Every write is
//! logged as the blind SET (or delete) of its result.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use super::exec::{write, Done};
use super::parse::{int, is};
use super::{Args, Command, CommandError};
use crate::server::protocol::reply;
use crate::server::session::Session;
use crate::store::record::KvCommand;

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub condition: Option<Condition>,
    /// GET: reply with the previous value.
    pub get: bool,
    pub expiry: Option<Expiry>,
}

/// When SET writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// NX: only if the key does not exist.
    IfAbsent,
    /// XX: only if it exists.
    IfPresent,
}

/// SET's expiry options, checked as Redis checks them (walrep does not
/// expire keys yet, so the executor refuses them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// EX, PX: milliseconds from now.
    AfterMs(u64),
    /// EXAT, PXAT: a Unix time in milliseconds.
    AtUnixMs(u64),
    KeepTtl,
}

/// SET's arguments after `key value`. As in Redis, every option is read
/// before any number, so a syntax error wins over a bad number.
pub fn parse_set<'a>(args: Args<'a>) -> Result<Set<'a>, CommandError> {
    let mut condition = None;
    let mut get = false;
    let mut keep_ttl = false;
    let mut expire: Option<(&str, &[u8])> = None;
    let mut i = 3;
    while i < args.len() {
        let opt = args[i];
        let unit = ["ex", "px", "exat", "pxat"]
            .into_iter()
            .find(|u| is(opt, u));
        match (unit, args.get(i + 1)) {
            _ if is(opt, "nx") && condition != Some(Condition::IfPresent) => {
                condition = Some(Condition::IfAbsent)
            }
            _ if is(opt, "xx") && condition != Some(Condition::IfAbsent) => {
                condition = Some(Condition::IfPresent)
            }
            _ if is(opt, "get") => get = true,
            _ if is(opt, "keepttl") && expire.is_none() => keep_ttl = true,
            (Some(u), Some(value)) if !keep_ttl && expire.is_none_or(|(e, _)| e == u) => {
                expire = Some((u, value));
                i += 1;
            }
            _ => return Err(CommandError::Syntax),
        }
        i += 1;
    }
    let expiry = match expire {
        Some((unit, value)) => Some(expiry(unit, value)?),
        None => keep_ttl.then_some(Expiry::KeepTtl),
    };
    Ok(Set {
        key: args[1],
        value: args[2],
        condition,
        get,
        expiry,
    })
}

/// An EX/PX/EXAT/PXAT value: positive, and a time Redis can represent.
fn expiry(unit: &str, value: &[u8]) -> Result<Expiry, CommandError> {
    let n = int(value)?;
    let invalid = CommandError::InvalidExpireTime("set");
    let ms = match unit {
        "ex" | "exat" => n.checked_mul(1000),
        _ => Some(n),
    };
    let ms = ms.filter(|&ms| ms > 0).ok_or(invalid.clone())?;
    if unit.ends_with("at") {
        return Ok(Expiry::AtUnixMs(ms as u64));
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    ms.checked_add(now_ms).ok_or(invalid)?;
    Ok(Expiry::AfterMs(ms as u64))
}

/// MSET's pairs (`key value...`).
pub fn parse_pairs<'a>(args: Args<'a>) -> Result<Args<'a>, CommandError> {
    match args.len() % 2 {
        1 => Ok(&args[1..]),
        _ => Err(CommandError::Arity("mset")),
    }
}

/// INCR (`by` = 1) and DECR (-1).
pub fn parse_incr<'a>(args: Args<'a>, by: i64) -> Command<'a> {
    Command::IncrBy { key: args[1], by }
}

/// INCRBY, and DECRBY (`negate`).
pub fn parse_incr_by<'a>(args: Args<'a>, negate: bool) -> Result<Command<'a>, CommandError> {
    let by = int(args[2])?;
    let by = match negate {
        false => by,
        true => by.checked_neg().ok_or(CommandError::DecrementOverflow)?,
    };
    Ok(Command::IncrBy { key: args[1], by })
}

pub fn get(s: &mut Session, key: &[u8]) {
    match s.ctx.backend.store().get(key) {
        Some(v) => reply::bulk(&mut s.out, &v),
        None => reply::null(&mut s.out),
    }
}

/// MGET: the reply is bounded by `client_output_buffer_limit` (one large
/// value named many times could otherwise build a reply of any size).
pub fn mget(s: &mut Session, keys: Args<'_>) -> Done {
    let start = s.out.len();
    reply::array_header(&mut s.out, keys.len());
    for k in keys {
        get(s, k);
        s.check_reply_size(start)?;
    }
    Ok(())
}

pub fn strlen(s: &mut Session, key: &[u8]) {
    let len = s.ctx.backend.store().get(key).map_or(0, |v| v.len());
    reply::integer(&mut s.out, len as i64);
}

pub fn set(s: &mut Session, set: Set<'_>) -> Done {
    if set.expiry.is_some() {
        return Err(CommandError::ExpiryUnsupported);
    }
    let (written, old) = write(s, KvCommand::Set, |txn| {
        // A plain SET is a blind write: no lookup of the current value.
        let old = match (set.condition, set.get) {
            (None, false) => None,
            _ => txn.latest(set.key).map(|v| v.to_vec()),
        };
        let apply = match set.condition {
            Some(Condition::IfAbsent) => old.is_none(),
            Some(Condition::IfPresent) => old.is_some(),
            None => true,
        };
        let ops = match apply {
            true => vec![(set.key, Some(Cow::Borrowed(set.value)))],
            false => vec![],
        };
        Ok((ops, (apply, old)))
    })?;
    match (set.get, old, written) {
        (true, Some(v), _) => reply::bulk(&mut s.out, &v),
        (true, None, _) | (false, _, false) => reply::null(&mut s.out),
        (false, _, true) => reply::ok(&mut s.out),
    }
    Ok(())
}

pub fn setnx(s: &mut Session, key: &[u8], value: &[u8]) -> Done {
    let written = write(s, KvCommand::Set, |txn| {
        Ok(match txn.latest(key) {
            Some(_) => (vec![], false),
            None => (vec![(key, Some(Cow::Borrowed(value)))], true),
        })
    })?;
    reply::integer(&mut s.out, i64::from(written));
    Ok(())
}

/// MSET: one WAL record, so all or nothing.
pub fn mset(s: &mut Session, pairs: Args<'_>) -> Done {
    write(s, KvCommand::MSet, |_| {
        let ops = pairs
            .chunks(2)
            .map(|p| (p[0], Some(Cow::Borrowed(p[1]))))
            .collect();
        Ok((ops, ()))
    })?;
    reply::ok(&mut s.out);
    Ok(())
}

pub fn incr_by(s: &mut Session, key: &[u8], by: i64) -> Done {
    let value = write(s, KvCommand::Incr, |txn| {
        let current = match txn.latest(key) {
            Some(v) => int(v)?,
            None => 0,
        };
        let next = current
            .checked_add(by)
            .ok_or(CommandError::IncrementOverflow)?;
        let text = next.to_string().into_bytes();
        Ok((vec![(key, Some(Cow::Owned(text)))], next))
    })?;
    reply::integer(&mut s.out, value);
    Ok(())
}

/// APPEND: a value never grows past `proto_max_bulk_len` (Redis's rule),
/// so repeated APPENDs cannot build a value of any size.
pub fn append(s: &mut Session, key: &[u8], value: &[u8]) -> Done {
    let max = s.ctx.settings.max_bulk_len;
    let len = write(s, KvCommand::Set, |txn| {
        let current = txn.latest(key);
        let old_len = current.as_ref().map_or(0, |v| v.len());
        if (old_len as u64).saturating_add(value.len() as u64) > max {
            return Err(CommandError::StringTooLong);
        }
        let mut v = current.map(|v| v.to_vec()).unwrap_or_default();
        v.extend_from_slice(value);
        let len = v.len();
        Ok((vec![(key, Some(Cow::Owned(v)))], len))
    })?;
    reply::integer(&mut s.out, len as i64);
    Ok(())
}
