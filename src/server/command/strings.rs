//! String commands: GET, MGET, SET (with its expiry options), SETNX, SETEX,
//! PSETEX, MSET, INCR, DECR, INCRBY, DECRBY, APPEND, STRLEN, GETSET,
//! GETDEL and GETEX, their parsers and executors. Every write is logged as
//! the blind SET (or PUT, with its absolute expiry) of its result.

use std::borrow::Cow;

use super::data::{string_of, Data, Done};
use super::error::CommandError;
use super::parse::{int, is, Args};
use crate::store::record::Op;
use crate::store::{Reader, Value, WriteTxn};

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]`, and
/// SETEX / PSETEX.
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

/// An expiry option (SET, GETEX; EXPIRE's is [`super::ExpireCmd`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// EX, PX: milliseconds from now.
    AfterMs(u64),
    /// EXAT, PXAT: a Unix time in milliseconds.
    AtUnixMs(u64),
    /// SET's KEEPTTL.
    KeepTtl,
    /// GETEX's PERSIST.
    Persist,
}

impl Expiry {
    /// The absolute time it sets at `now_ms` (0 = none), given the key's
    /// current one.
    pub fn resolve(self, now_ms: u64, current_ms: u64) -> u64 {
        match self {
            Expiry::AfterMs(ms) => now_ms.saturating_add(ms),
            Expiry::AtUnixMs(ms) => ms,
            Expiry::KeepTtl => current_ms,
            Expiry::Persist => 0,
        }
    }
}

/// `GETEX key [EX s|PX ms|EXAT s|PXAT ms|PERSIST]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetEx<'a> {
    pub key: &'a [u8],
    pub expiry: Option<Expiry>,
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
        Some((unit, value)) => Some(expiry(unit, value, "set")?),
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

/// `SETEX key seconds value` (`unit` "ex") and `PSETEX key ms value`.
pub fn parse_setex<'a>(
    args: Args<'a>,
    unit: &'static str,
    name: &'static str,
) -> Result<Set<'a>, CommandError> {
    Ok(Set {
        key: args[1],
        value: args[3],
        condition: None,
        get: false,
        expiry: Some(expiry(unit, args[2], name)?),
    })
}

pub fn parse_getex<'a>(args: Args<'a>) -> Result<GetEx<'a>, CommandError> {
    let key = args[1];
    let expiry = match &args[2..] {
        [] => None,
        [p] if is(p, "persist") => Some(Expiry::Persist),
        [unit, value] => {
            let unit = ["ex", "px", "exat", "pxat"]
                .into_iter()
                .find(|u| is(unit, u))
                .ok_or(CommandError::Syntax)?;
            Some(expiry(unit, value, "getex")?)
        }
        _ => return Err(CommandError::Syntax),
    };
    Ok(GetEx { key, expiry })
}

/// An EX/PX/EXAT/PXAT value: positive, and a time Redis can represent
/// (its checks: no overflow to milliseconds, nor when added to now).
pub fn expiry(unit: &str, value: &[u8], command: &'static str) -> Result<Expiry, CommandError> {
    let n = int(value)?;
    let invalid = CommandError::InvalidExpireTime(command);
    let ms = match unit {
        "ex" | "exat" => n.checked_mul(1000),
        _ => Some(n),
    };
    let ms = ms.filter(|&ms| ms > 0).ok_or(invalid.clone())?;
    if unit.ends_with("at") {
        return Ok(Expiry::AtUnixMs(ms as u64));
    }
    ms.checked_add(crate::store::control::now_ms() as i64)
        .ok_or(invalid)?;
    Ok(Expiry::AfterMs(ms as u64))
}

/// MSET's pairs (`key value...`).
pub fn parse_pairs<'a>(args: Args<'a>, name: &'static str) -> Result<Args<'a>, CommandError> {
    match args.len() % 2 {
        1 => Ok(&args[1..]),
        _ => Err(CommandError::Arity(name)),
    }
}

/// INCRBY's amount, and DECRBY's (`negate`).
pub fn parse_incr_by(arg: &[u8], negate: bool) -> Result<i64, CommandError> {
    let by = int(arg)?;
    match negate {
        false => Ok(by),
        true => by.checked_neg().ok_or(CommandError::DecrementOverflow),
    }
}

/// The operation that makes `key` the string `value`, expiring at
/// `expire_ms` (0 = never).
pub fn string_op<'a>(key: &'a [u8], value: Cow<'a, [u8]>, expire_ms: u64) -> Op<'a> {
    match expire_ms {
        0 => Op::Set {
            key: Cow::Borrowed(key),
            value,
        },
        at => Op::Put {
            key: Cow::Borrowed(key),
            value: Value::string(&value),
            expire_ms: at,
        },
    }
}

pub fn get(r: &mut dyn Reader, d: &mut Data<'_>, key: &[u8]) -> Done {
    match string_of(r.slot(key))? {
        Some(v) => d.reply.bulk(&v),
        None => d.reply.null(),
    }
    Ok(())
}

/// MGET: a key that is not a string reads as missing, as in Redis. The
/// reply is bounded by `client_output_buffer_limit` (one large value named
/// many times could otherwise build a reply of any size).
pub fn mget(r: &mut dyn Reader, d: &mut Data<'_>, keys: Args<'_>) -> Done {
    d.reply.array(keys.len());
    for k in keys {
        match r.slot(k).map(|s| s.value) {
            Some(Value::Str(v)) => d.reply.bulk(&v),
            _ => d.reply.null(),
        }
        d.check_size()?;
    }
    Ok(())
}

pub fn strlen(r: &mut dyn Reader, d: &mut Data<'_>, key: &[u8]) -> Done {
    let len = string_of(r.slot(key))?.map_or(0, |v| v.len());
    d.reply.int(len as i64);
    Ok(())
}

pub fn set<'a>(t: &mut WriteTxn<'_, 'a>, d: &mut Data<'_>, set: Set<'a>) -> Done {
    // A plain SET is a blind write: no lookup of the current value.
    let current = match (set.condition, set.get, set.expiry) {
        (None, false, None | Some(Expiry::AfterMs(_) | Expiry::AtUnixMs(_))) => None,
        _ => t.get(set.key),
    };
    let old = match set.get {
        true => string_of(current.clone())?,
        false => None,
    };
    let apply = match set.condition {
        Some(Condition::IfAbsent) => current.is_none(),
        Some(Condition::IfPresent) => current.is_some(),
        None => true,
    };
    if apply {
        let current_ms = current.as_ref().map_or(0, |s| s.expire_ms);
        let at = set.expiry.map_or(0, |e| e.resolve(d.now_ms, current_ms));
        if at != 0 && at <= d.now_ms {
            // An absolute time already past: the key ends up gone.
            t.apply(Op::Del {
                key: Cow::Borrowed(set.key),
            });
        } else {
            t.apply(string_op(set.key, Cow::Borrowed(set.value), at));
        }
    }
    match (set.get, old, apply) {
        (true, Some(v), _) => d.reply.bulk(&v),
        (true, None, _) | (false, _, false) => d.reply.null(),
        (false, _, true) => d.reply.ok(),
    }
    Ok(())
}

pub fn setnx<'a>(
    t: &mut WriteTxn<'_, 'a>,
    d: &mut Data<'_>,
    key: &'a [u8],
    value: &'a [u8],
) -> Done {
    let absent = t.get(key).is_none();
    if absent {
        t.apply(string_op(key, Cow::Borrowed(value), 0));
    }
    d.reply.int(i64::from(absent));
    Ok(())
}

/// MSET: one WAL record, so all or nothing.
pub fn mset<'a>(t: &mut WriteTxn<'_, 'a>, d: &mut Data<'_>, pairs: Args<'a>) -> Done {
    for p in pairs.chunks(2) {
        t.apply(string_op(p[0], Cow::Borrowed(p[1]), 0));
    }
    d.reply.ok();
    Ok(())
}

/// INCR and friends keep the key's expiry, as in Redis.
pub fn incr_by<'a>(t: &mut WriteTxn<'_, 'a>, d: &mut Data<'_>, key: &'a [u8], by: i64) -> Done {
    let slot = t.get(key);
    let expire_ms = slot.as_ref().map_or(0, |s| s.expire_ms);
    let current = match string_of(slot)? {
        Some(v) => int(&v)?,
        None => 0,
    };
    let next = current
        .checked_add(by)
        .ok_or(CommandError::IncrementOverflow)?;
    let text = next.to_string().into_bytes();
    t.apply(string_op(key, Cow::Owned(text), expire_ms));
    d.reply.int(next);
    Ok(())
}

/// APPEND: a value never grows past `proto_max_bulk_len` (Redis's rule),
/// so repeated APPENDs cannot build a value of any size.
pub fn append<'a>(
    t: &mut WriteTxn<'_, 'a>,
    d: &mut Data<'_>,
    key: &'a [u8],
    value: &'a [u8],
) -> Done {
    let slot = t.get(key);
    let expire_ms = slot.as_ref().map_or(0, |s| s.expire_ms);
    let current = string_of(slot)?;
    let old_len = current.as_ref().map_or(0, |v| v.len());
    if (old_len as u64).saturating_add(value.len() as u64) > d.max_bulk_len {
        return Err(CommandError::StringTooLong);
    }
    let mut v = current.map(|v| v.to_vec()).unwrap_or_default();
    v.extend_from_slice(value);
    let len = v.len();
    t.apply(string_op(key, Cow::Owned(v), expire_ms));
    d.reply.int(len as i64);
    Ok(())
}

/// GETSET: SET with GET (the expiry is cleared).
pub fn getset<'a>(
    t: &mut WriteTxn<'_, 'a>,
    d: &mut Data<'_>,
    key: &'a [u8],
    value: &'a [u8],
) -> Done {
    let old = string_of(t.get(key))?;
    t.apply(string_op(key, Cow::Borrowed(value), 0));
    match old {
        Some(v) => d.reply.bulk(&v),
        None => d.reply.null(),
    }
    Ok(())
}

pub fn getdel<'a>(t: &mut WriteTxn<'_, 'a>, d: &mut Data<'_>, key: &'a [u8]) -> Done {
    match string_of(t.get(key))? {
        Some(v) => {
            t.apply(Op::Del {
                key: Cow::Borrowed(key),
            });
            d.reply.bulk(&v);
        }
        None => d.reply.null(),
    }
    Ok(())
}

/// GETEX: the value, and a new expiry (a time already past deletes it).
pub fn getex<'a>(t: &mut WriteTxn<'_, 'a>, d: &mut Data<'_>, g: GetEx<'a>) -> Done {
    let slot = t.get(g.key);
    let current_ms = slot.as_ref().map_or(0, |s| s.expire_ms);
    let Some(v) = string_of(slot)? else {
        d.reply.null();
        return Ok(());
    };
    if let Some(e) = g.expiry {
        let at = e.resolve(d.now_ms, current_ms);
        let key = Cow::Borrowed(g.key);
        if at != 0 && at <= d.now_ms {
            t.apply(Op::Del { key });
        } else if at != current_ms {
            t.apply(Op::Expire { key, at_ms: at });
        }
    }
    d.reply.bulk(&v);
    Ok(())
}
