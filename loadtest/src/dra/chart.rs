//! `dra`'s charts (plotters, as `chart` draws `spark-fetch`'s): per workload, the executor pods
//! alive over time in the run of median executor-seconds, one line per configuration; and the
//! markdown table beside them. `loadtest chart dra.json` draws them again from the JSON.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde_json::Value;

/// One colour per configuration, in `Config::ALL` order.
const COLORS: [(&str, RGBColor); 4] = [
    ("service", RGBColor(0x1f, 0x77, 0xb4)),
    ("tracking", RGBColor(0xd6, 0x27, 0x28)),
    ("pvc", RGBColor(0x2c, 0xa0, 0x2c)),
    ("static", RGBColor(0x7f, 0x7f, 0x7f)),
];

/// Writes `dra-<workload>.svg` for every workload of a `dra` result and `dra-table.md` into
/// `dir`; returns the files written.
///
/// # Errors
/// A file cannot be written.
pub(crate) fn draw(v: &Value, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for w in v["workloads"].as_array().into_iter().flatten() {
        let name = w["workload"].as_str().unwrap_or("workload");
        let path = dir.join(format!("dra-{name}.svg"));
        workload(w, v, &path)?;
        out.push(path);
    }
    let table = dir.join("dra-table.md");
    std::fs::write(&table, super::report::table(v))?;
    out.push(table);
    Ok(out)
}

fn workload(w: &Value, v: &Value, path: &Path) -> anyhow::Result<()> {
    let configs: Vec<&Value> = w["configs"].as_array().into_iter().flatten().collect();
    let points = |c: &Value| -> Vec<(f64, f64)> {
        c["timeline"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
            .collect()
    };
    let t_max = configs
        .iter()
        .flat_map(|c| points(c))
        .map(|p| p.0)
        .fold(10.0f64, f64::max);
    let n_max = configs
        .iter()
        .flat_map(|c| points(c))
        .map(|p| p.1)
        .fold(1.0f64, f64::max);
    let root = SVGBackend::new(path, (1000, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let settings = &v["settings"];
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{}: executor pods alive (run of median executor-seconds; idle timeout {} s, at most {} executors)",
                w["label"].as_str().unwrap_or_default(),
                settings["idle_timeout_s"],
                settings["max_executors"]
            ),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..t_max * 1.02, 0f64..n_max + 0.5)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the application's start")
        .y_desc("executor pods")
        .y_labels(n_max as usize + 1)
        .draw()?;
    for c in configs {
        let name = c["config"].as_str().unwrap_or_default();
        let color = COLORS
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(BLACK, |(_, col)| *col);
        // A step line: each count holds until the next change. Lines are offset a little so
        // that equal counts of different configurations stay visible.
        let off = 0.04 * COLORS.iter().position(|(n, _)| *n == name).unwrap_or(0) as f64;
        let mut steps = Vec::new();
        let mut last: Option<(f64, f64)> = None;
        for (t, n) in points(c) {
            if let Some((_, prev)) = last {
                steps.push((t, prev + off));
            }
            steps.push((t, n + off));
            last = Some((t, n));
        }
        let label = format!(
            "{}: {} executor-s, {} s",
            c["label"].as_str().unwrap_or_default(),
            c["median"]["executor_seconds"],
            c["median"]["wall_s"]
        );
        chart
            .draw_series(LineSeries::new(steps, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}
