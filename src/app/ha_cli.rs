//! `walrep ha`: the operator's view and requests of an HA cluster, as
//! patronictl, talking to etcd directly (no node needs to answer): list the
//! members, request a switchover or a forced failover, pause and resume
//! automatic failover. Every write is a compare-and-swap.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use walrep::ha::dcs::{cluster_prefix, Dcs};
use walrep::ha::etcd::{EtcdClient, EtcdConfig, EtcdDcs};
use walrep_states::ha::{
    ClusterConfigRecord, ClusterView, FailoverKind, FailoverRecord, MemberRecord,
};

/// `walrep ha`: where the cluster's keys are, and what to do.
#[derive(Debug, Args)]
pub struct HaArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: HaCommand,
    /// A data directory whose walrep.toml has the ha_* parameters.
    #[arg(short = 'D', long = "pgdata", value_name = "DATADIR", global = true)]
    pub datadir: Option<PathBuf>,
    /// A walrep.toml with the ha_* parameters.
    #[arg(long, value_name = "FILE", global = true, conflicts_with = "datadir")]
    pub config: Option<PathBuf>,
    /// etcd's client URLs, comma-separated (overrides ha_endpoints).
    #[arg(long, value_name = "URLS", global = true)]
    pub endpoints: Option<String>,
    /// The cluster's name (overrides ha_cluster_name; default main).
    #[arg(long, value_name = "NAME", global = true)]
    pub cluster: Option<String>,
    /// The key namespace (overrides ha_namespace; default /walrep).
    #[arg(long, value_name = "PREFIX", global = true)]
    pub namespace: Option<String>,
}

/// The operations of `walrep ha`.
#[derive(Debug, Subcommand)]
pub enum HaCommand {
    /// The members with role, timeline, LSNs, lag behind the leader, the
    /// leader and synchronous standbys, and anything unreadable.
    List,
    /// Hand leadership to a standby without losing writes: the leader
    /// fences itself, waits until NAME has all its WAL, releases the key.
    Switchover {
        /// The member to take over.
        #[arg(long, value_name = "NAME")]
        to: String,
        /// Seconds to wait for NAME to lead (0: only write the request).
        #[arg(long, default_value_t = 60)]
        wait_seconds: u64,
    },
    /// Make NAME the leader even with no leader or when it is not a
    /// confirmed synchronous standby: acknowledged writes may be lost.
    Failover {
        /// The member to take over.
        #[arg(long, value_name = "NAME")]
        to: String,
        /// Accept that writes may be lost.
        #[arg(long)]
        force: bool,
        /// Seconds to wait for NAME to lead (0: only write the request).
        #[arg(long, default_value_t = 60)]
        wait_seconds: u64,
    },
    /// Stop every automatic action (no promotion, no demotion).
    Pause,
    /// Resume automatic failover.
    Resume,
}

/// Where the cluster's keys are.
#[derive(Debug)]
struct Target {
    endpoints: String,
    namespace: String,
    cluster: String,
    timeout: Duration,
}

/// The ha_* parameters of a walrep.toml, as far as this command needs them.
fn from_file(path: &Path) -> anyhow::Result<toml::Table> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.parse::<toml::Table>()
        .with_context(|| format!("{} is not valid TOML", path.display()))
}

fn text_param(table: &toml::Table, name: &str) -> Option<String> {
    match table.get(name)? {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Array(items) => Some(
            items
                .iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ),
        other => Some(other.to_string()),
    }
}

fn target(args: &HaArgs) -> anyhow::Result<Target> {
    let file = match (&args.config, &args.datadir) {
        (Some(path), _) => Some(path.clone()),
        (None, Some(dir)) => Some(dir.join("walrep.toml")),
        (None, None) => None,
    };
    let table = file
        .as_deref()
        .map(from_file)
        .transpose()?
        .unwrap_or_default();
    let endpoints = args
        .endpoints
        .clone()
        .or_else(|| text_param(&table, "ha_endpoints"))
        .filter(|e| !e.trim().is_empty())
        .context(
            "no etcd endpoints: give --endpoints, or -D DATADIR / --config FILE with ha_endpoints",
        )?;
    let timeout = match text_param(&table, "ha_retry_timeout") {
        Some(t) => walrep::config::parse_time(&t, 1000)
            .map_err(|e| anyhow::anyhow!("ha_retry_timeout: {e}"))?
            .unwrap_or(Duration::from_secs(3)),
        None => Duration::from_secs(3),
    };
    Ok(Target {
        endpoints,
        namespace: args
            .namespace
            .clone()
            .or_else(|| text_param(&table, "ha_namespace"))
            .unwrap_or_else(|| "/walrep".into()),
        cluster: args
            .cluster
            .clone()
            .or_else(|| text_param(&table, "ha_cluster_name"))
            .unwrap_or_else(|| "main".into()),
        timeout: timeout.max(Duration::from_millis(500)),
    })
}

/// A connection to the cluster's keys, and their first read.
struct Session {
    dcs: EtcdDcs,
    view: ClusterView,
    prefix: String,
}

fn connect(t: &Target) -> anyhow::Result<Session> {
    let mut config = EtcdConfig::from_list(&t.endpoints);
    config.timeout = t.timeout;
    let client = EtcdClient::new(&config)?;
    let prefix = cluster_prefix(&t.namespace, &t.cluster);
    let mut dcs = EtcdDcs::new(client, &prefix, "walrep-ha-cli", Duration::from_secs(10));
    let view = dcs.load()?;
    if is_empty(&view) {
        bail!("{}", no_cluster(dcs.client(), t)?);
    }
    Ok(Session { dcs, view, prefix })
}

fn is_empty(v: &ClusterView) -> bool {
    v.leader.is_none()
        && v.members.is_empty()
        && v.sync.is_none()
        && v.failover.is_none()
        && v.config.is_none()
        && v.history.is_none()
        && v.initialize.is_none()
        && v.unparsed.is_empty()
}

/// "no cluster 'x' under /walrep", with the clusters that are there.
fn no_cluster(client: &EtcdClient, t: &Target) -> anyhow::Result<String> {
    let ns = cluster_prefix(&t.namespace, "");
    let ns = ns.trim_end_matches('/');
    let scan = format!("{ns}/");
    let found = client.range_prefix(scan.as_bytes())?;
    let mut names: Vec<String> = found
        .kvs
        .iter()
        .filter_map(|kv| {
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            Some(key.strip_prefix(&scan)?.split('/').next()?.to_string())
        })
        .filter(|n| !n.is_empty())
        .collect();
    names.dedup();
    let there = if names.is_empty() {
        "no cluster is there".to_string()
    } else {
        format!("clusters there: {}", names.join(", "))
    };
    Ok(format!(
        "no cluster '{}' under {} ({there}; give --cluster NAME)",
        t.cluster,
        if ns.is_empty() { "/" } else { ns }
    ))
}

/// Entry point of `walrep ha`.
pub fn run(args: &HaArgs) -> anyhow::Result<ExitCode> {
    let t = target(args)?;
    let mut s = connect(&t)?;
    match &args.command {
        HaCommand::List => print!("{}", render_list(&t, &s.view)),
        HaCommand::Switchover { to, wait_seconds } => {
            switchover(&mut s, to, *wait_seconds)?;
        }
        HaCommand::Failover {
            to,
            force,
            wait_seconds,
        } => failover(&mut s, to, *force, *wait_seconds)?,
        HaCommand::Pause => set_paused(&mut s, true)?,
        HaCommand::Resume => set_paused(&mut s, false)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The member `name`, or a clear error naming the members there are.
fn find_member<'a>(view: &'a ClusterView, name: &str) -> anyhow::Result<&'a MemberRecord> {
    if let Some(m) = view.member(name) {
        return Ok(&m.value);
    }
    let names: Vec<&str> = view.members.iter().map(|m| m.value.name.as_str()).collect();
    bail!(
        "unknown member '{name}' (members: {})",
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn switchover(s: &mut Session, to: &str, wait_seconds: u64) -> anyhow::Result<()> {
    let Some(leader) = s.view.leader_name().map(String::from) else {
        bail!("no leader: a switchover needs a running leader; with none, `walrep ha failover --to {to} --force` (may lose writes)");
    };
    let member = find_member(&s.view, to)?;
    if leader == to {
        bail!("'{to}' is already the leader");
    }
    if member.nofailover {
        bail!("'{to}' is marked nofailover: it never becomes the leader");
    }
    no_pending(s)?;
    // With synchronous standbys confirmed, only one of them holds every
    // acknowledged write: the leader would refuse any other, so say it now.
    if let Some(sync) = &s.view.sync {
        let listed = &sync.value.sync_standbys;
        if !listed.is_empty() && !listed.iter().any(|n| n == to) {
            bail!(
                "'{to}' is not a confirmed synchronous standby (sync: {}): it may miss acknowledged writes; switch over to one of those, or `walrep ha failover --to {to} --force` (may lose writes)",
                listed.join(", ")
            );
        }
    }
    let record = FailoverRecord {
        leader: Some(leader.clone()),
        candidate: Some(to.to_string()),
        kind: FailoverKind::Switchover,
        requested_at_ms: now_ms(),
    };
    request(s, &record)?;
    println!("switchover requested: {leader} -> {to}");
    wait_for_leader(s, to, wait_seconds)
}

fn failover(s: &mut Session, to: &str, force: bool, wait_seconds: u64) -> anyhow::Result<()> {
    find_member(&s.view, to)?;
    if s.view.leader_name() == Some(to) {
        bail!("'{to}' is already the leader");
    }
    if !force {
        bail!("a failover to '{to}' may lose acknowledged writes (it need not hold every synchronous write); add --force to do it, or use `walrep ha switchover --to {to}` while a leader runs");
    }
    eprintln!("warning: forced failover to '{to}': writes acknowledged by the old leader that '{to}' does not have are lost");
    let record = FailoverRecord {
        leader: s.view.leader_name().map(String::from),
        candidate: Some(to.to_string()),
        kind: FailoverKind::Failover,
        requested_at_ms: now_ms(),
    };
    request(s, &record)?;
    println!("failover requested: -> {to}");
    wait_for_leader(s, to, wait_seconds)
}

/// Refuse a request while another is pending.
fn no_pending(s: &Session) -> anyhow::Result<()> {
    if let Some(pending) = &s.view.failover {
        bail!(
            "a {} request is already pending (to {}); it is cleared when it completes or expires",
            kind_name(pending.value.kind),
            pending.value.candidate.as_deref().unwrap_or("any member")
        );
    }
    Ok(())
}

/// Write the `failover` request if none is pending (CAS: absent).
fn request(s: &mut Session, record: &FailoverRecord) -> anyhow::Result<()> {
    no_pending(s)?;
    if !s.dcs.write_failover(Some(record), 0)? {
        bail!("another switchover or failover request was written at the same time; run `walrep ha list` and try again");
    }
    Ok(())
}

fn kind_name(kind: FailoverKind) -> &'static str {
    match kind {
        FailoverKind::Switchover => "switchover",
        FailoverKind::Failover => "failover",
    }
}

/// Poll the leader key until it names `to`, at most `wait_seconds`.
fn wait_for_leader(s: &mut Session, to: &str, wait_seconds: u64) -> anyhow::Result<()> {
    if wait_seconds == 0 {
        return Ok(());
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(wait_seconds);
    let mut last_leader = None;
    loop {
        match s.dcs.load() {
            Ok(view) => {
                if view.leader_name() == Some(to) {
                    println!(
                        "'{to}' is the leader (after {:.1} s)",
                        started.elapsed().as_secs_f64()
                    );
                    return Ok(());
                }
                last_leader = view.leader_name().map(String::from);
            }
            Err(e) => eprintln!("warning: {e}"),
        }
        if Instant::now() >= deadline {
            bail!(
                "'{to}' did not become the leader within {wait_seconds} s (leader now: {}); the request stays in {}failover until a node acts on it or drops it",
                last_leader.as_deref().unwrap_or("none"),
                s.prefix
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// CAS the `config` record's `paused`, re-reading on a lost race (three
/// tries).
fn set_paused(s: &mut Session, paused: bool) -> anyhow::Result<()> {
    for _ in 0..3 {
        let (mut record, rev) = match &s.view.config {
            Some(c) => (c.value.clone(), c.mod_revision),
            None => (ClusterConfigRecord::default(), 0),
        };
        if record.paused == paused {
            println!(
                "already {}",
                if paused {
                    "paused"
                } else {
                    "running (not paused)"
                }
            );
            return Ok(());
        }
        record.paused = paused;
        if s.dcs.write_config(&record, rev)? {
            if paused {
                println!("paused: no automatic failover or demotion until `walrep ha resume`");
            } else {
                println!("resumed: automatic failover is on");
            }
            return Ok(());
        }
        s.view = s.dcs.load()?;
    }
    bail!("the config key kept changing under us (three lost compare-and-swaps); try again")
}

/// The `walrep ha list` table.
fn render_list(t: &Target, view: &ClusterView) -> String {
    use std::fmt::Write as _;
    let leader = view.leader_name();
    let leader_flush = leader
        .and_then(|l| view.member(l))
        .map(|m| m.value.flush_lsn);
    let sync: Vec<&str> = view
        .sync
        .as_ref()
        .map(|s| s.value.sync_standbys.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Cluster: {} ({}) leader: {}{}",
        t.cluster,
        cluster_prefix(&t.namespace, &t.cluster),
        leader.unwrap_or("none"),
        if view.paused() { ", PAUSED" } else { "" }
    );
    let mut rows = vec![[
        "Member",
        "Role",
        "TL",
        "Flush LSN",
        "Replay LSN",
        "Lag (bytes)",
        "Leader",
        "Sync",
        "Paused",
    ]
    .map(String::from)];
    for m in &view.members {
        let r = &m.value;
        let lag = match leader_flush {
            Some(lf) => lf.0.saturating_sub(r.flush_lsn.0).to_string(),
            None => "unknown".into(),
        };
        rows.push([
            r.name.clone(),
            r.role.as_str().to_string(),
            r.timeline.0.to_string(),
            r.flush_lsn.to_string(),
            r.replay_lsn.to_string(),
            lag,
            if leader == Some(r.name.as_str()) {
                "*"
            } else {
                ""
            }
            .into(),
            if sync.contains(&r.name.as_str()) {
                "sync"
            } else {
                ""
            }
            .into(),
            if r.ha_paused_seen { "yes" } else { "" }.into(),
        ]);
    }
    let widths: Vec<usize> = (0..9)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join(" | ").trim_end());
    }
    if let Some(l) = leader {
        if view.member(l).is_none() {
            let _ = writeln!(out, "warning: the leader '{l}' has no member key");
        }
    }
    if let Some(f) = &view.failover {
        let _ = writeln!(
            out,
            "pending {}: {} -> {}",
            kind_name(f.value.kind),
            f.value.leader.as_deref().unwrap_or("(no leader)"),
            f.value.candidate.as_deref().unwrap_or("(any)")
        );
    }
    for (key, why) in &view.unparsed {
        let _ = writeln!(out, "warning: key '{key}' not understood: {why}");
    }
    out
}
