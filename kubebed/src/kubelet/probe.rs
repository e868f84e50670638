//! Readiness probes as a kubelet runs them: `httpGet` (a status from 200 to 399) and
//! `tcpSocket` (a connection accepted), against the pod's address, one at a time:
//! `periodSeconds` after the last one ended (the first after `initialDelaySeconds`), each
//! within `timeoutSeconds`; `successThreshold` passes in a row make the container ready,
//! `failureThreshold` failures in a row unready. A probe naming a port the container does not
//! declare always fails, as a kubelet's does. A container without a readiness probe, or with
//! one of a kind the bed does not run (`exec`, `grpc`), is ready while it runs. HTTPS probes
//! connect only (a kubelet does not verify the certificate either; the bed does not speak TLS
//! to the pod); `host` and `httpHeaders` are not used.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe as ProbeSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The longest status line a probe reads.
const MAX_STATUS_LINE: usize = 1024;

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Check {
    /// `GET path` answered 200–399.
    Http { port: u16, path: String },
    /// A connection to `port` accepted.
    Tcp { port: u16 },
    /// Never passes: the probe names a port the container does not declare.
    Fail,
}

/// One container's readiness probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    check: Check,
    /// Before the first probe.
    pub initial_delay: Duration,
    /// Between probes.
    pub period: Duration,
    timeout: Duration,
    success_threshold: u32,
    failure_threshold: u32,
}

/// Seconds of a probe field, or its default.
fn secs(v: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(v.and_then(|s| u64::try_from(s).ok()).unwrap_or(default))
}

fn count(v: Option<i32>, default: u32) -> u32 {
    v.and_then(|s| u32::try_from(s).ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

/// A probe port: a number, or the name of one of the container's ports.
fn port(c: &Container, p: &IntOrString) -> Option<u16> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|q| q.name.as_deref() == Some(name.as_str()))
            .and_then(|q| u16::try_from(q.container_port).ok()),
    }
}

impl Readiness {
    /// The container's readiness probe, when it has one the bed runs.
    #[must_use]
    pub fn of(c: &Container) -> Option<Self> {
        let spec: &ProbeSpec = c.readiness_probe.as_ref()?;
        let check = if let Some(h) = &spec.http_get {
            let https = h
                .scheme
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case("https"));
            match port(c, &h.port) {
                None => Check::Fail,
                Some(port) if https => Check::Tcp { port },
                Some(port) => {
                    let path = h.path.as_deref().unwrap_or("/");
                    let path = if path.starts_with('/') {
                        path.to_owned()
                    } else {
                        format!("/{path}")
                    };
                    Check::Http { port, path }
                }
            }
        } else if let Some(t) = &spec.tcp_socket {
            port(c, &t.port).map_or(Check::Fail, |port| Check::Tcp { port })
        } else {
            return None;
        };
        Some(Self {
            check,
            initial_delay: secs(spec.initial_delay_seconds, 0),
            period: secs(spec.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(spec.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: count(spec.success_threshold, 1),
            failure_threshold: count(spec.failure_threshold, 3),
        })
    }

    /// Runs the probe once against `ip`: whether it passed.
    pub async fn run(&self, ip: Ipv4Addr) -> bool {
        tokio::time::timeout(self.timeout, self.attempt(ip))
            .await
            .unwrap_or(false)
    }

    async fn attempt(&self, ip: Ipv4Addr) -> bool {
        let port = match &self.check {
            Check::Http { port, .. } | Check::Tcp { port } => *port,
            Check::Fail => return false,
        };
        let Ok(mut s) = TcpStream::connect(SocketAddr::from((ip, port))).await else {
            return false;
        };
        let Check::Http { path, .. } = &self.check else {
            return true;
        };
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/kubebed\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        if s.write_all(req.as_bytes()).await.is_err() {
            return false;
        }
        let mut line = Vec::with_capacity(64);
        let mut buf = [0u8; 256];
        while !line.contains(&b'\n') && line.len() < MAX_STATUS_LINE {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => line.extend_from_slice(&buf[..n]),
            }
        }
        status_passes(&line)
    }

    /// The container's readiness after one more result, given the streak so far (positive:
    /// passes in a row; negative: failures in a row) and its readiness before.
    #[must_use]
    pub fn judge(&self, streak: &mut i64, ready: bool, passed: bool) -> bool {
        *streak = match (passed, *streak) {
            (true, s) if s > 0 => s + 1,
            (true, _) => 1,
            (false, s) if s < 0 => s - 1,
            (false, _) => -1,
        };
        if *streak >= i64::from(self.success_threshold) {
            true
        } else if -*streak >= i64::from(self.failure_threshold) {
            false
        } else {
            ready
        }
    }
}

/// Whether an HTTP answer's status line says 200–399, as a kubelet's HTTP probe wants.
fn status_passes(head: &[u8]) -> bool {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let version = parts.next().unwrap_or_default();
    let code = parts
        .next()
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.trim().parse::<u16>().ok());
    version.starts_with(b"HTTP/") && code.is_some_and(|c| (200..400).contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(probe: serde_json::Value) -> Container {
        serde_json::from_value(serde_json::json!({
            "name": "c",
            "ports": [{"name": "admin", "containerPort": 10001}],
            "readinessProbe": probe,
        }))
        .unwrap()
    }

    #[test]
    fn probes_read_their_kind_port_and_timings() {
        let p = Readiness::of(&container(serde_json::json!({
            "httpGet": {"path": "/readyz", "port": "admin"},
            "periodSeconds": 5, "failureThreshold": 2,
        })))
        .unwrap();
        assert_eq!(
            p.check,
            Check::Http {
                port: 10001,
                path: "/readyz".into()
            }
        );
        assert_eq!(
            (p.period, p.failure_threshold, p.success_threshold),
            (Duration::from_secs(5), 2, 1)
        );
        let t = Readiness::of(&container(serde_json::json!({"tcpSocket": {"port": 7337}})));
        assert_eq!(t.unwrap().check, Check::Tcp { port: 7337 });
        // Kinds the bed does not run: no probe (ready while running).
        assert!(
            Readiness::of(&container(
                serde_json::json!({"exec": {"command": ["true"]}})
            ))
            .is_none()
        );
        // A port the container does not declare: a probe that never passes.
        let nope = Readiness::of(&container(serde_json::json!({"httpGet": {"port": "nope"}})));
        assert_eq!(nope.unwrap().check, Check::Fail);
        let relative = Readiness::of(&container(
            serde_json::json!({"httpGet": {"port": 80, "path": "readyz"}}),
        ));
        assert_eq!(
            relative.unwrap().check,
            Check::Http {
                port: 80,
                path: "/readyz".into()
            }
        );
    }

    #[test]
    fn thresholds_decide_on_streaks() {
        let p = Readiness::of(&container(serde_json::json!({
            "tcpSocket": {"port": 1}, "successThreshold": 2, "failureThreshold": 3,
        })))
        .unwrap();
        let (mut streak, mut ready) = (0, false);
        for (passed, want) in [
            (true, false),
            (true, true),
            (false, true),
            (false, true),
            (true, true),
            (false, true),
            (false, true),
            (false, false),
            (true, false),
            (true, true),
        ] {
            ready = p.judge(&mut streak, ready, passed);
            assert_eq!(ready, want, "streak {streak}");
        }
    }

    #[test]
    fn only_2xx_and_3xx_statuses_pass() {
        assert!(status_passes(b"HTTP/1.1 200 OK\r\n"));
        assert!(status_passes(b"HTTP/1.1 302 Found\r\n"));
        assert!(!status_passes(b"HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(!status_passes(b"HTTP/1.1 199 x\r\n"));
        assert!(!status_passes(b"garbage"));
        assert!(!status_passes(b""));
    }
}
