//! The `walrep` command line: one binary for every role.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// walrep: PostgreSQL's physical streaming replication for a key-value database.
#[derive(Debug, Parser)]
#[command(name = "walrep", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the default walrep.toml (every parameter with its default and a comment).
    DefaultConfig {
        /// Print the configuration reference (docs/configuration.md) instead.
        #[arg(long)]
        markdown: bool,
    },
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
