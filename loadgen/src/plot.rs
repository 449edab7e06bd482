//! A latency-percentile plot as a self-contained SVG, written by hand to avoid a plotting stack.
//!
//! The x axis is the percentile on the usual HDR scale, log10(1 / (1 - percentile)), so that 90 %,
//! 99 % and 99.9 % are evenly spaced; the y axis is latency on a log scale, because one stall at
//! the tail would otherwise flatten every other point into the floor.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

const WIDTH_PX: f64 = 900.0;
const HEIGHT_PX: f64 = 520.0;
const MARGIN_LEFT_PX: f64 = 80.0;
const MARGIN_RIGHT_PX: f64 = 220.0;
const MARGIN_TOP_PX: f64 = 40.0;
const MARGIN_BOTTOM_PX: f64 = 60.0;
/// Nines shown on the x axis at most (99.9999 %); a run rarely has the samples for more.
const NINES_MAX: u32 = 6;
const TICKS_PER_HALF_DISTANCE: u32 = 5;
const AXIS_LABEL_Y: &str = "latency (log scale)";
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// One plotted series: its name and its points as (log10(1/(1-q)), log10(latency µs)).
fn points_of(histogram: &Histogram<u64>, x_max: f64) -> Vec<(f64, f64)> {
    histogram
        .iter_quantiles(TICKS_PER_HALF_DISTANCE)
        .map(|step| {
            let quantile = step.quantile_iterated_to();
            let x = if quantile >= 1.0 {
                x_max
            } else {
                (1.0 / (1.0 - quantile)).log10().min(x_max)
            };
            let latency_us = (step.value_iterated_to().max(1) as f64) / 1_000.0;
            (x, latency_us.log10())
        })
        .collect()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn latency_label(log_us: f64) -> String {
    let us = 10f64.powf(log_us);
    if us >= 1_000_000.0 {
        format!("{:.0} s", us / 1_000_000.0)
    } else if us >= 1_000.0 {
        format!("{:.0} ms", us / 1_000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// Renders the series that have values; returns `None` when none has.
pub fn percentile_svg(title: &str, series: &[(&str, &Histogram<u64>)]) -> Option<String> {
    let present: Vec<&(&str, &Histogram<u64>)> = series
        .iter()
        .filter(|(_, histogram)| !histogram.is_empty())
        .collect();
    if present.is_empty() {
        return None;
    }
    let largest_count = present
        .iter()
        .map(|(_, histogram)| histogram.len())
        .max()
        .unwrap_or(1);
    let x_max = ((largest_count as f64).log10().ceil()).clamp(1.0, f64::from(NINES_MAX));
    let plotted: Vec<(&str, Vec<(f64, f64)>)> = present
        .iter()
        .map(|(name, histogram)| (*name, points_of(histogram, x_max)))
        .collect();
    let all_y = plotted
        .iter()
        .flat_map(|(_, points)| points.iter().map(|point| point.1));
    let (y_low, y_high) = all_y.fold((f64::MAX, f64::MIN), |(low, high), y| {
        (low.min(y), high.max(y))
    });
    let y_min = y_low.floor();
    let y_max = (y_high.ceil()).max(y_min + 1.0);

    let plot_width = WIDTH_PX - MARGIN_LEFT_PX - MARGIN_RIGHT_PX;
    let plot_height = HEIGHT_PX - MARGIN_TOP_PX - MARGIN_BOTTOM_PX;
    let to_x = |x: f64| MARGIN_LEFT_PX + x / x_max * plot_width;
    let to_y = |y: f64| MARGIN_TOP_PX + (1.0 - (y - y_min) / (y_max - y_min)) * plot_height;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH_PX}" height="{HEIGHT_PX}">"#
    );
    let _ = writeln!(svg, r#"<g font-family="sans-serif" font-size="12">"#);
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="24" font-size="15">{}</text>"#,
        MARGIN_LEFT_PX,
        escape(title)
    );

    for nines in 0..=(x_max as u32) {
        let x = to_x(f64::from(nines));
        let label = match nines {
            0 => "0%".to_owned(),
            _ => format!("{}%", 100.0 - 100.0 / 10f64.powi(nines as i32)),
        };
        let (top, bottom, text_y) = (
            MARGIN_TOP_PX,
            MARGIN_TOP_PX + plot_height,
            MARGIN_TOP_PX + plot_height + 18.0,
        );
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="#ddd"/>"##
        );
        let _ = writeln!(
            svg,
            r#"<text x="{x:.1}" y="{text_y:.1}" text-anchor="middle">{label}</text>"#
        );
    }
    let mut decade = y_min;
    while decade <= y_max {
        let y = to_y(decade);
        let (left, right) = (MARGIN_LEFT_PX, MARGIN_LEFT_PX + plot_width);
        let _ = write!(
            svg,
            r##"<line x1="{left:.1}" y1="{y:.1}" x2="{right:.1}" y2="{y:.1}" stroke="#ddd"/>"##
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 6.0,
            y + 4.0,
            latency_label(decade)
        );
        decade += 1.0;
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        MARGIN_LEFT_PX + plot_width / 2.0,
        HEIGHT_PX - 14.0
    );
    let middle = MARGIN_TOP_PX + plot_height / 2.0;
    let _ = write!(
        svg,
        r#"<text x="16" y="{middle:.1}" transform="rotate(-90 16 {middle:.1})""#
    );
    let _ = writeln!(svg, r#" text-anchor="middle">{AXIS_LABEL_Y}</text>"#);

    for (position, (name, points)) in plotted.iter().enumerate() {
        let color = COLORS[position % COLORS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", to_x(x), to_y(y)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        let legend_y = MARGIN_TOP_PX + 16.0 + position as f64 * 20.0;
        let legend_x = MARGIN_LEFT_PX + plot_width + 16.0;
        let line_end_x = legend_x + 20.0;
        let _ = write!(
            svg,
            r#"<line x1="{legend_x:.1}" y1="{legend_y:.1}" x2="{line_end_x:.1}" y2="{legend_y:.1}""#
        );
        let _ = writeln!(
            svg,
            r#" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            legend_x + 26.0,
            legend_y + 4.0,
            escape(name)
        );
    }
    let _ = writeln!(svg, "</g>\n</svg>");
    Some(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::new_histogram;

    #[test]
    fn a_plot_has_one_line_per_non_empty_series_and_escapes_names() {
        let mut fast = new_histogram();
        let mut slow = new_histogram();
        for value_ns in 1..=10_000u64 {
            fast.record(value_ns * 100).unwrap();
            slow.record(value_ns * 10_000).unwrap();
        }
        let empty = new_histogram();
        let svg = percentile_svg(
            "a <test>",
            &[("fast", &fast), ("slow & late", &slow), ("none", &empty)],
        )
        .unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("slow &amp; late"));
        assert!(svg.contains("a &lt;test&gt;"));
        assert!(!svg.contains(">none<"));
    }

    #[test]
    fn nothing_is_drawn_without_values() {
        assert_eq!(percentile_svg("empty", &[("none", &new_histogram())]), None);
    }
}
