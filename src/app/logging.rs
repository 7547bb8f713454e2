//! Logging: tracing with `RUST_LOG`-style filtering (the `log_level`
//! parameter when `RUST_LOG` is unset), to stderr, with thread names so each
//! of a node's threads (walwriter, checkpointer, client-N, walsender-N, ...)
//! is visible in every line. A reloaded `log_level` replaces the filter.

use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

/// Replaces the installed filter (set once by [`init`]).
type SetFilter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

static RELOAD: OnceLock<SetFilter> = OnceLock::new();

/// Install the global subscriber once; later calls are no-ops (tests and the
/// demo start several nodes in one process).
pub fn init(default_level: &str) {
    let from_env = EnvFilter::try_from_default_env().ok();
    let env_set = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(default_level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_thread_names(true)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter_reloading();
    let handle = builder.reload_handle();
    if builder.try_init().is_ok() && !env_set {
        // RUST_LOG, when set, wins over log_level for the whole run.
        let _ = RELOAD.set(Box::new(move |f| {
            handle.reload(f).map_err(|e| e.to_string())
        }));
    }
}

/// Apply a reloaded `log_level` (no-op when RUST_LOG is set).
pub fn set_level(level: &str) {
    let Some(reload) = RELOAD.get() else {
        return;
    };
    match EnvFilter::try_new(level)
        .map_err(|e| e.to_string())
        .and_then(reload)
    {
        Ok(()) => tracing::info!(log_level = level, "log filter changed by a reload"),
        Err(e) => tracing::warn!(log_level = level, "could not apply log_level: {e}"),
    }
}
