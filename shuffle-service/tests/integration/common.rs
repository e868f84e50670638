//! Harness: the service in-process on 127.0.0.1:0 (gRPC and admin), and a client.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use shuffle_proto::v1 as pb;
use shuffle_proto::v1::shuffle_client::ShuffleClient;
use shuffle_service::Core;
use shuffle_service::config::Config;
use shuffle_service::core::{VolumeKind, VolumeSpec};
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub(crate) struct TestService {
    pub(crate) grpc: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) spark: SocketAddr,
    pub(crate) core: Core,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) volume: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl TestService {
    pub(crate) async fn start(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), tweak).await
    }

    pub(crate) async fn start_in(dir: tempfile::TempDir, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::for_data_dir(dir.path());
        std::fs::create_dir_all(dir.path().join("vol")).unwrap();
        config.volumes = vec![VolumeSpec {
            path: dir.path().join("vol"),
            kind: VolumeKind::HostPath,
            capacity: None,
        }];
        tweak(&mut config);
        let core = Core::open(&config.core(), prometheus::Registry::new())
            .await
            .unwrap();
        // Pod watches are started by the tests that want them, with a client of their own
        // (never one inferred from the environment, which could name a real cluster).
        config.kube = None;
        let grpc_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let spark_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (grpc, admin) = (grpc_l.local_addr().unwrap(), admin_l.local_addr().unwrap());
        let spark = spark_l.local_addr().unwrap();
        let listeners = shuffle_service::server::Listeners {
            grpc: grpc_l,
            admin: admin_l,
            spark: Some(spark_l),
            probe: None,
        };
        let (tx, rx) = oneshot::channel::<()>();
        let c = core.clone();
        let volume = config.volumes[0].path.canonicalize().unwrap();
        let handle = tokio::spawn(async move {
            shuffle_service::run(&config, c, listeners, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self {
            grpc,
            admin,
            spark,
            core,
            dir,
            volume,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    pub(crate) async fn client(&self) -> ShuffleClient<Channel> {
        ShuffleClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
    }

    pub(crate) async fn metrics(&self) -> String {
        reqwest_get(&format!("http://{}/metrics", self.admin)).await
    }

    pub(crate) async fn shutdown(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap();
        }
        self.dir
    }

    /// Sends the shutdown signal without waiting; returns the server task.
    pub(crate) fn trigger_shutdown(&mut self) -> tokio::task::JoinHandle<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.take().unwrap()
    }

    /// A fresh executor directory (Spark's `blockmgr-*`) under the volume.
    pub(crate) fn exec_dir(&self, name: &str) -> PathBuf {
        let d = self.volume.join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}

/// A minimal HTTP GET over a raw socket (the admin port speaks HTTP/1.1).
pub(crate) async fn reqwest_get(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    s.write_all(
        format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

pub(crate) fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// Registers an application and returns its token.
pub(crate) async fn register_app(c: &mut ShuffleClient<Channel>, app: &str) -> String {
    c.register_application(pb::RegisterApplicationRequest {
        app_id: app.into(),
        heartbeat_timeout_ms: 0,
        namespace: "spark".into(),
        driver_pod: "driver-0".into(),
    })
    .await
    .unwrap()
    .into_inner()
    .token
}

pub(crate) async fn register_exec(
    c: &mut ShuffleClient<Channel>,
    token: &str,
    app: &str,
    exec: &str,
    dirs: &[&Path],
) {
    c.register_executor(authed(
        pb::RegisterExecutorRequest {
            app_id: app.into(),
            exec_id: exec.into(),
            local_dirs: dirs.iter().map(|d| d.display().to_string()).collect(),
            sub_dirs_per_local_dir: 64,
            shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
        },
        token,
    ))
    .await
    .unwrap();
}

/// Writes a map output whose partitions are `parts`; returns the status.
pub(crate) async fn write_output(
    c: &mut ShuffleClient<Channel>,
    token: &str,
    app: &str,
    exec: &str,
    shuffle: i32,
    map: i64,
    parts: &[Vec<u8>],
) -> Result<u64, tonic::Status> {
    use pb::write_map_output_request::Item;
    let mut msgs = vec![pb::WriteMapOutputRequest {
        item: Some(Item::Header(pb::MapOutputHeader {
            app_id: app.into(),
            exec_id: exec.into(),
            shuffle_id: shuffle,
            map_id: map,
            partition_lengths: parts.iter().map(|p| p.len() as u64).collect(),
        })),
    }];
    let all: Vec<u8> = parts.concat();
    for chunk in all.chunks(256 << 10) {
        msgs.push(pb::WriteMapOutputRequest {
            item: Some(Item::Data(bytes::Bytes::copy_from_slice(chunk))),
        });
    }
    c.write_map_output(authed(futures::stream::iter(msgs), token))
        .await
        .map(|r| r.into_inner().bytes_written)
}

/// Fetches blocks and reassembles each block's bytes.
pub(crate) async fn fetch(
    c: &mut ShuffleClient<Channel>,
    token: &str,
    app: &str,
    exec: &str,
    blocks: &[(i32, i64, i32, i32)],
) -> Result<Vec<Vec<u8>>, tonic::Status> {
    let req = pb::FetchBlocksRequest {
        app_id: app.into(),
        exec_id: exec.into(),
        blocks: blocks
            .iter()
            .map(|&(s, m, a, b)| pb::BlockRange {
                shuffle_id: s,
                map_id: m,
                start_reduce: a,
                end_reduce: b,
            })
            .collect(),
    };
    let mut stream = c.fetch_blocks(authed(req, token)).await?.into_inner();
    let mut out = vec![Vec::new(); blocks.len()];
    let mut done = vec![false; blocks.len()];
    while let Some(m) = stream.message().await? {
        let i = m.block_index as usize;
        assert_eq!(m.offset as usize, out[i].len(), "chunks in order");
        out[i].extend_from_slice(&m.data);
        if m.last {
            assert_eq!(out[i].len() as u64, m.block_length);
            done[i] = true;
        }
    }
    assert!(done.iter().all(|d| *d), "every block completed");
    Ok(out)
}

pub(crate) fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub(crate) fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Addresses a started binary reported.
pub(crate) struct Ready {
    pub(crate) grpc: String,
    pub(crate) admin: String,
    pub(crate) spark: String,
}

/// Starts the real binary on port 0 everywhere with a hostPath volume `<dir>/vol`, plus
/// `extra` flags; waits for its "ready" log line.
pub(crate) async fn spawn_service(dir: &Path, extra: &[&str]) -> (tokio::process::Child, Ready) {
    spawn_service_env(dir, extra, &[]).await
}

/// As [`spawn_service`], with environment variables (`KUBECONFIG` for the pod watch).
pub(crate) async fn spawn_service_env(
    dir: &Path,
    extra: &[&str],
    env: &[(&str, &Path)],
) -> (tokio::process::Child, Ready) {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shuffle-service"))
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--spark-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir)
        .arg("--volume")
        .arg({
            std::fs::create_dir_all(dir.join("vol")).unwrap();
            format!("{}:hostPath", dir.join("vol").display())
        })
        .args(extra)
        .envs(env.iter().copied())
        .env("LOG_FORMAT", "json")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let ready = loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("service exited before it was ready");
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let f = &v["fields"];
        if f["message"] == "shuffle service ready" {
            let s = |k: &str| f[k].as_str().unwrap().to_owned();
            break Ready {
                grpc: s("grpc"),
                admin: s("admin"),
                spark: s("spark"),
            };
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, ready)
}

/// Writes a secret file the way the service accepts it (mode 0600).
pub(crate) fn write_secret(path: &Path, secret: impl AsRef<[u8]>) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, secret).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Gives the service one Spark secret for every application (`--spark-auth-secret-file`).
pub(crate) fn shared_spark_secret(c: &mut Config, secret: &str) {
    let f = c.state_dir.parent().unwrap().join("secret");
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    write_secret(&f, secret);
    c.spark_auth_secret_file = Some(f);
}

/// Gives the service `app`'s own Spark secret, as a mounted Kubernetes Secret would
/// (`--spark-auth-secret-dir`: one file per application id).
pub(crate) fn per_app_spark_secret(c: &mut Config, app: &str, secret: &str) {
    let d = c.state_dir.parent().unwrap().join("secrets");
    std::fs::create_dir_all(&d).unwrap();
    write_secret(&d.join(app), secret);
    c.spark_auth_secret_dir = Some(d);
}
