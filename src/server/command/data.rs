//! What a family's executor works with and answers: [`Data`] (the reply
//! being built, the clock, the limits), [`Done`], and the type checks
//! that answer WRONGTYPE.

use std::sync::Arc;

use super::error::CommandError;
use super::scan::ScanCursors;
use crate::server::protocol::reply::Reply;
use crate::store::value::{Hash, List, Set, Str};
use crate::store::{Slot, Store, Value};

/// An executor's result: `Err` becomes the error reply.
pub type Done = Result<(), CommandError>;

/// What a data command's executor works with besides the store.
pub struct Data<'x> {
    pub reply: Reply<'x>,
    /// The clock its expiry decisions use (Unix ms).
    pub now_ms: u64,
    pub store: &'x Store,
    pub scans: &'x ScanCursors,
    /// `client_output_buffer_limit`: most bytes one reply may take.
    pub reply_limit: usize,
    /// Length of the output past which the reply being built (this
    /// command's, or the whole EXEC's) is too large.
    pub reply_end: usize,
    /// `proto_max_bulk_len`: no string grows past it (APPEND).
    pub max_bulk_len: u64,
}

impl Data<'_> {
    /// ReplyTooLarge once the reply grew past the limit: an executor
    /// building a reply of many elements asks after each, so memory stays
    /// bounded by the limit plus one element. Its caller drops the part
    /// already written.
    pub fn check_size(&self) -> Done {
        self.fits(0)
    }

    /// Whether `extra` more reply bytes fit: a write asks before its
    /// first operation, so a refused reply leaves nothing behind.
    pub fn fits(&self, extra: usize) -> Done {
        match self.reply.out.len().saturating_add(extra) > self.reply_end {
            true => Err(CommandError::ReplyTooLarge(self.reply_limit)),
            false => Ok(()),
        }
    }
}

/// Bytes the bulk reply of `b` takes at most (its header and CRLFs
/// included), for a write that checks its reply fits before it applies.
pub fn reply_bytes(b: &[u8]) -> usize {
    b.len() + 16
}

/// A string value, WRONGTYPE for another type.
pub fn string_of(slot: Option<Slot>) -> Result<Option<Str>, CommandError> {
    match slot.map(|s| s.value) {
        None => Ok(None),
        Some(Value::Str(v)) => Ok(Some(v)),
        Some(_) => Err(CommandError::WrongType),
    }
}

/// A hash, WRONGTYPE for another type.
pub fn hash_of(slot: Option<Slot>) -> Result<Option<Arc<Hash>>, CommandError> {
    match slot.map(|s| s.value) {
        None => Ok(None),
        Some(Value::Hash(h)) => Ok(Some(h)),
        Some(_) => Err(CommandError::WrongType),
    }
}

/// A list, WRONGTYPE for another type.
pub fn list_of(slot: Option<Slot>) -> Result<Option<Arc<List>>, CommandError> {
    match slot.map(|s| s.value) {
        None => Ok(None),
        Some(Value::List(l)) => Ok(Some(l)),
        Some(_) => Err(CommandError::WrongType),
    }
}

/// A set, WRONGTYPE for another type.
pub fn set_of(slot: Option<Slot>) -> Result<Option<Arc<Set>>, CommandError> {
    match slot.map(|s| s.value) {
        None => Ok(None),
        Some(Value::Set(v)) => Ok(Some(v)),
        Some(_) => Err(CommandError::WrongType),
    }
}
