//! `loadtest dra`: what the DaemonSet shuffle service saves against Spark's own ways of giving
//! executors back on Kubernetes, with unmodified Spark 4.3.0 in `k8s://` cluster mode on the
//! test bed (root, Java and the venv's pyspark, as the e2e tests need). Three workloads
//! (`e2e/tests/spark/dra_job.py`: a skewed join, a multi-stage ETL with pauses, an iterative
//! job reading one shuffle after idle gaps) run under four configurations of executors (the
//! service, shuffle tracking, PVC reuse with shuffle recovery, static allocation) with the
//! same executor size, idle timeout and maximum number of executors; the harness is
//! `e2e::dra`, which an e2e test keeps working.
//!
//! Reported per workload and configuration, as medians of `--runs`: executor-seconds (executor
//! pods' lifetimes from the API's timestamps), wall time, peak executors, stages and tasks run
//! again, fetch failures and shuffle bytes read from other hosts (Spark's event log); then, in
//! `--kill-runs` more runs, an executor pod deleted in the middle of a reduce stage: the work
//! done again and the time lost against the median undisturbed run; last, in `--node-runs`
//! runs of `--node-loss-workloads`, a whole node (not the driver's) lost at that moment, its
//! shuffle service with it: whether the job finished, what it did again, how long it took. Runs
//! are interleaved (every configuration once per pass) so that drifts of the machine spread
//! over all of them.

mod chart;
mod report;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use e2e::dra::{Bench, Config, Loss, Run, Settings, Workload};
use serde_json::{Value, json};

pub(crate) use chart::draw;

/// Arguments of `dra`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Undisturbed runs of each workload and configuration (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Runs of each with an executor pod deleted mid-stage (0: none).
    #[arg(long, default_value_t = 1)]
    kill_runs: usize,
    /// Runs of each configuration with a whole node (not the driver's) lost mid-stage, on
    /// `--node-loss-workloads` (0: none).
    #[arg(long, default_value_t = 1)]
    node_runs: usize,
    /// Workloads of the node-loss runs (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "skew", value_parser = parse_workload)]
    node_loss_workloads: Vec<Workload>,
    /// Workloads (comma-separated): skew, etl, iter.
    #[arg(long, value_delimiter = ',', default_value = "skew,etl,iter", value_parser = parse_workload)]
    workloads: Vec<Workload>,
    /// Configurations (comma-separated): service, tracking, pvc, static.
    #[arg(long, value_delimiter = ',', default_value = "service,tracking,pvc,static", value_parser = parse_config)]
    configs: Vec<Config>,
    /// `spark.dynamicAllocation.maxExecutors` (static: `spark.executor.instances`).
    #[arg(long, default_value_t = 4)]
    max_executors: u32,
    /// `spark.dynamicAllocation.executorIdleTimeout`, seconds.
    #[arg(long, default_value_t = 5)]
    idle_timeout: u32,
    /// `spark.executor.memory`.
    #[arg(long, default_value = "1g")]
    executor_memory: String,
    /// Multiplies the workloads' row counts.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Seconds of the ETL's pauses and of the iterative job's gaps.
    #[arg(long, default_value_t = 20.0)]
    pause: f64,
    /// A Spark setting (KEY=VALUE) for every configuration, after its own; repeatable.
    #[arg(long = "spark-conf", value_parser = parse_conf)]
    spark_confs: Vec<(String, String)>,
    /// Directory of the `shuffle-service` and `staging-server` binaries the bed's project
    /// image holds (default: the release build, else the debug build).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Writes `dra.json`, `dra-table.md` and a chart per workload (`dra-<workload>.svg`) here,
    /// the JSON after every run.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Work directory (default: target/loadtest).
    #[arg(long)]
    dir: Option<PathBuf>,
}

impl Args {
    /// The workloads of the report: those run undisturbed, then those only run with a node
    /// lost.
    fn reported(&self) -> Vec<Workload> {
        let mut all = self.workloads.clone();
        for w in &self.node_loss_workloads {
            if self.node_runs > 0 && !all.contains(w) {
                all.push(*w);
            }
        }
        all
    }
}

fn parse_workload(s: &str) -> Result<Workload, String> {
    Workload::parse(s).ok_or_else(|| format!("unknown workload {s:?}: skew, etl or iter"))
}

fn parse_conf(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if k.starts_with("spark.") => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not spark.KEY=VALUE")),
    }
}

fn parse_config(s: &str) -> Result<Config, String> {
    Config::parse(s)
        .ok_or_else(|| format!("unknown configuration {s:?}: service, tracking, pvc or static"))
}

/// The service binaries for the bed's project image.
fn bin_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(d) = given {
        return Ok(d.to_owned());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    ["release", "debug"]
        .iter()
        .map(|p| target.join(p))
        .find(|d| d.join("shuffle-service").exists() && d.join("staging-server").exists())
        .context("no shuffle-service and staging-server build: cargo build --release -p shuffle-service -p staging-server")
}

/// Every run of the plan, each configuration once per pass; the JSON written to `--out-dir`
/// after each. A run that fails is reported and the others go on.
async fn all_runs(
    bench: &Bench,
    args: &Args,
    settings: &Settings,
) -> anyhow::Result<(Vec<(Run, Loss)>, Vec<Value>)> {
    let mut runs: Vec<(Run, Loss)> = Vec::new();
    let mut plan: Vec<(Workload, Config, Loss)> = Vec::new();
    for loss in std::iter::repeat_n(Loss::None, args.runs)
        .chain(std::iter::repeat_n(Loss::Pod, args.kill_runs))
    {
        for &w in &args.workloads {
            for &c in &args.configs {
                plan.push((w, c, loss));
            }
        }
    }
    for _ in 0..args.node_runs {
        for &w in &args.node_loss_workloads {
            for &c in &args.configs {
                plan.push((w, c, Loss::Node));
            }
        }
    }
    let total = plan.len();
    let mut failed = Vec::new();
    for (i, (w, c, kill)) in plan.into_iter().enumerate() {
        eprintln!(
            "dra: run {}/{total}: {} under {}{}",
            i + 1,
            w.name(),
            c.name(),
            match kill {
                Loss::None => "",
                Loss::Pod => ", an executor pod deleted",
                Loss::Node => ", a node lost",
            }
        );
        match bench.run(w, c, settings, kill).await {
            Ok(r) => {
                eprintln!(
                    "dra:   {:.0} executor-s, {:.1} s, peak {}, {} stages / {} tasks again, ok {}",
                    r.executor_seconds,
                    r.wall_s,
                    r.peak_executors,
                    r.events.stages_recomputed,
                    r.events.tasks_recomputed,
                    r.ok
                );
                runs.push((r, kill));
            }
            Err(e) => {
                eprintln!("dra:   FAILED: {e:#}");
                failed.push(
                    json!({"workload": w, "config": c, "loss": kill, "error": format!("{e:#}")}),
                );
            }
        }
        if let Some(out) = &args.out_dir {
            let partial =
                report::summary(settings, &args.reported(), &args.configs, &runs, &failed);
            std::fs::create_dir_all(out)?;
            std::fs::write(
                out.join("dra.json"),
                serde_json::to_string_pretty(&partial)?,
            )?;
        }
    }
    Ok((runs, failed))
}

/// Resolves on SIGINT or SIGTERM, naming it.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// Runs the benchmark.
pub(crate) async fn run(args: Args) -> anyhow::Result<Value> {
    let settings = Settings {
        max_executors: args.max_executors,
        idle_timeout_s: args.idle_timeout,
        executor_memory: args.executor_memory.clone(),
        scale: args.scale,
        pause_s: args.pause,
        extra_confs: args.spark_confs.clone(),
    };
    let bins = bin_dir(args.bin_dir.as_deref())?;
    let work = crate::procs::work_dir(args.dir.as_deref())?;
    eprintln!(
        "dra: bed in {}, service binaries from {}",
        work.path().display(),
        bins.display()
    );
    let bench = Bench::start(work.path(), &bins).await?;
    // The bed's pods are processes of their own: an interrupted benchmark stops them (and the
    // bed) before it exits, instead of leaving Spark's JVMs behind.
    let outcome = tokio::select! {
        r = all_runs(&bench, &args, &settings) => r,
        signal = interrupted() => Err(anyhow::anyhow!("interrupted by {signal}")),
    };
    bench.stop().await;
    let (runs, failed) = outcome?;
    let out = report::summary(&settings, &args.reported(), &args.configs, &runs, &failed);
    let table = report::table(&out);
    eprintln!("{table}");
    if let Some(dir) = &args.out_dir {
        std::fs::write(dir.join("dra.json"), serde_json::to_string_pretty(&out)?)?;
        draw(&out, dir)?;
    }
    Ok(out)
}
