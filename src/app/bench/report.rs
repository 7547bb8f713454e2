//! Summaries, the printed tables and the JSON file: every figure beside
//! PostgreSQL 15's and Redis's from `shared/anchors.md` and as a ratio to
//! the fdatasync rate measured in the same run, and the targets.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::loadgen::LoadResult;
use super::Level;

/// PostgreSQL 15, lone primary, pgbench one upsert per transaction
/// (anchors.md): (synchronous_commit, clients, tps, p99 ms if given).
pub const PG_ANCHORS: &[(&str, u32, f64, Option<f64>)] = &[
    ("off", 1, 12_024.0, None),
    ("off", 16, 57_200.0, None),
    ("off", 64, 44_867.0, Some(4.10)),
    ("on", 1, 5_389.0, None),
    ("on", 16, 19_962.0, None),
    ("on", 64, 23_809.0, Some(6.39)),
];

/// Redis 7.0 with AOF, redis-benchmark SET (anchors.md): (appendfsync, clients, rps).
pub const REDIS_ANCHORS: &[(&str, u32, f64)] = &[
    ("always", 1, 4_131.0),
    ("always", 16, 29_429.0),
    ("always", 64, 64_851.0),
    ("no", 1, 11_655.0),
    ("no", 16, 147_384.0),
    ("no", 64, 160_772.0),
];

/// One client with `local` reaches this share of the fdatasync rate.
pub const TARGET_ONE_CLIENT_RATIO: f64 = 0.90;
/// 64 clients with `local` reach this multiple of Redis's durable
/// commits/s (`appendfsync always`) in the same run.
pub const TARGET_64_CLIENTS_TIMES_REDIS: f64 = 1.2;

/// One measured run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cell {
    /// `walrep`, `postgresql` or `redis`.
    pub system: &'static str,
    pub level: Level,
    pub clients: u32,
    pub rep: u32,
    pub load: LoadResult,
    /// fdatasync rate around this run (mean of the probes before and after).
    pub fsync_per_s: f64,
    /// `load.rps / fsync_per_s`.
    pub ratio_to_fsync: f64,
    /// walrep only: fdatasyncs per second and records per flush during the run.
    pub wal_fsyncs_per_s: Option<f64>,
    pub wal_batch_records: Option<f64>,
    /// One client only: the loopback round trip measured right after the
    /// run, µs, and `load.rps` over 1 / (fdatasync + round trip), the
    /// floor of a commit that is one fdatasync and one client round trip.
    pub rtt_us: Option<f64>,
    pub ratio_to_floor: Option<f64>,
}

impl Cell {
    /// Record the loopback round trip measured beside this run.
    pub fn set_rtt(&mut self, rtt_us: f64) {
        let floor_per_s = 1e6 / (1e6 / self.fsync_per_s + rtt_us);
        self.rtt_us = Some(rtt_us);
        self.ratio_to_floor = Some(self.load.rps / floor_per_s);
    }
}

/// Median (and range) of a cell over the repetitions.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub system: &'static str,
    pub level: Level,
    pub clients: u32,
    pub reps: usize,
    pub rps: f64,
    pub rps_min: f64,
    pub rps_max: f64,
    pub mean_ms: f64,
    pub p99_ms: f64,
    pub ratio_to_fsync: f64,
    pub wal_fsyncs_per_s: Option<f64>,
    pub wal_batch_records: Option<f64>,
    /// One client: median round trip and share of 1 / (fdatasync + round trip).
    pub rtt_us: Option<f64>,
    pub ratio_to_floor: Option<f64>,
}

/// A target and whether this run met it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Target {
    pub what: String,
    pub measured: String,
    pub met: bool,
}

pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Group cells by (system, level, clients) and take medians.
pub fn summarise(cells: &[Cell]) -> Vec<Summary> {
    let mut groups: BTreeMap<(&str, Level, u32), Vec<&Cell>> = BTreeMap::new();
    for c in cells {
        groups
            .entry((c.system, c.level, c.clients))
            .or_default()
            .push(c);
    }
    groups
        .into_iter()
        .map(|((_, level, clients), cs)| {
            let m =
                |f: &dyn Fn(&Cell) -> f64| median(&mut cs.iter().map(|c| f(c)).collect::<Vec<_>>());
            let opt = |f: &dyn Fn(&Cell) -> Option<f64>| {
                let mut v: Vec<f64> = cs.iter().filter_map(|c| f(c)).collect();
                (!v.is_empty()).then(|| median(&mut v))
            };
            let rps: Vec<f64> = cs.iter().map(|c| c.load.rps).collect();
            Summary {
                system: cs[0].system,
                level,
                clients,
                reps: cs.len(),
                rps: m(&|c| c.load.rps),
                rps_min: rps.iter().copied().fold(f64::INFINITY, f64::min),
                rps_max: rps.iter().copied().fold(0.0, f64::max),
                mean_ms: m(&|c| c.load.mean_ms),
                p99_ms: m(&|c| c.load.p99_ms),
                ratio_to_fsync: m(&|c| c.ratio_to_fsync),
                wal_fsyncs_per_s: opt(&|c| c.wal_fsyncs_per_s),
                wal_batch_records: opt(&|c| c.wal_batch_records),
                rtt_us: opt(&|c| c.rtt_us),
                ratio_to_floor: opt(&|c| c.ratio_to_floor),
            }
        })
        .collect()
}

/// The targets, judged on the walrep summaries (the 64-client one against
/// Redis in the same run, so only when Redis was run: `--anchors`).
pub fn targets(summaries: &[Summary]) -> Vec<Target> {
    let find_of = |system: &str, clients| {
        summaries
            .iter()
            .find(|s| s.system == system && s.level == Level::Local && s.clients == clients)
    };
    let find = |clients| find_of("walrep", clients);
    let mut out = Vec::new();
    if let Some(s) = find(1) {
        out.push(Target {
            what: format!(
                "1 client, synchronous_commit=local >= {:.0}% of the fdatasync rate",
                TARGET_ONE_CLIENT_RATIO * 100.0
            ),
            measured: format!("{:.1}% ({:.0}/s)", s.ratio_to_fsync * 100.0, s.rps),
            met: s.ratio_to_fsync >= TARGET_ONE_CLIENT_RATIO,
        });
    }
    if let (Some(s), Some(r)) = (find(64), find_of("redis", 64)) {
        let times = s.rps / r.rps;
        out.push(Target {
            what: format!(
                "64 clients, synchronous_commit=local >= {TARGET_64_CLIENTS_TIMES_REDIS}x Redis appendfsync always (same run)"
            ),
            measured: format!("{times:.2}x ({:.0}/s against {:.0}/s)", s.rps, r.rps),
            met: times >= TARGET_64_CLIENTS_TIMES_REDIS,
        });
    }
    out
}

fn pg_anchor(level: Level, clients: u32) -> Option<(f64, Option<f64>)> {
    PG_ANCHORS
        .iter()
        .find(|a| a.0 == level.postgres() && a.1 == clients)
        .map(|a| (a.2, a.3))
}

fn redis_anchor(level: Level, clients: u32) -> Option<f64> {
    REDIS_ANCHORS
        .iter()
        .find(|a| a.0 == level.redis_appendfsync() && a.1 == clients)
        .map(|a| a.2)
}

pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let s = format!("{:.0}", v);
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    format!("{sign}{out}")
}

/// The markdown tables of one level: walrep beside the anchors.
pub fn level_table(level: Level, summaries: &[Summary]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "synchronous_commit = {} (PostgreSQL: synchronous_commit = {}, Redis: appendfsync {})\n",
        level.walrep(),
        level.postgres(),
        level.redis_appendfsync()
    );
    let _ = writeln!(t, "| clients | walrep commits/s (min-max) | / fdatasync | mean ms | p99 ms | WAL fsyncs/s | records/flush | PG15 anchors.md | PG15 same run (/ fdatasync, p99 ms) | Redis AOF anchors.md | Redis same run (/ fdatasync, p99 ms) |");
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|---|---|");
    let mut clients: Vec<u32> = summaries
        .iter()
        .filter(|s| s.level == level)
        .map(|s| s.clients)
        .collect();
    clients.sort_unstable();
    clients.dedup();
    for c in clients {
        let get = |sys: &str| {
            summaries
                .iter()
                .find(|s| s.system == sys && s.level == level && s.clients == c)
        };
        let same_run = |sys: &str| {
            get(sys).map_or("-".to_string(), |s| {
                format!("{} ({:.2}, {:.2})", num(s.rps), s.ratio_to_fsync, s.p99_ms)
            })
        };
        let w = get("walrep");
        let wcol = w.map_or("-".to_string(), |s| {
            format!("{} ({}-{})", num(s.rps), num(s.rps_min), num(s.rps_max))
        });
        let f = |g: &dyn Fn(&Summary) -> String| w.map_or("-".to_string(), g);
        let pg = pg_anchor(level, c).map_or("-".to_string(), |(tps, p99)| match p99 {
            Some(p) => format!("{} (p99 {p:.2})", num(tps)),
            None => num(tps),
        });
        let redis = redis_anchor(level, c).map_or("-".to_string(), num);
        let _ = writeln!(
            t,
            "| {c} | {wcol} | {} | {} | {} | {} | {} | {pg} | {} | {redis} | {} |",
            f(&|s| format!("{:.2}", s.ratio_to_fsync)),
            f(&|s| format!("{:.3}", s.mean_ms)),
            f(&|s| format!("{:.3}", s.p99_ms)),
            f(&|s| s.wal_fsyncs_per_s.map_or("-".into(), num)),
            f(&|s| s
                .wal_batch_records
                .map_or("-".into(), |b| format!("{b:.1}"))),
            same_run("postgresql"),
            same_run("redis"),
        );
    }
    t
}

/// One client, every rep: the fdatasync, the loopback round trip, and the
/// share of 1 / (fdatasync + round trip) each system reached. A `local`
/// row also gets the same system's one-client `off` request of that rep
/// (round trip + client + server, no fsync) and the share of
/// 1 / (fdatasync + that request): the floor a commit can reach when the
/// fdatasync is all it adds.
pub fn floor_table(cells: &[Cell]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "one client against 1 / (fdatasync + loopback round trip) and 1 / (fdatasync + an `off` request)\n\n\
         | system | level | rep | fdatasync us | round trip us | floor/s | commits/s | / fdatasync | / floor | off request us | / (fdatasync + off request) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|"
    );
    for c in cells {
        let (Some(rtt), Some(share)) = (c.rtt_us, c.ratio_to_floor) else {
            continue;
        };
        let fsync_us = 1e6 / c.fsync_per_s;
        let off_us = (c.level == Level::Local)
            .then(|| {
                cells.iter().find(|o| {
                    o.system == c.system
                        && o.rep == c.rep
                        && o.clients == 1
                        && o.level == Level::Off
                })
            })
            .flatten()
            .filter(|o| o.load.rps > 0.0)
            .map(|o| 1e6 / o.load.rps);
        let _ =
            writeln!(
            t,
            "| {} | {} | {} | {fsync_us:.0} | {rtt:.1} | {} | {} | {:.2} | {share:.2} | {} | {} |",
            c.system,
            c.level.walrep(),
            c.rep,
            num(1e6 / (fsync_us + rtt)),
            num(c.load.rps),
            c.ratio_to_fsync,
            off_us.map_or("-".into(), |u| format!("{u:.1}")),
            off_us.map_or("-".into(), |u| format!("{:.2}", c.load.rps * (fsync_us + u) / 1e6)),
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(system: &'static str, level: Level, clients: u32, rps: f64, fsync: f64) -> Cell {
        Cell {
            system,
            level,
            clients,
            rep: 1,
            load: LoadResult {
                rps,
                mean_ms: 1.0,
                p50_ms: 1.0,
                p99_ms: 2.0,
                max_ms: 3.0,
                requests: 10,
            },
            fsync_per_s: fsync,
            ratio_to_fsync: rps / fsync,
            wal_fsyncs_per_s: None,
            wal_batch_records: None,
            rtt_us: None,
            ratio_to_floor: None,
        }
    }

    #[test]
    fn medians_and_targets() {
        let cells = vec![
            cell("walrep", Level::Local, 1, 900.0, 1000.0),
            cell("walrep", Level::Local, 1, 950.0, 1000.0),
            cell("walrep", Level::Local, 1, 700.0, 1000.0),
            cell("walrep", Level::Local, 64, 79_000.0, 1000.0),
        ];
        let s = summarise(&cells);
        assert_eq!(s.len(), 2);
        assert_eq!(
            targets(&s).len(),
            1,
            "no Redis in the run: the 64-client target is not judged"
        );
        let mut cells = cells;
        cells.push(cell("redis", Level::Local, 64, 70_000.0, 1000.0));
        let s = summarise(&cells);
        let one = s
            .iter()
            .find(|x| x.system == "walrep" && x.clients == 1)
            .unwrap();
        assert_eq!(one.rps, 900.0);
        assert_eq!((one.rps_min, one.rps_max), (700.0, 950.0));
        let t = targets(&s);
        assert!(t[0].met, "{t:?}");
        assert!(!t[1].met, "79,000/s is 1.13x Redis's 70,000/s: {t:?}");
        let table = level_table(Level::Local, &s);
        assert!(table.contains("| 1 | 900 (700-950) | 0.90 |"), "{table}");
        assert!(table.contains("23,809 (p99 6.39)"), "{table}");
    }

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(num(1234567.4), "1,234,567");
        assert_eq!(num(999.0), "999");
        assert_eq!(num(f64::NAN), "-");
        assert_eq!(median(&mut [3.0, 1.0, 2.0, 10.0]), 2.5);
    }

    #[test]
    fn the_one_client_floor_adds_the_round_trip_to_the_fdatasync() {
        // 1000 fdatasyncs/s (1000 µs) and a 1000 µs round trip: 500/s.
        let mut c = cell("walrep", Level::Local, 1, 450.0, 1000.0);
        c.set_rtt(1000.0);
        assert_eq!(c.rtt_us, Some(1000.0));
        assert!((c.ratio_to_floor.unwrap() - 0.9).abs() < 1e-9);
        let s = summarise(&[c.clone(), cell("walrep", Level::Local, 64, 9e4, 1000.0)]);
        assert_eq!(s[0].ratio_to_floor.map(|r| (r * 100.0).round()), Some(90.0));
        assert_eq!(s[1].ratio_to_floor, None);
        let t = floor_table(&[c, cell("redis", Level::Local, 64, 9e4, 1000.0)]);
        assert!(
            t.contains("| walrep | local | 1 | 1000 | 1000.0 | 500 | 450 | 0.45 | 0.90 |"),
            "{t}"
        );
        assert!(!t.contains("| redis |"), "{t}");
    }
}
