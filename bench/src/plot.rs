//! Plots written by hand as SVG: no dependency, readable in any browser and on GitHub.

use std::fmt::Write as _;

use crate::fleet::{FleetResult, TARGET_KIB_PER_CONNECTION, TARGET_P99_MS};
use crate::report::{Figure, ScenarioResult, num};

const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
const W: f64 = 1000.0;
const H: f64 = 380.0;
/// Each panel's plotting area: top, bottom.
const TOP: f64 = 50.0;
const BOTTOM: f64 = 320.0;

/// The `fleet` scenario: the ack latency's tail (log-log), CPU seconds per 1,000 heartbeats and
/// RSS per connection, one colour per server.
pub fn fleet_svg(r: &FleetResult) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">{} agents, {} s period, {} s window ({})</text>"#,
        r.config["agents"],
        r.config["period_s"],
        r.config["duration_s"],
        esc(&r.date)
    );
    cdf_panel(&mut s, r, 60.0, 520.0);
    let cpu: Vec<(String, f64)> = r
        .runs
        .iter()
        .map(|x| (x.name.clone(), x.cpu_s_per_1000))
        .collect();
    bar_panel(
        &mut s,
        "CPU s / 1,000 heartbeats",
        &cpu,
        None,
        600.0,
        780.0,
        4,
    );
    let mem: Vec<(String, f64)> = r
        .runs
        .iter()
        .map(|x| (x.name.clone(), x.kib_per_connection))
        .collect();
    bar_panel(
        &mut s,
        "RSS per connection (KiB)",
        &mem,
        Some(TARGET_KIB_PER_CONNECTION),
        830.0,
        980.0,
        1,
    );
    s.push_str("</svg>\n");
    s
}

/// The ack latency of every run as the fraction of acks slower than x (log-log: the tail is
/// what the target is about), x from 0.01 ms to 1 s, in [x0, x1].
fn cdf_panel(s: &mut String, r: &FleetResult, x0: f64, x1: f64) {
    let (lo, hi) = (-2.0f64, 3.0f64); // log10 ms
    let floor = -5.0f64; // log10 of the smallest fraction shown
    let x = |ms: f64| x0 + (ms.max(1e-3).log10().clamp(lo, hi) - lo) / (hi - lo) * (x1 - x0);
    let y = |frac: f64| TOP + (frac.max(1e-9).log10().clamp(floor, 0.0) / floor) * (BOTTOM - TOP);
    let _ = writeln!(
        s,
        r#"<text x="{x0}" y="{}" font-weight="bold">fraction of acks slower than x (log-log)</text>"#,
        TOP - 12.0
    );
    let _ = writeln!(
        s,
        r##"<rect x="{x0}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#888"/>"##,
        x1 - x0,
        BOTTOM - TOP
    );
    for e in lo as i32..=hi as i32 {
        let ms = 10f64.powi(e);
        let gx = x(ms);
        let label = if ms < 1.0 {
            format!("{ms}")
        } else {
            format!("{}", ms as u64)
        };
        let _ = writeln!(
            s,
            r##"<line x1="{gx:.1}" y1="{TOP}" x2="{gx:.1}" y2="{BOTTOM}" stroke="#ddd"/><text x="{gx:.1}" y="{}" text-anchor="middle">{label} ms</text>"##,
            BOTTOM + 16.0
        );
    }
    for e in floor as i32..=0 {
        let frac = 10f64.powi(e);
        let gy = y(frac);
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{gy:.1}" x2="{x1}" y2="{gy:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{frac}</text>"##,
            x0 - 4.0,
            gy + 4.0
        );
    }
    // The target: at most 1% of acks slower than 50 ms.
    let (tx, ty) = (x(TARGET_P99_MS), y(0.01));
    let _ = writeln!(
        s,
        r##"<line x1="{tx:.1}" y1="{TOP}" x2="{tx:.1}" y2="{BOTTOM}" stroke="#000" stroke-dasharray="4 3"/><line x1="{x0}" y1="{ty:.1}" x2="{x1}" y2="{ty:.1}" stroke="#000" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}">p99 target {TARGET_P99_MS} ms</text>"##,
        tx + 3.0,
        ty - 4.0
    );
    for (i, run) in r.runs.iter().enumerate() {
        let total: usize = run.ack_histogram.iter().map(|(_, c)| c).sum();
        if total == 0 {
            continue;
        }
        let colour = COLOURS[i % COLOURS.len()];
        let mut slower = total;
        let mut pts = String::new();
        for (upper, c) in &run.ack_histogram {
            slower -= c;
            if slower == 0 {
                let _ = write!(pts, "{:.1},{:.1} ", x(*upper), y(0.0));
                break;
            }
            let _ = write!(
                pts,
                "{:.1},{:.1} ",
                x(*upper),
                y(slower as f64 / total as f64)
            );
        }
        let _ = writeln!(
            s,
            r#"<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" fill="{colour}">{} (p50 {:.2}, p99 {:.2} ms)</text>"#,
            x0 + 8.0,
            BOTTOM - 40.0 + 16.0 * i as f64,
            esc(&run.name),
            run.ack_ms.p50,
            run.ack_ms.p99
        );
    }
}

/// One bar per run, with an optional target line, in [x0, x1].
fn bar_panel(
    s: &mut String,
    title: &str,
    bars: &[(String, f64)],
    target: Option<f64>,
    x0: f64,
    x1: f64,
    decimals: usize,
) {
    let max = bars
        .iter()
        .map(|(_, v)| *v)
        .chain(target)
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE)
        * 1.15;
    let y = |v: f64| BOTTOM - v / max * (BOTTOM - TOP);
    let _ = writeln!(
        s,
        r#"<text x="{x0}" y="{}" font-weight="bold">{}</text>"#,
        TOP - 12.0,
        esc(title)
    );
    let _ = writeln!(
        s,
        r##"<line x1="{x0}" y1="{BOTTOM}" x2="{x1}" y2="{BOTTOM}" stroke="#888"/>"##
    );
    let slot = (x1 - x0) / bars.len().max(1) as f64;
    for (i, (name, v)) in bars.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let bx = x0 + slot * i as f64 + slot * 0.15;
        let bw = slot * 0.7;
        let _ = writeln!(
            s,
            r#"<rect x="{bx:.1}" y="{:.1}" width="{bw:.1}" height="{:.1}" fill="{colour}"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{v:.decimals$}</text><text x="{:.1}" y="{}" text-anchor="middle" fill="{colour}">{}</text>"#,
            y(*v),
            BOTTOM - y(*v),
            bx + bw / 2.0,
            y(*v) - 4.0,
            bx + bw / 2.0,
            BOTTOM + 16.0,
            esc(name)
        );
    }
    if let Some(t) = target {
        let ty = y(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{ty:.1}" x2="{x1}" y2="{ty:.1}" stroke="#000" stroke-dasharray="4 3"/><text x="{x1}" y="{:.1}" text-anchor="end">target {t}</text>"##,
            ty - 4.0
        );
    }
}

/// Every figure that has a peer or floor: its ratio (vmfleet / peer) as a bar on a log2 axis
/// from 1/16 to 16, the line at 1 being "same as the peer". Left of it, vmfleet's value is the
/// smaller one.
pub fn ratios_svg(title: &str, figures: &[Figure]) -> String {
    let rows: Vec<&Figure> = figures.iter().filter(|f| f.ratio.is_some()).collect();
    let label = |f: &Figure| {
        format!(
            "{}: {} ({} {} vs {})",
            f.scenario,
            f.name,
            num(f.value),
            f.unit,
            num(f.peer_value.unwrap_or(f64::NAN))
        )
    };
    // About 7 px a character at 12 px: the longest label fits, the bars' text too.
    let longest = rows
        .iter()
        .map(|f| label(f).chars().count())
        .max()
        .unwrap_or(10);
    let (plot_w, row_h, top) = (520.0, 22.0, 60.0);
    let label_w = longest as f64 * 7.0 + 20.0;
    let width = label_w + plot_w + 90.0;
    let height = top + row_h * rows.len().max(1) as f64 + 50.0;
    let (lo, hi) = (-4.0f64, 4.0f64);
    let x = |r: f64| label_w + (r.max(1e-9).log2().clamp(lo, hi) - lo) / (hi - lo) * plot_w;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="{width}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">{}</text><text x="10" y="40">vmfleet / its peer or floor, same run (log scale; 1 = same)</text>"#,
        esc(title)
    );
    let bottom = top + row_h * rows.len().max(1) as f64;
    for e in lo as i32..=hi as i32 {
        let r = 2f64.powi(e);
        let gx = x(r);
        let label = if r < 1.0 {
            format!("1/{}", (1.0 / r) as u32)
        } else {
            format!("{}", r as u32)
        };
        let _ = writeln!(
            s,
            r##"<line x1="{gx:.1}" y1="{top}" x2="{gx:.1}" y2="{bottom}" stroke="{}"/><text x="{gx:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            if e == 0 { "#000" } else { "#ddd" },
            bottom + 16.0
        );
    }
    for (i, f) in rows.iter().enumerate() {
        let Some(r) = f.ratio else { continue };
        let cy = top + row_h * i as f64;
        let (a, b) = (x(1.0), x(r));
        let colour = match f.pass {
            Some(false) => "#d62728",
            _ => COLOURS[0],
        };
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{colour}"/><text x="{:.1}" y="{:.1}">{r:.2}x</text>"#,
            label_w - 8.0,
            cy + 15.0,
            esc(&label(f)),
            a.min(b),
            cy + 4.0,
            (a - b).abs().max(1.0),
            row_h - 8.0,
            a.max(b) + 4.0,
            cy + 15.0,
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The samples of each variant of a scenario, sorted: the value at each percentile (a
/// quantile plot, linear), one colour per variant.
pub fn quantiles_svg(r: &ScenarioResult, unit: &str) -> String {
    let (x0, x1, top, bottom, width, height) = (80.0, 760.0, 50.0, 330.0, 800.0, 380.0);
    let max = r
        .variants
        .iter()
        .flat_map(|v| v.samples.iter().map(|s| s.total_ms))
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE)
        * 1.1;
    let y = |v: f64| bottom - v / max * (bottom - top);
    let x = |q: f64| x0 + q * (x1 - x0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="{width}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">{}: {} ({})</text>"#,
        esc(&r.scenario),
        esc(&r.title),
        esc(&r.date)
    );
    let _ = writeln!(
        s,
        r##"<rect x="{x0}" y="{top}" width="{}" height="{}" fill="none" stroke="#888"/>"##,
        x1 - x0,
        bottom - top
    );
    for q in [0.0, 0.25, 0.5, 0.75, 0.9, 1.0] {
        let gx = x(q);
        let _ = writeln!(
            s,
            r##"<line x1="{gx:.1}" y1="{top}" x2="{gx:.1}" y2="{bottom}" stroke="#eee"/><text x="{gx:.1}" y="{}" text-anchor="middle">p{}</text>"##,
            bottom + 16.0,
            (q * 100.0).round()
        );
    }
    for i in 0..=4 {
        let v = max / 1.1 * f64::from(i) / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{:.1}" x2="{x1}" y2="{:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{} {}</text>"##,
            y(v),
            y(v),
            x0 - 4.0,
            y(v) + 4.0,
            num(v),
            esc(unit)
        );
    }
    for (i, v) in r.variants.iter().enumerate() {
        let mut vals: Vec<f64> = v.samples.iter().map(|s| s.total_ms).collect();
        vals.sort_by(f64::total_cmp);
        if vals.is_empty() {
            continue;
        }
        let colour = COLOURS[i % COLOURS.len()];
        let n = vals.len();
        let pts: Vec<String> = vals
            .iter()
            .enumerate()
            .map(|(k, v)| {
                let q = if n > 1 {
                    k as f64 / (n - 1) as f64
                } else {
                    0.5
                };
                format!("{:.1},{:.1}", x(q), y(*v))
            })
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/><text x="{}" y="{}" fill="{colour}">{} (p50 {} {})</text>"#,
            pts.join(" "),
            x0 + 8.0,
            top + 16.0 + 16.0 * i as f64,
            esc(&v.name),
            num(v.summary.p50),
            esc(unit)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::report::{Sample, Variant};
    use crate::stats::Summary;

    #[test]
    fn the_summary_plots_rasterise() {
        let figs = vec![
            Figure::new("console", "echo p99", "ms", 12.0).against("floor", 10.0),
            Figure::new("api", "rps", "req/s", 5000.0).against("health", 20000.0),
            Figure::new("fanout", "held", "connections", 1000.0),
        ];
        let svg = ratios_svg("t", &figs);
        assert_eq!(svg.matches("<rect").count(), 1 + 2, "one bar per ratio");
        assert!(svg.contains("1.20x") && svg.contains("0.25x"));
        let variant = |name: &str, v: &[f64]| Variant {
            name: name.into(),
            description: String::new(),
            summary: Summary::of(v).unwrap(),
            samples: v
                .iter()
                .enumerate()
                .map(|(i, &t)| Sample {
                    run: i,
                    seq: i,
                    total_ms: t,
                    marks: Vec::new(),
                })
                .collect(),
            warmup: Vec::new(),
        };
        let r = ScenarioResult {
            schema: String::new(),
            scenario: "console".into(),
            title: "t".into(),
            description: String::new(),
            date: "2026-01-01".into(),
            started_at: String::new(),
            finished_at: String::new(),
            machine: crate::machine::Machine::read("tcg", std::path::Path::new("/nonexistent")),
            config: serde_json::Value::Null,
            variants: vec![
                variant("vmfleet", &[3.0, 1.0, 2.0]),
                variant("floor", &[1.0]),
            ],
            comparisons: Vec::new(),
            figures: Vec::new(),
            notes: Vec::new(),
        };
        let q = quantiles_svg(&r, "ms");
        assert_eq!(q.matches("<polyline").count(), 2);
        for svg in [svg, q] {
            let png = crate::raster::svg_to_png(&svg, 1.0).unwrap();
            assert_eq!(&png[1..4], b"PNG");
        }
    }
}
