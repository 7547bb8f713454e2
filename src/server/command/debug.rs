//! `DEBUG DIGEST`, as Redis has it: one digest of the whole visible data
//! set, so a test (or an operator after a failover) can tell whether two
//! nodes hold the same data without reading every key.

use std::ops::Bound;

use sha2::{Digest, Sha256};

use super::error::CommandError;
use super::parse::{arity, is, unknown_subcommand, Args};
use crate::server::backend::{Role, WriteError};
use crate::server::protocol::reply;
use crate::server::session::Session;
use crate::store::Value;

/// Redis's reply length: 20 bytes as hex.
const DIGEST_LEN: usize = 20;

/// `DEBUG DIGEST`; walrep has no other DEBUG subcommand.
pub fn parse_debug(args: Args<'_>) -> Result<(), CommandError> {
    if is(args[1], "digest") {
        arity(args, "debug|digest", 2).map(|_| ())
    } else {
        Err(unknown_subcommand("DEBUG", args[1]))
    }
}

/// The digest of every visible key, its value and its expiry, in key
/// order, under one read lock so it is a single moment's data. Every part
/// is length-prefixed, so no two data sets share an input; hash fields and
/// set members are sorted first, so the digest does not depend on the
/// order they were inserted in. An empty data set is 40 zeros, as in
/// Redis. O(data), like Redis's. A standby not yet consistent answers
/// LOADING, as for any read.
pub fn digest(s: &mut Session) -> Result<(), CommandError> {
    if s.ctx.backend.role() == Role::Recovering {
        return Err(WriteError::NotConsistent.into());
    }
    let store = s.ctx.backend.store();
    let mut hash = Sha256::new();
    let mut any = false;
    let mut part = |b: &[u8]| {
        hash.update((b.len() as u64).to_be_bytes());
        hash.update(b);
    };
    store.walk_visible(
        Bound::Unbounded,
        usize::MAX,
        crate::store::control::now_ms(),
        &mut |k, slot| {
            any = true;
            part(k);
            part(&slot.expire_ms.to_be_bytes());
            match &slot.value {
                Value::Str(v) => {
                    part(b"string");
                    part(v);
                }
                Value::List(l) => {
                    part(b"list");
                    l.iter().for_each(|e| part(e));
                }
                Value::Hash(h) => {
                    part(b"hash");
                    let mut pairs: Vec<_> = h.iter().collect();
                    pairs.sort_unstable();
                    for (f, v) in pairs {
                        part(f);
                        part(v);
                    }
                }
                Value::Set(m) => {
                    part(b"set");
                    let mut members: Vec<_> = m.iter().map(|(e, ())| e).collect();
                    members.sort_unstable();
                    members.into_iter().for_each(|e| part(e));
                }
            }
            std::ops::ControlFlow::Continue(())
        },
    );
    let text: String = if any {
        hash.finalize()[..DIGEST_LEN]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    } else {
        "0".repeat(DIGEST_LEN * 2)
    };
    reply::simple(&mut s.out, &text);
    Ok(())
}
