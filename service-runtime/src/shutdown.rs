//! Shutdown signal: SIGTERM (Kubernetes) or SIGINT (a terminal), whichever comes first.

/// Resolves when SIGTERM or SIGINT arrives, logging which.
///
/// # Panics
/// If the signal handlers cannot be installed, which only happens outside a Tokio runtime.
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "shutdown requested");
}
