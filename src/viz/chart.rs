//! Small line charts as SVG (LSNs, lag, writes per second over time),
//! drawn server-side so the pages need no chart script, and deterministic
//! so they can be compared in tests.

use std::fmt::Write as _;

use super::xml::{duration, escape};

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// The legend's label.
    pub name: String,
    /// A CSS colour.
    pub color: &'static str,
    /// (time in ms, value), in time order.
    pub points: Vec<(u64, f64)>,
}

const W: f64 = 520.0;
const H: f64 = 190.0;
const LEFT: f64 = 84.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 26.0;
const BOTTOM: f64 = 40.0;

/// A chart of `series` titled `title`; `label` prints a y value. Times are
/// shown relative to the last point ("-30s").
pub fn line_chart(title: &str, series: &[Series], label: fn(f64) -> String) -> String {
    let points = || series.iter().flat_map(|s| s.points.iter());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{H}\" fill=\"#fff\" stroke=\"#ddd\"/>\n<text x=\"8\" y=\"16\" font-weight=\"bold\" font-size=\"12\">{}</text>",
        escape(title)
    );
    let (Some(t0), Some(t1)) = (points().map(|p| p.0).min(), points().map(|p| p.0).max()) else {
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" fill=\"#777\" text-anchor=\"middle\">no samples yet</text>\n</svg>",
            W / 2.0,
            H / 2.0
        );
        return out;
    };
    let lo = points().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = points().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    // A flat line still gets a readable scale (three whole steps).
    let (lo, hi) = if hi - lo < 3.0 {
        (lo, lo + 3.0)
    } else {
        (lo, hi)
    };
    let span = (t1 - t0).max(1) as f64;
    let x = |t: u64| LEFT + (t - t0) as f64 / span * (W - LEFT - RIGHT);
    let y = |v: f64| TOP + (1.0 - (v - lo) / (hi - lo)) * (H - TOP - BOTTOM);
    for i in 0..=3 {
        let v = lo + (hi - lo) * f64::from(i) / 3.0;
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT}\" y1=\"{yy:.1}\" x2=\"{}\" y2=\"{yy:.1}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 4.0,
            y(v) + 4.0,
            escape(&label(v)),
            yy = y(v)
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{LEFT}\" y=\"{}\">-{}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">now</text>",
        H - BOTTOM + 14.0,
        duration(t1 - t0),
        W - RIGHT,
        H - BOTTOM + 14.0
    );
    let mut lx = LEFT;
    for s in series {
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
            .collect();
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"><title>{}</title></polyline>",
            s.color,
            path.join(" "),
            escape(&s.name)
        );
        let _ = writeln!(
            out,
            "<rect x=\"{lx}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            H - 16.0,
            s.color,
            lx + 14.0,
            H - 7.0,
            escape(&s.name)
        );
        lx += s.name.len() as f64 * 6.5 + 30.0;
    }
    out.push_str("</svg>\n");
    out
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
