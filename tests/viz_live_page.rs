//! The live page of a standby in a real headless Chromium (driven over
//! the DevTools protocol on a pipe): it names the state and the upstream,
//! and after `walrep promote` shows `Promoted` and timeline 2 without a
//! reload. Screenshots of each step are saved in the test's temporary
//! directory (and copied to `$WALREP_SCREENSHOTS` when set).
//! Also: the page without JavaScript, and every page well-formed; and a
//! chain primary -> s1 -> s2 (with pg_receivewal on the primary) whose
//! pages link to each other and whose `/cluster`, asked of s2, follows
//! the links to the whole topology.

mod support;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::cluster::*;
use support::node::{init_datadir, walrep, TestNode};
use support::process::ChildGuard;
use support::tools::tool;
use support::{free_port, http_get, wait_for};

/// Longest any browser step may take.
const STEP: Duration = Duration::from_secs(30);

/// Headless Chromium, spoken to over `--remote-debugging-pipe` (fd 3
/// carries commands in, fd 4 replies out, each message NUL-terminated).
struct Browser {
    child: Child,
    commands: File,
    replies: Receiver<Value>,
    next_id: u64,
    session: Option<String>,
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid two-int array; O_CLOEXEC keeps them out of
    // the browser except as dup2'ed below.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 just returned these open descriptors, owned by us.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Browser {
    fn launch(profile: &Path) -> Browser {
        use std::os::fd::AsRawFd;
        let (cmd_read, cmd_write) = pipe();
        let (reply_read, reply_write) = pipe();
        let (cr, rw) = (cmd_read.as_raw_fd(), reply_write.as_raw_fd());
        let mut cmd = Command::new("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1400,1800",
            "--remote-debugging-pipe",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: only async-signal-safe fcntl/dup2 between fork and exec.
        // The pipe ends are first moved above 3 and 4 (they may be 3 or 4
        // themselves), then put on 3 and 4 without close-on-exec.
        unsafe {
            cmd.pre_exec(move || {
                let high_cr = libc::fcntl(cr, libc::F_DUPFD_CLOEXEC, 10);
                let high_rw = libc::fcntl(rw, libc::F_DUPFD_CLOEXEC, 10);
                if high_cr < 0
                    || high_rw < 0
                    || libc::dup2(high_cr, 3) < 0
                    || libc::dup2(high_rw, 4) < 0
                    || libc::fcntl(3, libc::F_SETFD, 0) < 0
                    || libc::fcntl(4, libc::F_SETFD, 0) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .expect("start chromium (Debian package chromium)");
        drop((cmd_read, reply_write));
        let (tx, rx) = channel();
        let mut from = BufReader::new(File::from(reply_read));
        std::thread::spawn(move || loop {
            let mut msg = Vec::new();
            match from.read_until(0, &mut msg) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    msg.pop();
                    if let Ok(v) = serde_json::from_slice::<Value>(&msg) {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Browser {
            child,
            commands: File::from(cmd_write),
            replies: rx,
            next_id: 0,
            session: None,
        }
    }

    /// Send a command, wait (bounded) for its reply's `result`.
    fn call(&mut self, method: &str, params: Value) -> Value {
        match self.try_call(method, params) {
            Ok(v) => v,
            Err(v) => panic!("{method} failed: {v}"),
        }
    }

    /// [`Browser::call`], with chromium's error reply as `Err`.
    fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.commands.write_all(&bytes).expect("write to chromium");
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .replies
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("chromium did not answer {method} within {STEP:?}"));
            if v["id"] == json!(id) {
                if v.get("error").is_some() {
                    return Err(v);
                }
                return Ok(v["result"].clone());
            }
        }
    }

    /// Open `url` in a new tab and attach to it.
    fn open(&mut self, url: &str) {
        let target = self.call("Target.createTarget", json!({ "url": url }));
        let attached = self.call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        self.session = attached["sessionId"].as_str().map(String::from);
        assert!(self.session.is_some(), "no session: {attached}");
    }

    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        r["result"]["value"].clone()
    }

    /// Poll `expression` until it is `true`, or fail with what the page
    /// says.
    fn wait_for(&mut self, what: &str, expression: &str) {
        let deadline = Instant::now() + STEP;
        loop {
            // A page that is navigating (a link just followed) refuses the
            // evaluation: not there yet, like `false`.
            let r = self.try_call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            );
            match r {
                Ok(v) if v["result"]["value"] == json!(true) => break,
                Ok(_) => {}
                Err(e) if e.to_string().contains("navigated") => {}
                Err(e) => panic!("Runtime.evaluate failed: {e}"),
            }
            if Instant::now() > deadline {
                let text = self.eval("document.body ? document.body.innerText : ''");
                panic!("the page never showed {what}; it says:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&mut self, path: &Path) {
        use base64::Engine as _;
        let shot = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64 screenshot");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).unwrap();
        if let Some(dir) = std::env::var_os("WALREP_SCREENSHOTS") {
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::copy(path, Path::new(&dir).join(path.file_name().unwrap()));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.session = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses as XML, or fails the test with the parser's message.
fn well_formed(what: &str, text: &str) {
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    if let Err(e) = roxmltree::Document::parse_with_options(text, opts) {
        panic!("{what} is not well-formed: {e}\n{text}");
    }
}

struct Pair {
    _tmp: tempfile::TempDir,
    tmp: PathBuf,
    primary: TestNode,
    standby: TestNode,
    sdir: PathBuf,
    pport: u16,
    sport: u16,
}

fn pair() -> Pair {
    let tmp = tempfile::tempdir().unwrap();
    let pdir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", SEG_1MB]);
    let pport = free_port();
    let primary = TestNode::start(&pdir, &[&format!("status_port={pport}")]);
    let sdir = basebackup(&primary, tmp.path(), "standby1", "standby1");
    let sport = free_port();
    let standby = TestNode::start(
        &sdir,
        &[
            &format!("status_port={sport}"),
            "wal_retrieve_retry_interval=200ms",
        ],
    );
    write_keys(&primary, "k", 300, 10);
    wait_state(&standby, "Streaming");
    wait_caught_up(&primary, &standby);
    Pair {
        tmp: tmp.path().to_path_buf(),
        _tmp: tmp,
        primary,
        standby,
        sdir,
        pport,
        sport,
    }
}

#[test]
fn a_standby_page_shows_its_promotion_live_in_chromium() {
    let p = pair();
    let upstream = format!("127.0.0.1:{}", p.primary.replication_port);
    let mut browser = Browser::launch(&p.tmp.join("chromium-profile"));
    browser.open(&format!("http://127.0.0.1:{}/", p.sport));
    browser.wait_for(
        "the state Streaming",
        "document.getElementById('state') !== null && document.getElementById('state').textContent === 'Streaming'",
    );
    browser.wait_for(
        "the upstream",
        &format!("document.getElementById('upstream').textContent.indexOf('{upstream}') >= 0"),
    );
    browser.wait_for(
        "the live script running",
        "document.getElementById('conn').textContent.indexOf('live') === 0",
    );
    let shot1 = p.tmp.join("1-standby-streaming.png");
    browser.screenshot(&shot1);

    // A reload would lose this.
    browser.eval("window.walrepNotReloaded = 42; true");
    let (ok, out, err) = walrep(&["promote", p.sdir.to_str().unwrap()]);
    assert!(ok, "walrep promote: {out}{err}");
    browser.wait_for(
        "Promoted on timeline 2",
        "document.getElementById('state').textContent === 'Promoted' && document.getElementById('timeline').textContent === 'timeline 2'",
    );
    assert_eq!(
        browser.eval("window.walrepNotReloaded"),
        json!(42),
        "the page was reloaded"
    );
    browser.wait_for(
        "the promotion among the transitions",
        "document.body.innerText.indexOf('Promoting \u{2192} Promoted') >= 0",
    );
    let shot2 = p.tmp.join("2-standby-promoted.png");
    browser.screenshot(&shot2);
    for shot in [&shot1, &shot2] {
        assert!(
            std::fs::metadata(shot).unwrap().len() > 10_000,
            "{shot:?} is empty"
        );
    }
    drop(p.standby);
    drop(p.primary);
}

#[test]
fn the_page_reads_without_javascript_and_every_page_is_well_formed() {
    let p = pair();
    let (code, page) = http_get(p.sport, "/");
    assert_eq!(code, 200);
    well_formed("/", &page);
    // The server-rendered snapshot names the state, timeline and upstream.
    assert!(page.contains("id=\"state\""), "{page}");
    assert!(page.contains(">Streaming</span>"), "{page}");
    assert!(page.contains("timeline 1"), "{page}");
    let upstream = format!("127.0.0.1:{}", p.primary.replication_port);
    assert!(page.contains(&upstream), "{page}");
    // pg_stat_wal_receiver's columns all have their place.
    for column in [
        "written_lsn",
        "flushed_lsn",
        "latest_end_lsn",
        "sender_port",
        "conninfo",
    ] {
        assert!(page.contains(&format!("<th>{column}</th>")), "{column}");
    }
    assert!(!page.contains("password="), "secrets stay out of the page");
    for external in ["src=\"http", "<link", "@import"] {
        assert!(
            !page.contains(external),
            "{external}: the page must be self-contained"
        );
    }
    // The only absolute links lead to other nodes' pages.
    assert_eq!(
        page.matches("href=\"http").count(),
        page.matches("class=\"node-link").count(),
        "{page}"
    );
    let primary_link = format!(
        "<a class=\"node-link upstream-link\" href=\"http://127.0.0.1:{}/\">",
        p.pport
    );
    assert!(page.contains(&primary_link), "{page}");
    let (code, live) = http_get(p.sport, "/live");
    assert_eq!(code, 200);
    well_formed("/live", &format!("<div>{live}</div>"));
    let (code, machine) = http_get(p.sport, "/machine.svg");
    assert_eq!(code, 200);
    well_formed("/machine.svg", &machine);

    // The primary's page lists the standby with every pg_stat_replication
    // column.
    let pport = p.pport;
    let (_, primary_page) = http_get(pport, "/");
    well_formed("the primary's /", &primary_page);
    assert!(primary_page.contains(">Primary</span>"), "{primary_page}");
    let standby_link = format!(
        "<td><a class=\"node-link downstream-link\" href=\"http://127.0.0.1:{}/\">standby1</a></td>",
        p.sport
    );
    assert!(primary_page.contains(&standby_link), "{primary_page}");
    for column in [
        "application_name",
        "sent_lsn",
        "flush_lag",
        "sync_state",
        "reply_time",
    ] {
        assert!(
            primary_page.contains(&format!("<th>{column}</th>")),
            "{column}"
        );
    }
}

/// A chain primary -> s1 -> s2 with status pages, and pg_receivewal
/// streaming from the primary.
struct Chain {
    _tmp: tempfile::TempDir,
    tmp: PathBuf,
    primary: TestNode,
    s1: TestNode,
    s2: TestNode,
    ports: [u16; 3],
    _receivewal: ChildGuard,
}

/// `s2`'s walrep.toml streams from `upstream` as `app`.
fn stream_from(dir: &Path, upstream: &TestNode, app: &str) {
    let path = dir.join("walrep.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let line = format!(
        "primary_conninfo = \"host=127.0.0.1 port={} user=walrep application_name={app}\"",
        upstream.replication_port
    );
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("primary_conninfo =") {
                line.clone()
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&path, out.join("\n") + "\n").unwrap();
}

fn chain() -> Option<Chain> {
    let receivewal = tool("pg_receivewal")?;
    let tmp = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port(), free_port()];
    let status = |i: usize| format!("status_port={}", ports[i]);
    let pdir = init_datadir(tmp.path(), "primary", &["--wal-segment-size", SEG_1MB]);
    let primary = TestNode::start(&pdir, &[&status(0), "wal_keep_size=64MB"]);
    let retry = "wal_retrieve_retry_interval=200ms";
    let d1 = basebackup_with(&primary, tmp.path(), "s1", "s1", &["--no-slot"]);
    let s1 = TestNode::start(&d1, &[&status(1), retry]);
    let d2 = basebackup_with(&primary, tmp.path(), "s2", "s2", &["--no-slot"]);
    stream_from(&d2, &s1, "s2");
    let s2 = TestNode::start(&d2, &[&status(2), retry]);
    let received = tmp.path().join("received");
    std::fs::create_dir_all(&received).unwrap();
    let receivewal = ChildGuard::spawn(
        Command::new(receivewal)
            .args(["-h", "127.0.0.1", "-p"])
            .arg(primary.replication_port.to_string())
            .args(["-U", "walrep", "-w", "-n", "-s", "1", "-D"])
            .arg(&received)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    write_keys(&primary, "k", 100, 10);
    wait_state(&s2, "Streaming");
    wait_caught_up(&primary, &s1);
    wait_caught_up(&primary, &s2);
    Some(Chain {
        tmp: tmp.path().to_path_buf(),
        _tmp: tmp,
        primary,
        s1,
        s2,
        ports,
        _receivewal: receivewal,
    })
}

fn status_of(port: u16) -> Value {
    let (code, body) = http_get(port, "/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The standby entry named `app` in `status`, once it is there.
fn standby_named(port: u16, app: &str) -> Value {
    wait_for(
        &format!("{app} among the walsenders of :{port}"),
        STEP,
        || {
            status_of(port)["standbys"]
                .as_array()?
                .iter()
                .find(|w| w["application_name"] == json!(app))
                .cloned()
        },
    )
}

#[test]
fn the_pages_link_nodes_and_the_cluster_view_follows_them() {
    let Some(c) = chain() else { return };
    let url = |i: usize| format!("http://127.0.0.1:{}/", c.ports[i]);
    // /status names each neighbour's page; pg_receivewal advertises none.
    assert_eq!(
        status_of(c.ports[2])["upstream"]["status_url"],
        json!(url(1))
    );
    assert_eq!(
        status_of(c.ports[1])["upstream"]["status_url"],
        json!(url(0))
    );
    assert_eq!(standby_named(c.ports[1], "s2")["status_url"], json!(url(2)));
    assert_eq!(standby_named(c.ports[0], "s1")["status_url"], json!(url(1)));
    assert_eq!(
        standby_named(c.ports[0], "pg_receivewal")["status_url"],
        Value::Null
    );

    // The pages link them with JavaScript off.
    let (_, s2_page) = http_get(c.ports[2], "/");
    well_formed("s2's /", &s2_page);
    let up = format!("<a class=\"node-link upstream-link\" href=\"{}\">", url(1));
    assert!(s2_page.contains(&up), "{s2_page}");
    let (_, p_page) = http_get(c.ports[0], "/");
    well_formed("the primary's /", &p_page);
    let down = format!(
        "<a class=\"node-link downstream-link\" href=\"{}\">s1</a>",
        url(1)
    );
    assert!(p_page.contains(&down), "{p_page}");
    assert!(p_page.contains("<td>pg_receivewal</td>"), "{p_page}");

    // /cluster asked of the end of the chain draws all of it.
    let (code, cluster) = http_get(c.ports[2], "/cluster");
    assert_eq!(code, 200);
    well_formed("/cluster", &cluster);
    for node in ["primary", "s1", "s2", "pg_receivewal (client)"] {
        assert!(
            cluster.contains(&format!("data-node=\"{node}\"")),
            "{node} missing from /cluster:\n{cluster}"
        );
    }
    assert!(!cluster.contains("unreachable"), "{cluster}");
    for i in [0, 1] {
        assert!(
            cluster.contains(&format!("href=\"{}\"", url(i))),
            "{cluster}"
        );
    }
    assert_eq!(cluster.matches("class=\"edge\"").count(), 3, "{cluster}");

    // In a browser: follow s2's upstream link to s1's page, then its
    // upstream link to the primary's, and look at the cluster.
    let mut browser = Browser::launch(&c.tmp.join("chromium-profile"));
    browser.open(&url(2));
    browser.wait_for("s2's page", "document.title === 'walrep s2'");
    browser.eval("document.querySelector('a.upstream-link').click(); true");
    browser.wait_for("s1's page", "document.title === 'walrep s1'");
    browser.wait_for(
        "s1's downstream s2 linked",
        &format!("document.querySelector('a.downstream-link') !== null && document.querySelector('a.downstream-link').href === '{}'", url(2)),
    );
    let shot1 = c.tmp.join("3-s1-reached-from-s2.png");
    browser.screenshot(&shot1);
    browser.eval("document.querySelector('a.upstream-link').click(); true");
    browser.wait_for("the primary's page", "document.title === 'walrep primary'");
    browser.open(&format!("{}cluster", url(2)));
    browser.wait_for(
        "the cluster drawn",
        "document.querySelectorAll('g.member').length === 4",
    );
    let shot2 = c.tmp.join("4-cluster-from-s2.png");
    browser.screenshot(&shot2);
    for shot in [&shot1, &shot2] {
        assert!(
            std::fs::metadata(shot).unwrap().len() > 10_000,
            "{shot:?} is empty"
        );
    }
    drop(c.s2);
    drop(c.s1);
    drop(c.primary);
}
