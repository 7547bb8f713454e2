//! Logging: tracing with `RUST_LOG`-style filtering (the `log_level`
//! parameter when `RUST_LOG` is unset), to stderr, with thread names so each
//! of a node's threads (walwriter, checkpointer, client-N, walsender-N, ...)
//! is visible in every line.

use tracing_subscriber::EnvFilter;

/// Install the global subscriber once; later calls are no-ops (tests and the
/// demo start several nodes in one process).
pub fn init(default_level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_thread_names(true)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
