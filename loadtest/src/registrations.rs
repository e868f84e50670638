//! `loadtest shuffle-registrations`: what durable registrations cost. Executor registrations
//! over gRPC, one after another as executors arrive, against the service with
//! `--registry-sync full` (the default: an acknowledged registration survives a power loss)
//! beside `--registry-sync normal` (survives a process crash only), on the disk under test.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::{Value, json};
use shuffle_proto::v1 as pb;

use crate::procs::work_dir;
use crate::shuffle::{authed, client, start_service_with};
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

async fn rate(sync: &str, n: usize, dir: Option<&std::path::Path>) -> anyhow::Result<f64> {
    let work = work_dir(dir)?;
    let svc = start_service_with(work.path(), &["--registry-sync", sync]).await?;
    let mut c = client(&svc.grpc).await?;
    let token = c
        .register_application(pb::RegisterApplicationRequest {
            app_id: "registrations".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .token;
    let d = work.path().join("vol/registrations/blockmgr");
    std::fs::create_dir_all(&d)?;
    let start = Instant::now();
    for i in 0..n {
        c.register_executor(authed(
            pb::RegisterExecutorRequest {
                app_id: "registrations".into(),
                exec_id: i.to_string(),
                local_dirs: vec![d.display().to_string()],
                sub_dirs_per_local_dir: 64,
                shuffle_manager: "loadtest".into(),
            },
            &token,
        ))
        .await?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Runs the measurement.
pub(crate) async fn run(args: Args) -> anyhow::Result<Value> {
    let (mut full, mut normal) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        normal.push(rate("normal", args.registrations, args.dir.as_deref()).await?);
        full.push(rate("full", args.registrations, args.dir.as_deref()).await?);
        eprintln!(
            "run {}: normal {:.0}/s, full {:.0}/s",
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
