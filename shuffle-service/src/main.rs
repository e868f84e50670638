//! `shuffle-service`: parse the configuration and serve.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use service_runtime::shutdown;
use shuffle_service::Core;
use shuffle_service::config::{Config, ServeArgs};

/// External shuffle service for Spark on Kubernetes.
#[derive(Debug, Parser)]
#[command(
    name = "shuffle-service",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve(Box<ServeArgs>),
    /// Ask a running service's probe socket (a Kubernetes exec probe): exits 0 when the
    /// service answers 200, 1 otherwise.
    Probe(ProbeArgs),
}

#[derive(Debug, clap::Args)]
struct ProbeArgs {
    /// The service's probe socket (its `--probe-socket`).
    #[arg(long, env = "SHUFFLE_PROBE_SOCKET")]
    socket: std::path::PathBuf,
    /// What to ask: `/healthz` (alive) or `/readyz` (ready to serve).
    #[arg(default_value = "/readyz")]
    path: String,
    /// How long to wait for the answer.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
}

fn probe(args: &ProbeArgs) -> ExitCode {
    match service_runtime::probe::probe(&args.socket, &args.path, args.timeout) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shuffle-service probe {}: {e}", args.path);
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(a)) => *a,
        Some(Command::Probe(p)) => return probe(&p),
        None => cli.serve,
    };
    service_runtime::logging::init("shuffle_service=info");
    // `--kube-watch auto` follows Spark's pods when the process runs in a pod.
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let config = match Config::load(args, in_cluster) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shuffle-service: {e}");
            return ExitCode::from(if e.is_usage() { 64 } else { 1 });
        }
    };
    match serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shuffle-service: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> shuffle_service::Result<()> {
    shuffle_service::server::raise_open_file_limit(&config);
    let core = Core::open(&config.core(), prometheus::Registry::new()).await?;
    let listeners = shuffle_service::server::Listeners::bind(&config).await?;
    tracing::info!(
        grpc = %addr(&listeners.grpc),
        admin = %addr(&listeners.admin),
        spark = %listeners.spark.as_ref().map_or_else(|| "off".to_owned(), addr),
        volumes = config.volumes.len(),
        state_dir = %config.state_dir.display(),
        "shuffle service ready"
    );
    shuffle_service::run(&config, core, listeners, shutdown::signal()).await
}

fn addr(l: &tokio::net::TcpListener) -> String {
    l.local_addr()
        .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string())
}
