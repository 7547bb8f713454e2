//! The three-member etcd of `walrep demo --ha`: finding the `etcd` binary
//! (with a clear word on how to install it when it is missing), starting
//! the members on free loopback ports, waiting until each one is healthy,
//! and stopping them; every member is killed and reaped when the cluster is
//! dropped, so no error path leaves one running.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::process::{check_interrupted, die_with_parent, tail};

/// How long the members may take to elect a leader and report healthy.
const HEALTHY_DEADLINE: Duration = Duration::from_secs(30);
/// How long a member may take to exit after SIGTERM before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// Where Debian's etcd-server puts the binary (not always on a user's PATH).
const DEBIAN_ETCD: &str = "/usr/bin/etcd";

/// The `etcd` binary: `explicit` if given, else `etcd` on PATH, else
/// /usr/bin/etcd; missing, an error that says what to install.
pub(super) fn find_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let install = "install it with `apt-get install etcd-server` (Debian, Ubuntu), \
        or take a release from https://github.com/etcd-io/etcd/releases, \
        or give its path with --etcd PATH";
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        bail!(
            "walrep demo --ha needs etcd, and {} is not a file: {install}",
            path.display()
        );
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .chain([PathBuf::from(DEBIAN_ETCD)])
        .find(|p| p.is_file())
        .with_context(|| {
            format!("walrep demo --ha needs etcd (3.4 or later), found neither on PATH nor at {DEBIAN_ETCD}: {install}")
        })
}

/// A member could not bind a port reserved for it: a process that does
/// not take part in the reservation (`walrep::ports`) bound it
/// explicitly. Starting again on other ports is the remedy.
#[derive(Debug)]
pub(super) struct PortTaken {
    member: String,
}

impl std::fmt::Display for PortTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "etcd member {} found a port chosen for it taken by another process",
            self.member
        )
    }
}

impl std::error::Error for PortTaken {}

/// Whether an etcd log says it could not bind a listener's port.
fn says_port_taken(log: &str) -> bool {
    log.contains("bind: address already in use")
}

/// One member: its ports, files and process.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    log: PathBuf,
    child: Option<Child>,
}

/// A running etcd cluster on loopback.
pub(super) struct EtcdCluster {
    members: Vec<Member>,
}

impl EtcdCluster {
    /// Start `n` members with their data and logs under `dir`, and wait
    /// until every one is healthy (it has a leader and can commit).
    pub(super) fn start(binary: &Path, dir: &Path, n: usize) -> anyhow::Result<EtcdCluster> {
        fs::create_dir_all(dir)?;
        let mut cluster = EtcdCluster {
            members: Vec::new(),
        };
        // Reserved for this process below the ephemeral range: no
        // connection's source port and no other chooser takes them.
        let port = || -> anyhow::Result<u16> { Ok(walrep::ports::reserve()?) };
        for k in 1..=n {
            cluster.members.push(Member {
                name: format!("e{k}"),
                client_port: port()?,
                peer_port: port()?,
                log: dir.join(format!("e{k}.log")),
                child: None,
            });
        }
        let initial = cluster
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("walrep-demo-{}", std::process::id());
        for m in &cluster.members {
            // A data directory left by an attempt on other ports would
            // name other peers.
            let data = dir.join(format!("{}.etcd", m.name));
            if data.exists() {
                fs::remove_dir_all(&data)
                    .with_context(|| format!("removing {}", data.display()))?;
            }
        }
        for m in &mut cluster.members {
            m.child = Some(launch(binary, dir, m, &initial, &token)?);
        }
        let deadline = Instant::now() + HEALTHY_DEADLINE;
        for i in 0..n {
            cluster.wait_healthy(i, deadline)?;
        }
        Ok(cluster)
    }

    /// The client URLs, comma-separated (`ha_endpoints`).
    pub(super) fn endpoint_list(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The members' process ids (for the narration).
    pub(super) fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|m| m.child.as_ref().map(Child::id))
            .collect()
    }

    fn wait_healthy(&mut self, i: usize, deadline: Instant) -> anyhow::Result<()> {
        loop {
            check_interrupted()?;
            let m = &mut self.members[i];
            if let Some(status) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                if says_port_taken(&fs::read_to_string(&m.log).unwrap_or_default()) {
                    return Err(PortTaken {
                        member: m.name.clone(),
                    }
                    .into());
                }
                bail!(
                    "etcd member {} exited with {status} during start-up; its log ({}):\n{}",
                    m.name,
                    m.log.display(),
                    tail(&m.log, 15)
                );
            }
            if healthy(m.client_port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd member {} was not healthy within {HEALTHY_DEADLINE:?}; see {}",
                    m.name,
                    m.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM every member and wait (bounded) for it to exit.
    pub(super) fn stop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                // SAFETY: signalling our own child, not reaped yet.
                unsafe {
                    libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
                }
                let end = Instant::now() + STOP_DEADLINE;
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Start one member (the flags a three-member cluster on loopback needs).
fn launch(
    binary: &Path,
    dir: &Path,
    m: &Member,
    initial_cluster: &str,
    token: &str,
) -> anyhow::Result<Child> {
    // Truncated: a start again on other ports reads only its own log.
    let log = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&m.log)
        .with_context(|| format!("creating {}", m.log.display()))?;
    let client = format!("http://127.0.0.1:{}", m.client_port);
    let peer = format!("http://127.0.0.1:{}", m.peer_port);
    let mut cmd = Command::new(binary);
    cmd.arg("--name")
        .arg(&m.name)
        .arg("--data-dir")
        .arg(dir.join(format!("{}.etcd", m.name)))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster={initial_cluster}"))
        .arg("--initial-cluster-state=new")
        .arg(format!("--initial-cluster-token={token}"))
        // An isolated member does not run up the raft term.
        .arg("--pre-vote")
        .arg("--logger=zap")
        .arg("--log-outputs=stderr")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if cfg!(target_arch = "aarch64") {
        cmd.env("ETCD_UNSUPPORTED_ARCH", "arm64");
    }
    die_with_parent(&mut cmd);
    cmd.spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

/// Whether the member on `port` answers /health with "true" (bounded: 2 s).
fn healthy(port: u16) -> bool {
    let timeout = Duration::from_secs(2);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut text = String::new();
    // The reply is a few hundred bytes; cap it all the same.
    let _ = s.take(64 << 10).read_to_string(&mut text);
    text.starts_with("HTTP/1.") && text.contains(r#""health":"true""#)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_taken_is_told_from_other_start_up_failures() {
        let taken = r#"{"level":"fatal","msg":"discovery failed","error":"listen tcp 127.0.0.1:38191: bind: address already in use"}"#;
        assert!(says_port_taken(taken));
        let other =
            r#"{"level":"fatal","msg":"discovery failed","error":"member count is unequal"}"#;
        assert!(!says_port_taken(other));
        assert!(!says_port_taken(""));
    }
}
