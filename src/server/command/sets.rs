//! Set commands: SADD, SREM, SMEMBERS, SISMEMBER, SMISMEMBER, SCARD, SPOP,
//! SRANDMEMBER and SSCAN, their parsers and executors. SPOP's random
//! choice is made on the primary and logged as the SREM of the members it
//! chose, so every replay removes the same ones.

use std::borrow::Cow;

use rand::seq::SliceRandom;
use rand::Rng;

use super::data::{reply_bytes, set_of, Data, Done};
use super::error::CommandError;
use super::glob::Glob;
use super::parse::{int, Args, CollScan};
use crate::store::record::Op;
use crate::store::value::{Elem, Set};
use crate::store::{Reader, WriteTxn};

/// The most members SRANDMEMBER with a negative count (which may repeat
/// members) returns: its reply is bounded like every buffer. Redis has
/// no such bound; a larger count is `ERR value is out of range`.
pub const MAX_RANDOM_MEMBERS: u64 = 1 << 20;

/// SRANDMEMBER's optional count (negative: members may repeat).
pub fn parse_srandmember_count(args: Args<'_>) -> Result<Option<i64>, CommandError> {
    let count = match args.get(2) {
        Some(c) => {
            let n = int(c)?;
            if n == i64::MIN || (n < 0 && n.unsigned_abs() > MAX_RANDOM_MEMBERS) {
                return Err(CommandError::OutOfRange);
            }
            Some(n)
        }
        None => None,
    };
    if args.len() > 3 {
        return Err(CommandError::Syntax);
    }
    Ok(count)
}

pub fn sadd<'a>(
    t: &mut WriteTxn<'_, 'a>,
    d: &mut Data<'_>,
    key: &'a [u8],
    members: Args<'a>,
) -> Done {
    let s = set_of(t.get(key))?;
    let mut fresh: Vec<&'a [u8]> = members
        .iter()
        .copied()
        .filter(|m| s.as_ref().is_none_or(|s| !s.contains(m)))
        .collect();
    fresh.sort_unstable();
    fresh.dedup();
    if !fresh.is_empty() {
        t.apply(Op::SAdd {
            key: Cow::Borrowed(key),
            members: fresh.iter().map(|m| Cow::Borrowed(*m)).collect(),
        });
    }
    d.reply.int(fresh.len() as i64);
    Ok(())
}

pub fn srem<'a>(
    t: &mut WriteTxn<'_, 'a>,
    d: &mut Data<'_>,
    key: &'a [u8],
    members: Args<'a>,
) -> Done {
    let Some(s) = set_of(t.get(key))? else {
        d.reply.int(0);
        return Ok(());
    };
    let mut present: Vec<&'a [u8]> = members.iter().copied().filter(|m| s.contains(m)).collect();
    present.sort_unstable();
    present.dedup();
    if !present.is_empty() {
        t.apply(Op::SRem {
            key: Cow::Borrowed(key),
            members: present.iter().map(|m| Cow::Borrowed(*m)).collect(),
        });
    }
    d.reply.int(present.len() as i64);
    Ok(())
}

/// Up to `n` distinct members chosen at random: by repeated picks while
/// `n` is small beside the set (each pick more likely new than not, and
/// the tries bounded), else by shuffling all members.
fn choose(s: &Set, n: usize) -> Vec<Elem> {
    if n >= s.len() {
        return s.iter().map(|(m, _)| m.clone()).collect();
    }
    let mut rng = rand::thread_rng();
    if n.saturating_mul(2) < s.len() {
        let mut seen = std::collections::HashSet::with_capacity(n);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n.saturating_mul(64) {
            let (m, _) = s.pick(rng.gen()).expect("not empty");
            if seen.insert(m.clone()) {
                out.push(m.clone());
                if out.len() == n {
                    return out;
                }
            }
        }
    }
    let mut all: Vec<Elem> = s.iter().map(|(m, _)| m.clone()).collect();
    all.shuffle(&mut rng);
    all.truncate(n);
    all
}

/// SPOP: without a count one member (or null); with a count a set of up
/// to that many.
pub fn spop<'a>(
    t: &mut WriteTxn<'_, 'a>,
    d: &mut Data<'_>,
    key: &'a [u8],
    count: Option<u64>,
) -> Done {
    let Some(s) = set_of(t.get(key))? else {
        match count {
            Some(_) => d.reply.set(0),
            None => d.reply.null(),
        }
        return Ok(());
    };
    let n = count.map_or(1, |c| c.min(s.len() as u64)) as usize;
    let chosen = choose(&s, n);
    // Before the operation: a reply too large pops nothing.
    d.fits(chosen.iter().map(|m| reply_bytes(m)).sum())?;
    if !chosen.is_empty() {
        t.apply(Op::SRem {
            key: Cow::Borrowed(key),
            members: chosen.iter().map(|m| Cow::Owned(m.to_vec())).collect(),
        });
    }
    match count {
        None => d.reply.bulk(&chosen[0]),
        Some(_) => {
            d.reply.set(chosen.len());
            for m in &chosen {
                d.reply.bulk(m);
            }
        }
    }
    Ok(())
}

/// SRANDMEMBER: a positive count gives distinct members, a negative one
/// may repeat them.
pub fn srandmember(r: &mut dyn Reader, d: &mut Data<'_>, key: &[u8], count: Option<i64>) -> Done {
    let s = set_of(r.slot(key))?;
    let Some(s) = s else {
        match count {
            Some(_) => d.reply.array(0),
            None => d.reply.null(),
        }
        return Ok(());
    };
    match count {
        None => {
            let (m, _) = s.pick(rand::thread_rng().gen()).expect("not empty");
            d.reply.bulk(m);
        }
        Some(n) if n >= 0 => {
            let chosen = choose(&s, n as usize);
            d.reply.array(chosen.len());
            for m in &chosen {
                d.reply.bulk(m);
                d.check_size()?;
            }
        }
        Some(n) => {
            let mut rng = rand::thread_rng();
            let n = n.unsigned_abs() as usize;
            d.reply.array(n);
            for _ in 0..n {
                let (m, _) = s.pick(rng.gen()).expect("not empty");
                d.reply.bulk(m);
                // A negative count repeats members: only this bounds it.
                d.check_size()?;
            }
        }
    }
    Ok(())
}

pub fn smembers(r: &mut dyn Reader, d: &mut Data<'_>, key: &[u8]) -> Done {
    let s = set_of(r.slot(key))?;
    d.reply.set(s.as_ref().map_or(0, |s| s.len()));
    for (m, _) in s.iter().flat_map(|s| s.iter()) {
        d.reply.bulk(m);
        d.check_size()?;
    }
    Ok(())
}

pub fn sismember(r: &mut dyn Reader, d: &mut Data<'_>, key: &[u8], member: &[u8]) -> Done {
    let found = set_of(r.slot(key))?.is_some_and(|s| s.contains(member));
    d.reply.int(i64::from(found));
    Ok(())
}

pub fn smismember(r: &mut dyn Reader, d: &mut Data<'_>, key: &[u8], members: Args<'_>) -> Done {
    let s = set_of(r.slot(key))?;
    d.reply.array(members.len());
    for m in members {
        d.reply
            .int(i64::from(s.as_ref().is_some_and(|s| s.contains(m))));
        d.check_size()?;
    }
    Ok(())
}

pub fn scard(r: &mut dyn Reader, d: &mut Data<'_>, key: &[u8]) -> Done {
    let n = set_of(r.slot(key))?.map_or(0, |s| s.len());
    d.reply.int(n as i64);
    Ok(())
}

/// SSCAN: the cursor is a position in the set's member order, like HSCAN's.
pub fn sscan(r: &mut dyn Reader, d: &mut Data<'_>, scan: CollScan<'_>) -> Done {
    let s = set_of(r.slot(scan.key))?;
    let glob = Glob::new(scan.pattern.unwrap_or(b"*"));
    let (items, next) = match &s {
        Some(s) => s.scan_from(scan.cursor, scan.count),
        None => (Vec::new(), None),
    };
    let items: Vec<_> = items
        .into_iter()
        .filter(|(m, _)| glob.matches_all() || glob.matches(m))
        .collect();
    d.reply.array(2);
    d.reply.bulk(next.unwrap_or(0).to_string().as_bytes());
    d.reply.array(items.len());
    for (m, _) in items {
        d.reply.bulk(m);
        d.check_size()?;
    }
    Ok(())
}
