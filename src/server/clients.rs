//! The connected clients as CLIENT LIST, CLIENT INFO and CLIENT KILL see
//! them: one entry per connection, registered while it is open.
//!
//! A connection updates its own entry with relaxed atomic stores (the
//! time and name of its last command), so keeping the list costs the hot
//! path nothing measurable; only CLIENT LIST takes the registry's lock.
//! CLIENT KILL marks an entry and wakes the worker loop that serves it,
//! which closes the connection on its next pass.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mio::Waker;

/// How a worker loop is told that some of its connections were killed.
#[derive(Debug)]
pub struct KillSignal {
    pending: AtomicBool,
    waker: Arc<Waker>,
}

impl KillSignal {
    pub fn new(waker: Arc<Waker>) -> Arc<KillSignal> {
        Arc::new(KillSignal {
            pending: AtomicBool::new(false),
            waker,
        })
    }

    /// True once after any of the loop's connections was killed.
    pub fn take(&self) -> bool {
        self.pending.swap(false, Ordering::AcqRel)
    }
}

/// One connection, as CLIENT LIST shows it.
#[derive(Debug)]
pub struct ClientInfo {
    pub id: u64,
    pub addr: String,
    pub laddr: String,
    pub fd: i32,
    created: Instant,
    /// Milliseconds after `created` of the last command.
    last_ms: AtomicU64,
    /// The last command's name, lower case, up to 16 bytes.
    last_cmd: Mutex<[u8; 16]>,
    /// 2 or 3.
    resp: AtomicU8,
    /// Commands queued in a MULTI, -1 outside one.
    multi: AtomicI64,
    name: Mutex<Option<String>>,
    lib: Mutex<(String, String)>,
    killed: AtomicBool,
    signal: Arc<KillSignal>,
}

impl ClientInfo {
    pub fn new(
        id: u64,
        addr: String,
        laddr: String,
        fd: i32,
        signal: Arc<KillSignal>,
    ) -> ClientInfo {
        ClientInfo {
            id,
            addr,
            laddr,
            fd,
            created: Instant::now(),
            last_ms: AtomicU64::new(0),
            last_cmd: Mutex::new([0; 16]),
            resp: AtomicU8::new(2),
            multi: AtomicI64::new(-1),
            name: Mutex::new(None),
            lib: Mutex::new((String::new(), String::new())),
            killed: AtomicBool::new(false),
            signal,
        }
    }

    /// A command named `name` arrived.
    /// `name` ran at `at` (the caller reads the clock once per batch of
    /// pipelined requests, not once per request).
    pub fn note_command(&self, name: &[u8], at: std::time::Instant) {
        let ms = at.saturating_duration_since(self.created).as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
        if let Ok(mut c) = self.last_cmd.try_lock() {
            let n = name.len().min(c.len());
            c.fill(0);
            c[..n].copy_from_slice(&name[..n]);
            c[..n].make_ascii_lowercase();
        }
    }

    pub fn set_resp(&self, resp: u8) {
        self.resp.store(resp, Ordering::Relaxed);
    }

    pub fn set_multi(&self, queued: Option<usize>) {
        let v = queued.map_or(-1, |n| n as i64);
        self.multi.store(v, Ordering::Relaxed);
    }

    pub fn name(&self) -> Option<String> {
        lock(&self.name).clone()
    }

    pub fn set_name(&self, name: Option<String>) {
        *lock(&self.name) = name;
    }

    /// CLIENT SETINFO LIB-NAME (`ver` false) or LIB-VER.
    pub fn set_lib(&self, ver: bool, value: &str) {
        let mut l = lock(&self.lib);
        match ver {
            false => l.0 = value.to_string(),
            true => l.1 = value.to_string(),
        }
    }

    /// Ask its worker loop to close it.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.signal.pending.store(true, Ordering::Release);
        let _ = self.signal.waker.wake();
    }

    pub fn killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    /// Seconds since it connected.
    pub fn age_s(&self) -> u64 {
        self.created.elapsed().as_secs()
    }

    /// Redis's CLIENT LIST line (without the newline).
    pub fn line(&self) -> String {
        let now_ms = self.created.elapsed().as_millis() as u64;
        let idle_s = now_ms.saturating_sub(self.last_ms.load(Ordering::Relaxed)) / 1000;
        let cmd = {
            let c = lock(&self.last_cmd);
            let n = c.iter().position(|&b| b == 0).unwrap_or(c.len());
            String::from_utf8_lossy(&c[..n]).into_owned()
        };
        let multi = self.multi.load(Ordering::Relaxed);
        let flags = if multi >= 0 { "x" } else { "N" };
        let (lib_name, lib_ver) = lock(&self.lib).clone();
        format!(
            "id={} addr={} laddr={} fd={} name={} age={} idle={} flags={flags} db=0 sub=0 psub=0 ssub=0 multi={multi} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={} user=default redir=-1 resp={} lib-name={lib_name} lib-ver={lib_ver}",
            self.id,
            self.addr,
            self.laddr,
            self.fd,
            self.name().unwrap_or_default(),
            self.age_s(),
            idle_s,
            if cmd.is_empty() { "NULL" } else { &cmd },
            self.resp.load(Ordering::Relaxed),
        )
    }
}

/// Every open connection of a server.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    clients: Mutex<BTreeMap<u64, Arc<ClientInfo>>>,
}

impl ClientRegistry {
    pub fn add(&self, c: Arc<ClientInfo>) {
        lock(&self.clients).insert(c.id, c);
    }

    pub fn remove(&self, id: u64) {
        lock(&self.clients).remove(&id);
    }

    /// Every client, by id.
    pub fn all(&self) -> Vec<Arc<ClientInfo>> {
        lock(&self.clients).values().cloned().collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
