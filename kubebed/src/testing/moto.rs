//! moto's S3-protocol server for the tests that need an object store (the staging server's
//! own tests and the end-to-end tests on the bed), started through `scripts/moto-server.py`,
//! which makes moto's conditional writes atomic as S3's are.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use super::workspace;

/// How long moto may take to listen.
const START: Duration = Duration::from_secs(60);

/// The Python that runs moto: `$MOTO_PYTHON`, else the project's venv (where
/// `scripts/test-deps.sh` installs moto), else `python3` on `PATH`.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("MOTO_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = workspace().join(".venv/bin/python");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("python3")
}

/// moto listening on `host` (a port the system chooses) with the bucket `bucket`; killed when
/// the returned child is dropped. Returns it and moto's endpoint URL.
///
/// # Panics
/// `COMPONENT MISSING` when Python cannot be run (`scripts/test.sh` installs moto and says
/// when it cannot), or when moto does not listen within a minute (its own words, such as the
/// launcher's `COMPONENT MISSING` for a Python without moto) or refuses the bucket.
pub async fn moto(host: IpAddr, bucket: &str) -> (Child, String) {
    let script = workspace().join("scripts/moto-server.py");
    let mut child = Command::new(python())
        .arg(&script)
        .args(["-H", &host.to_string(), "-p", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "COMPONENT MISSING: cannot run {}: {e} (scripts/test.sh installs moto)",
                script.display()
            )
        });
    // moto prints " * Running on http://HOST:PORT" on stderr once it listens.
    let mut lines = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
    let mut said = Vec::new();
    let endpoint = tokio::time::timeout(START, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(url) = line.split("Running on ").nth(1) {
                return Some(url.trim().to_owned());
            }
            said.push(line);
        }
        None
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_else(|| {
        panic!(
            "moto exited, or did not listen within {START:?}: {}",
            said.join("\n")
        )
    });
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let created = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("moto at {endpoint}: {e}"));
    assert!(
        created.status().is_success(),
        "moto refused the bucket {bucket}: {}",
        created.status()
    );
    (child, endpoint)
}
