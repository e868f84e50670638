//! The staging server's client commands, which the `staging-server` binary runs: `upload` (a
//! bundle, spark-submit side), `submit` (spark-submit with its local files staged as a
//! submission: `stage`, then the Secret and pod templates) and `fetch` (the init-container).
//!
//! Exit codes of all three, distinct so that a pod's termination reason tells what went wrong:
//! 0 success, 1 other failure, 3 credential refused (401/403), 4 resource not found (404),
//! 5 integrity failure (digest mismatch), 6 unsafe or oversized archive, 7 server unreachable
//! or failing after all retries, 8 (`submit`) the driver pod gone before it ended, 64 bad usage.
//! Once spark-submit ran, `submit` exits with its status or the failed driver's exit code.

pub mod fetch;
pub mod http;
pub mod stage;
pub mod submit;
pub mod upload;

use std::process::ExitCode;

/// A client failure with its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ClientError {
    /// Process exit code.
    pub code: u8,
    /// What to print.
    pub message: String,
}

/// Exit code: other failure.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code: credential refused.
pub const EXIT_AUTH: u8 = 3;
/// Exit code: resource not found.
pub const EXIT_NOT_FOUND: u8 = 4;
/// Exit code: digest mismatch.
pub const EXIT_INTEGRITY: u8 = 5;
/// Exit code: unsafe archive.
pub const EXIT_UNSAFE_ARCHIVE: u8 = 6;
/// Exit code: server unreachable or failing.
pub const EXIT_UNAVAILABLE: u8 = 7;
/// Exit code: the driver pod `submit` follows disappeared before it ended.
pub const EXIT_DRIVER_GONE: u8 = 8;
/// Exit code: bad usage.
pub const EXIT_USAGE: u8 = 64;

impl ClientError {
    /// An error with a code.
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Prints an error and converts it to the process exit code.
pub fn exit(result: Result<(), ClientError>, command: &str) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("staging-server {command}: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

/// The `message` of a JSON error body, or the body itself, shortened.
fn server_message(body: &str) -> String {
    serde_json::from_str::<staging_api::bodies::ErrorBody>(body)
        .map(|e| e.message)
        .unwrap_or_else(|_| body.chars().take(300).collect())
}
