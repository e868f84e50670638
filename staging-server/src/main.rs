//! `staging-server`: parse the command line and run the server or a client command.

use std::process::ExitCode;

use clap::Parser as _;
use staging_client as client;
use staging_server::cli::{Cli, Command};
use staging_server::{AppState, Config, Listeners, Overrides, shutdown};

fn main() -> ExitCode {
    // Usage errors exit 64 (the documented code), help and version 0.
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(client::EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    service_runtime::logging::init(staging_server::DEFAULT_LOG_FILTER);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("staging-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Upload(args)) => runtime.block_on(client::upload::main(args)),
        Some(Command::Fetch(args)) => runtime.block_on(client::fetch::main(args)),
        Some(Command::Submit(args)) => runtime.block_on(client::submit::main(*args)),
        Some(Command::Serve(args)) => runtime.block_on(serve(*args)),
        None => runtime.block_on(serve(cli.serve)),
    }
}

async fn serve(args: staging_server::config::ServeArgs) -> ExitCode {
    match try_serve(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("staging-server: {e}");
            ExitCode::from(if e.is_usage() { 64 } else { 1 })
        }
    }
}

async fn try_serve(args: staging_server::config::ServeArgs) -> staging_server::Result<()> {
    // `--kube-owners auto` follows owner pods when the process runs in a pod.
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let config = Config::load(args, in_cluster)?;
    let state = AppState::open(&config, Overrides::default()).await?;
    let bind = |addr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| staging_server::Error::io(format!("listen {addr}"), e))
    };
    let api = bind(config.listen).await?;
    let admin = match config.admin_listen {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    tracing::info!(
        listen = %api.local_addr().map_err(|e| staging_server::Error::io("listener", e))?,
        admin = %admin
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map_or_else(|| "none".to_owned(), |a| a.to_string()),
        data_dir = %config.data_dir.display(),
        upload_auth = !config.upload_tokens.is_empty(),
        "staging server ready"
    );
    staging_server::run(&config, state, Listeners { api, admin }, shutdown::signal())
        .await
        .map_err(|e| staging_server::Error::io("serve", e))
}
