//! A MULTI's queue, kept in the connection's session until EXEC or
//! DISCARD ([`super::multi`] queues and runs it).

/// A MULTI's queue.
#[derive(Debug, Default)]
pub struct Multi {
    /// Each queued request's arguments, owned (the request buffer moves on).
    pub(super) queue: Vec<Vec<Vec<u8>>>,
    pub(super) bytes: usize,
    /// A queued command writes: EXEC takes the write lock.
    pub(super) has_write: bool,
    /// A queuing error: EXEC answers EXECABORT.
    pub(super) aborted: bool,
}

impl Multi {
    pub fn has_write(&self) -> bool {
        self.has_write
    }
}
