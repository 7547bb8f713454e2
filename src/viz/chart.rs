//! Small line charts as SVG (LSNs, lag, writes per second over time),
//! drawn server-side (with plotters, in [`super::plot`]) so the pages need
//! no chart script, and deterministic so they can be compared in tests.

pub use super::plot::Series;

/// A chart of `series` titled `title`; `label` prints a y value. Times are
/// shown relative to the last point ("-30s"). Drawn by [`super::plot`].
pub fn line_chart(title: &str, series: &[Series], label: fn(f64) -> String) -> String {
    super::plot::line_chart(title, series, label)
}

/// Bytes as people read them (`1.5 MiB`).
pub fn bytes(v: f64) -> String {
    let v = v.max(0.0);
    if v < 1024.0 {
        format!("{v:.0} B")
    } else if v < 1024.0 * 1024.0 {
        format!("{:.1} KiB", v / 1024.0)
    } else if v < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} MiB", v / 1024.0 / 1024.0)
    } else {
        format!("{:.2} GiB", v / 1024.0 / 1024.0 / 1024.0)
    }
}

/// A WAL position as PostgreSQL prints it.
pub fn lsn(v: f64) -> String {
    crate::Lsn(v.max(0.0) as u64).to_string()
}

/// A plain number.
pub fn number(v: f64) -> String {
    format!("{v:.0}")
}
