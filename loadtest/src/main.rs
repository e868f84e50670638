//! `loadtest`: measures the project's services under load, side by side with the baselines a
//! user would otherwise pick, in the same run. Results are printed as JSON on stdout; progress
//! goes to stderr.

mod chart;
mod dedup;
mod dra;
mod fanout;
mod flood;
mod kube_scale;
mod limit;
mod nginx;
mod procs;
mod registrations;
mod shuffle;
mod spark;
mod staging;
mod stats;
mod submit;

use clap::{Parser, Subcommand};

/// Benchmarks of the staging server and the shuffle service.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Staging server: upload and download throughput of a large bundle and small-download
    /// requests/s, beside nginx serving the same file and a plain write of the same bytes.
    Staging(staging::Args),
    /// Staging server: what `staging-server submit` sends and how long staging takes for a
    /// job of many jars (first time, resubmission, one jar changed), beside uploading the
    /// whole bundle every time.
    StagingSubmit(submit::Args),
    /// Staging server: a job's init-containers at once (1,000 fetches of one submission),
    /// one replica beside nginx serving the same files, and three replicas rolled one by one
    /// mid-run (with --store-url); time until every fetch is staged, p50/p99/max, CPU s/GB.
    StagingFanout(fanout::Args),
    /// Staging server: whether a file's send is answered faster when another namespace
    /// already stores its content than when it is new (a timing side channel of the
    /// deduplication), medians of interleaved runs per size.
    StagingDedup(dedup::Args),
    /// Shuffle service over gRPC and over its Spark-protocol listener: fetch throughput for
    /// 1 MiB and 32 KiB blocks at 16 and 64 concurrent streams beside raw TCP over loopback,
    /// and peak memory idle and under load.
    ShuffleFetch(shuffle::FetchArgs),
    /// Shuffle service: cleanup of an application with many files beside `rm -rf` of an
    /// identical tree.
    ShuffleCleanup(shuffle::CleanupArgs),
    /// Shuffle service over Spark's protocol beside Spark's JVM ExternalShuffleService (from
    /// the pyspark jars), same files, same run: 4 KiB, 64 KiB and 1 MiB blocks over 1 to 64
    /// connections; throughput, p50/p99, CPU s/GB and peak RSS of each server.
    SparkFetch(spark::Args),
    /// Shuffle service: resident memory idle, while thousands of Spark-protocol connections
    /// are open, and after they closed.
    ShuffleFlood(flood::Args),
    /// Shuffle service: executor registrations per second with the durable setting the
    /// service runs (`synchronous=FULL`) beside `NORMAL`.
    ShuffleRegistrations(registrations::Args),
    /// Shuffle service on Kubernetes: API requests, watch events and bytes per node and in
    /// total at 1,000 simulated nodes and 1,000 concurrent jobs (each node running the
    /// service's Kubernetes code against the API server stand-in), the per-node design beside
    /// the former all-drivers watch and the kubelet's floor, and the cleanup decision delay.
    KubeScale(kube_scale::Args),
    /// What the DaemonSet shuffle service saves against shuffle tracking, PVC reuse with
    /// shuffle recovery and static allocation, with real Spark on the test bed (root, Java and
    /// pyspark): executor-seconds, wall time, peak executors, work done again and remote
    /// shuffle reads of three workloads, and what an executor pod's loss mid-stage costs.
    Dra(dra::Args),
    /// Draws `spark-fetch` and `dra` results (JSON files) as SVG charts beside them.
    Chart(chart::Args),
    /// The physical-limit server of `spark-fetch` (started by it).
    #[command(hide = true)]
    LimitServer(limit::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let report = match cli.command {
        Command::Staging(args) => staging::run(args).await?,
        Command::StagingSubmit(args) => submit::run(args).await?,
        Command::StagingFanout(args) => fanout::run(args).await?,
        Command::StagingDedup(args) => dedup::run(args).await?,
        Command::ShuffleFetch(args) => shuffle::fetch(args).await?,
        Command::ShuffleCleanup(args) => shuffle::cleanup(args).await?,
        Command::SparkFetch(args) => spark::run(args).await?,
        Command::ShuffleFlood(args) => flood::run(args).await?,
        Command::ShuffleRegistrations(args) => registrations::run(args).await?,
        Command::KubeScale(args) => kube_scale::run(args).await?,
        Command::Dra(args) => dra::run(args).await?,
        Command::Chart(args) => chart::run(args)?,
        Command::LimitServer(args) => {
            tokio::task::spawn_blocking(move || limit::run(args)).await??
        }
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
