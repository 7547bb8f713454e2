//! The `walrep` command line: one binary for every role.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use walrep::node::StartOptions;
use walrep::WalSegSize;

/// walrep: PostgreSQL's physical streaming replication for a key-value database.
#[derive(Debug, Parser)]
#[command(
    name = "walrep",
    version,
    about,
    long_about = None,
    after_help = "A primary and a standby on one machine:\n  \
        walrep init /srv/primary\n  \
        walrep start /srv/primary &\n  \
        walrep basebackup --from 127.0.0.1:5433 -D /srv/standby -R\n  \
        walrep start /srv/standby -c port=6381 -c replication_port=5434 &\n  \
        walrep status /srv/standby\n  \
        walrep promote /srv/standby\n\n\
        The Redis port (6380 by default) takes redis-cli; the replication port \
        (5433) takes pg_receivewal, pg_basebackup and psql.\n\
        `walrep demo` runs all of this on loopback and checks every write; \
        `walrep demo --ha` adds automatic failover on etcd."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The arguments of `walrep promote`, parsed on their own first (see
/// [`promote_fast`]).
#[derive(Debug, clap::Args)]
pub struct PromoteArgs {
    /// The data directory of the running standby.
    datadir: PathBuf,
    /// Seconds to wait for the promotion to complete (0 = do not wait).
    #[arg(long, default_value_t = 60)]
    wait_seconds: u64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new data directory (PostgreSQL's initdb).
    Init {
        /// The data directory to create (must not exist or be empty).
        datadir: PathBuf,
        /// Size of every WAL segment: a power of two from 1MB to 1GB.
        #[arg(long, default_value = "16MB", value_parser = parse_seg_size)]
        wal_segment_size: WalSegSize,
    },
    /// Run a node on a data directory until SIGINT or SIGTERM: a primary,
    /// or a standby when the directory holds standby.signal.
    Start {
        /// The data directory (made by `walrep init` or `walrep basebackup`).
        datadir: PathBuf,
        /// Override a parameter of walrep.toml, as `postgres -c name=value`.
        #[arg(short = 'c', value_name = "NAME=VALUE")]
        overrides: Vec<String>,
    },
    /// Measure walrep on this machine: durable commits, WAL streaming,
    /// catch-up, replication lag, promotion and synchronous replication,
    /// each beside the disk's fdatasync rate and, with --anchors,
    /// beside PostgreSQL 15 and Redis measured in the same run.
    Bench(crate::app::bench::BenchArgs),
    /// One node of the bench's two-process synchronous-commit floor
    /// (started by `walrep bench --scenario sync`, not by hand).
    #[command(hide = true)]
    FloorNode(crate::app::bench::syncfloor::NodeArgs),
    /// Show a running node's role, recovery state, LSNs and lag (from INFO).
    Status {
        /// The data directory of the running node.
        datadir: PathBuf,
    },
    /// Promote a running standby (PostgreSQL's pg_ctl promote): ask it to
    /// finish recovery and accept writes, and wait until it does.
    Promote(PromoteArgs),
    /// Accept the loss of the WAL after a damaged record, when no good copy
    /// of the damaged segment exists: that WAL and a report of the keys it
    /// wrote go into DATADIR/quarantine/; the node then starts from the WAL
    /// before the damage. Only when the node refused to start because of
    /// damage in the middle of its WAL; the node must be stopped.
    Resetwal {
        /// The data directory of the stopped node.
        datadir: PathBuf,
    },
    /// Make a running node re-read walrep.toml (PostgreSQL's pg_ctl
    /// reload): the file is checked first, and a file with an error is
    /// refused here and by the node, which keeps its running values.
    Reload {
        /// The data directory of the running node.
        datadir: PathBuf,
    },
    /// The main job: a primary with archiving under a write load, crashed
    /// with kill -9 and recovered, every acknowledged write verified. With
    /// --ha: three nodes and a three-member etcd, the primary killed under
    /// load and replaced automatically, the old primary rejoining.
    Demo {
        /// Keep the data directories and logs here instead of a temporary
        /// directory, and write DIR/report.html (the failover as pictures).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Concurrent writing clients.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Seconds of load before the crash.
        #[arg(long, default_value_t = 4.0)]
        seconds: f64,
        /// Keep the promoted node up this many seconds at the end, to look
        /// at its live page.
        #[arg(long, default_value_t = 0, value_name = "SECONDS")]
        linger: u64,
        /// Automatic failover: start a three-member etcd and three nodes
        /// with ha_enabled on loopback, kill -9 the primary under load, and
        /// watch a synchronous standby take over and the old primary rejoin
        /// (needs etcd: apt-get install etcd-server).
        #[arg(long)]
        ha: bool,
        /// With --ha: the etcd binary (default: etcd on PATH, then
        /// /usr/bin/etcd).
        #[arg(long, value_name = "PATH", requires = "ha")]
        etcd: Option<PathBuf>,
    },
    /// Bring an old primary back as a standby of the node that replaced it
    /// (PostgreSQL's pg_rewind): find where its timeline forks from the new
    /// primary's history, move the WAL it wrote past the fork into
    /// DATADIR/quarantine/<time>/ with a report, cut its WAL at the fork
    /// and write the standby configuration. The node must be stopped.
    Rejoin {
        /// The old primary's data directory.
        datadir: PathBuf,
        /// The new primary's replication address (its replication_port).
        #[arg(long, value_name = "HOST:PORT")]
        from: String,
        /// Replication user (default: the login name, as libpq). The
        /// password is taken from PGPASSWORD.
        #[arg(short = 'U', long = "username")]
        user: Option<String>,
        /// application_name of the rejoined standby.
        #[arg(long)]
        application_name: Option<String>,
    },
    /// Take a base backup of a running node over the replication protocol
    /// (PostgreSQL's pg_basebackup -X fetch): a consistent copy with the WAL
    /// it needs, extracted into DATADIR and verified.
    Basebackup {
        /// The node's replication address (its replication_port).
        #[arg(long, value_name = "HOST:PORT")]
        from: String,
        /// The directory to write: created, or empty.
        #[arg(short = 'D', long = "pgdata", value_name = "DATADIR")]
        datadir: PathBuf,
        /// Make the copy a standby of the node: standby.signal and
        /// primary_conninfo in its walrep.toml (pg_basebackup -R).
        #[arg(short = 'R', long)]
        write_standby_config: bool,
        /// With -R: the replication slot made on the node before the copy
        /// starts and written as primary_slot_name (default: from
        /// --application-name, else a unique walrep_standby_... name).
        #[arg(short = 'S', long, value_name = "NAME", conflicts_with = "no_slot")]
        slot: Option<String>,
        /// With -R: make no slot (the node may then remove WAL the new
        /// standby still needs before it first connects).
        #[arg(long)]
        no_slot: bool,
        /// Replication user (default: the login name, as libpq). The
        /// password is taken from PGPASSWORD.
        #[arg(short = 'U', long = "username")]
        user: Option<String>,
        /// application_name of the connection, and of the standby with -R.
        #[arg(long)]
        application_name: Option<String>,
        /// Show progress (a bar on a terminal, lines otherwise).
        #[arg(short = 'P', long)]
        progress: bool,
        /// The backup label (in backup_label).
        #[arg(short = 'l', long, default_value = "walrep basebackup")]
        label: String,
        /// Most kB/s the server sends (32 to 1048576; default unlimited).
        #[arg(short = 'r', long = "max-rate", value_name = "KBPS")]
        max_rate_kbps: Option<u64>,
        /// Seconds to wait for the server at connect and at every step.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Copy the snapshot over this many connections at once (1 to 64;
        /// 1 is a single stream, as pg_basebackup).
        #[arg(short = 'j', long, default_value_t = 1)]
        jobs: u32,
        /// With -R: two phases. The standby may start as soon as the
        /// first files are written; it streams WAL (and may serve as a
        /// synchronous standby for remote_write and on) while the bulk is
        /// copied, and starts redo once the copy is complete.
        #[arg(long)]
        two_phase: bool,
        /// Finish an interrupted copy in DATADIR (one- or two-phase) from
        /// the checkpoint the node keeps for it (30 minutes after it was
        /// interrupted): intact files stay, the rest is copied again. The
        /// slot and the two phases are the first attempt's.
        #[arg(long)]
        resume: bool,
    },
    /// Make a SCRAM-SHA-256 verifier for a password, in PostgreSQL's format,
    /// for `password` of a [[roles]] entry or `requirepass`. The password
    /// is read from the terminal without echo (twice), or as the first line
    /// of standard input when that is not a terminal; it is never printed.
    Passwd {
        /// Only print the verifier (default: a walrep.toml line for it).
        #[arg(long)]
        verifier_only: bool,
        /// Name the role in the printed [[roles]] entry.
        #[arg(long, value_name = "NAME")]
        role: Option<String>,
    },
    /// Print the default walrep.toml (every parameter with its default and a comment).
    DefaultConfig {
        /// Print the configuration reference (docs/configuration.md) instead.
        #[arg(long)]
        markdown: bool,
    },
    /// Automatic failover on etcd, as patronictl: list the members, request
    /// a switchover or a forced failover, pause or resume.
    Ha(crate::app::ha_cli::HaArgs),
    /// Draw the state machines (explored from the code) or render a trace.
    Viz {
        #[command(subcommand)]
        what: VizCommand,
    },
}

/// What `walrep viz` draws.
#[derive(Debug, Subcommand)]
pub enum VizCommand {
    /// The standby's recovery state machine.
    States {
        /// Output format.
        #[arg(long, value_enum, default_value = "dot")]
        format: VizFormat,
        /// Write to this file instead of standard output.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
    /// Render transitions.jsonl files (DATADIR/log/transitions.jsonl) as a
    /// timeline: text, or a swimlane with one lane per file (SVG, HTML).
    Trace {
        /// The JSON-lines trace files, one per node.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: TraceFormat,
        /// Write to this file instead of standard output.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
}

/// Formats of `walrep viz trace`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TraceFormat {
    /// One block per event and the time spent in each state, per file.
    Text,
    /// A swimlane timeline, one lane per file.
    Svg,
    /// The swimlane and a table of every event, as one self-contained page.
    Html,
}

/// Diagram formats of `walrep viz states`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum VizFormat {
    /// Graphviz DOT.
    Dot,
    /// Mermaid stateDiagram-v2.
    Mermaid,
    /// SVG, laid out in-process (no Graphviz needed).
    Svg,
    /// The status page's SVG: no event labels, states marked by class.
    PageSvg,
}

fn parse_seg_size(s: &str) -> Result<WalSegSize, String> {
    let bytes = walrep::config::parse_size(s)?.ok_or("the WAL segment size cannot be -1")?;
    WalSegSize::new(bytes).map_err(|e| e.to_string())
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    if let Some(args) = promote_fast() {
        return exit_code(promote(&args.datadir, args.wait_seconds).map(|()| ExitCode::SUCCESS));
    }
    let cli = Cli::parse();
    exit_code(run(cli))
}

fn exit_code(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("walrep: error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// `walrep promote`'s arguments, parsed without building the whole
/// command line (every subcommand and `walrep bench`'s many options):
/// the request is on the path of a promotion, and the full parser is
/// most of this process's own start-up. `None` for any other command,
/// and for anything this parser refuses or answers itself (`--help`, a
/// bad option): the full parser then runs and gives the usual answer.
fn promote_fast() -> Option<PromoteArgs> {
    use clap::{Args, FromArgMatches};
    let mut args = std::env::args_os().skip(1);
    let first = args.next()?;
    if first != "promote" {
        return None;
    }
    let cmd = PromoteArgs::augment_args(clap::Command::new("promote"));
    let matches = cmd
        .try_get_matches_from(std::iter::once(first).chain(args))
        .ok()?;
    PromoteArgs::from_arg_matches(&matches).ok()
}

/// An error and its causes joined with ": ", leaving out each cause whose
/// text the message already carries (library errors embed their source in
/// their own message, so `{:#}` would print it twice).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// A start that failed on a full disk: say what is full and what holds
/// WAL, so the operator knows what to free.
fn disk_full_hint(
    datadir: &std::path::Path,
    overrides: &[String],
    e: walrep::node::NodeError,
) -> anyhow::Error {
    if !walrep::node::disk::is_disk_full(&e) {
        return e.into();
    }
    let usage = walrep::node::restart::offline_usage(datadir, overrides);
    anyhow::anyhow!(
        "{e}\nHINT: the disk is full: {}. Free space on that filesystem (see \"When the disk fills\" in docs/operations.md) and start the node again",
        usage.describe(datadir)
    )
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Init {
            datadir,
            wal_segment_size,
        } => {
            crate::app::logging::init("warn");
            let control = walrep::node::init::init(&datadir, wal_segment_size)?;
            println!(
                "walrep: created data directory {} (system identifier {}, WAL segment size {}MB, timeline 1)",
                datadir.display(),
                control.system_identifier,
                wal_segment_size.bytes() >> 20
            );
            println!("Start it with: walrep start {}", datadir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Start { datadir, overrides } => {
            let level = peek_log_level(&datadir, &overrides);
            crate::app::logging::init(&level);
            let opts = StartOptions {
                overrides,
                ..Default::default()
            };
            let follow = |node: &walrep::node::RunningNode| {
                follow_log_level(&node.node)
                    .map_err(|e| tracing::warn!(error = %e, "log_level will not follow reloads"))
                    .ok()
            };
            let config_file = walrep::node::DataDir::new(&datadir).config_file();
            let ha = walrep::config::Config::load(&config_file, &opts.overrides)
                .is_ok_and(|c| c.ha_enabled.0);
            let why = if ha {
                walrep::ha::supervisor::run(
                    &datadir,
                    &opts,
                    walrep::ha::start::clock,
                    walrep::ha::start::ha_loop(),
                    follow,
                )?
            } else {
                walrep::node::restart::run(&datadir, &opts, follow)
                    .map_err(|e| disk_full_hint(&datadir, &opts.overrides, e))?
            };
            match why {
                walrep::node::ExitRequest::Signal(_) | walrep::node::ExitRequest::Demote { .. } => {
                    Ok(ExitCode::SUCCESS)
                }
                walrep::node::ExitRequest::Fatal(message) => {
                    anyhow::bail!("fatal: {message}")
                }
            }
        }
        Command::Ha(args) => {
            crate::app::logging::init("warn");
            crate::app::ha_cli::run(&args)
        }
        Command::Status { datadir } => {
            print!("{}", status(&datadir)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Promote(args) => {
            promote(&args.datadir, args.wait_seconds)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Resetwal { datadir } => {
            resetwal(&datadir)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload { datadir } => {
            reload(&datadir)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::FloorNode(args) => {
            crate::app::bench::syncfloor::serve(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            crate::app::logging::init("warn");
            let report = crate::app::bench::run(&args);
            // Interrupted: the signal thread stops what the run started
            // and exits with 128 + the signal; its error is no news.
            crate::app::bench::interrupt::exit_if_interrupted();
            let report = report?;
            if let Some(path) = &args.json {
                crate::app::bench::write_json(&report, path)?;
                println!("JSON written to {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            dir,
            clients,
            seconds,
            linger,
            ha,
            etcd,
        } => {
            crate::app::logging::init("warn");
            let opts = crate::app::demo::DemoOptions {
                dir,
                clients: clients.clamp(1, 256),
                load_seconds: seconds,
                linger_seconds: linger.min(24 * 3600),
            };
            if ha {
                crate::app::demo::ha::run(&opts, etcd.as_deref())?;
            } else {
                crate::app::demo::run(&opts)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rejoin {
            datadir,
            from,
            user,
            application_name,
        } => {
            crate::app::logging::init("warn");
            let (host, port) = parse_host_port(&from)?;
            let mut conninfo = walrep::replication::client::ConnInfo {
                host,
                port,
                application_name,
                password: std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()),
                ..Default::default()
            };
            if let Some(u) = user {
                conninfo.user = u;
            }
            rejoin(walrep::rejoin::RejoinOptions {
                datadir,
                conninfo,
                timeout: std::time::Duration::from_secs(30),
                storage: std::sync::Arc::new(walrep::storage::StdStorage),
            })
        }
        Command::Basebackup {
            from,
            datadir,
            write_standby_config,
            slot,
            no_slot,
            user,
            application_name,
            progress,
            label,
            max_rate_kbps,
            timeout,
            jobs,
            two_phase,
            resume,
        } => {
            crate::app::logging::init("warn");
            let (host, port) = parse_host_port(&from)?;
            if slot.is_some() && !write_standby_config {
                anyhow::bail!(
                    "--slot needs --write-standby-config (-R): the slot is for the new standby"
                );
            }
            let slot = (write_standby_config && !no_slot).then(|| {
                slot.unwrap_or_else(|| {
                    walrep::backup::client::default_slot_name(application_name.as_deref())
                })
            });
            let opts = walrep::backup::client::BasebackupOptions {
                host,
                port,
                datadir,
                user: user.unwrap_or_else(|| walrep::replication::client::ConnInfo::default().user),
                password: std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()),
                application_name,
                write_standby_config,
                label,
                max_rate_kbps: max_rate_kbps.unwrap_or(0),
                storage: std::sync::Arc::new(walrep::storage::StdStorage),
                timeout: std::time::Duration::from_secs(timeout.max(1)),
                slot,
                jobs,
                two_phase,
                resume,
            };
            basebackup(&opts, progress)
        }
        Command::Passwd {
            verifier_only,
            role,
        } => passwd(verifier_only, role.as_deref()),
        Command::DefaultConfig { markdown } => {
            if markdown {
                print!("{}", walrep::config::reference_markdown());
            } else {
                print!("{}", walrep::config::Config::template());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Viz { what } => run_viz(what),
    }
}

/// `walrep status`: ask the node running in `datadir` (its port is in
/// walrep.pid) for INFO and print the fields an operator looks at first.
fn status(datadir: &std::path::Path) -> anyhow::Result<String> {
    use crate::app::demo::client::{Reply, RespClient};
    let dir = walrep::node::DataDir::new(datadir);
    dir.check()?;
    let port = walrep::node::DataDirLock::read_holder(&dir)
        .and_then(|h| h.port("port"))
        .filter(|p| *p != 0)
        .ok_or_else(|| anyhow::anyhow!("no walrep is running in {}", datadir.display()))?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut c = RespClient::connect(addr, std::time::Duration::from_secs(5))
        .map_err(|e| anyhow::anyhow!("could not connect to the node on {addr}: {e}"))?;
    let info = match c.cmd(&["INFO", "server", "persistence", "replication"])? {
        Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
        other => anyhow::bail!("unexpected INFO reply {other:?}"),
    };
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(str::trim)
            .unwrap_or("")
            .to_string()
    };
    let mut out = format!(
        "node:      {} (pid {}, port {}, replication port {})\nrole:      {}\ntimeline:  {}\nstate:     {}\n",
        datadir.display(),
        field("process_id"),
        field("tcp_port"),
        field("replication_port"),
        if field("role") == "master" { "primary" } else { "standby" },
        field("timeline"),
        field("cluster_state"),
    );
    if field("role") == "master" {
        out.push_str(&format!(
            "wal:       insert {} flush {}\n",
            field("wal_insert_lsn"),
            field("wal_flush_lsn")
        ));
    }
    if !field("master_port").is_empty() && field("master_port") != "0" {
        out.push_str(&format!(
            "upstream:  {}:{} as {} (instance {}{})\n",
            field("master_host"),
            field("master_port"),
            field("master_application_name"),
            Some(field("master_instance_id"))
                .filter(|i| !i.is_empty())
                .unwrap_or_else(|| "not connected".into()),
            Some(field("upstream_chain"))
                .filter(|c| c.contains(','))
                .map(|c| format!(", chain {}", c.replace(',', " -> ")))
                .unwrap_or_default(),
        ));
    }
    if !field("recovery_state").is_empty() {
        out.push_str(&format!(
            "recovery:  {} from {} (receive {} replay {}, lag {} bytes / {} ms)\nlast:      {} {}\n",
            field("recovery_state"),
            field("wal_source"),
            field("receive_lsn"),
            field("replay_lsn"),
            field("replay_lag_bytes"),
            field("replay_lag_ms"),
            field("last_transition"),
            field("last_transition_cause"),
        ));
    }
    for l in info.lines().filter(|l| l.starts_with("slave")) {
        let kv = |k: &str| list_field(l, k);
        out.push_str(&format!(
            "standby:   {} {} {} flush {} replay {}\n",
            kv("application_name"),
            kv("walsender_state"),
            kv("sync_state"),
            kv("flush_lsn"),
            kv("replay_lsn"),
        ));
    }
    for l in info.lines().filter(|l| l.starts_with("slot")) {
        let kv = |k: &str| list_field(l, k);
        out.push_str(&format!(
            "slot:      {} {} restart {}{}\n",
            kv("name"),
            if kv("active") == "1" {
                "active"
            } else {
                "inactive"
            },
            Some(kv("restart_lsn"))
                .filter(|r| !r.is_empty())
                .unwrap_or("-"),
            if kv("wal_status") == "lost" {
                " (lost: past max_slot_wal_keep_size)"
            } else {
                ""
            },
        ));
    }
    if field("ha_enabled") == "1" {
        out.push_str(&format!(
            "ha:        member {} {}, leader {}, write gate {} ({} ms left){}\nha cycle:  {}\nha count:  {} cycles ({} failed), {} etcd errors, leader key taken {}, {} promotions, {} demotions\n",
            field("ha_member"),
            field("ha_role"),
            Some(field("ha_leader"))
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| "(none)".into()),
            field("ha_gate"),
            field("ha_gate_remaining_ms"),
            if field("ha_paused") == "1" { ", cluster paused" } else { "" },
            field("ha_last_cycle"),
            field("ha_cycles"),
            field("ha_failed_cycles"),
            field("ha_dcs_errors"),
            field("ha_leader_acquired"),
            field("ha_promotions"),
            field("ha_demotions"),
        ));
    }
    Ok(out)
}

/// The value of `key` in an INFO list line such as `slave0:ip=…,state=…`
/// (empty when absent): the standby and slot lines of `walrep status`.
fn list_field<'a>(line: &'a str, key: &str) -> &'a str {
    let pairs = line.split_once(':').map_or(line, |(_, pairs)| pairs);
    pairs
        .split(',')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or("")
}

/// `walrep promote`: write the request file the standby's trigger watcher
/// looks for (checks first, then the request: nothing else of this
/// process comes before it), then wait for the control file to say "in
/// production" (woken by its change, not polled).
fn promote(datadir: &std::path::Path, wait_seconds: u64) -> anyhow::Result<()> {
    let dir = walrep::node::DataDir::new(datadir);
    dir.check()?;
    walrep::node::DataDirLock::read_holder(&dir)
        .filter(|h| !h.ports.is_empty())
        .ok_or_else(|| anyhow::anyhow!("no walrep is running in {}", datadir.display()))?;
    if walrep::standby::pending::in_progress(datadir) {
        anyhow::bail!(
            "cannot promote: base backup not complete (the copy into {} is still running or was interrupted; \
             wait for it to finish, or take a new base backup)",
            datadir.display()
        );
    }
    walrep::standby::trigger::request_promotion(&walrep::storage::StdStorage, datadir)?;
    if wait_seconds == 0 {
        println!("server promoting");
        return Ok(());
    }
    print!("waiting for server to promote...");
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let timeout = std::time::Duration::from_secs(wait_seconds);
    match walrep::standby::trigger::wait_promoted(datadir, timeout) {
        Some(c) => {
            println!(" done\nserver promoted (timeline {})", c.timeline);
            Ok(())
        }
        None => {
            println!(" stopped waiting");
            anyhow::bail!("server did not promote in time")
        }
    }
}

/// `walrep reload`: check the file, then send SIGHUP to the node holding
/// the data directory's lock.
fn reload(datadir: &std::path::Path) -> anyhow::Result<()> {
    let dir = walrep::node::DataDir::new(datadir);
    dir.check()?;
    let holder = walrep::node::DataDirLock::read_holder(&dir)
        .filter(|h| !h.ports.is_empty())
        .ok_or_else(|| anyhow::anyhow!("no walrep is running in {}", datadir.display()))?;
    walrep::config::Config::load(&dir.config_file(), &[]).map_err(|e| {
        anyhow::anyhow!("{e}\nconfiguration not reloaded: the node keeps its running values")
    })?;
    let pid = libc::pid_t::try_from(holder.pid)?;
    // SAFETY: kill(2) with a pid read from the lock file and a valid signal.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        let e = std::io::Error::last_os_error();
        anyhow::bail!("could not send reload signal (PID: {pid}): {e}");
    }
    println!("server signaled");
    Ok(())
}

/// Follow reloads of `log_level` until the returned sender is dropped.
fn follow_log_level(
    node: &std::sync::Arc<walrep::node::Node>,
) -> anyhow::Result<crossbeam_channel::Sender<()>> {
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
    let config = node.config.clone();
    let changes = config.subscribe();
    let mut level = config.get().log_level.clone();
    std::thread::Builder::new()
        .name("log-level".into())
        .spawn(move || loop {
            crossbeam_channel::select! {
                recv(changes.receiver()) -> _ => {
                    let now = config.get().log_level.clone();
                    if now != level {
                        crate::app::logging::set_level(&now);
                        level = now;
                    }
                }
                recv(stop_rx) -> _ => return,
            }
        })?;
    Ok(stop_tx)
}

/// The log level before the configuration is fully validated (errors in it
/// are reported by start-up itself).
fn peek_log_level(datadir: &std::path::Path, overrides: &[String]) -> String {
    let dir = walrep::node::DataDir::new(datadir);
    walrep::config::Config::load(&dir.config_file(), overrides)
        .map(|c| c.log_level)
        .unwrap_or_else(|_| "info".into())
}

/// `walrep viz`: diagrams to a file or stdout; traces to stdout.
fn run_viz(what: VizCommand) -> anyhow::Result<ExitCode> {
    use walrep::viz::{standby_diagram, Format};
    match what {
        VizCommand::States { format, output } => {
            let format = match format {
                VizFormat::Dot => Format::Dot,
                VizFormat::Mermaid => Format::Mermaid,
                VizFormat::Svg => Format::Svg,
                VizFormat::PageSvg => Format::PageSvg,
            };
            let text = standby_diagram(format);
            match output {
                Some(path) => std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => print!("{text}"),
            }
        }
        VizCommand::Trace {
            files,
            format,
            output,
        } => {
            let text = trace_output(&files, format)?;
            match output {
                Some(path) => std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => print!("{text}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `walrep viz trace`'s output for `files` in `format`.
fn trace_output(files: &[PathBuf], format: TraceFormat) -> anyhow::Result<String> {
    use walrep::viz::swimlane::{parse_trace, swimlane_html, swimlane_svg, Lane};
    let mut lanes = Vec::new();
    let mut text = String::new();
    for file in files {
        let jsonl =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let name = lane_name(file);
        if format == TraceFormat::Text {
            if files.len() > 1 {
                text.push_str(&format!("== {name}\n"));
            }
            text.push_str(
                &walrep::viz::render_trace(&jsonl)
                    .with_context(|| format!("in {}", file.display()))?,
            );
            continue;
        }
        let records = parse_trace(&jsonl).with_context(|| format!("in {}", file.display()))?;
        lanes.push(Lane { name, records });
    }
    Ok(match format {
        TraceFormat::Text => text,
        TraceFormat::Svg => swimlane_svg(&lanes),
        TraceFormat::Html => swimlane_html("walrep recovery timeline", &lanes),
    })
}

/// A lane's name: the node's data directory for DATADIR/log/transitions.jsonl,
/// else the file's name.
fn lane_name(file: &std::path::Path) -> String {
    let parent = file.parent();
    let datadir = parent
        .filter(|p| p.file_name().is_some_and(|n| n == "log"))
        .and_then(|p| p.parent())
        .and_then(|d| d.file_name());
    datadir
        .or_else(|| file.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.display().to_string())
}

/// `HOST:PORT` (`[v6]:PORT` for IPv6 addresses).
fn parse_host_port(s: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("--from {s:?}: expected HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        anyhow::bail!("--from {s:?}: the host is empty");
    }
    let port = port
        .parse()
        .map_err(|_| anyhow::anyhow!("--from {s:?}: invalid port {port:?}"))?;
    Ok((host.to_string(), port))
}

fn rejoin(opts: walrep::rejoin::RejoinOptions) -> anyhow::Result<ExitCode> {
    let r = walrep::rejoin::rejoin(&opts)?;
    println!(
        "walrep: {} forks from timeline {} of the new primary at {} (now on timeline {})",
        opts.datadir.display(),
        r.local_tli.0,
        r.fork,
        r.upstream_tli.0
    );
    match &r.quarantine {
        Some(q) => println!(
            "walrep: {} records ({} bytes, {} keys) written past the fork moved to {} (see {})",
            r.records,
            r.bytes(),
            r.keys.len(),
            q.display(),
            walrep::rejoin::REPORT_FILE
        ),
        None => println!("walrep: nothing was written past the fork"),
    }
    println!(
        "walrep: standby.signal written; primary_conninfo = '{}'. Start it with: walrep start {}",
        walrep::replication::client::redact_conninfo(&r.conninfo),
        opts.datadir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn basebackup(
    opts: &walrep::backup::client::BasebackupOptions,
    progress: bool,
) -> anyhow::Result<ExitCode> {
    let mut reporter =
        crate::app::progress::WithPhaseNotice(crate::app::progress::progress_reporter(progress));
    let s = walrep::backup::client::run(opts, &mut reporter)?;
    println!(
        "walrep: base backup of system {} written to {}: WAL {} to {} on timeline {}, {} files, {} MB, {} keys in the snapshot, {} WAL records checked, {:.1}s",
        s.system_id,
        opts.datadir.display(),
        s.start,
        s.end,
        s.tli.0,
        s.extracted.files,
        s.extracted.bytes >> 20,
        s.snapshot_keys,
        s.wal_records,
        s.elapsed.as_secs_f64()
    );
    println!("walrep: {} bytes received from the node", s.received_bytes);
    println!(
        "walrep: phases: start {:.2} s (checkpoint and pin), copy {:.2} s (received, written, fsynced; the last job ended {:.2} s after the first), end check {:.2} s (read back against backup_manifest), verify {:.2} s (control, label, WAL records)",
        s.phases.start.as_secs_f64(),
        s.phases.copy.as_secs_f64(),
        s.phases.copy_jobs_spread.as_secs_f64(),
        s.phases.end_check.as_secs_f64(),
        s.phases.verify.as_secs_f64()
    );
    if let Some(kept) = s.resumed_chunks {
        println!(
            "walrep: resumed: {kept} snapshot chunk files ({} bytes) of the interrupted copy were intact and not copied again",
            s.resumed_bytes
        );
        println!(
            "walrep: resume kept {} files ({} bytes, {} WAL segments) that matched the interrupted copy's manifest; {} failed their checksum and were copied again",
            s.resumed_files, s.resumed_file_bytes, s.resumed_wal_segments, s.resumed_mismatched
        );
    }
    println!(
        "walrep: backup_manifest lists {} files, each read back and checked ({} as soon as written, while the copy went on; pg_verifybackup -n {} checks it too)",
        s.manifest_files,
        s.manifest_files_early,
        opts.datadir.display()
    );
    if let Some(slot) = &s.slot {
        println!("walrep: replication slot \"{slot}\" made on the node for this standby (primary_slot_name); drop it with DROP_REPLICATION_SLOT if the standby is retired");
    }
    match &s.primary_conninfo {
        Some(ci) => println!(
            "walrep: standby.signal written; primary_conninfo = '{}'. Start the standby with: walrep start {}",
            walrep::replication::client::redact_conninfo(ci),
            opts.datadir.display()
        ),
        None => println!(
            "walrep: start the copy with: walrep start {} (use -c port=... -c replication_port=... if it runs beside the source)",
            opts.datadir.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `walrep passwd`: read a password, print its verifier.
fn passwd(verifier_only: bool, role: Option<&str>) -> anyhow::Result<ExitCode> {
    let password = crate::app::password::read_new_password()?;
    let v = walrep::security::ScramVerifier::make(&password).to_string();
    if verifier_only {
        println!("{v}");
    } else if let Some(name) = role {
        println!(
            "[[roles]]\nname = {}\npassword = \"{v}\"",
            toml::Value::String(name.to_string())
        );
    } else {
        println!("requirepass = \"{v}\"");
    }
    Ok(ExitCode::SUCCESS)
}

/// `walrep resetwal`: set the WAL after a damaged record aside and say
/// what was lost.
fn resetwal(datadir: &Path) -> anyhow::Result<()> {
    use walrep::node::resetwal::{reset_wal, ResetWalOutcome};
    match reset_wal(datadir, &walrep::storage::StdStorage)? {
        ResetWalOutcome::NothingToReset { end } => {
            println!("the WAL ends cleanly at {end}: nothing was changed");
        }
        ResetWalOutcome::Reset(r) => {
            println!(
                "WAL after the damaged record at {} ({}) was set aside: {} valid records from {} to {}, {} keys, {} files, {} bytes",
                r.at, r.reason, r.after.records, r.after.from, r.after.to, r.keys, r.files.len(), r.bytes
            );
            println!("report and files: {}", r.quarantine.display());
            println!("the node now starts from the WAL before {}", r.at);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::list_field;

    #[test]
    fn list_fields_are_found_whole_and_absent_ones_are_empty() {
        let line = "slave0:application_name=s1,state=streaming,sync_state=sync";
        assert_eq!(list_field(line, "application_name"), "s1");
        assert_eq!(list_field(line, "state"), "streaming");
        assert_eq!(list_field(line, "sync_state"), "sync");
        // `name` is not the tail of `application_name`.
        assert_eq!(list_field(line, "name"), "");
        assert_eq!(
            list_field("slot0:name=walrep_s1,active=1", "name"),
            "walrep_s1"
        );
    }
}
