//! `shuffle-service`: parse the configuration and serve.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shuffle_service::config::{Config, ServeArgs};
use shuffle_service::{Core, shutdown};

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
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    service_runtime::logging::init("shuffle_service=info");
    let args = match cli.command {
        Some(Command::Serve(a)) => *a,
        None => cli.serve,
    };
    let config = match Config::load(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shuffle-service: {e}");
            return ExitCode::from(64);
        }
    };
    match serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shuffle-service: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    shuffle_service::server::raise_open_file_limit(&config);
    let core = Core::open(&config, prometheus::Registry::new()).await?;
    let listeners = shuffle_service::server::Listeners::bind(&config).await?;
    tracing::info!(
        grpc = %listeners.grpc.local_addr()?,
        admin = %listeners.admin.local_addr()?,
        spark = %listeners
            .spark
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map_or_else(|| "off".to_owned(), |a| a.to_string()),
        volumes = config.volumes.len(),
        state_dir = %config.state_dir.display(),
        "shuffle service ready"
    );
    shuffle_service::run(&config, core, listeners, shutdown::signal()).await
}
