//! Child processes of a benchmark: started with their readiness awaited, killed on drop.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Starts the release `staging-server` on a free loopback port with its data in `data_dir`
/// and `extra` flags, and waits until it listens; the child (killed on drop) and the API's
/// base URL.
pub(crate) async fn start_staging(
    data_dir: &Path,
    extra: &[&str],
) -> anyhow::Result<(tokio::process::Child, String)> {
    start_staging_with(data_dir, extra, &[]).await
}

/// [`start_staging`] with environment variables `env` set for the server.
pub(crate) async fn start_staging_with(
    data_dir: &Path,
    extra: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> anyhow::Result<(tokio::process::Child, String)> {
    let port = free_port()?;
    let server = tokio::process::Command::new(release_bin("staging-server")?)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting staging-server")?;
    // A replicated server loads the shared state from its store first, which takes long
    // when the store is busy serving a benchmark's bytes.
    wait_listening(([127, 0, 0, 1], port).into(), Duration::from_secs(120)).await?;
    Ok((server, format!("http://127.0.0.1:{port}")))
}

/// A free loopback port (for servers that cannot report a port-0 bind).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until `addr` accepts connections, up to `within`.
pub(crate) async fn wait_listening(addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{addr} did not start listening within {within:?}");
        }
        // Polling a process we do not control, which has no readiness signal.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Peak resident set (VmHWM) of a process, in bytes.
pub(crate) fn vm_hwm(pid: u32) -> anyhow::Result<u64> {
    status_kb(pid, "VmHWM:")
}

/// Current resident set (VmRSS) of a process, in bytes.
pub(crate) fn vm_rss(pid: u32) -> anyhow::Result<u64> {
    status_kb(pid, "VmRSS:")
}

fn status_kb(pid: u32, key: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .with_context(|| format!("no {key}"))?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("bad {key}"))?
        .parse()?;
    Ok(kb * 1024)
}

/// Locates a workspace binary built in release mode.
pub(crate) fn release_bin(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let p = root.join("target/release").join(name);
    if !p.exists() {
        bail!(
            "{} not found; run `cargo build --release -p {name}` first",
            p.display()
        );
    }
    Ok(p)
}

/// A fresh work directory under `dir`, or under `target/loadtest` (the disk under test).
pub(crate) fn work_dir(dir: Option<&Path>) -> anyhow::Result<tempfile::TempDir> {
    let base = dir.map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/loadtest"),
        Path::to_owned,
    );
    std::fs::create_dir_all(&base)?;
    Ok(tempfile::tempdir_in(&base)?)
}
