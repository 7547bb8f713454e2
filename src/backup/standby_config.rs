//! `--write-standby-config` (pg_basebackup's `-R`): `standby.signal` and
//! `primary_conninfo` in the copy's `walrep.toml`, so the copy starts as a
//! standby of the node it was taken from, with `primary_slot_name` when a
//! slot was made for it (pg_basebackup's `-C -S`).

use std::fs;
use std::io;
use std::path::Path;

use crate::config::Config;
use crate::datadir::{CONFIG_FILE, STANDBY_SIGNAL};
use crate::storage::{durable_create, durable_replace, Storage};

/// The connection parameter set.
const PARAMETER: &str = "primary_conninfo";
/// The slot parameter set when a slot was made for the standby.
const SLOT_PARAMETER: &str = "primary_slot_name";

/// Why the standby configuration could not be written.
#[derive(Debug, thiserror::Error)]
pub enum StandbyConfigError {
    /// A configuration file could not be read or written.
    #[error("could not {op} \"{path}\": {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file.
        path: String,
        /// The IO error.
        source: io::Error,
    },
    /// The edited configuration file does not parse back to the settings written.
    #[error("the edited {CONFIG_FILE} does not read back as expected: {0}")]
    Edit(String),
    /// Writing or fsyncing through the IO seam failed.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StandbyConfigError {
    let path = path.display().to_string();
    move |source| StandbyConfigError::Io { op, path, source }
}

/// libpq's appendConnStrVal: bare if only `[A-Za-z0-9_.]`, else quoted
/// with `\` escaping `'` and `\`.
pub fn conn_value(v: &str) -> String {
    if !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    {
        return v.to_string();
    }
    let mut s = String::from("'");
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('\'');
    s
}

/// A connection string from `(key, value)` pairs (empty values skipped).
pub fn conninfo_string(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", conn_value(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Is this line a top-level `name = ...` assignment?
fn assigns(line: &str, name: &str) -> bool {
    line.trim_start()
        .strip_prefix(name)
        .is_some_and(|rest| rest.trim_start().starts_with('='))
}

/// Is this line a top-level `primary_conninfo = ...` assignment?
#[cfg(test)]
fn assigns_parameter(line: &str) -> bool {
    assigns(line, PARAMETER)
}

/// `text` with `primary_conninfo` set to `conninfo`: the existing top-level
/// assignment is replaced, else one is added before the first table.
pub fn set_primary_conninfo(text: &str, conninfo: &str) -> String {
    set_parameter(text, PARAMETER, conninfo)
}

/// `text` with the top-level string parameter `name` set to `value`: the
/// existing assignment is replaced, else one is added before the first
/// table.
pub fn set_parameter(text: &str, name: &str, value: &str) -> String {
    let value = toml::Value::String(value.to_string());
    let line = format!("{name} = {value}");
    let mut out = Vec::new();
    let mut placed = false;
    let mut in_table = false;
    for l in text.lines() {
        let t = l.trim_start();
        if t.starts_with('[') && !in_table {
            in_table = true;
            if !placed {
                out.push("# Written by walrep basebackup --write-standby-config".to_string());
                out.push(line.clone());
                out.push(String::new());
                placed = true;
            }
        }
        if !in_table && assigns(l, name) {
            if !placed {
                out.push(line.clone());
                placed = true;
            }
            continue;
        }
        out.push(l.to_string());
    }
    if !placed {
        out.push("# Written by walrep basebackup --write-standby-config".to_string());
        out.push(line);
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

/// Write `standby.signal` and set `primary_conninfo` (and
/// `primary_slot_name` when `slot` is given) in `datadir`, durably,
/// through `storage`.
pub fn write(
    storage: &dyn Storage,
    datadir: &Path,
    conninfo: &str,
    slot: Option<&str>,
) -> Result<(), StandbyConfigError> {
    let config = datadir.join(CONFIG_FILE);
    let text = fs::read_to_string(&config).map_err(io_err("read", &config))?;
    let mut edited = set_primary_conninfo(&text, conninfo);
    if let Some(slot) = slot {
        edited = set_parameter(&edited, SLOT_PARAMETER, slot);
    }
    let parsed = Config::from_toml_with_overrides(&edited, CONFIG_FILE, &[])
        .map_err(|e| StandbyConfigError::Edit(e.to_string()))?;
    if parsed.primary_conninfo != conninfo {
        return Err(StandbyConfigError::Edit(format!(
            "{PARAMETER} reads back as {:?}",
            parsed.primary_conninfo
        )));
    }
    if parsed.primary_slot_name != slot.unwrap_or("") {
        return Err(StandbyConfigError::Edit(format!(
            "{SLOT_PARAMETER} reads back as {:?}",
            parsed.primary_slot_name
        )));
    }
    durable_replace(storage, &config, edited.as_bytes())?;
    durable_create(storage, &datadir.join(STANDBY_SIGNAL), &[])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_like_libpq() {
        assert_eq!(conn_value("127.0.0.1"), "127.0.0.1");
        assert_eq!(conn_value("a b"), "'a b'");
        assert_eq!(conn_value("it's\\"), "'it\\'s\\\\'");
        assert_eq!(conn_value(""), "''");
        let s = conninfo_string(&[
            ("host", "127.0.0.1"),
            ("port", "5433"),
            ("user", "x y"),
            ("password", ""),
        ]);
        assert_eq!(s, "host=127.0.0.1 port=5433 user='x y'");
        let parsed = crate::replication::client::ConnInfo::parse(&s).unwrap();
        assert_eq!(parsed.user, "x y");
    }

    #[test]
    fn template_gets_the_value_and_still_parses() {
        let text = Config::template();
        let ci = "host=127.0.0.1 port=5433 user=walrep application_name='my standby'";
        let edited = set_primary_conninfo(&text, ci);
        let c = Config::from_toml_with_overrides(&edited, "t", &[]).unwrap();
        assert_eq!(c.primary_conninfo, ci);
        assert_eq!(edited.lines().filter(|l| assigns_parameter(l)).count(), 1);
        // A file without the parameter and with a table gets it before the table.
        let edited = set_primary_conninfo("port = 1\n[[roles]]\nname = \"walrep\"\n", ci);
        let c = Config::from_toml_with_overrides(&edited, "t", &[]).unwrap();
        assert_eq!(c.primary_conninfo, ci);
        assert_eq!(c.roles[0].name, "walrep");
    }

    #[test]
    fn write_creates_the_signal_and_sets_the_parameter() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(CONFIG_FILE), Config::template()).unwrap();
        write(&crate::storage::StdStorage, d.path(), "host=h port=1", None).unwrap();
        assert!(d.path().join(STANDBY_SIGNAL).exists());
        let c = Config::load(&d.path().join(CONFIG_FILE), &[]).unwrap();
        assert_eq!(c.primary_conninfo, "host=h port=1");
        assert_eq!(c.primary_slot_name, "");
        write(
            &crate::storage::StdStorage,
            d.path(),
            "host=h port=2",
            Some("s_1"),
        )
        .unwrap();
        let c = Config::load(&d.path().join(CONFIG_FILE), &[]).unwrap();
        assert_eq!(c.primary_conninfo, "host=h port=2");
        assert_eq!(c.primary_slot_name, "s_1");
    }
}
