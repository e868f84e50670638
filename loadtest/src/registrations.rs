//! `loadtest shuffle-registrations`: what durable registrations cost. Executor registrations
//! written through the service's registration database with `synchronous=FULL` (what the
//! service runs: acknowledged registrations survive a power loss) beside `NORMAL` (survives a
//! process crash only), on the disk under test, sequentially as the registry writes them.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::{Value, json};
use shuffle_service::db::{Db, Durability, ExecRow};

use crate::procs::work_dir;
use crate::stats::median;

/// Arguments of `shuffle-registrations`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Registrations per run.
    #[arg(long, default_value_t = 2_000)]
    registrations: usize,
    /// Runs per mode (median reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Work directory; default target/loadtest.
    #[arg(long)]
    dir: Option<PathBuf>,
}

async fn rate(dir: &std::path::Path, durability: Durability, n: usize) -> anyhow::Result<f64> {
    let path = dir.join(format!("{durability:?}-{}.db", rand_suffix()));
    let db = Db::open_with(&path, durability)?;
    let start = Instant::now();
    for i in 0..n {
        db.put_executor(
            ExecRow {
                app_id: format!("app-{}", i / 100),
                exec_id: i.to_string(),
                local_dirs: vec![PathBuf::from(format!("/vol/app/exec-{i}/blockmgr"))],
                sub_dirs: 64,
                shuffle_manager: "sort".into(),
            },
            0,
        )
        .await?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Runs the measurement.
pub(crate) async fn run(args: Args) -> anyhow::Result<Value> {
    let work = work_dir(args.dir.as_deref())?;
    let (mut full, mut normal) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        normal.push(rate(work.path(), Durability::Normal, args.registrations).await?);
        full.push(rate(work.path(), Durability::Full, args.registrations).await?);
        eprintln!(
            "run {}: NORMAL {:.0}/s, FULL {:.0}/s",
            run + 1,
            normal[run],
            full[run]
        );
    }
    let (f, n) = (median(&full), median(&normal));
    Ok(json!({
        "benchmark": "shuffle-registrations",
        "registrations": args.registrations,
        "runs": args.runs,
        "full_per_second_median": f.round(),
        "normal_per_second_median": n.round(),
        "full_over_normal": (f / n * 100.0).round() / 100.0,
    }))
}
