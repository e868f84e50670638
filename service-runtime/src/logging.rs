//! `tracing` set-up for the binaries: `RUST_LOG` filters (default given by the caller, plus
//! [`DEFAULT_RUNTIME_FILTER`] so that this crate's own events, certificate reloads among
//! them, are not filtered out), `LOG_FORMAT=json` switches to JSON lines, everything goes
//! to stderr.

/// What this crate logs by default: `info` and above.
pub const DEFAULT_RUNTIME_FILTER: &str = "service_runtime=info";

/// The filter used when `RUST_LOG` is not set.
#[must_use]
pub fn default_filter(service_filter: &str) -> String {
    if service_filter.is_empty() {
        DEFAULT_RUNTIME_FILTER.to_owned()
    } else {
        format!("{service_filter},{DEFAULT_RUNTIME_FILTER}")
    }
}

/// Installs the global subscriber; call once, from `main`.
pub fn init(default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(self::default_filter(default_filter)));
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_runtime_crate_logs_at_info_by_default() {
        assert_eq!(
            super::default_filter("shuffle_service=info"),
            "shuffle_service=info,service_runtime=info"
        );
        assert_eq!(super::default_filter(""), "service_runtime=info");
    }
}
