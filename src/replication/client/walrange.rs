//! walrep's WAL_RANGE on the client side: ask for `[begin, end)` of one
//! timeline and hand every byte, in order, to a sink; the answer must be
//! exactly that many bytes.

use walrep_states::{Lsn, TimelineId};

use super::{protocol, ClientError, QueryResult, ReplicationClient};
use crate::replication::pgwire::{BackendMessage, FrontendMessage};

impl ReplicationClient {
    /// `WAL_RANGE begin end [TIMELINE t]`: every byte of the range goes to
    /// `sink` in order; returns how many (always `end - begin`). A server
    /// error (range removed, past a switch point, ahead of the flush
    /// position) is [`ClientError::Server`].
    pub fn wal_range(
        &mut self,
        begin: Lsn,
        end: Lsn,
        timeline: Option<TimelineId>,
        sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<u64, ClientError> {
        if self.streaming || self.copy_out {
            return Err(protocol("cannot ask for a WAL range while streaming"));
        }
        let mut q = format!("WAL_RANGE {begin} {end}");
        if let Some(t) = timeline {
            q.push_str(&format!(" TIMELINE {}", t.0));
        }
        self.send(&FrontendMessage::Query(q))?;
        let want = end.0.saturating_sub(begin.0);
        match self.read(self.io_timeout)? {
            BackendMessage::CopyOutResponse { .. } => {}
            BackendMessage::ErrorResponse(e) => {
                let _ = self.collect_results(QueryResult::default());
                return Err(ClientError::Server(Box::new(e)));
            }
            other => return Err(protocol(format!("WAL_RANGE: unexpected message {other:?}"))),
        }
        let mut got = 0u64;
        loop {
            match self.read(self.io_timeout)? {
                BackendMessage::CopyData(d) => {
                    got += d.len() as u64;
                    if got > want {
                        return Err(protocol(format!(
                            "WAL_RANGE sent more than the {want} bytes asked for"
                        )));
                    }
                    sink(&d)?;
                }
                BackendMessage::CopyDone => break,
                BackendMessage::ErrorResponse(e) => {
                    let _ = self.collect_results(QueryResult::default());
                    return Err(ClientError::Server(Box::new(e)));
                }
                BackendMessage::NoticeResponse(_) => {}
                other => {
                    return Err(protocol(format!(
                        "unexpected message in WAL range: {other:?}"
                    )))
                }
            }
        }
        let done = self.collect_results(QueryResult::default())?;
        if got != want || !done.tags.iter().any(|t| t == "WAL_RANGE") {
            return Err(protocol(format!(
                "WAL_RANGE ended after {got} of {want} bytes (tags {:?})",
                done.tags
            )));
        }
        Ok(got)
    }
}
