//! The node as a replication source: what the walsenders read (flush point,
//! WAL bytes, history files), and what their standbys' replies drive
//! (synchronous replication releases, WAIT, replication slots).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::Node;
use crate::replication::registry::{
    ReplicationObserver, WalSenderChange, WalSenderState, WalSenderStatus,
};
pub use crate::replication::source::FlushPoint;
use crate::replication::source::{ReplicationSource, SourceError};
use crate::syncrep::StandbyPosition;
use crate::wal::{RawReader, SegmentError};
use crate::watch::{Subscription, Watch};
use crate::{Lsn, TimelineId, WalSegSize};

/// Most idle raw readers kept for reuse (one per concurrently reading walsender).
const RAW_READER_POOL: usize = 16;

/// `ReplicationSource` over a running node.
pub struct NodeSource {
    node: Weak<Node>,
    readers: Mutex<Vec<RawReader>>,
    data_dir: PathBuf,
    system_identifier: u64,
    seg_size: WalSegSize,
}

impl NodeSource {
    pub(crate) fn new(node: &Arc<Node>) -> NodeSource {
        let c = node.control();
        NodeSource {
            node: Arc::downgrade(node),
            readers: Mutex::new(Vec::new()),
            data_dir: node.dir.root.clone(),
            system_identifier: c.system_identifier,
            seg_size: c.wal_segment_size,
        }
    }

    fn node(&self) -> Option<Arc<Node>> {
        self.node.upgrade()
    }
}

impl ReplicationSource for NodeSource {
    fn system_identifier(&self) -> u64 {
        self.system_identifier
    }

    fn wal_segment_size(&self) -> WalSegSize {
        self.seg_size
    }

    fn flush_point(&self) -> FlushPoint {
        match self.node() {
            Some(node) => node.flush_point(),
            None => FlushPoint {
                tli: TimelineId::FIRST,
                lsn: Lsn::INVALID,
            },
        }
    }

    fn subscribe_flush(&self) -> Subscription {
        match self.node() {
            Some(node) => node.subscribe_flush(),
            None => {
                // Shutting down: one token, then nothing will move again.
                let gone = Watch::new(());
                gone.close();
                gone.subscribe()
            }
        }
    }

    fn written_lsn(&self) -> Lsn {
        match self.node() {
            Some(node) => node.written_lsn(),
            None => Lsn::INVALID,
        }
    }

    fn subscribe_written(&self) -> Subscription {
        match self.node() {
            Some(node) => node.subscribe_written(),
            None => self.subscribe_flush(),
        }
    }

    /// A primary's candidate synchronous standbys: only their apply
    /// position is ever waited for here.
    fn apply_feedback_on_request(&self, application_name: &str) -> bool {
        let Some(node) = self.node() else {
            return false;
        };
        let candidate = node
            .syncrep
            .config()
            .is_some_and(|c| c.priority(application_name) > 0);
        node.wal().is_some() && candidate
    }

    fn apply_wanted(&self) -> Lsn {
        match self.node() {
            Some(node) => node.syncrep.apply_wanted(),
            None => Lsn::INVALID,
        }
    }

    fn write_reports_wanted(&self) -> bool {
        self.node().is_some_and(|node| {
            node.syncrep
                .remote_write_waited_within(crate::syncrep::WRITE_WAIT_MEMORY)
        })
    }

    fn also_apply_wanted(&self, sub: &Subscription) {
        if let Some(node) = self.node() {
            sub.also(node.syncrep.apply_wanted_watch());
        }
    }

    /// The WAL writer's followers, where one runs (a cascading standby's
    /// walsenders follow replay, not a WAL writer).
    fn also_follow_flushes(&self, sub: &Subscription) {
        if let Some(wal) = self.node().and_then(|n| n.wal()) {
            sub.also(wal.standby_followers());
        }
    }

    fn read_wal(&self, tli: TimelineId, start: Lsn, buf: &mut [u8]) -> Result<(), SourceError> {
        let node = self.node().ok_or_else(|| SourceError::Read {
            tli,
            lsn: start,
            reason: "the node is shutting down".into(),
        })?;
        // Just-written WAL (what a synchronous standby is sent on every
        // commit's path) comes from the writer's memory, not the file.
        if node.wal().is_some_and(|w| w.read_recent(tli, start, buf)) {
            return Ok(());
        }
        let mut reader = {
            let mut pool = self.readers.lock().unwrap_or_else(|e| e.into_inner());
            pool.pop()
        }
        .unwrap_or_else(|| RawReader::new(node.segdir.clone()));
        let result = reader.read(tli, start, buf);
        {
            let mut pool = self.readers.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < RAW_READER_POOL {
                pool.push(reader);
            }
        }
        result.map_err(|e| match e {
            SegmentError::Removed { .. } => SourceError::SegmentRemoved {
                file_name: start.segno(self.seg_size).file_name(tli, self.seg_size),
            },
            other => SourceError::Read {
                tli,
                lsn: start,
                reason: other.to_string(),
            },
        })
    }

    fn history_file(&self, tli: TimelineId) -> Result<Option<Vec<u8>>, SourceError> {
        let path = self
            .data_dir
            .join(crate::datadir::WAL_DIR)
            .join(tli.history_file_name());
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SourceError::History {
                file_name: tli.history_file_name(),
                reason: e.to_string(),
            }),
        }
    }

    fn oldest_lsn(&self) -> Lsn {
        self.node()
            .and_then(|n| n.segdir.oldest_segment().ok().flatten())
            .map(|s| s.start_lsn(self.seg_size))
            .unwrap_or(Lsn::INVALID)
    }

    fn redo_lsn(&self) -> Lsn {
        self.node()
            .map(|n| n.control().redo_lsn)
            .unwrap_or(Lsn::INVALID)
    }

    fn data_directory(&self) -> PathBuf {
        self.data_dir.clone()
    }

    fn in_recovery(&self) -> bool {
        self.node().is_some_and(|n| !n.is_primary())
    }

    fn upstream_chain(&self) -> Vec<u64> {
        match self.node() {
            Some(n) if !n.is_primary() => n
                .standby
                .as_ref()
                .map(|p| p.received.upstream_chain())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    fn base_backup(
        &self,
        options: &crate::replication::command::BaseBackupOptions,
        out: &mut dyn crate::replication::source::BackupOutput,
    ) -> Result<(), crate::replication::sqlstate::PgError> {
        let node = self.node().ok_or_else(|| {
            crate::replication::sqlstate::PgError::error(
                crate::replication::sqlstate::ADMIN_SHUTDOWN,
                "the node is shutting down",
            )
        })?;
        crate::backup::server::serve(&*node, options, out).map(|_| ())
    }

    fn confirm_base_backup(&self, id: &str) -> Result<(), crate::replication::sqlstate::PgError> {
        let node = self.node().ok_or_else(|| {
            crate::replication::sqlstate::PgError::error(
                crate::replication::sqlstate::ADMIN_SHUTDOWN,
                "the node is shutting down",
            )
        })?;
        crate::backup::server::confirm(&*node, id)
    }
}

/// The node as the source of a base backup.
impl crate::backup::server::BackupSource for Node {
    type CheckpointError = super::checkpoint::CheckpointError;

    fn datadir(&self) -> &std::path::Path {
        &self.dir.root
    }

    fn is_primary(&self) -> bool {
        Node::is_primary(self)
    }

    fn is_shutting_down(&self) -> bool {
        Node::is_shutting_down(self)
    }

    fn archive_mode(&self) -> crate::config::ArchiveMode {
        self.settings().archive_mode
    }

    fn replay_position(&self) -> Option<(TimelineId, Lsn)> {
        let p = self.standby.as_ref()?;
        Some(p.replayed.read(|r| (r.tli, r.end)))
    }

    /// A checkpoint on a primary, a restartpoint on a standby (none when
    /// nothing was replayed since the last one: that one is copied).
    fn checkpoint(&self) -> Result<(), Self::CheckpointError> {
        Node::restartpoint(self, super::checkpoint::CheckpointCause::Requested).map(|_| ())
    }

    fn pin_last_checkpoint(
        &self,
    ) -> Option<(crate::backup::pin::BackupPin, crate::store::ControlFile)> {
        Node::pin_last_checkpoint(self)
    }

    fn wal_position(&self) -> Option<(TimelineId, Lsn)> {
        self.wal().map(|w| (w.timeline(), w.inserted()))
    }

    fn log_backup_end(&self, start: Lsn) -> Result<Option<Lsn>, crate::wal::WalError> {
        Node::log_backup_end(self, start)
    }

    fn backup_pins(&self) -> Arc<crate::backup::pin::BackupPins> {
        Arc::clone(&self.backup_pins)
    }
}

/// Standby replies reach synchronous replication and WAIT through this.
pub struct ReplyObserver {
    pub(crate) node: Weak<Node>,
}

impl ReplicationObserver for ReplyObserver {
    fn walsender_changed(&self, change: WalSenderChange, _status: &WalSenderStatus) {
        let Some(node) = self.node.upgrade() else {
            return;
        };
        if matches!(
            change,
            WalSenderChange::Reply | WalSenderChange::StateChanged | WalSenderChange::Disconnected
        ) {
            let positions = node.standby_positions();
            node.syncrep.on_standby_reply(&positions);
            node.replies.publish(positions);
        }
    }
}

impl Node {
    /// The timeline and durable WAL position walsenders may send up to.
    pub fn flush_point(&self) -> FlushPoint {
        match self.wal() {
            Some(wal) => FlushPoint {
                tli: wal.timeline(),
                lsn: self.sendable(wal.flushed()),
            },
            None => match &self.standby {
                Some(p) => p.flush_point(),
                None => FlushPoint {
                    tli: TimelineId::FIRST,
                    lsn: Lsn::INVALID,
                },
            },
        }
    }

    /// Woken whenever [`Node::flush_point`] may have moved: every WAL flush
    /// once a WAL writer runs; before, a standby's replay and receive
    /// positions and its state changes (promotion). A walsender subscribed on a
    /// standby that then promotes is woken by the promotion, sees its
    /// timeline end and finishes its COPY, so it never needs the new WAL
    /// writer's flushes.
    pub fn subscribe_flush(&self) -> Subscription {
        let wal = self.wal();
        let sub = match (&self.standby, &wal) {
            (Some(p), _) => p.subscribe(),
            (None, Some(w)) => return w.flush_watch().subscribe(),
            // Not started yet: nothing to send, nothing will wake.
            (None, None) => return Watch::new(()).subscribe(),
        };
        // A promotion's hold ends without a flush: its release wakes us.
        self.promotion_hold.also(&sub);
        if let Some(w) = &wal {
            // The WAL writer wakes us directly on every flush: the shortest
            // path from a commit's fdatasync to the standby.
            sub.also(w.flush_watch());
        }
        sub
    }

    /// End of the WAL written by this node's WAL writer, durable or not;
    /// the flush point where no WAL writer runs (a standby sends only
    /// what it flushed, and only what its upstream flushed).
    pub fn written_lsn(&self) -> Lsn {
        match self.wal() {
            Some(wal) => self.sendable(wal.written().max(wal.flushed())),
            None => self.flush_point().lsn,
        }
    }

    /// `lsn`, or the new timeline's first byte while a promotion's hold
    /// is on (see [`super::promotion_hold`]): walsenders send nothing of
    /// the new timeline before its control file is durable.
    fn sendable(&self, lsn: Lsn) -> Lsn {
        match self.promotion_hold.send_limit() {
            Some(limit) => lsn.min(limit),
            None => lsn,
        }
    }

    /// Woken whenever [`Node::written_lsn`] or [`Node::flush_point`] may
    /// have moved: the WAL writer's written and flush positions once it
    /// runs, the standby's otherwise.
    pub fn subscribe_written(&self) -> Subscription {
        let sub = self.subscribe_flush();
        if let Some(w) = self.wal() {
            sub.also(w.written_watch());
        }
        sub
    }

    /// Every directly connected (non-cascading) standby's reported positions.
    pub fn standby_positions(&self) -> Vec<StandbyPosition> {
        let Some(registry) = self.registry() else {
            return Vec::new();
        };
        registry
            .snapshot()
            .into_iter()
            .filter(|s| !s.cascading)
            .map(|s| StandbyPosition {
                application_name: s.application_name,
                streaming: s.state == WalSenderState::Streaming,
                write: s.write_lsn,
                flush: s.flush_lsn,
                apply: s.apply_lsn,
            })
            .collect()
    }

    /// WAIT: standbys whose flush position is at or past `upto`, waiting up
    /// to `timeout` for `wanted` of them.
    pub fn count_acked(&self, upto: Lsn, wanted: usize, timeout: Duration) -> usize {
        let count = |p: &Vec<StandbyPosition>| p.iter().filter(|s| s.flush >= upto).count();
        // Woken by every standby reply.
        match self.replies.wait_until(|p| count(p) >= wanted, timeout) {
            Ok(p) | Err(p) => count(&p),
        }
    }
}
