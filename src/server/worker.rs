//! A worker: one event loop (mio) serving many connections, as Redis and
//! PostgreSQL's WAL writer batch work: one pass reads every ready socket,
//! executes the requests, then settles all pending writes with one wait
//! (one fdatasync covers every connection of the pass, and group commit in
//! the WAL shares it with the other workers), then sends the replies.
//!
//! # Settling without blocking readers for long
//! A pending write at a level the node can meet within a local flush is
//! settled inline ([`Backend::wait_local`](super::Backend::wait_local)): the loop itself flushes (or
//! joins the flush in progress), so one client's commit costs the
//! fdatasync plus its round trip and no thread hand-off. A lone client's
//! write that waits for synchronous standbys (this loop serves no other
//! connection) is started inline too
//! ([`Backend::start_wait`](super::Backend::start_wait)): the loop leads the local flush itself
//! (PostgreSQL's XLogFlush), whose written position wakes the walsenders
//! right before its fdatasync, so the primary's flush starts beside the
//! send with no thread hand-off; the wait for standbys is then listed in
//! this worker's remote waits and the loop goes on. Meanwhile (one local
//! flush, as for `local`) the loop's other connections wait. With other
//! clients committing, the loop hands their writes to this worker's
//! committer thread instead, so it keeps reading while the disk flushes
//! (group commit across passes: at 64 clients the inline flush halved the
//! rate). The committer flushes locally and lists the wait for standbys
//! the same way, then takes its next job. The thread that reads the
//! standby's confirmation wakes this loop directly, which polls the list
//! and sends the replies (no thread between the confirmation and the
//! client). A backend that cannot wait that way is waited for by the
//! committer with the blocking [`Backend::wait`](super::Backend::wait), which then wakes the
//! loop with the result. WAIT runs on a thread of its own, bounded by its
//! timeout.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use mio::{Events, Interest, Poll, Token, Waker};

use super::backend::{Backend, Notify, PendingWait, StartedWait, Termination, WriteError};
use super::clients::KillSignal;
use super::command::WaitRequest;
use super::conn::{Conn, Hold};
use super::protocol::reply;
use super::session::SessionContext;
use crate::store::Level;
use crate::Lsn;

/// The waker's token; connections use their id (never 0).
const WAKER: Token = Token(0);
/// Longest sleep of an idle loop (it checks for shutdown at least this often).
const IDLE_TICK: Duration = Duration::from_millis(100);
/// Pause when the committer's queue is full (then pending writes wait).
const BUSY_TICK: Duration = Duration::from_millis(1);
/// Settle jobs queued for the committer thread at most.
const JOB_CAPACITY: usize = 64;
/// New connections queued for a worker at most.
const INBOX_CAPACITY: usize = 1024;
/// At shutdown: how long unsent replies may wait for a client that does
/// not read them.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// Bytes read per syscall.
const READ_CHUNK: usize = 64 << 10;
/// Longest wait for sibling commits before a flush (see `Worker::gather`).
const MAX_GATHER: Duration = Duration::from_micros(500);
/// Longest gather while other workers flush (a safety bound: flushes end).
const MAX_GATHER_BUSY: Duration = Duration::from_millis(5);
/// A connection that committed this recently counts as a sibling.
const SIBLING_WINDOW: Duration = Duration::from_millis(2);
/// Events taken per poll.
const EVENTS_CAPACITY: usize = 1024;
/// How often clients past the idle `timeout` are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// WAIT commands running at once on the whole server (each holds a
/// thread for up to its timeout).
const MAX_WAITS: u64 = 256;
/// A worker over `maxmemory_clients` closes only clients holding at least
/// this much: a small client is never the one that used the memory up.
const EVICT_FLOOR: u64 = 256 << 10;
/// Clients closed for memory per pass at most (the next pass goes on).
const EVICT_PER_PASS: usize = 16;

/// How the workers of one server keep the disk busy together: a worker
/// about to flush while another one is flushing keeps reading instead (its
/// flush follows), and is woken when that flush ends.
#[derive(Debug, Default)]
pub struct FlushGate {
    /// Workers settling inline right now (flushing or joining a flush).
    flushing: AtomicUsize,
    /// Workers gathering until a flush ends.
    waiting: AtomicUsize,
    /// Every worker's waker, set once all have started.
    pub wakers: std::sync::OnceLock<Vec<Arc<Waker>>>,
}

impl FlushGate {
    fn wake_waiting(&self) {
        if self.waiting.load(Ordering::SeqCst) == 0 {
            return;
        }
        for w in self.wakers.get().into_iter().flatten() {
            let _ = w.wake();
        }
    }
}

/// How the server tells its workers to stop.
pub struct StopFlags {
    /// Stop reading requests, finish those in flight, then end.
    pub shutting_down: Arc<AtomicBool>,
    /// End every session at once with this error (after a crash).
    pub terminating: Arc<OnceLock<Arc<Termination>>>,
}

/// What a worker is sent from outside its loop.
enum Msg {
    /// A connection accepted for this worker; true if it speaks TLS.
    Accepted(u64, std::net::TcpStream, bool),
}

/// A blocking wait run off the loop.
enum Job {
    Settle {
        end: Lsn,
        level: Level,
        tokens: Vec<Token>,
    },
}

/// Writes flushed here that wait for standbys, with their connections
/// (marked `handed_off` meanwhile): filled by the committer, settled by
/// the loop when a confirmation (or a shutdown) notifies it.
type RemoteWaits = Arc<std::sync::Mutex<Vec<(Box<dyn PendingWait>, Vec<Token>)>>>;

/// Its result, sent back to the loop.
enum Done {
    Settled {
        tokens: Vec<Token>,
        result: Result<(), WriteError>,
    },
    Waited {
        token: Token,
        acked: WaitReply,
    },
}

/// What a WAIT or WAITAOF answers.
#[derive(Debug, Clone, Copy)]
enum WaitReply {
    /// WAIT: the standbys that have the connection's writes.
    Replicas(usize),
    /// WAITAOF: `[local, replicas]` that made them durable (local 0 or 1).
    Aof { local: bool, replicas: usize },
}

/// Run a WAIT or WAITAOF to its end (met, or its timeout passed).
fn run_wait(backend: &dyn Backend, w: WaitRequest) -> WaitReply {
    let Some(numlocal) = w.numlocal else {
        return WaitReply::Replicas(backend.wait_replicas(w.upto, w.wanted, w.timeout));
    };
    let deadline = Instant::now() + w.timeout;
    let local = if numlocal {
        backend.wait_flushed(w.upto, w.timeout)
    } else {
        backend.wait_flushed(w.upto, Duration::ZERO)
    };
    let left = deadline.saturating_duration_since(Instant::now());
    let replicas = backend.wait_replicas(w.upto, w.wanted, left);
    // The replicas' count may have taken the rest of the time: the local
    // flush is looked at again (it only moves forward).
    let local = local || backend.wait_flushed(w.upto, Duration::ZERO);
    WaitReply::Aof { local, replicas }
}

/// A running worker, as the server holds it.
pub struct WorkerHandle {
    inbox: Sender<Msg>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// Start worker `index` with its loop and committer threads.
    pub fn start(
        index: usize,
        ctx: SessionContext,
        flags: StopFlags,
        gate: Arc<FlushGate>,
    ) -> io::Result<WorkerHandle> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (inbox_tx, inbox) = crossbeam_channel::bounded(INBOX_CAPACITY);
        let (jobs, job_rx) = crossbeam_channel::bounded(JOB_CAPACITY);
        // Results never outnumber settle jobs plus one WAIT per connection.
        let cap = JOB_CAPACITY + ctx.settings.max_connections as usize + 1;
        let (done_tx, done) = crossbeam_channel::bounded(cap);
        let remote = RemoteWaits::default();
        let committer = {
            let out = CommitterOut {
                done: done_tx.clone(),
                waker: waker.clone(),
                remote: remote.clone(),
            };
            let backend = ctx.backend.clone();
            std::thread::Builder::new()
                .name(format!("redis-commit-{index}"))
                .spawn(move || run_committer(backend, job_rx, out))?
        };
        let notify: Notify = {
            let waker = waker.clone();
            Arc::new(move || {
                let _ = waker.wake();
            })
        };
        let worker = Worker {
            poll,
            notify,
            remote,
            kills: KillSignal::new(waker.clone()),
            waker: waker.clone(),
            conns: HashMap::new(),
            inbox,
            jobs: Some(jobs),
            done,
            done_tx,
            ctx,
            shutting_down: flags.shutting_down,
            terminating: flags.terminating,
            gate,
            ready: Vec::new(),
            scratch: vec![0; READ_CHUNK],
            committer: Some(committer),
            flush_ewma_s: 0.0,
            compact_later: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("redis-worker-{index}"))
            .spawn(move || worker.run(index))?;
        Ok(WorkerHandle {
            inbox: inbox_tx,
            waker,
            thread: Some(thread),
        })
    }

    /// Hand over an accepted connection. Fails only if the worker is gone.
    pub fn accept(
        &self,
        id: u64,
        stream: std::net::TcpStream,
        tls: bool,
    ) -> Result<(), std::net::TcpStream> {
        let r = self.inbox.send(Msg::Accepted(id, stream, tls));
        let _ = self.waker.wake();
        r.map_err(|e| match e.into_inner() {
            Msg::Accepted(_, s, _) => s,
        })
    }

    /// The loop's waker (for the [`FlushGate`]).
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// Wake the loop (it then sees the shutdown flag).
    pub fn wake(&self) {
        let _ = self.waker.wake();
    }

    /// Wait for the loop to finish (after the shutdown flag was set).
    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where the committer's results go.
struct CommitterOut {
    done: Sender<Done>,
    waker: Arc<Waker>,
    remote: RemoteWaits,
}

/// The committer: local flushes, one after another, each followed by the
/// wait for standbys left to the loop (or, for a backend that cannot
/// leave it, a blocking wait: their LSNs only grow, so each is short once
/// the one before it is met).
fn run_committer(backend: Arc<dyn Backend>, jobs: Receiver<Job>, out: CommitterOut) {
    let notify: Notify = {
        let waker = out.waker.clone();
        Arc::new(move || {
            let _ = waker.wake();
        })
    };
    loop {
        let job = match jobs.try_recv() {
            Ok(job) => job,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                // The loop unparks this thread after queueing a job, and
                // after dropping the queue at shutdown (see `hand_off`).
                std::thread::park_timeout(IDLE_TICK);
                continue;
            }
        };
        let Job::Settle { end, level, tokens } = job;
        let result = match backend.start_wait(end, level, &notify) {
            Some(StartedWait::Pending(wait)) => {
                out.leave_remote(wait, tokens);
                continue;
            }
            Some(StartedWait::Done(result)) => result,
            None => backend.wait(end, level),
        };
        if out.done.send(Done::Settled { tokens, result }).is_err() {
            break;
        }
        let _ = out.waker.wake();
    }
}

impl CommitterOut {
    /// Hand a wait for standbys to the loop without waking it: the
    /// confirmation will. Unless it came already (between the wait's
    /// registration and now, when the loop may have found nothing):
    /// then wake the loop here.
    fn leave_remote(&self, wait: Box<dyn PendingWait>, tokens: Vec<Token>) {
        let ended = {
            let mut list = self.remote.lock().unwrap_or_else(|e| e.into_inner());
            let ended = wait.poll().is_some();
            list.push((wait, tokens));
            ended
        };
        if ended {
            let _ = self.waker.wake();
        }
    }
}

struct Worker {
    poll: Poll,
    waker: Arc<Waker>,
    /// Wakes this loop: given with the waits for standbys it starts itself.
    notify: Notify,
    /// Writes waiting for standbys (see [`RemoteWaits`]).
    remote: RemoteWaits,
    /// Set when CLIENT KILL marked one of this loop's connections.
    kills: Arc<KillSignal>,
    conns: HashMap<Token, Conn>,
    inbox: Receiver<Msg>,
    /// To the committer; `None` once shut down.
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    /// For WAIT threads.
    done_tx: Sender<Done>,
    ctx: SessionContext,
    shutting_down: Arc<AtomicBool>,
    /// Set when the server ends every session at once (see
    /// [`Worker::terminate_sessions`]).
    terminating: Arc<OnceLock<Arc<Termination>>>,
    /// Shared by the workers of a server: who is flushing, who waits.
    gate: Arc<FlushGate>,
    /// Connections to drive in this pass (deduplicated by `Conn::queued`).
    ready: Vec<Token>,
    scratch: Vec<u8>,
    committer: Option<JoinHandle<()>>,
    /// Keys whose superseded versions go at the end of the pass.
    compact_later: Vec<Vec<u8>>,
    /// Moving average of inline settle times (seconds): bounds `gather`.
    flush_ewma_s: f64,
}

impl Worker {
    fn run(mut self, index: usize) {
        let _span = tracing::info_span!("redis-worker", index).entered();
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let mut drain_deadline: Option<Instant> = None;
        let mut last_sweep = Instant::now();
        loop {
            self.terminate_sessions();
            let stopping = self.shutting_down.load(Ordering::SeqCst);
            if stopping {
                let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_LIMIT);
                if self.drained() || Instant::now() >= deadline {
                    break;
                }
            }
            let timeout = if !self.ready.is_empty() {
                Duration::ZERO
            } else if stopping || self.pending_not_handed_off() {
                BUSY_TICK
            } else {
                IDLE_TICK
            };
            if !self.poll_once(&mut events, timeout) {
                break;
            }
            self.pass(&mut events, !stopping);
            if last_sweep.elapsed() >= SWEEP_INTERVAL {
                last_sweep = Instant::now();
                self.sweep_idle();
            }
        }
        self.close_all();
    }

    /// Wait up to `timeout` for events and queue what they concern; false
    /// if polling failed for good.
    fn poll_once(&mut self, events: &mut Events, timeout: Duration) -> bool {
        if let Err(e) = self.poll.poll(events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                tracing::error!(error = %e, "poll failed; closing this worker's connections");
                return false;
            }
        }
        for ev in events.iter() {
            if ev.token() == WAKER {
                if self.kills.take() {
                    self.close_killed();
                }
                continue;
            }
            if let Some(c) = self.conns.get_mut(&ev.token()) {
                c.readable |= ev.is_readable() || ev.is_read_closed() || ev.is_error();
                c.writable |= ev.is_writable() || ev.is_write_closed() || ev.is_error();
            }
            self.enqueue(ev.token());
        }
        self.take_inbox();
        self.take_done();
        self.take_remote();
        true
    }

    /// Settle the waits for standbys that ended. Runs after every poll:
    /// a confirmation wakes the loop, and the idle tick (no longer than
    /// the waits' recheck bound) covers their timeouts.
    fn take_remote(&mut self) {
        let mut ended = Vec::new();
        {
            let mut list = self.remote.lock().unwrap_or_else(|e| e.into_inner());
            let mut i = 0;
            while i < list.len() {
                match list[i].0.poll() {
                    Some(result) => ended.push((list.swap_remove(i).1, result)),
                    None => i += 1,
                }
            }
        }
        for (tokens, result) in ended {
            self.confirm(&tokens, result);
        }
    }

    fn enqueue(&mut self, token: Token) {
        if let Some(c) = self.conns.get_mut(&token) {
            if !c.queued {
                c.queued = true;
                self.ready.push(token);
            }
        }
    }

    /// One pass: drive ready connections, gather more commits while
    /// siblings are about to send theirs, settle, send, close.
    fn pass(&mut self, events: &mut Events, reading: bool) {
        let mut touched = Vec::new();
        self.drive_ready(reading, &mut touched);
        if reading {
            self.gather(events, &mut touched);
        }
        let answered_off = self.settle();
        for token in touched {
            self.send_or_close(token);
            self.account(token);
        }
        if answered_off {
            // After the replies are sent: a flush here delays only what
            // this loop does next, never an answer already due.
            self.ctx.backend.after_async_commit();
        }
        self.evict_for_memory();
        self.compact();
    }

    /// Update the server-wide count of buffered client bytes.
    fn account(&mut self, token: Token) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        let now = c.buffered_bytes();
        let total = &self.ctx.stats.client_buffer_bytes;
        if now > c.accounted {
            total.fetch_add(now - c.accounted, Ordering::Relaxed);
        } else {
            total.fetch_sub(c.accounted - now, Ordering::Relaxed);
        }
        c.accounted = now;
    }

    /// `maxmemory_clients`: while every client together holds more, close
    /// this worker's largest (Redis's client eviction).
    fn evict_for_memory(&mut self) {
        let limit = self.ctx.settings.maxmemory_clients;
        for _ in 0..EVICT_PER_PASS {
            if self.ctx.stats.client_buffer_bytes.load(Ordering::Relaxed) <= limit {
                return;
            }
            let largest = self
                .conns
                .iter()
                .map(|(t, c)| (*t, c.accounted))
                .max_by_key(|(_, bytes)| *bytes);
            let Some((token, bytes)) = largest.filter(|(_, b)| *b >= EVICT_FLOOR) else {
                return;
            };
            if let Some(c) = self.conns.get(&token) {
                c.span.in_scope(|| {
                    tracing::warn!(
                        bytes,
                        "closing the client with the largest buffers: maxmemory_clients reached"
                    )
                });
            }
            self.ctx
                .stats
                .evicted_clients
                .fetch_add(1, Ordering::Relaxed);
            self.close(token);
        }
    }

    /// Close clients that completed no request within `timeout` (not those
    /// waiting on the node: a commit or a WAIT in progress).
    fn sweep_idle(&mut self) {
        let Some(timeout) = self.ctx.settings.idle_timeout else {
            return;
        };
        let idle: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.last_request.elapsed() > timeout
                    && c.hold != Hold::Waiting
                    && !c.handed_off
                    && !c.session.has_pending()
            })
            .map(|(t, _)| *t)
            .collect();
        for token in idle {
            if let Some(c) = self.conns.get(&token) {
                c.span
                    .in_scope(|| tracing::debug!("closing an idle client (timeout)"));
            }
            self.ctx
                .stats
                .evicted_clients
                .fetch_add(1, Ordering::Relaxed);
            self.close(token);
        }
    }

    /// Drop the versions that confirmed writes superseded, under one lock,
    /// after the replies went out (it is housekeeping, not their latency).
    fn compact(&mut self) {
        if self.compact_later.is_empty() {
            return;
        }
        let keys: Vec<&[u8]> = self.compact_later.iter().map(|k| k.as_slice()).collect();
        self.ctx.backend.store().compact(&keys);
        self.compact_later.clear();
    }

    fn drive_ready(&mut self, reading: bool, touched: &mut Vec<Token>) {
        for token in std::mem::take(&mut self.ready) {
            let Some(c) = self.conns.get_mut(&token) else {
                continue;
            };
            c.queued = false;
            touched.push(token);
            let span = c.span.clone();
            let _in_conn = span.enter();
            if let Err(e) = c.drive(&mut self.scratch, reading) {
                tracing::debug!(error = %e, "connection ended");
                self.close(token);
                continue;
            }
            if let Some(w) = c.wait_job.take() {
                self.spawn_wait(token, w);
            }
        }
    }

    /// Group commit across the pass: gather more commits before flushing.
    ///
    /// - While another worker is flushing, keep reading: whatever arrives
    ///   joins this worker's flush, which starts as soon as that one ends
    ///   (the disk stays busy, and this loop is not parked meanwhile).
    /// - PostgreSQL's commit_delay / commit_siblings, adaptive: when other
    ///   connections of this worker committed moments ago (so are about to
    ///   send their next write), wait a little for them so one fdatasync
    ///   covers them too. This ends as soon as they have all arrived, and
    ///   never exceeds half a recent flush (what waiting for the next flush
    ///   would cost them anyway), at most [`MAX_GATHER`].
    ///
    /// One client alone never waits; the whole gather is bounded by
    /// [`MAX_GATHER_BUSY`].
    fn gather(&mut self, events: &mut Events, touched: &mut Vec<Token>) {
        if !self.pending_not_handed_off() {
            return;
        }
        let start = Instant::now();
        let delay = Duration::from_secs_f64(self.flush_ewma_s / 2.0).min(MAX_GATHER);
        loop {
            let now = Instant::now();
            if now >= start + MAX_GATHER_BUSY {
                return;
            }
            // Announce the wait before looking, so a flush that ends now
            // either is seen or wakes this loop (no lost wake-up).
            self.gate.waiting.fetch_add(1, Ordering::SeqCst);
            let busy = self.gate.flushing.load(Ordering::SeqCst) > 0;
            let timeout = if busy {
                Some(start + MAX_GATHER_BUSY - now)
            } else if now < start + delay && self.siblings() > 0 {
                Some(start + delay - now)
            } else {
                None
            };
            let polled = timeout.map(|t| self.poll_once(events, t));
            self.gate.waiting.fetch_sub(1, Ordering::SeqCst);
            match polled {
                Some(true) => self.drive_ready(true, touched),
                Some(false) | None => return,
            }
        }
    }

    /// This loop serves one connection: a lone client, whose synchronous
    /// commit the loop may flush itself. Looser tests (no other write in
    /// flight, no sibling within [`SIBLING_WINDOW`]) still let it lead
    /// flushes at 64 clients, which cost a quarter of the rate there.
    fn alone(&self) -> bool {
        self.conns.len() == 1
    }

    /// Connections that committed within [`SIBLING_WINDOW`] and have no
    /// write pending now: they are likely to send one any moment.
    fn siblings(&self) -> usize {
        let now = Instant::now();
        self.conns
            .values()
            .filter(|c| {
                !c.session.has_pending()
                    && !c.closing
                    && c.last_commit
                        .is_some_and(|t| now.saturating_duration_since(t) < SIBLING_WINDOW)
            })
            .count()
    }

    fn send_or_close(&mut self, token: Token) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        let span = c.span.clone();
        let _in_conn = span.enter();
        match c.send() {
            Err(e) => {
                tracing::debug!(error = %e, "connection ended");
                self.close(token);
            }
            Ok(_) if c.finished() => self.close(token),
            Ok(true) => self.enqueue(token),
            Ok(false) => {}
        }
    }

    /// Settle every connection with pending writes not yet handed off:
    /// per level, one wait for the highest end. True if commits at
    /// `synchronous_commit = off` were among them.
    fn settle(&mut self) -> bool {
        let mut groups: Vec<(Level, Lsn, Vec<Token>)> = Vec::new();
        for (token, c) in &self.conns {
            if c.handed_off {
                continue;
            }
            if let Some((end, level)) = c.session.pending_wait() {
                match groups.iter_mut().find(|g| g.0 == level) {
                    Some(g) => {
                        g.1 = g.1.max(end);
                        g.2.push(*token);
                    }
                    None => groups.push((level, end, vec![*token])),
                }
            }
        }
        groups.sort_by_key(|g| g.0);
        let answered_off = groups.iter().any(|g| g.0 == Level::Immediate);
        let backend = self.ctx.backend.clone();
        for (level, end, tokens) in groups {
            let t0 = Instant::now();
            self.gate.flushing.fetch_add(1, Ordering::SeqCst);
            let local = if level <= Level::LocalFlush {
                backend.wait_local(end, level).map(StartedWait::Done)
            } else if tokens.len() == 1 && self.alone() {
                backend.start_wait(end, level, &self.notify)
            } else {
                None
            };
            self.gate.flushing.fetch_sub(1, Ordering::SeqCst);
            self.gate.wake_waiting();
            if local.is_some() && level > Level::Immediate {
                let took = t0.elapsed().as_secs_f64();
                self.flush_ewma_s = 0.8 * self.flush_ewma_s + 0.2 * took;
            }
            match local {
                Some(StartedWait::Done(result)) => self.confirm(&tokens, result),
                Some(StartedWait::Pending(wait)) => self.leave_remote(wait, tokens),
                None => self.hand_off(end, level, tokens),
            }
        }
        answered_off
    }

    /// A write flushed here by this loop that waits for standbys: mark
    /// its connections handed off and list the wait with the committer's
    /// (see [`RemoteWaits`]). The confirmation wakes this loop through
    /// `notify`; one that came already woke it (the waker keeps the
    /// wake-up until the next poll), so nothing is missed.
    fn leave_remote(&mut self, wait: Box<dyn PendingWait>, tokens: Vec<Token>) {
        for t in &tokens {
            if let Some(c) = self.conns.get_mut(t) {
                c.handed_off = true;
            }
        }
        self.remote
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((wait, tokens));
    }

    fn hand_off(&mut self, end: Lsn, level: Level, tokens: Vec<Token>) {
        let Some(jobs) = &self.jobs else {
            return;
        };
        let job = Job::Settle {
            end,
            level,
            tokens: tokens.clone(),
        };
        // Its WAL goes to the standbys before the committer wakes: their
        // half of the commit is the longer one.
        self.ctx.backend.write_ahead(end);
        // A full queue (the committer is behind) leaves them pending: the
        // next pass tries again.
        if jobs.try_send(job).is_ok() {
            self.unpark_committer();
            for t in &tokens {
                if let Some(c) = self.conns.get_mut(t) {
                    c.handed_off = true;
                }
            }
        }
    }

    /// The committer waits for jobs by parking, not in a channel's
    /// `recv`: a crossbeam receiver is woken while the sender still holds
    /// the channel's lock and, on two cores, sleeps again on it (see
    /// `crate::watch`); an unpark takes no lock.
    fn unpark_committer(&self) {
        if let Some(c) = &self.committer {
            c.thread().unpark();
        }
    }

    /// Apply a settle result to `tokens` and queue the connections to go on.
    fn confirm(&mut self, tokens: &[Token], result: Result<(), WriteError>) {
        let mut compact = Vec::new();
        for t in tokens {
            let Some(c) = self.conns.get_mut(t).filter(|c| !c.terminated) else {
                continue;
            };
            c.handed_off = false;
            if c.session.confirm(&result, &mut compact) {
                c.closing = true;
            } else {
                c.last_commit = Some(Instant::now());
            }
            if c.hold == Hold::Stalled {
                c.hold = Hold::None;
            }
        }
        self.compact_later.append(&mut compact);
        for t in tokens {
            self.enqueue(*t);
        }
    }

    fn pending_not_handed_off(&self) -> bool {
        self.conns
            .values()
            .any(|c| c.session.has_pending() && !c.handed_off)
    }

    fn spawn_wait(&mut self, token: Token, w: WaitRequest) {
        let backend = self.ctx.backend.clone();
        let done = self.done_tx.clone();
        let waker = self.waker.clone();
        let stats = self.ctx.stats.clone();
        let refuse = |conns: &mut HashMap<Token, Conn>, text: &str| {
            if let Some(c) = conns.get_mut(&token) {
                reply::error(&mut c.session.out, text);
                c.hold = Hold::None;
            }
        };
        if stats.waits_in_progress.fetch_add(1, Ordering::SeqCst) >= MAX_WAITS {
            stats.waits_in_progress.fetch_sub(1, Ordering::SeqCst);
            let e = super::command::CommandError::TooManyWaits(MAX_WAITS as usize);
            refuse(&mut self.conns, &e.to_string());
            self.enqueue(token);
            return;
        }
        let thread_stats = stats.clone();
        let spawned = std::thread::Builder::new()
            .name("redis-wait".into())
            .spawn(move || {
                let acked = run_wait(&*backend, w);
                thread_stats
                    .waits_in_progress
                    .fetch_sub(1, Ordering::SeqCst);
                let _ = done.send(Done::Waited { token, acked });
                let _ = waker.wake();
            });
        if let Err(e) = spawned {
            stats.waits_in_progress.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(error = %e, "could not start a WAIT thread");
            refuse(&mut self.conns, "ERR could not start the WAIT");
        }
    }

    fn take_inbox(&mut self) {
        while let Ok(Msg::Accepted(id, stream, tls)) = self.inbox.try_recv() {
            self.register(id, stream, tls);
        }
    }

    fn register(&mut self, id: u64, stream: std::net::TcpStream, tls: bool) {
        let stats = self.ctx.stats.clone();
        if stream.set_nonblocking(true).is_err() {
            stats.connected_clients.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let mut stream = mio::net::TcpStream::from_std(stream);
        let token = Token(id as usize);
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self.poll.registry().register(&mut stream, token, interest) {
            tracing::warn!(error = %e, "could not register a connection");
            stats.connected_clients.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let tls = match (tls, &self.ctx.settings.tls) {
            (true, Some((_, config))) => match rustls::ServerConnection::new(config.clone()) {
                Ok(c) => Some(Box::new(c)),
                Err(e) => {
                    tracing::warn!(error = %e, "could not start a TLS session");
                    stats.connected_clients.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
            },
            _ => None,
        };
        let conn = Conn::new(id, stream, tls, self.ctx.clone(), self.kills.clone());
        self.conns.insert(token, conn);
        self.enqueue(token);
    }

    /// Close the connections CLIENT KILL marked: at once if nothing of
    /// theirs is in flight, else after (their commits are not abandoned).
    fn close_killed(&mut self) {
        let killed: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| c.session.client.killed())
            .map(|(t, _)| *t)
            .collect();
        for t in killed {
            if let Some(c) = self.conns.get_mut(&t) {
                c.closing = true;
            }
            self.enqueue(t);
        }
    }

    /// After a crash: every session not yet told gets the termination
    /// error (as its pending write's reply, or its WAIT's, or unasked) and
    /// is closed once that is sent. Runs before any result of the
    /// committer is applied, so a wait the node aborts to end the sessions
    /// is answered with the termination, not with "shutting down".
    fn terminate_sessions(&mut self) {
        let Some(why) = self.terminating.get().cloned() else {
            return;
        };
        let tokens: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.terminated)
            .map(|(t, _)| *t)
            .collect();
        for token in tokens {
            if let Some(c) = self.conns.get_mut(&token) {
                c.terminate(&why);
            }
            self.enqueue(token);
        }
    }

    fn take_done(&mut self) {
        self.terminate_sessions();
        while let Ok(d) = self.done.try_recv() {
            match d {
                Done::Settled { tokens, result } => self.confirm(&tokens, result),
                Done::Waited { token, acked } => {
                    if let Some(c) = self.conns.get_mut(&token).filter(|c| !c.terminated) {
                        match acked {
                            WaitReply::Replicas(n) => reply::integer(&mut c.session.out, n as i64),
                            WaitReply::Aof { local, replicas } => {
                                reply::array_header(&mut c.session.out, 2);
                                reply::integer(&mut c.session.out, i64::from(local));
                                reply::integer(&mut c.session.out, replicas as i64);
                            }
                        }
                        c.hold = Hold::None;
                    }
                    self.enqueue(token);
                }
            }
        }
    }

    /// Shutdown may finish: no commit in flight, no reply unsent.
    fn drained(&self) -> bool {
        self.inbox.is_empty()
            && self.conns.values().all(|c| {
                !c.session.has_pending()
                    && !c.handed_off
                    && c.hold != Hold::Waiting
                    && c.session.out.is_empty()
            })
    }

    fn close(&mut self, token: Token) {
        if let Some(mut c) = self.conns.remove(&token) {
            if self.ctx.settings.log_disconnections {
                let ms = c.since.elapsed().as_millis() as u64;
                c.span
                    .in_scope(|| tracing::info!(session_ms = ms, "disconnection"));
            }
            let _ = self.poll.registry().deregister(&mut c.stream);
            let stats = &self.ctx.stats;
            stats.connected_clients.fetch_sub(1, Ordering::SeqCst);
            stats
                .client_buffer_bytes
                .fetch_sub(c.accounted, Ordering::Relaxed);
        }
    }

    fn close_all(&mut self) {
        self.compact();
        // Their connections are closed: abandon the waits.
        self.remote
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let tokens: Vec<Token> = self.conns.keys().copied().collect();
        for t in tokens {
            self.close(t);
        }
        while let Ok(Msg::Accepted(..)) = self.inbox.try_recv() {
            self.ctx
                .stats
                .connected_clients
                .fetch_sub(1, Ordering::SeqCst);
        }
        self.jobs = None;
        self.unpark_committer();
        if let Some(t) = self.committer.take() {
            let _ = t.join();
        }
    }
}
