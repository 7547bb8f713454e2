//! Entry points for the fuzzers (`fuzz/`, cargo-fuzz) and the fuzzing
//! tests (`tests/fuzz_inputs.rs`, proptest): each takes arbitrary bytes
//! and drives one input path of the node the way a hostile peer can. None
//! may panic, hang, or use memory out of proportion to its input; that is
//! the property the fuzzers check.
//!
//! Built only with the `fuzzing` feature; not part of the API.

use std::io::Cursor;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::config::Config;
use crate::server::clients::{ClientInfo, ClientRegistry, KillSignal};
use crate::server::command::{dispatch, scan::ScanCursors, Command};
use crate::server::protocol::{self, Limits};
use crate::server::session::{Session, SessionContext};
use crate::server::{Backend, Role, ServerSettings, ServerStats, WriteError};
use crate::store::{Level, Store};
use crate::Lsn;

/// A node for the command layer: its WAL is a counter and every write is
/// durable at once, so commands run exactly as on a primary.
struct MemoryNode {
    store: Store,
    lsn: AtomicU64,
    config: Arc<Config>,
}

impl Backend for MemoryNode {
    fn store(&self) -> &Store {
        &self.store
    }
    fn role(&self) -> Role {
        Role::Primary
    }
    fn insert(&self, _info: u8, payload: &[u8]) -> Result<Lsn, WriteError> {
        let n = payload.len() as u64 + 1;
        Ok(Lsn(self
            .lsn
            .fetch_add(n, std::sync::atomic::Ordering::SeqCst)
            + n))
    }
    fn wait(&self, end: Lsn, _level: Level) -> Result<(), WriteError> {
        self.store.visibility().advance_all(end);
        Ok(())
    }
    fn sync_standbys_defined(&self) -> bool {
        false
    }
    fn config(&self) -> Arc<Config> {
        self.config.clone()
    }
    fn info_section(&self, name: &str) -> Option<String> {
        (name == "replication").then(|| "role:master\r\n".to_string())
    }
    fn wait_replicas(&self, _upto: Lsn, _wanted: usize, _timeout: Duration) -> usize {
        0
    }
    /// Everything is durable at once here (`wait` advances it all).
    fn wait_flushed(&self, _upto: Lsn, _timeout: Duration) -> bool {
        true
    }
}

/// The limits the command target runs with: small, so a fuzzer reaches
/// them quickly.
const MAX_BULK: u64 = 64 << 10;
const MAX_REPLY: usize = 256 << 10;

fn session() -> Session {
    let mut settings = ServerSettings::from_config(&Config::default(), std::path::Path::new("."))
        .expect("no TLS files to load");
    settings.max_bulk_len = MAX_BULK;
    settings.max_reply_bytes = MAX_REPLY;
    let backend: Arc<dyn Backend> = Arc::new(MemoryNode {
        store: Store::new(),
        lsn: AtomicU64::new(0),
        config: Arc::new(Config::default()),
    });
    let ctx = SessionContext {
        backend,
        settings,
        stats: Arc::new(ServerStats::default()),
        scans: Arc::new(ScanCursors::new()),
        clients: Arc::new(ClientRegistry::default()),
    };
    // CLIENT KILL wakes the worker loop: a loop of its own, never polled.
    let poll = mio::Poll::new().expect("an epoll instance");
    let waker = mio::Waker::new(poll.registry(), mio::Token(0)).expect("an eventfd");
    let kills = KillSignal::new(Arc::new(waker));
    let client = ClientInfo::new(1, "fuzz:1".into(), "fuzz:0".into(), -1, kills);
    Session::new(Arc::new(client), ctx)
}

/// RESP framing, command parsing, access checks and execution of every
/// request in `data`, as one connection sends them, on a fresh in-memory
/// node. The reply buffer is drained as a client would read it.
pub fn redis_requests(data: &[u8]) {
    let mut s = session();
    let limits = Limits {
        max_bulk_len: MAX_BULK,
    };
    let mut at = 0;
    while at < data.len() {
        let req = match protocol::next_request(&data[at..], limits) {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) => return,
        };
        let base = at;
        at += req.consumed.max(1);
        let args: Vec<&[u8]> = req
            .args
            .iter()
            .map(|r| &data[base + r.start..base + r.end])
            .collect();
        if args.is_empty() {
            continue;
        }
        let parsed = Command::from_frame(&args);
        let parsed = match parsed {
            Ok(cmd) => dispatch::check(&s, &cmd, args[0]).map(|()| cmd),
            Err(e) => Err(e),
        };
        // WAIT's reply comes from another thread in the server: skip it.
        let _ = dispatch::respond(&mut s, &args, parsed);
        assert!(
            s.out.len() <= MAX_REPLY + 2 * MAX_BULK as usize + 4096,
            "a reply outgrew its limit: {} bytes",
            s.out.len()
        );
        if let Some(_pending) = s.pending_wait() {
            let mut compact = Vec::new();
            s.confirm(&Ok(()), &mut compact);
            s.ctx
                .backend
                .store()
                .compact(&compact.iter().map(|k| k.as_slice()).collect::<Vec<_>>());
        }
        let n = s.sendable();
        s.consume_out(n);
    }
}

/// A glob pattern and a key, split at the first NUL: matching must stay
/// within the linear bound whatever the pattern.
pub fn glob(data: &[u8]) {
    let (pattern, key) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (
            data,
            &b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"[..],
        ),
    };
    let g = crate::server::command::glob::Glob::new(pattern);
    let _ = g.matches(key);
}

/// What a client sends on the replication port before and after
/// authentication: the startup packet, then typed messages, each decoded
/// (SASL responses and standby replies too) and each query parsed as a
/// replication command.
pub fn pg_frontend(data: &[u8]) {
    use crate::replication::pgwire::{FrontendMessage, MessageReader, SaslInitialResponse};
    use crate::replication::pgwire::{ReplicationMessage, StandbyMessage};
    let mut r = MessageReader::new(Cursor::new(data), 1 << 20);
    let _ = r.read_startup();
    for _ in 0..10_000 {
        match r.read_frontend() {
            Ok(FrontendMessage::Query(q)) => {
                let _ = crate::replication::command::parse(&q);
            }
            Ok(FrontendMessage::AuthResponse(body)) => {
                let _ = SaslInitialResponse::parse(&body);
                let mut server = crate::security::scram::ScramServer::new(None, "fuzz");
                let _ = server.client_first(&body);
                let _ = server.client_final(&body);
            }
            Ok(FrontendMessage::CopyData(p)) => {
                let _ = StandbyMessage::decode(&p);
                let _ = ReplicationMessage::decode(&p);
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// A replication command's text.
pub fn replication_command(data: &[u8]) {
    let _ = crate::replication::command::parse(&String::from_utf8_lossy(data));
}

/// A server's messages as a walreceiver reads them.
pub fn pg_backend(data: &[u8]) {
    use crate::replication::pgwire::MessageReader;
    let mut r = MessageReader::new(Cursor::new(data), 1 << 20);
    let _ = r.read_byte();
    for _ in 0..10_000 {
        if r.read_backend().is_err() {
            return;
        }
    }
}

/// WAL record pieces: a record header, a key-value payload, an XLOG
/// payload, a segment header.
pub fn wal_decoders(data: &[u8]) {
    use crate::wal::record::{RecordHeader, RECORD_HEADER_SIZE};
    if let Some(h) = data.get(..RECORD_HEADER_SIZE) {
        let _ = RecordHeader::decode(h.try_into().expect("length checked"));
    }
    let _ = crate::store::record::decode(data);
    if let Some((&info, rest)) = data.split_first() {
        let _ = crate::wal::xlog::XlogRecord::decode(info, rest);
    }
    let _ = crate::wal::segment::SegmentHeader::decode(data);
}

/// A valid 1 MB segment of a small WAL, made once by the real writer.
fn valid_segment() -> &'static (Vec<u8>, String) {
    static SEGMENT: OnceLock<(Vec<u8>, String)> = OnceLock::new();
    SEGMENT.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let seg = crate::WalSegSize::new(1 << 20).expect("1 MB is a segment size");
        let start = crate::wal::initial_lsn(seg);
        let wal = crate::wal::Wal::start(crate::wal::WalConfig::new(
            dir.path(),
            FUZZ_SYSTEM_ID,
            crate::TimelineId(1),
            seg,
            start,
            Lsn::INVALID,
        ))
        .expect("start a WAL writer");
        let mut end = start;
        for i in 0..200u32 {
            let key = format!("k{i}");
            let value = vec![i as u8; (i as usize % 40) * 37];
            let payload = crate::store::record::encode(
                u64::from(i),
                &[crate::store::record::Op::Set {
                    key: key.as_bytes().into(),
                    value: value[..].into(),
                }],
            );
            end = wal
                .insert(crate::store::record::RM_KV, 0, &payload)
                .expect("insert");
        }
        wal.wait_flushed(end).expect("flush");
        drop(wal);
        let name = start.segno(seg).file_name(crate::TimelineId(1), seg);
        let bytes = std::fs::read(dir.path().join(&name)).expect("read the segment");
        (bytes, name)
    })
}

const FUZZ_SYSTEM_ID: u64 = 7_000_000_000_000_000_001;

/// The WAL reader over a valid segment that `data` corrupts: each 5 bytes
/// are an offset (4, little-endian, within the first 64 kB where the
/// records are) and a byte to xor there. The reader must stop at the first
/// bad record with an error, never panic or read past the file.
pub fn wal_reader(data: &[u8]) {
    let (valid, name) = valid_segment();
    let mut seg = valid.clone();
    for m in data.chunks_exact(5) {
        let off = u32::from_le_bytes([m[0], m[1], m[2], m[3]]) as usize % (64 << 10);
        seg[off] ^= m[4];
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(dir.path().join(name), &seg).expect("write the segment");
    let seg_size = crate::WalSegSize::new(1 << 20).expect("1 MB is a segment size");
    let cfg = crate::wal::ReaderConfig {
        dir: dir.path().to_path_buf(),
        system_id: FUZZ_SYSTEM_ID,
        seg_size,
        history: crate::TimelineHistory::root(crate::TimelineId(1)),
    };
    let mut r = crate::wal::WalReader::new(cfg, crate::wal::initial_lsn(seg_size));
    for _ in 0..10_000 {
        if r.read_record().is_err() {
            return;
        }
    }
}

/// A timeline history file.
pub fn history_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::TimelineHistory::parse(crate::TimelineId(u32::MAX), &text);
    let _ = crate::TimelineHistory::parse(crate::TimelineId(2), &text);
    let _ = walrep_states::history::parse_lines(&text);
}

/// A control file.
pub fn control_file(data: &[u8]) {
    let _ = crate::store::control::ControlFile::decode(data, "fuzz");
}

/// A libpq connection string, a password file, a verifier.
pub fn conninfo(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::replication::client::ConnInfo::parse(&text);
    let _ = crate::replication::client::redact_conninfo(&text);
    let _ = crate::security::ScramVerifier::parse(&text);
    let q = crate::security::passfile::PassQuery {
        host: "h",
        port: 5433,
        database: "replication",
        user: "u",
    };
    let _ = crate::security::passfile::find(&text, q);
}

/// A walrep.toml (hba lines, roles, every parameter), then hba lookups
/// with it.
pub fn config_text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(c) = Config::from_toml_with_overrides(&text, "fuzz", &[]) {
        for ip in ["127.0.0.1", "::1", "10.1.2.3"] {
            let ip = ip.parse().expect("a valid address");
            let _ = crate::replication::server::hba_lookup(&c.hba, ip, "walrep", false);
            let _ = crate::replication::server::hba_lookup(&c.hba, ip, "walrep", true);
        }
        let _ = crate::security::roles::Roles::new(&c.roles, &c.requirepass);
        let _ = c.redacted();
    }
}
