//! Re-reading `walrep.toml` while the node runs (PostgreSQL's SIGHUP and
//! `pg_ctl reload`): the whole file is validated first, and a file with an
//! error changes nothing; otherwise the reloadable parameters take effect
//! and the restart-only ones keep their running value (and are named).
//!
//! Who follows a change: the Redis front end reads `synchronous_commit`
//! for each new connection; synchronous replication swaps its standby set
//! here; slots take `max_slot_wal_keep_size` here; the archiver takes
//! `archive_command` before its next file; the checkpointer reads
//! `wal_keep_size` at each checkpoint or restartpoint; on a standby the
//! fetcher takes `restore_command` before its next request and the startup
//! process reconnects its walreceiver when `primary_conninfo` or
//! `primary_slot_name` changed; the binary follows `log_level`.

use std::sync::Arc;

use super::{Node, NodeError};
use crate::config::{Config, Reload};
use crate::replication::client::redact_conninfo;

impl Node {
    /// Re-read `walrep.toml` (with the start's `-c` overrides on top) and
    /// apply what may change while running. A file that does not parse or
    /// validate is rejected whole: the running values stay, and the error
    /// says why.
    pub fn reload_config(&self) -> Result<Reload, NodeError> {
        tracing::info!("received SIGHUP, reloading configuration files");
        let path = self.dir.config_file();
        let overrides = self
            .overrides
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let reload = Config::load(&path, &overrides)
            .map_err(NodeError::from)
            .and_then(|new| self.check_reload(&new))
            .inspect_err(|e| {
                tracing::error!(
                    file = %path.display(),
                    "configuration file contains errors; no changes were applied: {e}"
                );
            })?;
        for name in &reload.pending_restart {
            tracing::warn!(
                "parameter \"{name}\" cannot be changed without restarting the server; it keeps its running value"
            );
        }
        let old = self.settings();
        self.config.publish(Arc::new(reload.config.clone()));
        for name in &reload.changed {
            tracing::info!(
                "parameter \"{name}\" changed to \"{}\"",
                shown_value(&reload.config, name)
            );
        }
        self.apply_reload(&old, &reload.config);
        Ok(reload)
    }

    /// Set `name = value` on top of the file and the `-c` options (the HA
    /// loop's `primary_conninfo` of the leader to follow), then reload: a
    /// standby reconnects its walreceiver to the new upstream without a
    /// restart. A value the reload rejects is taken back.
    pub fn set_override(&self, name: &str, value: &str) -> Result<Reload, NodeError> {
        self.set_overrides(&[(name, value)])
    }

    /// [`Node::set_override`] of several parameters in one reload, so the
    /// walreceiver sees them change together (an upstream and the slot to
    /// stream on there).
    pub fn set_overrides(&self, settings: &[(&str, &str)]) -> Result<Reload, NodeError> {
        let previous = {
            let mut o = self.overrides.lock().unwrap_or_else(|e| e.into_inner());
            let previous = o.clone();
            for (name, value) in settings {
                o.retain(|s| s.split_once('=').is_none_or(|(n, _)| n.trim() != *name));
                o.push(format!("{name}={value}"));
            }
            previous
        };
        self.reload_config().inspect_err(|_| {
            *self.overrides.lock().unwrap_or_else(|e| e.into_inner()) = previous;
        })
    }

    /// The merged configuration, if every changed value is usable.
    fn check_reload(&self, new: &Config) -> Result<Reload, NodeError> {
        let reload = self.settings().reload(new)?;
        // Parsed here, so a bad list is rejected before anything changes.
        crate::syncrep::standby_names::parse(&reload.config.synchronous_standby_names)?;
        Ok(reload)
    }

    /// Hand the changed values to the parts that hold their own copy.
    fn apply_reload(&self, old: &Config, new: &Config) {
        if old.synchronous_standby_names != new.synchronous_standby_names {
            // Validated by check_reload.
            if let Ok(names) = crate::syncrep::standby_names::parse(&new.synchronous_standby_names)
            {
                self.syncrep.set_config(names, &self.standby_positions());
            }
        }
        if old.max_slot_wal_keep_size != new.max_slot_wal_keep_size {
            self.slots
                .set_max_keep_bytes(new.max_slot_wal_keep_size.bytes());
        }
        if old.archive_command != new.archive_command {
            if let Some((archiver, _)) = &self.wal_threads().archiver {
                archiver.set_archive_command(&new.archive_command);
            }
        }
    }
}

/// A parameter's new value as the log may show it (no secrets).
fn shown_value(config: &Config, name: &str) -> String {
    if name == "primary_conninfo" {
        return redact_conninfo(&config.primary_conninfo);
    }
    let shown = config.redacted();
    toml::Table::try_from(&shown)
        .ok()
        .and_then(|t| {
            t.get(name)
                .map(|v| v.to_string().trim_matches('"').to_string())
        })
        .unwrap_or_default()
}
