//! nginx as a baseline file server: the Debian package, started with a private config that
//! serves one directory with sendfile, as a tuned static server would.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::{Child, Command};

use crate::procs::{free_port, wait_listening};

/// A running nginx.
pub(crate) struct Nginx {
    _child: Child,
    /// Its port on 127.0.0.1.
    pub(crate) port: u16,
}

impl Nginx {
    /// Serves `root` on a free loopback port.
    pub(crate) async fn start(root: &Path, work: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let conf = work.join("nginx.conf");
        let user = if is_root() { "user root;\n" } else { "" };
        std::fs::write(
            &conf,
            format!(
                "{user}worker_processes 2;\npid {pid};\nerror_log stderr warn;\nevents {{ worker_connections 4096; }}\n\
                 http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 1000000;\n\
                 client_body_temp_path {w}/body;\n  proxy_temp_path {w}/proxy;\n  fastcgi_temp_path {w}/fcgi;\n\
                 uwsgi_temp_path {w}/uwsgi;\n  scgi_temp_path {w}/scgi;\n\
                 server {{\n    listen 127.0.0.1:{port};\n    root {root};\n  }}\n}}\n",
                pid = work.join("nginx.pid").display(),
                w = work.display(),
                root = root.display(),
            ),
        )?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting nginx (apt-get install nginx-light)")?;
        wait_listening(([127, 0, 0, 1], port).into(), Duration::from_secs(10)).await?;
        Ok(Self {
            _child: child,
            port,
        })
    }
}

impl Nginx {
    /// CPU seconds (user and system) of the master and its workers.
    pub(crate) fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let master = self._child.id().context("nginx exited")?;
        let mut total = crate::spark::cpu_seconds(master)?;
        for e in std::fs::read_dir("/proc")?.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(master) {
                total += crate::spark::cpu_seconds(pid).unwrap_or(0.0);
            }
        }
        Ok(total)
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
