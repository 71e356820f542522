//! The plots of `cargo xtask bench --write FILE`, hand-written SVG (no plotting crate): a bar
//! chart when a plot's points carry no x (ns per context switch by variant), else lines over a
//! log-scale x axis (CPU per 30 s against the flow count). Written to `docs/bench/<plot>.svg`
//! next to FILE and linked from it.

use anyhow::{Context as _, Result};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// Titles and axis labels of the plots the parts make (by plot name).
fn labels(plot: &str) -> (&'static str, &'static str, &'static str) {
    match plot {
        "sched-ns-per-switch" => (
            "ns added per context switch, by variant (perf bench sched pipe, p25 over the baseline)",
            "",
            "ns per switch",
        ),
        "flows-cpu-per-30s" => (
            "CPU per 30 s against the OpenFlow table size: pinflow and the cron job",
            "flows in the table (log)",
            "CPU ms per 30 s (log)",
        ),
        _ => ("", "", ""),
    }
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A "nice" upper bound for an axis (1, 2, 5 × 10^k).
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|m| *m >= v)
        .unwrap_or(10.0 * p)
}

fn bars(title: &str, ylabel: &str, bars: &[(String, f64)]) -> String {
    let (w, row_h, left, top) = (900.0, 26.0, 300.0, 50.0);
    let h = top + row_h * bars.len() as f64 + 50.0;
    let max = nice_max(bars.iter().map(|b| b.1).fold(0.0, f64::max));
    let min = bars.iter().map(|b| b.1).fold(0.0, f64::min);
    let span = max - min;
    let scale = (w - left - 40.0) / span.max(1e-9);
    let x0 = left + (-min) * scale;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"14\">{}</text>\n",
        esc(title)
    );
    for (i, (label, v)) in bars.iter().enumerate() {
        let y = top + i as f64 * row_h;
        let (bx, bw) = if *v >= 0.0 {
            (x0, v * scale)
        } else {
            (x0 + v * scale, -v * scale)
        };
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
             <rect x=\"{bx:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{:.1}\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{v:.1}</text>",
            left - 8.0,
            y + row_h * 0.65,
            esc(label),
            y + 3.0,
            row_h - 6.0,
            if label.starts_with("bpftrace") {
                COLORS[1]
            } else if label.starts_with("pinflow") {
                COLORS[0]
            } else {
                "#999"
            },
            bx + bw + 4.0,
            y + row_h * 0.65
        );
    }
    let axis_y = top + row_h * bars.len() as f64 + 5.0;
    let _ = writeln!(
        s,
        "<line x1=\"{x0:.1}\" y1=\"{:.1}\" x2=\"{x0:.1}\" y2=\"{axis_y:.1}\" stroke=\"black\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n</svg>",
        top - 5.0,
        left + (w - left - 40.0) / 2.0,
        axis_y + 25.0,
        esc(ylabel)
    );
    s
}

/// A named series of (x, y) points.
type Series = (String, Vec<(f64, f64)>);

fn lines(title: &str, xlabel: &str, ylabel: &str, series: &[Series]) -> String {
    // The legend goes below the x axis, one line per series.
    let bottom = 70.0 + 20.0 * series.len() as f64;
    let (w, h, left, right, top) = (900.0, 420.0 + bottom, 80.0, 30.0, 45.0);
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let (mut xmin, mut xmax, mut ymin, mut ymax) = (f64::INFINITY, 0f64, f64::INFINITY, 0f64);
    for &(x, y) in pts {
        if x > 0.0 {
            xmin = xmin.min(x);
            xmax = xmax.max(x);
        }
        if y > 0.0 {
            ymin = ymin.min(y);
            ymax = ymax.max(y);
        }
    }
    let lx = |x: f64| x.max(1e-9).log10();
    let (lmin, lmax) = (
        lx(xmin).floor(),
        lx(xmax).ceil().max(lx(xmin).floor() + 1.0),
    );
    // Log-log: table sizes and CPU both span decades.
    let (ylmin, ylmax) = (
        lx(ymin).floor(),
        lx(ymax).ceil().max(lx(ymin).floor() + 1.0),
    );
    let pw = w - left - right;
    let ph = h - top - bottom;
    let px = |x: f64| left + (lx(x) - lmin) / (lmax - lmin) * pw;
    let py = |y: f64| top + ph - (lx(y) - ylmin) / (ylmax - ylmin) * ph;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"14\">{}</text>\n\
         <rect x=\"{left}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"black\"/>\n",
        esc(title)
    );
    let mut d = lmin;
    while d <= lmax + 1e-9 {
        let x = left + (d - lmin) / (lmax - lmin) * pw;
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            top + ph,
            top + ph + 16.0,
            10f64.powf(d)
        );
        d += 1.0;
    }
    let mut d = ylmin;
    while d <= ylmax + 1e-9 {
        let y = 10f64.powf(d);
        d += 1.0;
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{y}</text>",
            py(y),
            left + pw,
            py(y),
            left - 6.0,
            py(y) + 4.0
        );
    }
    for (i, (name, p)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let mut p = p.clone();
        p.sort_by(|a, b| a.0.total_cmp(&b.0));
        let path: Vec<String> = p
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{c}\" stroke-width=\"2\"/>",
            path.join(" ")
        );
        for &(x, y) in &p {
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{c}\"><title>{x}: {y:.1}</title></circle>",
                px(x),
                py(y)
            );
        }
        let ly = top + ph + 55.0 + i as f64 * 20.0;
        let _ = writeln!(
            s,
            "<rect x=\"{left:.1}\" y=\"{ly:.1}\" width=\"14\" height=\"4\" fill=\"{c}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            left + 20.0,
            ly + 5.0,
            esc(name)
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
         <text x=\"16\" y=\"{:.1}\" transform=\"rotate(-90 16 {:.1})\" text-anchor=\"middle\">{}</text>\n</svg>",
        left + pw / 2.0,
        top + ph + 36.0,
        esc(xlabel),
        top + ph / 2.0,
        top + ph / 2.0,
        esc(ylabel)
    );
    s
}

/// Writes every plot recorded in `points` (JSON lines) as `docs/bench/<plot>.svg` next to
/// `markdown`; returns (title, path relative to the markdown's directory) of each.
pub fn write_all(points: &Path, markdown: &Path) -> Result<Vec<(String, String)>> {
    // plot → series (in first-seen order) → points.
    let mut plots: BTreeMap<String, Vec<Series>> = BTreeMap::new();
    for l in std::fs::read_to_string(points).unwrap_or_default().lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        let (Some(plot), Some(series), Some(x), Some(y)) = (
            v["plot"].as_str(),
            v["series"].as_str(),
            v["x"].as_f64(),
            v["y"].as_f64(),
        ) else {
            continue;
        };
        let p = plots.entry(plot.to_string()).or_default();
        match p.iter_mut().find(|(s, _)| s == series) {
            Some((_, pts)) => pts.push((x, y)),
            None => p.push((series.to_string(), vec![(x, y)])),
        }
    }
    let dir = markdown
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("docs/bench");
    let mut out = Vec::new();
    for (plot, series) in plots {
        let (title, xlabel, ylabel) = labels(&plot);
        let title = if title.is_empty() {
            plot.as_str()
        } else {
            title
        };
        let svg = if series.iter().all(|(_, p)| p.iter().all(|&(x, _)| x == 0.0)) {
            let b: Vec<(String, f64)> = series
                .iter()
                .filter_map(|(n, p)| Some((n.clone(), p.last()?.1)))
                .collect();
            bars(title, ylabel, &b)
        } else {
            lines(title, xlabel, ylabel, &series)
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let file = dir.join(format!("{plot}.svg"));
        std::fs::write(&file, svg).with_context(|| format!("cannot write {}", file.display()))?;
        println!("plot written to {}", file.display());
        out.push((title.to_string(), format!("docs/bench/{plot}.svg")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_bounds() {
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(120.0), 200.0);
        assert_eq!(nice_max(0.0), 1.0);
    }

    #[test]
    fn both_kinds_render_every_point() {
        let b = bars("t", "ns", &[("a".into(), 3.0), ("bpftrace x".into(), -1.0)]);
        assert_eq!(b.matches("<rect x=").count(), 2);
        let l = lines(
            "t",
            "x",
            "y",
            &[("p".into(), vec![(1000.0, 1.0), (100000.0, 5.0)])],
        );
        assert_eq!(l.matches("<circle").count(), 2);
    }
}
