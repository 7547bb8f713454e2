//! Hash commands: HSET, HMSET, HSETNX, HGET, HMGET, HDEL, HGETALL, HKEYS,
//! HVALS, HLEN, HEXISTS, HINCRBY, HSTRLEN and HSCAN, their parsers and
//! executors. Writes are logged as HSET / HDEL of the fields they change
//! (HINCRBY as the HSET of its result).

use std::borrow::Cow;

use super::data::{hash_of, Data, Done};
use super::error::CommandError;
use super::glob::Glob;
use super::parse::{Args, CollScan};
use crate::store::record::Op;
use crate::store::{Reader, WriteTxn};

/// HSET / HMSET's `field value [field value ...]` after the key.
pub fn parse_hset_pairs<'a>(args: Args<'a>, name: &'static str) -> Result<Args<'a>, CommandError> {
    match args.len() % 2 {
        0 => Ok(&args[2..]),
        _ => Err(CommandError::Arity(name)),
    }
}

pub fn hset<'a>(
    t: &mut WriteTxn<'_, 'a>,
    d: &mut Data<'_>,
    key: &'a [u8],
    pairs: Args<'a>,
    ok: bool,
) -> Done {
    let h = hash_of(t.get(key))?;
    // New fields, each counted once even if named twice.
    let mut fresh: Vec<&[u8]> = pairs
        .chunks(2)
        .map(|p| p[0])
        .filter(|f| h.as_ref().is_none_or(|h| !h.contains(f)))
        .collect();
    fresh.sort_unstable();
    fresh.dedup();
    t.apply(Op::HSet {
        key: Cow::Borrowed(key),
        pairs: pairs
            .chunks(2)
            .map(|p| (Cow::Borrowed(p[0]), Cow::Borrowed(p[1])))
            .collect(),
    });
    match ok {
        true => d.reply.ok(),
        false => d.reply.int(fresh.len() as i64),
    }
    Ok(())
}

pub fn hsetnx<'a>(
    t: &mut WriteTxn<'_, 'a>,
    d: &mut Data<'_>,
    key: &'a [u8],
    field: &'a [u8],
    value: &'a [u8],
) -> Done {
    let h = hash_of(t.get(key))?;
    let fresh = h.is_none_or(|h| !h.contains(field));
    if fresh {
        t.apply(Op::HSet {
            key: Cow::Borrowed(key),
            pairs: vec![(Cow::Borrowed(field), Cow::Borrowed(value))],
        });
    }
    d.reply.int(i64::from(fresh));
    Ok(())
}

pub fn hdel<'a>(
    t: &mut WriteTxn<'_, 'a>,
    d: &mut Data<'_>,
    key: &'a [u8],
    fields: Args<'a>,
) -> Done {
    let Some(h) = hash_of(t.get(key))? else {
        d.reply.int(0);
        return Ok(());
    };
    let mut present: Vec<&'a [u8]> = fields.iter().copied().filter(|f| h.contains(f)).collect();
    present.sort_unstable();
    present.dedup();
    if !present.is_empty() {
        t.apply(Op::HDel {
            key: Cow::Borrowed(key),
            fields: present.iter().map(|f| Cow::Borrowed(*f)).collect(),
        });
    }
    d.reply.int(present.len() as i64);
    Ok(())
}

pub fn hincrby<'a>(
    t: &mut WriteTxn<'_, 'a>,
    d: &mut Data<'_>,
    key: &'a [u8],
    field: &'a [u8],
    by: i64,
) -> Done {
    let h = hash_of(t.get(key))?;
    let current = match h.as_ref().and_then(|h| h.get(field)) {
        Some(v) => super::parse::canonical_i64(v).ok_or(CommandError::HashNotInteger)?,
        None => 0,
    };
    let next = current
        .checked_add(by)
        .ok_or(CommandError::IncrementOverflow)?;
    t.apply(Op::HSet {
        key: Cow::Borrowed(key),
        pairs: vec![(
            Cow::Borrowed(field),
            Cow::Owned(next.to_string().into_bytes()),
        )],
    });
    d.reply.int(next);
    Ok(())
}

pub fn hget(r: &mut dyn Reader, d: &mut Data<'_>, key: &[u8], field: &[u8]) -> Done {
    match hash_of(r.slot(key))?.as_ref().and_then(|h| h.get(field)) {
        Some(v) => d.reply.bulk(v),
        None => d.reply.null(),
    }
    Ok(())
}

pub fn hmget(r: &mut dyn Reader, d: &mut Data<'_>, key: &[u8], fields: Args<'_>) -> Done {
    let h = hash_of(r.slot(key))?;
    d.reply.array(fields.len());
    for f in fields {
        match h.as_ref().and_then(|h| h.get(f)) {
            Some(v) => d.reply.bulk(v),
            None => d.reply.null(),
        }
        d.check_size()?;
    }
    Ok(())
}

/// HGETALL: a map in RESP3, field/value pairs in RESP2.
pub fn hgetall(r: &mut dyn Reader, d: &mut Data<'_>, key: &[u8]) -> Done {
    let h = hash_of(r.slot(key))?;
    let Some(h) = h else {
        d.reply.map(0);
        return Ok(());
    };
    d.reply.map(h.len());
    for (f, v) in h.iter() {
        d.reply.bulk(f);
        d.reply.bulk(v);
        d.check_size()?;
    }
    Ok(())
}

pub fn hkeys(r: &mut dyn Reader, d: &mut Data<'_>, key: &[u8]) -> Done {
    let h = hash_of(r.slot(key))?;
    d.reply.array(h.as_ref().map_or(0, |h| h.len()));
    for (f, _) in h.iter().flat_map(|h| h.iter()) {
        d.reply.bulk(f);
        d.check_size()?;
    }
    Ok(())
}

pub fn hvals(r: &mut dyn Reader, d: &mut Data<'_>, key: &[u8]) -> Done {
    let h = hash_of(r.slot(key))?;
    d.reply.array(h.as_ref().map_or(0, |h| h.len()));
    for (_, v) in h.iter().flat_map(|h| h.iter()) {
        d.reply.bulk(v);
        d.check_size()?;
    }
    Ok(())
}

pub fn hlen(r: &mut dyn Reader, d: &mut Data<'_>, key: &[u8]) -> Done {
    let n = hash_of(r.slot(key))?.map_or(0, |h| h.len());
    d.reply.int(n as i64);
    Ok(())
}

pub fn hexists(r: &mut dyn Reader, d: &mut Data<'_>, key: &[u8], field: &[u8]) -> Done {
    let found = hash_of(r.slot(key))?.is_some_and(|h| h.contains(field));
    d.reply.int(i64::from(found));
    Ok(())
}

pub fn hstrlen(r: &mut dyn Reader, d: &mut Data<'_>, key: &[u8], field: &[u8]) -> Done {
    let h = hash_of(r.slot(key))?;
    let n = h.as_ref().and_then(|h| h.get(field)).map_or(0, |v| v.len());
    d.reply.int(n as i64);
    Ok(())
}

/// HSCAN: the cursor is a position in the hash's field order (see
/// [`crate::store::value::HashedMap::scan_from`]), so it needs no table
/// and survives restarts; a field present for the whole scan is returned
/// once.
pub fn hscan(r: &mut dyn Reader, d: &mut Data<'_>, scan: CollScan<'_>) -> Done {
    let h = hash_of(r.slot(scan.key))?;
    let glob = Glob::new(scan.pattern.unwrap_or(b"*"));
    let (items, next) = match &h {
        Some(h) => h.scan_from(scan.cursor, scan.count),
        None => (Vec::new(), None),
    };
    let items: Vec<_> = items
        .into_iter()
        .filter(|(f, _)| glob.matches_all() || glob.matches(f))
        .collect();
    d.reply.array(2);
    d.reply.bulk(next.unwrap_or(0).to_string().as_bytes());
    d.reply
        .array(items.len() * if scan.novalues { 1 } else { 2 });
    for (f, v) in items {
        d.reply.bulk(f);
        if !scan.novalues {
            d.reply.bulk(v);
        }
        d.check_size()?;
    }
    Ok(())
}
