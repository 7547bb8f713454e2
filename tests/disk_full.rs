//! A full disk, with real processes on a small filesystem each test mounts
//! (tmpfs of 40 MB, unmounted by a guard, also when the test fails): a
//! primary filled under 16 writers loses no acknowledged write, comes back
//! by itself once space is freed and stops on SIGTERM while the disk is
//! full; a standby filled while streaming resumes with no gap; a failing
//! archive_command is warned about before the disk fills and named as
//! what holds WAL. And, with the fault-injecting storage, the node stops
//! within a bound with every thread ended after an IO failure of the WAL
//! writer, the checkpointer, the archiver, a control-file write and a
//! standby's walreceiver.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::cluster::{basebackup, dump, wait_caught_up, write_keys};
use support::node::{init_datadir, TestNode};
use support::process::PROCESS_DEADLINE;
use support::wait_for;

/// Size of each test's filesystem.
const FS_SIZE_MB: u64 = 40;
/// How long the node may take to come back after space is freed: the
/// back-off between attempts is at most 15 s, crash recovery a few.
const BACK_DEADLINE: Duration = Duration::from_secs(90);

/// A tmpfs mounted on a fresh directory; unmounted when dropped (declare
/// it before the nodes that use it, so they are stopped first).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount() -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={FS_SIZE_MB}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "mount -t tmpfs failed (the tests run as root)"
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn free_bytes(&self) -> u64 {
        walrep::node::disk::filesystem_space(self.path()).unwrap().0
    }

    /// Fill the filesystem with a ballast file until `keep_free` bytes are
    /// left.
    fn fill_leaving(&self, keep_free: u64) -> PathBuf {
        let path = self
            .path()
            .join(format!("ballast-{}", rand::random::<u32>()));
        let size = self.free_bytes().saturating_sub(keep_free);
        let chunk = vec![0xA5u8; 1 << 20];
        let mut f = fs::File::create(&path).unwrap();
        let mut written = 0u64;
        while written < size {
            let n = chunk.len().min((size - written) as usize);
            if std::io::Write::write_all(&mut f, &chunk[..n]).is_err() {
                break;
            }
            written += n as u64;
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        }
    }
}

/// Writers that each SET their own keys until stopped, reconnecting after
/// a closed connection; a key counts only once the node said OK.
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, String)>>>,
    errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Writers {
    /// `n` writers of `value_len`-byte values, each pausing `pace` after
    /// every write.
    fn start(port: u16, n: usize, value_len: usize, pace: Duration) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..n)
            .map(|t| {
                let (stop, acked, errors) = (stop.clone(), acked.clone(), errors.clone());
                std::thread::Builder::new()
                    .name(format!("writer-{t}"))
                    .spawn(move || write_loop(port, t, value_len, pace, &stop, &acked, &errors))
                    .unwrap()
            })
            .collect();
        Writers {
            stop,
            acked,
            errors,
            threads,
        }
    }

    fn errors_containing(&self, text: &str) -> usize {
        let e = self.errors.lock().unwrap();
        e.iter().filter(|e| e.contains(text)).count()
    }

    fn finish(self) -> (Vec<(String, String)>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        let errors = std::mem::take(&mut *self.errors.lock().unwrap());
        (acked, errors)
    }
}

fn connect(port: u16) -> Option<redis::Connection> {
    let c = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .ok()?
        .get_connection_with_timeout(Duration::from_secs(2))
        .ok()?;
    c.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    Some(c)
}

fn write_loop(
    port: u16,
    t: usize,
    value_len: usize,
    pace: Duration,
    stop: &AtomicBool,
    acked: &Mutex<Vec<(String, String)>>,
    errors: &Mutex<Vec<String>>,
) {
    let pad = "v".repeat(value_len);
    let mut conn = None;
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let Some(c) = conn.as_mut() else {
            conn = connect(port);
            if conn.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            continue;
        };
        let (key, value) = (format!("w{t}:{i}"), format!("{i}:{pad}"));
        i += 1;
        match redis::cmd("SET").arg(&key).arg(&value).query::<String>(c) {
            Ok(_) => {
                acked.lock().unwrap().push((key, value));
                std::thread::sleep(pace);
            }
            Err(e) => {
                errors.lock().unwrap().push(e.to_string());
                conn = None;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Every acknowledged key is on `node` with its value.
fn assert_all_present(node: &TestNode, acked: &[(String, String)]) {
    let mut c = node.client();
    for chunk in acked.chunks(500) {
        let keys: Vec<&str> = chunk.iter().map(|(k, _)| k.as_str()).collect();
        let got: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query(&mut c).unwrap();
        for ((k, v), g) in chunk.iter().zip(got) {
            assert_eq!(g.as_deref(), Some(v.as_str()), "acknowledged {k} lost");
        }
    }
}

/// A SET answered OK by a new connection.
fn accepts_writes(port: u16) -> bool {
    connect(port).is_some_and(|mut c| {
        redis::cmd("SET")
            .arg("probe")
            .arg("1")
            .query::<String>(&mut c)
            .is_ok()
    })
}

fn wait_log(node: &TestNode, what: &str, deadline: Duration) {
    wait_for(&format!("\"{what}\" in the log"), deadline, || {
        node.log_text().contains(what).then_some(())
    });
}

#[test]
fn a_primary_filled_under_16_writers_loses_nothing_recovers_by_itself_and_stops_on_sigterm() {
    let logs = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount();
    let dir = init_datadir(fs.path(), "primary", &["--wal-segment-size", "1MB"]);
    let log = logs.path().join("primary.log");
    let mut node = TestNode::start_logging_to(&dir, &["disk_free_warning_size=4MB"], &log);
    let pid = node.pid();
    let ballast = fs.fill_leaving(12 << 20);

    let writers = Writers::start(node.port, 16, 200, Duration::ZERO);
    wait_for("a write refused for lack of space", BACK_DEADLINE, || {
        (writers.errors_containing("No space left on device") > 0).then_some(())
    });
    wait_log(&node, "could not restart: the disk is full", BACK_DEADLINE);
    let (acked, errors) = writers.finish();
    assert!(
        acked.len() > 1000,
        "only {} writes acknowledged",
        acked.len()
    );
    let log = node.log_text();
    assert!(
        !log.contains("(os error 28): No space left on device (os error 28)"),
        "a cause printed twice:\n{log}"
    );
    assert!(log.contains("held by"), "no holder named:\n{log}");
    assert!(
        errors.iter().any(|e| e.contains("No space left on device")),
        "{errors:?}"
    );

    fs::remove_file(&ballast).unwrap();
    wait_for("the node to accept writes again", BACK_DEADLINE, || {
        accepts_writes(node.port).then_some(())
    });
    assert_eq!(node.pid(), pid, "the test restarted nothing");
    assert_all_present(&node, &acked);

    // Full again, and SIGTERM while the node retries.
    let _ballast = fs.fill_leaving(0);
    let writers = Writers::start(node.port, 4, 200, Duration::ZERO);
    wait_log(&node, "restart=2", BACK_DEADLINE);
    let _ = writers.finish();
    let started = Instant::now();
    let status = node.stop();
    assert!(started.elapsed() < PROCESS_DEADLINE, "{status:?}");
    assert!(
        node.log_text().contains("shut down") || !status.success(),
        "{}",
        node.log_text()
    );
}

/// A raw connection, to read what the node sends unasked.
fn raw(port: u16) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(BACK_DEADLINE)).unwrap();
    s
}

/// Send one command (RESP) on `s`.
fn send(s: &mut std::net::TcpStream, args: &[&str]) {
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    std::io::Write::write_all(s, req.as_bytes()).unwrap();
}

/// Everything `s` receives until the node closes it.
fn read_to_close(s: &mut std::net::TcpStream) -> String {
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(s, &mut got);
    String::from_utf8_lossy(&got).into_owned()
}

/// Read one line (a simple reply) from `s`.
fn read_line(s: &mut std::net::TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        assert_eq!(std::io::Read::read(s, &mut b).unwrap(), 1, "closed early");
        line.push(b[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// pg_receivewal streaming from `node` until the node ends its session
/// (`-n`: it does not reconnect); its stderr goes to `err`.
fn receivewal(node: &TestNode, dir: &Path, err: &Path) -> Option<support::process::ChildGuard> {
    let bin = support::tools::tool("pg_receivewal")?;
    fs::create_dir_all(dir).unwrap();
    let mut c = Command::new(bin);
    c.args(["-h", "127.0.0.1", "-p", &node.replication_port.to_string()])
        .args(["-U", "walrep", "-w", "-n", "-s", "1", "-D"])
        .arg(dir)
        .env_remove("PGPASSWORD")
        .stdout(std::process::Stdio::null())
        .stderr(fs::File::create(err).unwrap());
    Some(support::process::ChildGuard::spawn(&mut c))
}

/// After the WAL writer fails, every session is told why before it is
/// closed: an idle client reads the error, a client waiting for its `on`
/// commit gets it as that write's reply (never "OK", never just a closed
/// connection), pg_receivewal PostgreSQL's FATAL after a crash; then the
/// node serves again by itself.
#[test]
fn a_wal_write_failure_tells_every_session_why_before_closing_it_and_the_node_serves_again() {
    let logs = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount();
    let dir = init_datadir(fs.path(), "primary", &["--wal-segment-size", "1MB"]);
    let node = TestNode::start_logging_to(
        &dir,
        &["synchronous_standby_names=s1", "synchronous_commit=local"],
        &logs.path().join("primary.log"),
    );
    let pid = node.pid();
    let mut idle = raw(node.port);
    send(&mut idle, &["PING"]);
    assert_eq!(read_line(&mut idle), "+PONG\r\n");
    let mut waiting = raw(node.port);
    send(&mut waiting, &["CONFIG", "SET", "synchronous_commit", "on"]);
    assert_eq!(read_line(&mut waiting), "+OK\r\n");
    send(&mut waiting, &["SET", "waiting", "1"]);
    wait_for("the SET to wait for standby s1", BACK_DEADLINE, || {
        (node.info_field("replication", "sync_waiters")? == "1").then_some(())
    });
    let receivewal_err = logs.path().join("pg_receivewal.err");
    let mut receiver = receivewal(&node, &logs.path().join("received"), &receivewal_err);
    if receiver.is_some() {
        wait_for("pg_receivewal to stream", BACK_DEADLINE, || {
            node.info("replication")
                .contains("application_name=pg_receivewal")
                .then_some(())
        });
    }

    let ballast = fs.fill_leaving(4 << 20);
    let writers = Writers::start(node.port, 4, 200, Duration::ZERO);
    let told = read_to_close(&mut idle);
    let answered = read_to_close(&mut waiting);
    let _ = writers.finish();
    let why = "-ERR server is restarting after a WAL write failure: ";
    assert!(told.starts_with(why), "the idle client read {told:?}");
    assert!(told.contains("No space left on device"), "{told:?}");
    assert!(told.ends_with("; reconnect in a moment\r\n"), "{told:?}");
    assert!(
        answered.starts_with(why),
        "the waiting SET got {answered:?}"
    );
    assert!(
        answered.contains("the write was not confirmed"),
        "{answered:?}"
    );
    assert!(!answered.contains("+OK"), "{answered:?}");
    if let Some(r) = receiver.as_mut() {
        assert!(r.wait_exit().is_some(), "pg_receivewal did not end");
        let err = fs::read_to_string(&receivewal_err).unwrap();
        assert!(
            err.contains("terminating connection because of crash of another server process"),
            "{err}"
        );
        assert!(err.contains("No space left on device"), "{err}");
    }

    fs::remove_file(&ballast).unwrap();
    wait_for("the node to accept writes again", BACK_DEADLINE, || {
        accepts_writes(node.port).then_some(())
    });
    assert_eq!(node.pid(), pid, "the test restarted nothing");
}

#[test]
fn a_standby_filled_while_streaming_resumes_when_space_is_freed_and_equals_the_primary() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount();
    let pdir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", "1MB"]);
    let primary = TestNode::start(&pdir, &[]);
    write_keys(&primary, "before", 200, 100);
    let sdir = basebackup(&primary, fs.path(), "standby", "s1");
    let standby = TestNode::start_logging_to(&sdir, &[], &tmp.path().join("standby.log"));
    wait_caught_up(&primary, &standby);
    let spid = standby.pid();

    let ballast = fs.fill_leaving(6 << 20);
    let n = 20_000;
    write_keys(&primary, "during", n, 500);
    wait_log(&standby, "No space left on device", BACK_DEADLINE);
    // It keeps serving reads of what it has.
    let got: Option<String> = redis::cmd("GET")
        .arg("before:7")
        .query(&mut standby.client())
        .unwrap();
    assert!(got.is_some_and(|v| v.starts_with("7:")));

    fs::remove_file(&ballast).unwrap();
    wait_caught_up(&primary, &standby);
    assert_eq!(standby.pid(), spid, "the test restarted nothing");
    assert_eq!(dump(&standby, "during", n), dump(&primary, "during", n));
    assert_eq!(dump(&standby, "before", 200), dump(&primary, "before", 200));
}

#[test]
fn a_failing_archive_command_is_warned_about_before_the_disk_fills_and_named_as_the_holder() {
    let logs = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount();
    let dir = init_datadir(fs.path(), "primary", &["--wal-segment-size", "1MB"]);
    let mut node = TestNode::start_logging_to(
        &dir,
        &[
            "archive_mode=on",
            "archive_command=exit 1",
            "max_wal_size=4MB",
            "min_wal_size=2MB",
            "disk_free_warning_size=16MB",
        ],
        &logs.path().join("primary.log"),
    );
    // One writer: the disk fills at a pace a monitor a few times a second
    // sees coming.
    let writers = Writers::start(node.port, 1, 1000, Duration::from_millis(1));
    wait_log(
        &node,
        "free disk space is below disk_free_warning_size",
        BACK_DEADLINE,
    );
    let holder = node.info_field("persistence", "wal_held_by").unwrap();
    assert!(
        holder.split(',').any(|h| h == "archive_backlog"),
        "INFO names {holder}, not the archive backlog"
    );
    let backlog: u64 = node
        .info_field("persistence", "wal_held_bytes_archive_backlog")
        .unwrap()
        .parse()
        .unwrap();
    assert!(backlog >= 4 << 20, "{backlog}");
    wait_for("a write refused for lack of space", BACK_DEADLINE, || {
        (writers.errors_containing("No space left on device") > 0).then_some(())
    });
    let _ = writers.finish();
    let log = node.log_text();
    let warned = log
        .find("free disk space is below disk_free_warning_size")
        .unwrap();
    let full = log.find("No space left on device").unwrap();
    assert!(warned < full, "the warning came after ENOSPC:\n{log}");
    assert!(
        log[warned..].contains("waiting for archive_command"),
        "{log}"
    );
    let started = Instant::now();
    node.stop();
    assert!(started.elapsed() < PROCESS_DEADLINE);
}

/// Names (as `/proc` shows them, 15 bytes at most) of the threads a node
/// starts.
const NODE_THREADS: &[&str] = &[
    "walwriter",
    "wal-events",
    "wal-spares",
    "checkpointer",
    "archiver",
    "archive-",
    "cmd-",
    "disk-monitor",
    "expire-cycle",
    "redis-",
    "repl-listener",
    "signals",
    "startup",
    "redo",
    "status-",
    "trigger-watcher",
    "walsender",
    "walreceiver",
];

/// Threads of this process that a node started.
fn node_threads() -> Vec<String> {
    let mut names = Vec::new();
    for task in fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if NODE_THREADS.iter().any(|p| comm.starts_with(p)) {
            names.push(comm.to_string());
        }
    }
    names
}

/// A node run in this process on `storage`.
fn start_in_process(
    dir: &Path,
    settings: &[&str],
    storage: Arc<walrep::storage::FaultyStorage>,
) -> walrep::node::RunningNode {
    let mut overrides = vec!["port=0".to_string(), "replication_port=0".to_string()];
    overrides.extend(settings.iter().map(|s| s.to_string()));
    let opts = walrep::node::StartOptions {
        overrides,
        storage: Some(storage),
    };
    walrep::node::RunningNode::start(dir, &opts).unwrap()
}

/// SIGTERM's request (what the signal thread sends), then the node's own
/// shutdown: both within a bound, whatever failed before. Returns why the
/// node stopped.
fn stop_within_bound(node: walrep::node::RunningNode) -> String {
    node.node
        .request_exit(walrep::node::ExitRequest::Signal(libc::SIGTERM));
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let why = node.wait_for_exit().map(|w| format!("{w:?}"));
        let stopped = node.stop();
        let _ = tx.send((why, stopped.err().map(|e| e.to_string())));
    });
    let (why, _stop_error) = rx
        .recv_timeout(PROCESS_DEADLINE)
        .expect("the node did not stop within the bound after an IO failure");
    why.unwrap()
}

fn set(url: &str, key: &str) -> redis::RedisResult<String> {
    let mut c = redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(5))?;
    c.set_read_timeout(Some(Duration::from_secs(20)))?;
    redis::cmd("SET").arg(key).arg("v").query(&mut c)
}

fn url(node: &walrep::node::RunningNode) -> String {
    format!(
        "redis://127.0.0.1:{}/",
        node.node.ports.lock().unwrap().redis
    )
}

/// After an IO failure of each component in turn (the WAL writer, the
/// checkpointer, the archiver, a control-file write, a standby's
/// walreceiver), the node stops within a bound and every thread it started
/// ends. One test, so the threads of
/// this process are those of the node under test.
#[test]
fn after_an_io_failure_of_any_component_the_node_stops_and_every_thread_ends() {
    use walrep::node::checkpoint::CheckpointCause;
    use walrep::storage::{FaultyStorage, Op};
    let tmp = tempfile::tempdir().unwrap();
    let seg = support::wal::seg();
    let inject = |name: &str,
                  settings: &[&str],
                  arm: &dyn Fn(&Path, &FaultyStorage),
                  trigger: &dyn Fn(&walrep::node::RunningNode)| {
        let dir = tmp.path().join(name);
        walrep::node::init::init(&dir, seg).unwrap();
        let faulty = Arc::new(FaultyStorage::new());
        let node = start_in_process(&dir, settings, faulty.clone());
        assert_eq!(set(&url(&node), "before").unwrap(), "OK");
        arm(&dir, &faulty);
        trigger(&node);
        wait_for(
            &format!("the injected {name} failure"),
            PROCESS_DEADLINE,
            || (faulty.injected() > 0).then_some(()),
        );
        let why = stop_within_bound(node);
        wait_for(
            &format!("every thread to end after the {name} failure ({why})"),
            PROCESS_DEADLINE,
            || node_threads().is_empty().then_some(()),
        );
    };

    inject(
        "walwriter",
        &[],
        &|dir, f| {
            let wal = dir.join("wal");
            f.fail_writes_of(move |p| p.starts_with(&wal));
        },
        &|n| assert!(set(&url(n), "lost").is_err()),
    );
    inject(
        "checkpointer",
        &["checkpoint_timeout=1h"],
        &|dir, f| {
            let base = dir.join("base");
            f.fail_syncs_of(move |p| p.starts_with(&base));
        },
        &|n| n.node.request_checkpoint(CheckpointCause::Requested),
    );
    inject(
        "archiver",
        &["archive_mode=on", "archive_command=exit 0"],
        &|_, f| f.fail_where(&[Op::Rename], |p| p.to_string_lossy().ends_with(".ready")),
        &|n| {
            n.node.wal().unwrap().switch_segment().unwrap();
        },
    );
    inject(
        "control",
        &["checkpoint_timeout=1h"],
        &|dir, f| {
            let control =
                walrep::storage::replace_temp_path(&dir.join(walrep::store::control::CONTROL_FILE));
            f.fail_syncs_of(move |p| p == control);
        },
        &|n| {
            let _ = n.node.checkpoint(CheckpointCause::Requested);
        },
    );
    walreceiver_failure_stops_the_standby(tmp.path());
}

/// A standby whose walreceiver cannot fdatasync received WAL stops within
/// a bound, and every thread of both nodes ends.
fn walreceiver_failure_stops_the_standby(tmp: &Path) {
    let pdir = tmp.join("upstream");
    walrep::node::init::init(&pdir, support::wal::seg()).unwrap();
    let primary = start_in_process(&pdir, &[], Arc::new(walrep::storage::FaultyStorage::new()));
    let sdir = tmp.join("standby");
    let from = format!(
        "127.0.0.1:{}",
        primary.node.ports.lock().unwrap().replication
    );
    let (ok, out, err) = support::node::walrep(&[
        "basebackup",
        "--from",
        &from,
        "-D",
        sdir.to_str().unwrap(),
        "--write-standby-config",
        "--application-name",
        "s1",
    ]);
    assert!(ok, "{out}{err}");
    let faulty = Arc::new(walrep::storage::FaultyStorage::new());
    faulty.fail_sync_data_after(1);
    let standby = start_in_process(&sdir, &[], faulty.clone());
    for i in 0..100 {
        assert_eq!(set(&url(&primary), &format!("k{i}")).unwrap(), "OK");
    }
    wait_for("the injected walreceiver failure", PROCESS_DEADLINE, || {
        (faulty.injected() > 0).then_some(())
    });
    let why = stop_within_bound(standby);
    assert!(why.contains("Fatal"), "{why}");
    stop_within_bound(primary);
    wait_for(
        &format!("every thread to end after the walreceiver failure ({why})"),
        PROCESS_DEADLINE,
        || node_threads().is_empty().then_some(()),
    );
}
