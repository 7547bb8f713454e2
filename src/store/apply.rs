//! One WAL operation applied to a key's state: the function the primary,
//! crash recovery and a standby's redo all compute a key's next state with.

use std::sync::Arc;

use super::record::Op;
use super::value::{list_remove, Elem, Hash, List, Set, Slot, Value};

/// Apply one WAL operation to a key's state (`None` = absent): the state
/// after it. Total and deterministic, with no clock: the primary and every
/// replay compute the same state from the same operations. An operation
/// that does not fit the state (a list operation on a hash, LSET past the
/// end) changes nothing: the primary never logs one, and on replay over a
/// fuzzy snapshot it can only meet a state that a later record replaces
/// (docs/wal-format.md, "Replay over a fuzzy snapshot"). A collection left
/// empty is deleted, as in Redis.
pub fn apply(slot: Option<Slot>, op: &Op<'_>) -> Option<Slot> {
    match op {
        Op::Del { .. } => None,
        Op::Set { value, .. } => Some(Slot::new(Value::string(value))),
        Op::Put {
            value, expire_ms, ..
        } => Some(Slot {
            value: value.clone(),
            expire_ms: *expire_ms,
        }),
        Op::Expire { at_ms, .. } => slot.map(|s| Slot {
            expire_ms: *at_ms,
            ..s
        }),
        Op::Flush => None,
        _ => apply_collection(slot, op),
    }
}

fn apply_collection(slot: Option<Slot>, op: &Op<'_>) -> Option<Slot> {
    let (value, expire_ms) = match slot {
        Some(s) => (Some(s.value), s.expire_ms),
        None => (None, 0),
    };
    let value = match (value.or_else(|| empty_for(op)), op) {
        (Some(Value::Hash(mut h)), Op::HSet { .. } | Op::HDel { .. }) => {
            hash_op(Arc::make_mut(&mut h), op);
            (!h.is_empty()).then_some(Value::Hash(h))
        }
        (Some(Value::Set(mut s)), Op::SAdd { .. } | Op::SRem { .. }) => {
            set_op(Arc::make_mut(&mut s), op);
            (!s.is_empty()).then_some(Value::Set(s))
        }
        (
            Some(Value::List(mut l)),
            Op::Push { .. } | Op::Pop { .. } | Op::LSet { .. } | Op::LRem { .. } | Op::LTrim { .. },
        ) => {
            list_op(Arc::make_mut(&mut l), op);
            (!l.is_empty()).then_some(Value::List(l))
        }
        // A type that does not fit: unchanged.
        (other, _) => other,
    };
    value.map(|value| Slot { value, expire_ms })
}

/// The empty collection an operation on an absent key starts from.
fn empty_for(op: &Op<'_>) -> Option<Value> {
    match op {
        Op::HSet { .. } | Op::HDel { .. } => Some(Value::Hash(Arc::default())),
        Op::SAdd { .. } | Op::SRem { .. } => Some(Value::Set(Arc::default())),
        Op::Push { .. } | Op::Pop { .. } | Op::LSet { .. } | Op::LRem { .. } | Op::LTrim { .. } => {
            Some(Value::List(Arc::default()))
        }
        _ => None,
    }
}

fn hash_op(h: &mut Hash, op: &Op<'_>) {
    match op {
        Op::HSet { pairs, .. } => {
            for (f, v) in pairs {
                h.insert(f, Elem::from(&**v));
            }
        }
        Op::HDel { fields, .. } => {
            for f in fields {
                h.remove(f);
            }
        }
        _ => {}
    }
}

fn set_op(s: &mut Set, op: &Op<'_>) {
    match op {
        Op::SAdd { members, .. } => {
            for m in members {
                s.insert(m, ());
            }
        }
        Op::SRem { members, .. } => {
            for m in members {
                s.remove(m);
            }
        }
        _ => {}
    }
}

fn list_op(l: &mut List, op: &Op<'_>) {
    match op {
        Op::Push { front, elems, .. } => {
            for e in elems {
                let e = Elem::from(&**e);
                match front {
                    true => l.push_front(e),
                    false => l.push_back(e),
                }
            }
        }
        Op::Pop { front, count, .. } => {
            let n = usize::try_from(*count).unwrap_or(usize::MAX).min(l.len());
            match front {
                true => *l = l.skip(n),
                false => l.truncate(l.len() - n),
            }
        }
        Op::LSet { index, elem, .. } => {
            if let Some(i) = usize::try_from(*index).ok().filter(|&i| i < l.len()) {
                l.set(i, Elem::from(&**elem));
            }
        }
        Op::LRem { count, elem, .. } => list_remove(l, *count, elem),
        Op::LTrim { start, end, .. } => {
            let len = l.len() as u64;
            let end = (*end).min(len) as usize;
            let start = (*start).min(end as u64) as usize;
            l.truncate(end);
            *l = l.skip(start);
        }
        _ => {}
    }
}
