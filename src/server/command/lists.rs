//! List commands: LPUSH, RPUSH, LPUSHX, RPUSHX, LPOP, RPOP (with a count),
//! LRANGE, LLEN, LINDEX, LSET, LREM and LTRIM, their parsers and
//! executors. Writes are logged as what they do to the list (the pushed
//! elements, how many popped, the resolved index or range), never as the
//! whole list: a push costs the same on a list of any length.

use std::borrow::Cow;

use super::data::{list_of, reply_bytes, Data, Done};
use super::error::CommandError;
use super::parse::Args;
use crate::store::record::Op;
use crate::store::value::list_remove_count;
use crate::store::{Reader, WriteTxn};

/// A Redis list range (`start`, `stop` inclusive, negative from the end)
/// resolved against `len`: the half-open index range, empty if none.
pub fn range(start: i64, stop: i64, len: usize) -> std::ops::Range<usize> {
    let len_i = len as i64;
    let start = if start < 0 { start + len_i } else { start }.max(0);
    let stop = if stop < 0 { stop + len_i } else { stop };
    if start > stop || start >= len_i {
        return 0..0;
    }
    let end = (stop.min(len_i - 1) + 1) as usize;
    start as usize..end
}

/// A Redis index (negative from the end) resolved against `len`.
fn index(i: i64, len: usize) -> Option<usize> {
    let i = if i < 0 { i + len as i64 } else { i };
    usize::try_from(i).ok().filter(|&i| i < len)
}

pub fn push<'a>(
    t: &mut WriteTxn<'_, 'a>,
    d: &mut Data<'_>,
    key: &'a [u8],
    elems: Args<'a>,
    front: bool,
    only_existing: bool,
) -> Done {
    let len = list_of(t.get(key))?.map(|l| l.len());
    if only_existing && len.is_none() {
        d.reply.int(0);
        return Ok(());
    }
    t.apply(Op::Push {
        key: Cow::Borrowed(key),
        front,
        elems: elems.iter().map(|e| Cow::Borrowed(*e)).collect(),
    });
    d.reply.int((len.unwrap_or(0) + elems.len()) as i64);
    Ok(())
}

/// LPOP / RPOP: without a count one element (or null); with a count an
/// array of up to that many (a null array for a missing key).
pub fn pop<'a>(
    t: &mut WriteTxn<'_, 'a>,
    d: &mut Data<'_>,
    key: &'a [u8],
    count: Option<u64>,
    front: bool,
) -> Done {
    let Some(l) = list_of(t.get(key))? else {
        match count {
            Some(_) => d.reply.null_array(),
            None => d.reply.null(),
        }
        return Ok(());
    };
    let n = count.map_or(1, |c| c.min(l.len() as u64)) as usize;
    let taken: Vec<_> = match front {
        true => l.iter().take(n).collect(),
        false => l.iter().rev().take(n).collect(),
    };
    // Before the operation: a reply too large pops nothing.
    d.fits(taken.iter().map(|e| reply_bytes(e)).sum())?;
    if n > 0 {
        t.apply(Op::Pop {
            key: Cow::Borrowed(key),
            front,
            count: n as u64,
        });
    }
    match count {
        None => d.reply.bulk(taken[0]),
        Some(_) => {
            d.reply.array(taken.len());
            for e in taken {
                d.reply.bulk(e);
            }
        }
    }
    Ok(())
}

pub fn lrange(r: &mut dyn Reader, d: &mut Data<'_>, key: &[u8], start: i64, stop: i64) -> Done {
    let Some(l) = list_of(r.slot(key))? else {
        d.reply.array(0);
        return Ok(());
    };
    let range = range(start, stop, l.len());
    d.reply.array(range.len());
    if !range.is_empty() {
        let focus = l.focus().narrow(range);
        for e in focus.into_iter() {
            d.reply.bulk(e);
            d.check_size()?;
        }
    }
    Ok(())
}

pub fn llen(r: &mut dyn Reader, d: &mut Data<'_>, key: &[u8]) -> Done {
    let n = list_of(r.slot(key))?.map_or(0, |l| l.len());
    d.reply.int(n as i64);
    Ok(())
}

pub fn lindex(r: &mut dyn Reader, d: &mut Data<'_>, key: &[u8], i: i64) -> Done {
    let l = list_of(r.slot(key))?;
    match l
        .as_ref()
        .and_then(|l| index(i, l.len()).and_then(|i| l.get(i)))
    {
        Some(e) => d.reply.bulk(e),
        None => d.reply.null(),
    }
    Ok(())
}

pub fn lset<'a>(
    t: &mut WriteTxn<'_, 'a>,
    d: &mut Data<'_>,
    key: &'a [u8],
    i: i64,
    elem: &'a [u8],
) -> Done {
    let l = list_of(t.get(key))?.ok_or(CommandError::NoSuchKey)?;
    let i = index(i, l.len()).ok_or(CommandError::IndexOutOfRange)?;
    t.apply(Op::LSet {
        key: Cow::Borrowed(key),
        index: i as u64,
        elem: Cow::Borrowed(elem),
    });
    d.reply.ok();
    Ok(())
}

pub fn lrem<'a>(
    t: &mut WriteTxn<'_, 'a>,
    d: &mut Data<'_>,
    key: &'a [u8],
    count: i64,
    elem: &'a [u8],
) -> Done {
    let removed = match list_of(t.get(key))? {
        Some(l) => list_remove_count(&l, count, elem),
        None => 0,
    };
    if removed > 0 {
        t.apply(Op::LRem {
            key: Cow::Borrowed(key),
            count,
            elem: Cow::Borrowed(elem),
        });
    }
    d.reply.int(removed as i64);
    Ok(())
}

pub fn ltrim<'a>(
    t: &mut WriteTxn<'_, 'a>,
    d: &mut Data<'_>,
    key: &'a [u8],
    start: i64,
    stop: i64,
) -> Done {
    if let Some(l) = list_of(t.get(key))? {
        let keep = range(start, stop, l.len());
        if keep.len() != l.len() {
            t.apply(Op::LTrim {
                key: Cow::Borrowed(key),
                start: keep.start as u64,
                end: keep.end as u64,
            });
        }
    }
    d.reply.ok();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_like_redis() {
        assert_eq!(range(0, -1, 5), 0..5);
        assert_eq!(range(0, 99, 5), 0..5);
        assert_eq!(range(-2, -1, 5), 3..5);
        assert_eq!(range(-100, 1, 5), 0..2);
        assert_eq!(range(3, 1, 5), 0..0);
        assert_eq!(range(5, 9, 5), 0..0);
        assert_eq!(range(0, -6, 5), 0..0);
        assert_eq!(range(i64::MIN, i64::MAX, 3), 0..3);
        assert_eq!(range(0, 0, 0), 0..0);
        assert_eq!(index(-1, 3), Some(2));
        assert_eq!(index(3, 3), None);
        assert_eq!(index(i64::MIN, 3), None);
    }
}
