//! What every replication scenario of `walrep bench` is handed: the run
//! directory, this binary, the disk and CPU probes around each
//! measurement, and the figures and notes it records.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::cluster::{self, Node};
use super::figures::{Figure, Probe};
use super::fsync::{seq_write_probe, FsyncProber};
use super::{BenchArgs, BenchError};

/// Size of the sequential-write probe (small: the disk's burst budget is
/// shared with the measurement).
const SEQ_PROBE_BYTES: u64 = 128 << 20;

/// Everything a scenario needs.
pub struct Ctx<'a> {
    pub args: &'a BenchArgs,
    /// This binary (`walrep init`, `start`, `basebackup`, `promote`).
    pub exe: PathBuf,
    /// The run directory (all data directories live here).
    pub dir: PathBuf,
    prober: FsyncProber,
    pub probes: Vec<Probe>,
    pub figures: Vec<Figure>,
    /// Free-text observations printed with the report.
    pub notes: Vec<String>,
    /// The `--walrep-setting`s as each node (by data directory name) had
    /// them when last started, read back from it: printed when a node
    /// first shows them or they change.
    settings_seen: BTreeMap<String, Vec<String>>,
}

impl<'a> Ctx<'a> {
    pub fn new(args: &'a BenchArgs, exe: PathBuf, dir: PathBuf) -> Result<Ctx<'a>, BenchError> {
        Ok(Ctx {
            prober: FsyncProber::create(&dir)?,
            args,
            exe,
            dir,
            probes: Vec::new(),
            figures: Vec::new(),
            notes: Vec::new(),
            settings_seen: BTreeMap::new(),
        })
    }

    /// fdatasync rate (and, for bandwidth-bound scenarios, sequential
    /// write speed) and load average, recorded under `label`; returns the
    /// fdatasync mean latency in µs.
    pub fn probe(&mut self, label: &str, seq: bool) -> Result<f64, BenchError> {
        let f = self
            .prober
            .probe(Duration::from_secs_f64(self.args.fsync_seconds))?;
        let seq_write_mbps = if seq {
            Some(seq_write_probe(&self.dir, SEQ_PROBE_BYTES)?)
        } else {
            None
        };
        let p = Probe {
            label: label.into(),
            fdatasync_per_s: Some(f.ops_per_s),
            seq_write_mbps,
            load_avg: cluster::load_average(),
        };
        println!(
            "  probe {label}: fdatasync {:.0}/s ({:.0} us){}  load {:.2}",
            f.ops_per_s,
            f.mean_us,
            seq_write_mbps.map_or(String::new(), |m| format!("  seq write {m:.0} MB/s")),
            p.load_avg
        );
        self.probes.push(p);
        Ok(f.mean_us)
    }

    /// `walrep start` of `datadir` with the `--walrep-setting`s, then
    /// the scenario's own `overrides` (which win), once it answers PING;
    /// the settings are read back from it.
    pub fn start_node(&mut self, datadir: &Path, overrides: &[String]) -> Result<Node, BenchError> {
        let settings: Vec<String> = self
            .args
            .walrep_settings
            .iter()
            .chain(overrides)
            .cloned()
            .collect();
        let node = Node::start(&self.exe, datadir, &settings)?;
        let seen = cluster::settings_in_effect(node.port, &self.args.walrep_settings)?;
        let name = datadir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if !seen.is_empty() && self.settings_seen.get(&name) != Some(&seen) {
            self.note(format!(
                "walrep settings in effect on {name} (CONFIG GET): {}",
                seen.join(", ")
            ));
            self.settings_seen.insert(name, seen);
        }
        Ok(node)
    }

    pub fn note(&mut self, text: String) {
        println!("  note: {text}");
        self.notes.push(text);
    }

    /// A fresh subdirectory of the run directory.
    pub fn subdir(&self, name: &str) -> Result<PathBuf, BenchError> {
        let d = self.dir.join(name);
        if d.exists() {
            std::fs::remove_dir_all(&d)
                .map_err(|e| BenchError::io(format!("remove {}", d.display()), e))?;
        }
        std::fs::create_dir_all(&d)
            .map_err(|e| BenchError::io(format!("create {}", d.display()), e))?;
        Ok(d)
    }

    /// Where the anchor scripts put their clusters (reachable by `postgres`).
    pub fn anchors_base(&self, name: &str) -> Result<PathBuf, BenchError> {
        make_traversable(&self.dir)?;
        let base = self.dir.join(name);
        if base.exists() {
            std::fs::remove_dir_all(&base)
                .map_err(|e| BenchError::io(format!("remove {}", base.display()), e))?;
        }
        Ok(base)
    }
}

fn make_traversable(dir: &Path) -> Result<(), BenchError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| BenchError::io(format!("chmod {}", dir.display()), e))
}
