//! What the connection does after a command: go on, close, or run a WAIT
//! off its worker thread.

use std::time::Duration;

/// What the connection does after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// QUIT: send the replies, then close.
    Close,
    /// WAIT: run this off the worker thread; its reply comes later.
    Wait(WaitRequest),
}

/// A WAIT to run off the worker thread: how many standbys, for WAL up to
/// where, how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitRequest {
    pub wanted: usize,
    pub upto: crate::Lsn,
    pub timeout: Duration,
    /// WAITAOF (`Some(numlocal)`): the WAL must also be durable here, and
    /// the reply is `[local, replicas]`; `None` for WAIT.
    pub numlocal: Option<bool>,
}
