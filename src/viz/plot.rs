//! Line charts drawn with plotters' SVG backend: axes, ticks, grid and
//! legend come from a crate made for charts instead of hand-placed
//! coordinates. Only the SVG backend is built (no bitmap, no system font
//! library): SVG text is laid out by the browser, so plotters' built-in
//! size estimate is all the layout needs. The output is deterministic, so
//! tests can compare it.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

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

/// Width and height of every chart, in pixels.
pub const SIZE: (u32, u32) = (520, 190);
/// Font of every label.
const FONT: (&str, u32) = ("sans-serif", 14);

/// A chart of `series` titled `title`; `label` prints a y value. Times are
/// shown relative to the last point ("-30s" .. "now").
pub fn line_chart(title: &str, series: &[Series], label: fn(f64) -> String) -> String {
    let mut svg = String::new();
    let drawn = {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw(&root, title, series, label).and_then(|()| root.present().map_err(|e| e.to_string()))
    };
    match drawn {
        // Marked so pages can style every chart alike.
        Ok(()) => svg.replacen("<svg ", "<svg class=\"chart\" ", 1),
        Err(e) => failed(title, &e),
    }
}

/// What a chart that could not be drawn shows instead.
fn failed(title: &str, why: &str) -> String {
    let (w, h) = SIZE;
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" width=\"{w}\" height=\"{h}\"><text x=\"8\" y=\"16\">{}: not drawn ({})</text></svg>\n",
        escape(title),
        escape(why)
    )
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn draw(
    root: &Area<'_>,
    title: &str,
    series: &[Series],
    label: fn(f64) -> String,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<_>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let points = || series.iter().flat_map(|s| s.points.iter());
    let (Some(t0), Some(t1)) = (points().map(|p| p.0).min(), points().map(|p| p.0).max()) else {
        return empty(root, title);
    };
    let lo = points().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = points().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    // A flat line still gets a readable scale (three whole steps).
    let hi = if hi - lo < 3.0 { lo + 3.0 } else { hi };
    let span_s = (t1 - t0).max(1) as f64 / 1000.0;
    let mut chart = ChartBuilder::on(root)
        .caption(title, FONT.into_font().style(FontStyle::Bold))
        .margin(8)
        .margin_right(20)
        .x_label_area_size(22)
        .y_label_area_size(84)
        .build_cartesian_2d(-span_s..0.0, lo..hi)
        .map_err(err)?;
    let x_label = |x: &f64| {
        if *x >= 0.0 {
            "now".to_string()
        } else {
            format!("-{}", duration((-x * 1000.0) as u64))
        }
    };
    let y_label = |y: &f64| label(*y);
    chart
        .configure_mesh()
        .x_labels(5)
        .y_labels(4)
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .label_style(FONT)
        .light_line_style(WHITE)
        .draw()
        .map_err(err)?;
    for s in series {
        let color = rgb(s.color);
        let line = s
            .points
            .iter()
            .map(|&(t, v)| ((t as f64 - t1 as f64) / 1000.0, v));
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(2)))
            .map_err(err)?
            .label(s.name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(FONT)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.2))
        .draw()
        .map_err(err)
}

/// The frame and title of a chart with nothing to show yet.
fn empty(root: &Area<'_>, title: &str) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<_>| e.to_string();
    let (w, h) = SIZE;
    root.titled(title, FONT.into_font().style(FontStyle::Bold))
        .map_err(err)?;
    let centre = TextStyle::from(FONT.into_font())
        .color(&RGBColor(0x77, 0x77, 0x77))
        .pos(Pos::new(HPos::Center, VPos::Center));
    root.draw_text("no samples yet", &centre, (w as i32 / 2, h as i32 / 2))
        .map_err(err)
}

/// A `#rrggbb` colour; anything else draws black.
fn rgb(css: &str) -> RGBColor {
    let hex = css.trim_start_matches('#');
    let byte = |i: usize| {
        hex.get(i..i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0)
    };
    RGBColor(byte(0), byte(2), byte(4))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(svg: &str) -> roxmltree::Document<'_> {
        roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("{e}\n{svg}"))
    }

    #[test]
    fn a_chart_has_its_title_lines_legend_and_relative_times() {
        let s = Series {
            name: "flush <&>".into(),
            color: "#264653",
            points: vec![(1_000, 10.0), (31_000, 2048.0), (61_000, 4096.0)],
        };
        let svg = line_chart("LSN", &[s], super::super::chart::bytes);
        let doc = parse(&svg);
        let root = doc.root_element();
        assert_eq!(root.attribute("class"), Some("chart"));
        let texts: Vec<String> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .map(|n| n.text().unwrap_or("").trim().to_string())
            .collect();
        for want in ["LSN", "flush <&>", "now", "-1m00s"] {
            assert!(texts.iter().any(|t| t == want), "{want} in {texts:?}");
        }
        assert!(texts.iter().any(|t| t.ends_with("KiB")), "{texts:?}");
        let stroked = doc
            .descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .any(|n| n.attribute("stroke") == Some("#264653"));
        assert!(stroked, "{svg}");
    }

    #[test]
    fn an_empty_chart_says_so() {
        let svg = line_chart("lag", &[], super::super::chart::bytes);
        let doc = parse(&svg);
        assert!(doc
            .descendants()
            .any(|n| n.text().is_some_and(|t| t.trim() == "no samples yet")));
    }

    #[test]
    fn colours_parse_and_bad_ones_are_black() {
        assert_eq!(rgb("#e76f51"), RGBColor(0xe7, 0x6f, 0x51));
        assert_eq!(rgb("red"), RGBColor(0, 0, 0));
    }
}
