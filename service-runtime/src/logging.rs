//! `tracing` set-up for the binaries: `RUST_LOG` filters (default given by the caller),
//! `LOG_FORMAT=json` switches to JSON lines, everything goes to stderr.

/// Installs the global subscriber; call once, from `main`.
pub fn init(default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if std::env::var("LOG_FORMAT").is_ok_and(|v| v == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
