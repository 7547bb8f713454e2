//! The `walrep` command line: one binary for every role.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
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
    DefaultConfig,
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
    /// Render a transitions.jsonl (DATADIR/log/transitions.jsonl) as a timeline.
    Trace {
        /// The JSON-lines trace file.
        file: PathBuf,
    },
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
        Command::DefaultConfig => {
            print!("{}", crate::config::Config::template());
            Ok(ExitCode::SUCCESS)
        }
        Command::Viz { what } => run_viz(what),
    }
}

/// `walrep viz`: diagrams to a file or stdout; traces to stdout.
fn run_viz(what: VizCommand) -> anyhow::Result<ExitCode> {
    use crate::viz::{render_trace, standby_diagram, Format};
    match what {
        VizCommand::States { format, output } => {
            let format = match format {
                VizFormat::Dot => Format::Dot,
                VizFormat::Mermaid => Format::Mermaid,
                VizFormat::Svg => Format::Svg,
            };
            let text = standby_diagram(format);
            match output {
                Some(path) => std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => print!("{text}"),
            }
        }
        VizCommand::Trace { file } => {
            let jsonl = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            print!("{}", render_trace(&jsonl)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
