//! The `walrep` command line: one binary for every role.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::node::{RunningNode, StartOptions};
use crate::WalSegSize;

/// walrep: PostgreSQL's physical streaming replication for a key-value database.
#[derive(Debug, Parser)]
#[command(name = "walrep", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
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
    /// Run a node on a data directory until SIGINT or SIGTERM.
    Start {
        datadir: PathBuf,
        /// Override a parameter of walrep.toml, as `postgres -c name=value`.
        #[arg(short = 'c', value_name = "NAME=VALUE")]
        overrides: Vec<String>,
    },
    /// Benchmark durable commits (SET under redis-benchmark) of a fresh
    /// node against the disk's fdatasync rate, optionally beside
    /// PostgreSQL 15 and Redis measured in the same run.
    Bench(crate::bench::BenchArgs),
    /// Print the default walrep.toml (every parameter with its default and a comment).
    DefaultConfig {
        /// Print the configuration reference (docs/configuration.md) instead.
        #[arg(long)]
        markdown: bool,
    },
}

fn parse_seg_size(s: &str) -> Result<WalSegSize, String> {
    let bytes = crate::config::parse_size(s)?.ok_or("the WAL segment size cannot be -1")?;
    WalSegSize::new(bytes).map_err(|e| e.to_string())
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("walrep: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Init {
            datadir,
            wal_segment_size,
        } => {
            crate::logging::init("warn");
            let control = crate::node::init::init(&datadir, wal_segment_size)?;
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
            crate::logging::init(&level);
            let node = RunningNode::start(&datadir, &StartOptions { overrides })?;
            let sig = node.wait_for_signal()?;
            tracing::info!(signal = sig, "shutdown requested");
            node.stop()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            crate::logging::init("warn");
            let report = crate::bench::run(&args)?;
            if let Some(path) = &args.json {
                crate::bench::write_json(&report, path)?;
                println!("JSON written to {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::DefaultConfig { markdown } => {
            if markdown {
                print!("{}", crate::config::reference_markdown());
            } else {
                print!("{}", crate::config::Config::template());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The log level before the configuration is fully validated (errors in it
/// are reported by start-up itself).
fn peek_log_level(datadir: &std::path::Path, overrides: &[String]) -> String {
    let dir = crate::datadir::DataDir::new(datadir);
    crate::config::Config::load(&dir.config_file(), overrides)
        .map(|c| c.log_level)
        .unwrap_or_else(|_| "info".into())
}
