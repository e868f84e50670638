//! The command line: `serve` (default), and the client commands `upload`, `fetch` and `submit`
//! (run by `staging-client`).

use clap::{Parser, Subcommand};

use crate::config::ServeArgs;
use staging_client::fetch::FetchArgs;
use staging_client::submit::SubmitArgs;
use staging_client::upload::UploadArgs;

/// Resource staging server for Spark on Kubernetes, and its client commands.
#[derive(Debug, Parser)]
#[command(
    name = "staging-server",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to run; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Server flags when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Bundle local files into a tar.gz while streaming it to the server; print id and token.
    Upload(UploadArgs),
    /// Download, verify and safely unpack a bundle (the init-container).
    Fetch(FetchArgs),
    /// Run spark-submit against Kubernetes with local files: stage them, create the token's
    /// Secret, wire the pod templates, run spark-submit.
    Submit(Box<SubmitArgs>),
}
