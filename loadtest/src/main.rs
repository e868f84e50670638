//! `loadtest`: measures the project's services under load, side by side with the baselines a
//! user would otherwise pick, in the same run. Results are printed as JSON on stdout; progress
//! goes to stderr.

mod nginx;
mod procs;
mod staging;
mod stats;

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let report = match cli.command {
        Command::Staging(args) => staging::run(args).await?,
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
