//! The clients of the network tests: threads in the hub namespace that
//! write unique values to their own keys on the current target node and
//! record every operation in a [`History`] (walrep's checker reads it after
//! the run); with `remote_apply` each acknowledged write is read back on a
//! standby at once. The test moves the target on a failover; connections
//! to the old target are shut down then, as a client-side proxy would.

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use walrep::history::{History, Outcome, Read, Write};

use super::netns::{Net, REDIS_PORT};
use super::resp::{CallError, Resp, Value};
use super::wait_for;

/// A node clients talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub addr: String,
}

impl Target {
    /// Node `i` of `net`, called `name`.
    pub fn node(net: &Net, i: usize, name: &str) -> Target {
        Target {
            name: name.to_string(),
            addr: format!("{}:{REDIS_PORT}", net.addr(i)),
        }
    }
}

/// What the clients do.
#[derive(Debug, Clone)]
pub struct Spec {
    pub clients: usize,
    /// Keys each client cycles through (per connection generation).
    pub keys_per_client: usize,
    /// `synchronous_commit` of every connection.
    pub level: &'static str,
    /// A request unanswered for this long is unknown.
    pub request_timeout: Duration,
    /// Read each acknowledged write back on this standby.
    pub read_back_on: Option<Target>,
}

struct Shared {
    start: Instant,
    history: Mutex<History>,
    target: Mutex<Target>,
    stop: AtomicBool,
    /// Open client connections by node name, to shut down on a failover.
    conns: Mutex<Vec<(String, TcpStream)>>,
}

/// Running clients.
pub struct Workload {
    shared: Arc<Shared>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Workload {
    pub fn start(net: &Net, target: Target, spec: Spec) -> Workload {
        let shared = Arc::new(Shared {
            start: Instant::now(),
            history: Mutex::new(History::new()),
            target: Mutex::new(target),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let handles = (0..spec.clients)
            .map(|c| {
                let (shared, spec) = (shared.clone(), spec.clone());
                net.run_in(&net.hub(), move || client(c, &shared, &spec))
            })
            .collect();
        Workload { shared, handles }
    }

    /// Send writes to `t` from now on; connections to other nodes are shut
    /// down (their requests in flight become unknown).
    pub fn retarget(&self, t: Target) {
        *self.shared.target.lock().unwrap() = t.clone();
        self.drop_connections(|n| n != t.name);
    }

    fn drop_connections(&self, which: impl Fn(&str) -> bool) {
        let mut conns = self.shared.conns.lock().unwrap();
        conns.retain(|(n, s)| {
            if which(n) {
                let _ = s.shutdown(Shutdown::Both);
                false
            } else {
                true
            }
        });
    }

    /// Writes acknowledged so far (any level).
    pub fn acknowledged(&self) -> usize {
        let h = self.shared.history.lock().unwrap();
        h.writes.iter().filter(|w| w.outcome == Outcome::Ok).count()
    }

    /// Writes sent and not answered yet.
    pub fn pending(&self) -> usize {
        let h = self.shared.history.lock().unwrap();
        h.writes
            .iter()
            .filter(|w| w.outcome == Outcome::Pending)
            .count()
    }

    /// Wait until `n` more writes than now are acknowledged.
    pub fn wait_acknowledged(&self, n: usize, deadline: Duration) {
        let target = self.acknowledged() + n;
        wait_for(&format!("{n} more acknowledged writes"), deadline, || {
            (self.acknowledged() >= target).then_some(())
        });
    }

    /// Stop the clients, end what is in flight and return the history.
    pub fn finish(self) -> History {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.drop_connections(|_| true);
        for h in self.handles {
            h.join().expect("client thread panicked");
        }
        let history = self.shared.history.lock().unwrap().clone();
        history
    }
}

/// Whether a server's error reply means the write did not happen.
fn refused(e: &str) -> bool {
    ["READONLY", "LOADING", "NOAUTH", "NOPERM", "WRONGTYPE"]
        .iter()
        .any(|code| e.starts_with(code))
}

/// A connection to the current target, set up: its name, timeline, level.
struct Conn {
    resp: Resp,
    node: String,
    timeline: u32,
}

fn connect(shared: &Shared, spec: &Spec) -> Option<Conn> {
    let t = shared.target.lock().unwrap().clone();
    let mut resp = Resp::connect(&t.addr).ok()?;
    resp.set_read_timeout(spec.request_timeout);
    resp.call(&["CONFIG", "SET", "synchronous_commit", spec.level])
        .ok()?;
    let timeline = resp.info_field("persistence", "timeline")?.parse().ok()?;
    shared
        .conns
        .lock()
        .unwrap()
        .push((t.name.clone(), resp.killer().ok()?));
    Some(Conn {
        resp,
        node: t.name,
        timeline,
    })
}

/// One client: keys `c<c>g<generation>k<i>`, values unique by sequence.
/// After an unknown outcome it starts a new generation of keys, so each
/// key's writes are a sequence on one connection with at most one
/// indeterminate write at its end.
fn client(c: usize, shared: &Shared, spec: &Spec) {
    let mut writes = ClientWrites::new(
        c,
        &shared.history,
        shared.start,
        spec.keys_per_client as u64,
        spec.level,
    );
    let mut conn: Option<Conn> = None;
    let mut reader: Option<Resp> = None;
    while !shared.stop.load(Ordering::Relaxed) {
        let Some(cn) = conn.as_mut() else {
            conn = connect(shared, spec);
            if conn.is_none() {
                // The target may be restarting or not promoted yet.
                writes.back_off();
            }
            continue;
        };
        let (id, key, outcome) = writes.write(&cn.node, cn.timeline, |key, value| {
            match cn.resp.call(&["SET", key, value]) {
                Ok(Value::Status(s)) if s == "OK" => Outcome::Ok,
                Ok(other) => Outcome::Unknown(format!("unexpected reply {other:?}")),
                Err(CallError::Server(e)) if refused(&e) => Outcome::Fail(e),
                Err(e) => Outcome::Unknown(e.to_string()),
            }
        });
        if outcome == Outcome::Ok {
            if let Some(t) = &spec.read_back_on {
                read_back(shared, t, &mut reader, id, &key);
            }
        } else {
            conn = None;
            writes.back_off();
        }
    }
}

/// One client's writes: keys `c<id>g<generation>k<i>`, values unique by
/// sequence, each recorded in a history when sent and when answered. After
/// an unknown outcome a new generation of keys begins, so each key's writes
/// are a sequence with at most one indeterminate write at its end.
pub struct ClientWrites<'a> {
    id: usize,
    history: &'a Mutex<History>,
    start: Instant,
    keys_per_client: u64,
    level: &'a str,
    generation: u64,
    seq: u64,
    /// Failed connects and writes in a row: counted, each backing off a
    /// little more.
    retries: u64,
}

impl<'a> ClientWrites<'a> {
    /// Client `id`'s writes at `level` (`synchronous_commit`), cycling
    /// through `keys_per_client` keys, recorded in `history` on the clock
    /// that began at `start`.
    pub fn new(
        id: usize,
        history: &'a Mutex<History>,
        start: Instant,
        keys_per_client: u64,
        level: &'a str,
    ) -> ClientWrites<'a> {
        ClientWrites {
            id,
            history,
            start,
            keys_per_client,
            level,
            generation: 0,
            seq: 0,
            retries: 0,
        }
    }

    /// The next write to `node` (on `timeline`), sent by `set(key, value)`
    /// and recorded; (its id in the history, its key, its outcome).
    pub fn write(
        &mut self,
        node: &str,
        timeline: u32,
        set: impl FnOnce(&str, &str) -> Outcome,
    ) -> (usize, String, Outcome) {
        let (c, g, seq) = (self.id, self.generation, self.seq);
        let key = format!("c{c}g{g}k{}", seq % self.keys_per_client);
        let value = format!("c{c}g{g}s{seq}");
        let id = self.history.lock().unwrap().invoke(Write {
            client: c,
            node: node.to_string(),
            timeline,
            key: key.clone(),
            seq: seq / self.keys_per_client,
            value: value.clone(),
            level: self.level.to_string(),
            invoked: self.start.elapsed(),
            completed: None,
            outcome: Outcome::Pending,
        });
        let outcome = set(&key, &value);
        self.history
            .lock()
            .unwrap()
            .complete(id, outcome.clone(), self.start.elapsed());
        if outcome == Outcome::Ok {
            self.retries = 0;
        }
        if matches!(outcome, Outcome::Unknown(_)) {
            self.generation += 1;
            self.seq = 0;
        } else {
            self.seq += 1;
        }
        (id, key, outcome)
    }

    /// After a failed connect or write: wait a little longer for each
    /// failure in a row (20 ms more each, at most 200 ms).
    pub fn back_off(&mut self) {
        self.retries += 1;
        std::thread::sleep(Duration::from_millis(20 * self.retries.min(10)));
    }
}

/// Read `key` on standby `t` right after write `id` was acknowledged.
fn read_back(shared: &Shared, t: &Target, reader: &mut Option<Resp>, id: usize, key: &str) {
    if reader.is_none() {
        *reader = Resp::connect(&t.addr).ok();
    }
    let Some(r) = reader.as_mut() else { return };
    match r.text(&["GET", key]) {
        Ok(observed) => shared.history.lock().unwrap().read(Read {
            node: t.name.clone(),
            after: id,
            observed,
        }),
        // A read that got no answer checks nothing.
        Err(_) => *reader = None,
    }
}

/// Every key of `history` and its value on node `i` (MGET in chunks).
pub fn final_state(net: &Net, i: usize, history: &History) -> HashMap<String, Option<String>> {
    let keys: Vec<String> = history.keys().into_iter().map(str::to_string).collect();
    let mut c = net.client(i);
    let mut state = HashMap::new();
    for chunk in keys.chunks(500) {
        let mut args = vec!["MGET"];
        args.extend(chunk.iter().map(String::as_str));
        let Ok(Value::Array(values)) = c.call(&args) else {
            panic!("MGET on node {i} failed");
        };
        for (k, v) in chunk.iter().zip(values) {
            let v = match v {
                Value::Bulk(b) => b,
                other => panic!("MGET gave {other:?}"),
            };
            state.insert(k.clone(), v);
        }
    }
    state
}

/// Wait until every node in `nodes` reports the same `DEBUG DIGEST`;
/// returns it. On a timeout the failure lists each node's digest.
pub fn converged(net: &Net, nodes: &[usize]) -> String {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let last = nodes
            .iter()
            .map(|&i| {
                net.client(i)
                    .text(&["DEBUG", "DIGEST"])
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| "(no answer)".into())
            })
            .collect::<Vec<_>>();
        if last.windows(2).all(|w| w[0] == w[1]) && !last[0].starts_with('(') {
            return last[0].clone();
        }
        assert!(
            Instant::now() < end,
            "nodes {nodes:?} did not converge within 60 s: digests {last:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
