//! The command line: `kubebed apiserver` serves the API server stand-in alone.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::api::{ApiConfig, router};
use crate::store::Store;

/// A one-machine Kubernetes test bed.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serves the API server stand-in (no kubelets, no controllers).
    Apiserver {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: SocketAddr,
        /// Events kept for watches to resume from; older resumes get 410 Gone.
        #[arg(long, default_value_t = 10_000)]
        history: usize,
        /// Seconds between BOOKMARK events on watches that allow them.
        #[arg(long, default_value_t = 60)]
        bookmark_seconds: u64,
    },
}

/// Runs the command line.
///
/// # Errors
/// Start-up failures.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    service_runtime::logging::init("kubebed=info");
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        match cli.command {
            Command::Apiserver {
                listen,
                history,
                bookmark_seconds,
            } => {
                let store = Store::new(history);
                let app = router(
                    store,
                    ApiConfig {
                        bookmark_interval: Duration::from_secs(bookmark_seconds.max(1)),
                        ..ApiConfig::default()
                    },
                );
                let listener = tokio::net::TcpListener::bind(listen).await?;
                tracing::info!(%listen, "API server stand-in listening");
                axum::serve(listener, app)
                    .with_graceful_shutdown(service_runtime::shutdown::signal())
                    .await?;
                Ok(())
            }
        }
    })
}
