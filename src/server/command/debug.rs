//! `DEBUG DIGEST`, as Redis has it: one digest of the whole visible data
//! set, so a test (or an operator after a failover) can tell whether two
//! nodes hold the same data without reading every key.

use std::ops::Bound;

use sha2::{Digest, Sha256};

use super::parse::{arity, is, unknown_subcommand};
use super::{Args, Command, CommandError};
use crate::server::protocol::reply;
use crate::server::session::Session;

/// Redis's reply length: 20 bytes as hex.
const DIGEST_LEN: usize = 20;

/// `DEBUG DIGEST`; walrep has no other DEBUG subcommand.
pub fn parse_debug<'a>(args: Args<'a>) -> Result<Command<'a>, CommandError> {
    if is(args[1], "digest") {
        arity(args, "debug|digest", 2).map(|_| Command::DebugDigest)
    } else {
        Err(unknown_subcommand("DEBUG", args[1]))
    }
}

/// The digest of every visible key and value, in key order, under one read
/// lock so it is a single moment's data. Each key and value is length
/// prefixed, so no two data sets share an input. An empty data set is 40
/// zeros, as in Redis. O(keys), like Redis's.
pub fn digest(s: &mut Session) {
    let store = s.ctx.backend.store();
    let mut hash = Sha256::new();
    let mut any = false;
    store.walk_visible(Bound::Unbounded, usize::MAX, |k, v| {
        any = true;
        for part in [k, v] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        std::ops::ControlFlow::Continue(())
    });
    let text: String = if any {
        hash.finalize()[..DIGEST_LEN]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    } else {
        "0".repeat(DIGEST_LEN * 2)
    };
    reply::simple(&mut s.out, &text);
}
