//! WAL sent to walrep standbys while the primary flushes it: a write is
//! acknowledged (and readable) only once it is durable on both sides; a
//! standby neither exposes nor reports as applied WAL past the flush
//! position the primary told it; clients that are not walrep standbys, and
//! walrep standbys no commit waits for, get only flushed WAL; and a primary killed and restarted with less WAL than
//! a standby held leaves that standby serving nothing the primary lacks.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::cluster::{basebackup_from_port, wait_state, SEG_1MB};
use support::node::{init_datadir, InProcessNode, TestNode};
use support::url::{conn, get, info_field, slave_field};
use support::wait_for;
use support::wal::seg;
use walrep::replication::client::{ConnInfo, ReplicationClient, StreamEvent};
use walrep::replication::registry::WalSenderStatus;
use walrep::storage::{FaultyStorage, Storage};
use walrep::store::{Reader, Value};
use walrep::{Lsn, TimelineId};

const DEADLINE: Duration = Duration::from_secs(30);
/// What a standby logs when its stream ends holding unconfirmed WAL.
const HELD: &str = "was not confirmed flushed by the primary";
/// What it logs when a restarted primary has less than it held.
const TRUNCATED: &str = "truncating the WAL received past it";

fn lsn(s: &str) -> Lsn {
    s.parse().unwrap_or_else(|_| panic!("not an LSN: {s}"))
}

/// An in-process primary whose fdatasyncs the test can hold, and a real
/// walrep standby `s1` streaming from it.
struct HeldPrimary {
    io: Arc<FaultyStorage>,
    primary: InProcessNode,
    standby: TestNode,
    _tmp: tempfile::TempDir,
}

fn held_primary(settings: &[&str]) -> HeldPrimary {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("primary");
    walrep::node::init::init(&dir, seg()).unwrap();
    let io = Arc::new(FaultyStorage::new());
    let storage: Arc<dyn Storage> = io.clone();
    let primary = InProcessNode::start_existing(&dir, settings, Some(storage));
    let sdir = basebackup_from_port(primary.replication_port(), tmp.path(), "s1", "s1", &[]);
    let standby = TestNode::start(&sdir, &["wal_retrieve_retry_interval=200ms"]);
    wait_state(&standby, "Streaming");
    HeldPrimary {
        io,
        primary,
        standby,
        _tmp: tmp,
    }
}

impl HeldPrimary {
    fn url(&self) -> String {
        self.primary.redis_url()
    }

    fn flushed(&self) -> Lsn {
        self.primary.node().wal().unwrap().flushed()
    }

    // While the primary's fdatasync is held, its one Redis worker may be
    // inside it (it leads a lone client's flush itself, as for `local`),
    // so the primary is watched in-process then, not through its Redis
    // port.

    /// What standby `s1` last reported, as the primary's registry holds it.
    fn reported(&self, pick: fn(&WalSenderStatus) -> Lsn) -> Option<Lsn> {
        let registry = self.primary.node().registry()?;
        registry
            .snapshot()
            .iter()
            .find(|w| w.application_name == "s1")
            .map(pick)
    }

    /// `key` as a GET on the primary would read it now.
    fn readable_on_primary(&self, key: &str) -> Option<String> {
        let mut view = self.primary.node().kv_store().read_view(u64::MAX / 2);
        view.slot(key.as_bytes()).map(|slot| match slot.value {
            Value::Str(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            other => panic!("{key} holds {other:?}, not a string"),
        })
    }

    /// SET on its own connection, in the background.
    fn set_in_background(&self, key: &str, value: &str) -> JoinHandle<redis::RedisResult<String>> {
        let mut c = conn(&self.url());
        let (k, v) = (key.to_string(), value.to_string());
        std::thread::spawn(move || redis::cmd("SET").arg(k).arg(v).query::<String>(&mut c))
    }

    /// SET `before` (nothing held) and wait until the standby serves it.
    fn write_before(&self) {
        let _: () = redis::cmd("SET")
            .arg("before")
            .arg("1")
            .query(&mut conn(&self.url()))
            .unwrap();
        wait_for("the first write on the standby", DEADLINE, || {
            get(&self.standby.url(), "before")
        });
    }

    /// Hold the primary's fdatasyncs, SET `key` in the background and wait
    /// until the standby reports it flushed WAL the primary has not.
    fn write_while_held(&self, key: &str) -> (JoinHandle<redis::RedisResult<String>>, Lsn) {
        self.io.hold_syncs(true);
        let before = self.flushed();
        let set = self.set_in_background(key, "v");
        let ahead = wait_for(
            "the standby to flush WAL the primary has not flushed yet",
            DEADLINE,
            || {
                let f = self.reported(|w| w.flush_lsn)?;
                (f > self.flushed()).then_some(f)
            },
        );
        assert_eq!(self.flushed(), before, "the primary flushed while held");
        (set, ahead)
    }
}

#[test]
fn wal_reaches_the_standby_during_the_primarys_flush_and_is_acknowledged_and_exposed_only_after_both(
) {
    let c = held_primary(&["synchronous_standby_names=s1"]);
    c.write_before();
    let (set, standby_flush) = c.write_while_held("during");
    let primary_flush = c.flushed();
    // Durable on the standby only: not acknowledged, readable nowhere.
    assert!(
        !set.is_finished(),
        "acknowledged before the primary's flush"
    );
    assert_eq!(
        c.readable_on_primary("during"),
        None,
        "readable on the primary"
    );
    assert_eq!(
        get(&c.standby.url(), "during"),
        None,
        "exposed on the standby"
    );
    let replay = lsn(&c.standby.info_field("replication", "replay_lsn").unwrap());
    assert!(
        replay <= primary_flush,
        "standby replayed {replay} past the primary's flush {primary_flush}"
    );
    let reported_apply = c.reported(|w| w.apply_lsn).unwrap();
    assert!(
        reported_apply <= primary_flush && reported_apply <= standby_flush,
        "standby reported apply {reported_apply}: primary flush {primary_flush}, its flush {standby_flush}"
    );
    c.io.hold_syncs(false);
    assert_eq!(set.join().unwrap().unwrap(), "OK");
    assert_eq!(get(&c.url(), "during").as_deref(), Some("v"));
    wait_for("the write on the standby", DEADLINE, || {
        get(&c.standby.url(), "during")
    });
}

#[test]
fn remote_apply_and_remote_write_wait_for_the_primarys_own_flush_too() {
    for level in ["remote_write", "remote_apply"] {
        let c = held_primary(&[
            "synchronous_standby_names=s1",
            &format!("synchronous_commit={level}"),
        ]);
        let (set, _) = c.write_while_held("k");
        // The standby holds it; only the primary's flush is missing.
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !set.is_finished(),
            "{level}: acknowledged before the primary's flush"
        );
        assert_eq!(
            get(&c.standby.url(), "k"),
            None,
            "{level}: exposed on the standby"
        );
        c.io.hold_syncs(false);
        assert_eq!(set.join().unwrap().unwrap(), "OK", "{level}");
        if level == "remote_apply" {
            assert_eq!(get(&c.standby.url(), "k").as_deref(), Some("v"));
        }
    }
}

#[test]
fn a_client_that_is_not_a_walrep_standby_gets_only_flushed_wal() {
    let c = held_primary(&["synchronous_standby_names=s1"]);
    let port = c.primary.replication_port();
    let info = ConnInfo::parse(&format!("host=127.0.0.1 port={port} user=postgres")).unwrap();
    let mut client = ReplicationClient::connect(&info, Duration::from_secs(5)).unwrap();
    let start = c.flushed();
    client
        .start_replication(None, start.segment_start(seg()), Some(TimelineId(1)))
        .unwrap();
    // Drain what is flushed already.
    let mut received = start.segment_start(seg());
    let mut take = |client: &mut ReplicationClient, bound: Duration| {
        let end = Instant::now() + bound;
        while Instant::now() < end {
            match client.recv(Duration::from_millis(100)) {
                Ok(StreamEvent::XLogData { start, data, .. }) => {
                    received = Lsn(start.0 + data.len() as u64)
                }
                Ok(_) => {}
                Err(e) => panic!("stream failed: {e}"),
            }
        }
        received
    };
    take(&mut client, Duration::from_millis(500));
    let (set, standby_flush) = c.write_while_held("k");
    let primary_flush = c.flushed();
    let got = take(&mut client, Duration::from_millis(500));
    assert!(
        got <= primary_flush,
        "a plain replication client got WAL up to {got}, past the primary's flush {primary_flush}"
    );
    assert!(
        standby_flush > primary_flush,
        "the walrep standby got it early"
    );
    c.io.hold_syncs(false);
    assert_eq!(set.join().unwrap().unwrap(), "OK");
    let flushed = c.flushed();
    let got = take(&mut client, Duration::from_millis(1000));
    assert!(
        got >= flushed,
        "the flushed WAL reached the client ({got} < {flushed})"
    );
}

#[test]
fn a_walrep_standby_no_commit_waits_for_gets_only_flushed_wal() {
    // No synchronous standby named: the standby is asynchronous, and
    // sending it WAL before the flush would only cost wake-ups.
    let c = held_primary(&[]);
    c.write_before();
    c.io.hold_syncs(true);
    let before = c.flushed();
    let set = c.set_in_background("k", "v");
    wait_for("the write to be waiting for its flush", DEADLINE, || {
        (c.primary.node().wal().unwrap().inserted() > before).then_some(())
    });
    // Watched for a while (the primary's one worker is inside the held
    // fdatasync, so through its registry, not its Redis port), what the
    // walsender sent never passes the primary's flush position.
    let registry = c.primary.node().registry().unwrap();
    let end = Instant::now() + Duration::from_millis(500);
    while Instant::now() < end {
        for w in registry.snapshot() {
            assert!(
                w.sent_lsn <= c.flushed(),
                "an asynchronous standby was sent WAL up to {}, past the primary's flush {}",
                w.sent_lsn,
                c.flushed()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(c.flushed(), before, "the primary flushed while held");
    c.io.hold_syncs(false);
    assert_eq!(set.join().unwrap().unwrap(), "OK");
    let flushed = c.flushed();
    wait_for("the flushed WAL on the standby", DEADLINE, || {
        (slave_field(&c.url(), "write_lsn")? >= flushed).then_some(())
    });
    wait_for("the write on the standby", DEADLINE, || {
        get(&c.standby.url(), "k")
    });
}

/// An asynchronous walrep standby is sent only flushed WAL, so the WAL
/// writer's spacing between flushes is the longest a write waits before
/// it can be read there: while one streams the WAL writer keeps its
/// streaming spacing, also when no commit waits for it (its walsender does
/// not follow the written position); once it is gone, or with only a
/// plain replication client (pg_receivewal), the spacing is the idle one.
#[test]
fn the_wal_writer_flushes_at_the_streaming_spacing_while_an_async_walrep_standby_streams() {
    use walrep::wal::writer::{MIN_FLUSH_SPACING, STREAMING_FLUSH_SPACING};
    let mut c = held_primary(&[]);
    c.write_before();
    let wal = c.primary.node().wal().unwrap();
    assert_eq!(wal.flush_spacing(), STREAMING_FLUSH_SPACING);
    c.standby.stop();
    wait_for("the walsender to end with its standby", DEADLINE, || {
        (wal.flush_spacing() == MIN_FLUSH_SPACING).then_some(())
    });
    // A client that is not a walrep standby, streaming: the idle spacing.
    let port = c.primary.replication_port();
    let info = ConnInfo::parse(&format!("host=127.0.0.1 port={port} user=postgres")).unwrap();
    let mut client = ReplicationClient::connect(&info, Duration::from_secs(5)).unwrap();
    let start = c.flushed().segment_start(seg());
    client
        .start_replication(None, start, Some(TimelineId(1)))
        .unwrap();
    // Its first message is sent after its walsender subscribed.
    wait_for("the first message of the stream", DEADLINE, || match client
        .recv(Duration::from_millis(100))
    {
        Ok(StreamEvent::XLogData { .. } | StreamEvent::Keepalive { .. }) => Some(()),
        Ok(_) => None,
        Err(e) => panic!("stream failed: {e}"),
    });
    assert_eq!(wal.flush_spacing(), MIN_FLUSH_SPACING);
}

/// Writers with unique keys at `remote_apply` (acknowledged writes are
/// therefore within what the standby was told flushed); every
/// acknowledged key is recorded.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

fn start_load(url: &str, round: usize, writers: usize) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let threads = (0..writers)
        .map(|_| {
            let (stop, acked, next, url) =
                (stop.clone(), acked.clone(), next.clone(), url.to_string());
            std::thread::spawn(move || {
                let Ok(client) = redis::Client::open(url) else {
                    return;
                };
                let Ok(mut c) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
                    return;
                };
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let pad = "p".repeat(2000);
                while !stop.load(Ordering::Acquire) {
                    let i = next.fetch_add(1, Ordering::AcqRel);
                    let key = format!("r{round}:{i}");
                    let r: redis::RedisResult<String> = redis::cmd("SET")
                        .arg(&key)
                        .arg(format!("{key}:{pad}"))
                        .query(&mut c);
                    match r {
                        Ok(_) => acked.lock().unwrap().push(key),
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    Load {
        stop,
        acked,
        threads,
    }
}

impl Load {
    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Release);
        for t in self.threads {
            let _ = t.join();
        }
        Arc::try_unwrap(self.acked).unwrap().into_inner().unwrap()
    }
}

/// Zero the primary's WAL from `cut` on (as a power loss that dropped
/// what the standby was never told flushed) and remove later segments.
fn cut_wal(datadir: &Path, cut: Lsn) {
    let wal = datadir.join("wal");
    let segno = cut.segno(seg());
    for entry in fs::read_dir(&wal).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        if name.len() != 24 || !name.starts_with("00000001") {
            continue;
        }
        let Ok(n) = u64::from_str_radix(&name[16..], 16) else {
            continue;
        };
        let this = n + (u64::from_str_radix(&name[8..16], 16).unwrap() << 32) / (1 << 20);
        let path = wal.join(&name);
        if this > segno.0 {
            fs::remove_file(&path).unwrap();
        } else if this == segno.0 {
            let mut bytes = fs::read(&path).unwrap();
            let off = cut.segment_offset(seg()) as usize;
            bytes[off..].iter_mut().for_each(|b| *b = 0);
            fs::write(&path, bytes).unwrap();
        }
    }
}

/// Read every key of the round from the standby, and record what it served.
fn start_reader(
    url: &str,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeMap<String, String>>>,
    round: usize,
) -> JoinHandle<()> {
    let url = url.to_string();
    std::thread::spawn(move || {
        let mut i = 0usize;
        while !stop.load(Ordering::Acquire) {
            let Ok(client) = redis::Client::open(url.as_str()) else {
                return;
            };
            let Ok(mut c) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            while !stop.load(Ordering::Acquire) {
                let keys: Vec<String> = (i..i + 200).map(|k| format!("r{round}:{k}")).collect();
                let Ok(values) = redis::cmd("MGET")
                    .arg(&keys)
                    .query::<Vec<Option<String>>>(&mut c)
                else {
                    break;
                };
                let mut s = seen.lock().unwrap();
                let mut found = 0;
                for (k, v) in keys.into_iter().zip(values) {
                    if let Some(v) = v {
                        found += 1;
                        s.insert(k, v);
                    }
                }
                i = if found == 200 {
                    i + 200
                } else {
                    i.saturating_sub(200)
                };
            }
        }
    })
}

#[test]
fn a_primary_killed_and_restarted_with_less_wal_leaves_the_standby_serving_nothing_it_lacks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", SEG_1MB]);
    let settings = [
        "synchronous_standby_names=s1",
        "synchronous_commit=remote_apply",
        "checkpoint_timeout=3600s",
    ];
    let mut primary = TestNode::start(&dir, &settings);
    let sdir = basebackup_from_port(primary.replication_port, tmp.path(), "s1", "s1", &[]);
    let standby = TestNode::start(&sdir, &["wal_retrieve_retry_interval=100ms"]);
    wait_state(&standby, "Streaming");
    let mut held_rounds = 0;
    let mut acked_all = Vec::new();
    // At least 4 rounds; more (up to 12) until one caught the standby
    // holding WAL the primary had not flushed, which a busy machine can
    // make rarer.
    for round in 0..12 {
        if round >= 4 && held_rounds > 0 {
            break;
        }
        let stop_reader = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let reader = start_reader(&standby.url(), stop_reader.clone(), seen.clone(), round);
        let load = start_load(&primary.url(), round, 8);
        wait_for("writes acknowledged", DEADLINE, || {
            (load.acked.lock().unwrap().len() > 300).then_some(())
        });
        let count = |what: &str| standby.log_text().matches(what).count();
        let held_before = count(HELD);
        let ended_before = count("walreceiver ended");
        primary.kill9();
        let acked = load.finish();
        wait_for("the standby to notice the lost primary", DEADLINE, || {
            (count("walreceiver ended") > ended_before).then_some(())
        });
        if count(HELD) > held_before {
            held_rounds += 1;
        }
        // What the standby may expose; acknowledged writes are within it.
        let exposed = lsn(&standby.info_field("replication", "receive_lsn").unwrap());
        cut_wal(&dir, exposed);
        primary.restart();
        wait_for(
            "the standby to stream from the restarted primary",
            DEADLINE,
            || {
                (standby
                    .info_field("replication", "recovery_state")
                    .as_deref()
                    == Some("Streaming")
                    && standby
                        .info_field("replication", "master_link_status")
                        .as_deref()
                        == Some("up"))
                .then_some(())
            },
        );
        // New writes reach it: it follows the restarted primary.
        let _: () = redis::cmd("SET")
            .arg(format!("after{round}"))
            .arg("x")
            .query(&mut primary.client())
            .unwrap();
        wait_for("the standby to follow", DEADLINE, || {
            standby.try_client().and_then(|mut c| {
                redis::cmd("GET")
                    .arg(format!("after{round}"))
                    .query::<Option<String>>(&mut c)
                    .ok()
                    .flatten()
            })
        });
        stop_reader.store(true, Ordering::Release);
        reader.join().unwrap();
        let mut p = primary.client();
        for (k, v) in seen.lock().unwrap().iter() {
            let there: Option<String> = redis::cmd("GET").arg(k).query(&mut p).unwrap();
            assert_eq!(
                there.as_ref(),
                Some(v),
                "round {round}: the standby served {k} that the restarted primary does not have"
            );
        }
        acked_all.extend(acked);
    }
    support::cluster::wait_caught_up(&primary, &standby);
    let mut p = primary.client();
    let mut s = standby.client();
    for k in &acked_all {
        let on_p: Option<String> = redis::cmd("GET").arg(k).query(&mut p).unwrap();
        let on_s: Option<String> = redis::cmd("GET").arg(k).query(&mut s).unwrap();
        assert!(
            on_p.is_some() && on_s.is_some(),
            "acknowledged {k} lost: primary {on_p:?}, standby {on_s:?}"
        );
    }
    let truncated = standby.log_text().matches(TRUNCATED).count();
    assert!(
        held_rounds > 0,
        "no round left the standby with WAL the primary had not confirmed ({truncated} truncations); the test proved nothing:\n{}",
        standby.log_text()
    );
}

/// The hold on WAL past the primary's flush position survives a crash of
/// the standby: restarted (SIGKILL) while holding such a tail, it does not
/// replay it from its own `wal/` at start-up, but waits for a stream to
/// confirm it — here once the primary's flush completes.
#[test]
fn a_standby_restarted_while_holding_wal_its_primary_has_not_flushed_does_not_replay_it() {
    let mut c = held_primary(&["synchronous_standby_names=s1"]);
    c.write_before();
    let (set, _) = c.write_while_held("during");
    c.standby.kill9();
    c.standby.restart();
    wait_for("the restarted standby to serve reads", DEADLINE, || {
        c.standby.try_client().and_then(|mut k| {
            redis::cmd("GET")
                .arg("before")
                .query::<Option<String>>(&mut k)
                .ok()
                .flatten()
        })
    });
    wait_state(&c.standby, "Streaming");
    assert!(
        c.standby
            .log_text()
            .contains("was received before the upstream confirmed it flushed"),
        "the restarted standby did not hold the tail:\n{}",
        c.standby.log_text()
    );
    assert_eq!(
        get(&c.standby.url(), "during"),
        None,
        "the restarted standby replayed WAL its primary has not flushed"
    );
    assert!(
        !set.is_finished(),
        "acknowledged before the primary's flush"
    );
    c.io.hold_syncs(false);
    assert_eq!(set.join().unwrap().unwrap(), "OK");
    wait_for(
        "the write on the standby once the primary flushed it",
        DEADLINE,
        || get(&c.standby.url(), "during"),
    );
}

/// A primary and an in-process standby of it on [`FaultyStorage`], sent
/// only flushed WAL (so each message says the primary flushed it: a test
/// that holds the standby's fsync needs no keepalive after it started,
/// since the held fsync blocks the walreceiver's reads), with one write
/// already replayed there.
struct FaultyStandby {
    primary: InProcessNode,
    url: String,
    sdir: std::path::PathBuf,
    io: Arc<FaultyStorage>,
    standby: InProcessNode,
    surl: String,
}

fn faulty_standby(parent: &Path) -> FaultyStandby {
    let primary = InProcessNode::start(&parent.join("primary"), &[]);
    let url = primary.redis_url();
    let sdir = basebackup_from_port(primary.replication_port(), parent, "s1", "s1", &[]);
    let io = Arc::new(FaultyStorage::new());
    let storage: Arc<dyn Storage> = io.clone();
    let standby = InProcessNode::start_existing(
        &sdir,
        &[
            "wal_receiver_unflushed=off",
            "wal_retrieve_retry_interval=200ms",
        ],
        Some(storage),
    );
    let surl = standby.redis_url();
    let _: () = redis::cmd("SET")
        .arg("before")
        .arg("1")
        .query(&mut conn(&url))
        .unwrap();
    // Until it is consistent the standby answers LOADING: wait through it.
    wait_for("the first write on the standby", DEADLINE, || {
        redis::cmd("GET")
            .arg("before")
            .query::<Option<String>>(&mut conn(&surl))
            .ok()
            .flatten()
    });
    FaultyStandby {
        primary,
        url,
        sdir,
        io,
        standby,
        surl,
    }
}

/// The other half of the rule: visibility waits for the *primary's* flush
/// position, not for the standby's own fsync. With every fsync of an
/// in-process standby held, a write the primary flushed becomes readable
/// there (the primary has it durably; a standby that crashed before its
/// own fsync would stream it again), while the standby reports neither
/// flushed nor applied WAL it has not fsynced itself.
#[test]
fn a_standby_exposes_what_the_primary_flushed_before_its_own_fsync_but_reports_apply_only_up_to_it()
{
    let tmp = tempfile::tempdir().unwrap();
    let FaultyStandby {
        primary,
        url,
        sdir: _,
        io,
        standby: _standby,
        surl,
    } = faulty_standby(tmp.path());
    let reported_before = slave_field(&url, "flush_lsn").unwrap();
    io.hold_syncs(true);
    let _: () = redis::cmd("SET")
        .arg("during")
        .arg("v")
        .query(&mut conn(&url))
        .unwrap();
    let primary_flush = primary.node().wal().unwrap().flushed();
    // Readable on the standby although none of its fsyncs completed.
    wait_for(
        "the write on the standby before its own fsync",
        DEADLINE,
        || get(&surl, "during"),
    );
    let replay = lsn(&info_field(&surl, "replication", "replay_lsn").unwrap());
    assert!(
        replay > reported_before && replay <= primary_flush,
        "standby replayed to {replay}: its last reported flush {reported_before}, the primary's flush {primary_flush}"
    );
    // What it reports stays behind its own (held) fsync.
    let reported_flush = slave_field(&url, "flush_lsn").unwrap();
    let reported_apply = slave_field(&url, "replay_lsn").unwrap();
    assert!(
        reported_flush < replay && reported_apply <= reported_flush,
        "standby reported flush {reported_flush} and apply {reported_apply} with its fsync held (replayed to {replay})"
    );
    io.hold_syncs(false);
    wait_for("the standby to report its apply position", DEADLINE, || {
        slave_field(&url, "replay_lsn").filter(|a| *a >= replay)
    });
}

/// WAL before data on a standby that applies before its own fsync: a
/// restartpoint taken while the walreceiver's fsync of WAL redo already
/// applied is held does not point the control file at its snapshot (whose
/// minimum recovery point a power cut would leave beyond this node's WAL)
/// until that fsync is done; then it completes with its minimum recovery
/// point inside the standby's durable WAL.
#[test]
fn a_restartpoint_waits_for_the_fsync_of_wal_redo_applied_early() {
    let tmp = tempfile::tempdir().unwrap();
    let FaultyStandby {
        primary: _primary,
        url,
        sdir,
        io,
        standby,
        surl,
    } = faulty_standby(tmp.path());
    let node = standby.node().clone();
    let before = node.control();
    // Only the WAL segments' fsyncs wait: the snapshot and the control
    // file sync freely.
    io.hold_syncs_of(|p| p.parent().and_then(Path::file_name) == Some("wal".as_ref()));
    let _: () = redis::cmd("SET")
        .arg("during")
        .arg("v")
        .query(&mut conn(&url))
        .unwrap();
    wait_for(
        "the write applied before the standby's fsync",
        DEADLINE,
        || get(&surl, "during"),
    );
    let durable = node.standby.as_ref().unwrap().received.flushed_point().lsn;
    let rp = {
        let node = node.clone();
        std::thread::spawn(move || {
            node.restartpoint(walrep::node::checkpoint::CheckpointCause::Requested)
        })
    };
    let snapshot = sdir
        .join("base")
        .join(format!("{:016X}", before.checkpoint_id + 1));
    wait_for("the restartpoint's snapshot", DEADLINE, || {
        snapshot.exists().then_some(())
    });
    let during = node.control();
    assert!(
        during.checkpoint_id == before.checkpoint_id && during.min_recovery_point <= durable,
        "with the WAL fsync held the control file moved to checkpoint {} (min recovery point {}, WAL durable to {durable})",
        during.checkpoint_id,
        during.min_recovery_point
    );
    io.hold_syncs(false);
    let done = rp.join().unwrap().expect("restartpoint");
    assert!(done.is_some(), "the restartpoint found nothing replayed");
    let after = node.control();
    let flushed = node.standby.as_ref().unwrap().received.flushed_point().lsn;
    assert!(
        after.checkpoint_id == before.checkpoint_id + 1 && after.min_recovery_point <= flushed,
        "after the fsync: checkpoint {}, min recovery point {}, WAL durable to {flushed}",
        after.checkpoint_id,
        after.min_recovery_point
    );
}
