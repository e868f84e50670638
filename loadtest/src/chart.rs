//! `chart`: draws a `spark-fetch` result as an SVG beside its JSON (plotters): throughput,
//! p99 latency and CPU per GB for every block size × connections cell, one bar per server
//! (this service, Spark's JVM service, the physical limit when measured), and peak RSS. A
//! `dra` result gets its charts per workload and its table instead (`dra::draw`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use plotters::prelude::*;
use serde_json::Value;

/// Arguments of `chart`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// `spark-fetch` result files (each gets an `.svg` beside it) or `dra` results (each gets
    /// `dra-<workload>.svg` and `dra-table.md` beside it).
    files: Vec<PathBuf>,
}

const SERVERS: [(&str, &str, RGBColor); 3] = [
    ("ours", "this service", RGBColor(0x1f, 0x77, 0xb4)),
    ("spark_jvm", "Spark JVM ESS", RGBColor(0xd6, 0x27, 0x28)),
    ("limit", "physical limit", RGBColor(0x7f, 0x7f, 0x7f)),
];

fn label(row: &Value) -> String {
    let b = row["block_bytes"].as_u64().unwrap_or(0);
    let size = if b >= 1 << 20 {
        format!("{}M", b >> 20)
    } else {
        format!("{}K", b >> 10)
    };
    format!("{size}×{}", row["connections"])
}

/// Draws every file; returns the SVGs written.
pub(crate) fn run(args: Args) -> anyhow::Result<Value> {
    let mut out = Vec::new();
    for f in &args.files {
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(f).with_context(|| format!("{}", f.display()))?,
        )?;
        if v["benchmark"] == "dra" {
            let dir = f.parent().unwrap_or_else(|| std::path::Path::new("."));
            out.extend(
                crate::dra::draw(&v, dir)?
                    .iter()
                    .map(|p| p.display().to_string()),
            );
            continue;
        }
        let svg = f.with_extension("svg");
        draw(&v, &svg)?;
        out.push(svg.display().to_string());
    }
    Ok(serde_json::json!({ "charts": out }))
}

fn draw(v: &Value, path: &Path) -> anyhow::Result<()> {
    let rows = v["rows"].as_array().context("rows")?;
    let mode = v["mode"].as_str().unwrap_or("plain");
    let root = SVGBackend::new(path, (1400, 860)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(40);
    title.draw_text(
        &format!("spark-fetch, {mode}: medians of {} runs", v["runs"]),
        &("sans-serif", 20).into_text_style(&title),
        (10, 10),
    )?;
    let panels = body.split_evenly((2, 2));
    let metrics = [
        ("mb_per_s", "throughput, MB/s (higher is better)"),
        ("p99_ms", "p99 latency per request, ms (lower)"),
        ("cpu_s_per_gb", "server CPU s per GB (lower)"),
    ];
    for (panel, (key, caption)) in panels.iter().zip(metrics) {
        bars(panel, rows, key, caption)?;
    }
    rss(&panels[3], v)?;
    root.present()?;
    Ok(())
}

fn bars(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    rows: &[Value],
    key: &str,
    caption: &str,
) -> anyhow::Result<()> {
    let present: Vec<_> = SERVERS
        .iter()
        .filter(|(k, _, _)| rows.iter().any(|r| r.get(k).is_some()))
        .collect();
    let max = rows
        .iter()
        .flat_map(|r| present.iter().filter_map(|(k, _, _)| r[k][key].as_f64()))
        .fold(0.0f64, f64::max)
        * 1.1;
    let n = rows.len();
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 14))
        .margin(8)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5f64..n as f64 - 0.5, 0f64..max.max(1e-9))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() > 0.01 || i < 0.0 {
                return String::new();
            }
            rows.get(i as usize).map(label).unwrap_or_default()
        })
        .x_label_style(("sans-serif", 10))
        .draw()?;
    let w = 0.8 / present.len() as f64;
    for (s, (k, name, color)) in present.iter().enumerate() {
        let bars: Vec<_> = rows
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let y = r[k][key].as_f64()?;
                let x0 = i as f64 - 0.4 + s as f64 * w;
                Some(Rectangle::new([(x0, 0.0), (x0 + w, y)], color.filled()))
            })
            .collect();
        chart
            .draw_series(bars)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 11))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    Ok(())
}

fn rss(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    v: &Value,
) -> anyhow::Result<()> {
    let rss = v["peak_rss"].as_array().context("peak_rss")?;
    let vals: Vec<(String, f64)> = rss
        .iter()
        .filter_map(|r| {
            Some((
                r["server"].as_str()?.to_owned(),
                r["peak_rss_mib"].as_f64()?,
            ))
        })
        .collect();
    let max = vals.iter().map(|v| v.1).fold(0.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption("peak RSS, MiB (lower)", ("sans-serif", 14))
        .margin(8)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5f64..vals.len() as f64 - 0.5, 0f64..max.max(1.0))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(vals.len())
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() > 0.01 || i < 0.0 {
                return String::new();
            }
            vals.get(i as usize)
                .map(|v| v.0.clone())
                .unwrap_or_default()
        })
        .draw()?;
    chart.draw_series(vals.iter().enumerate().map(|(i, (name, y))| {
        let color = match name.as_str() {
            "ours" => SERVERS[0].2,
            "spark-jvm" => SERVERS[1].2,
            _ => SERVERS[2].2,
        };
        Rectangle::new(
            [(i as f64 + 0.2, 0.0), (i as f64 + 0.8, *y)],
            color.filled(),
        )
    }))?;
    Ok(())
}
