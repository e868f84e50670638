//! `spark-fetch`: the service's Spark-protocol listener beside Spark's own JVM
//! ExternalShuffleService (from the pyspark jars), serving the same files in the same run, to
//! a Spark-protocol client: 4 KiB, 64 KiB and 1 MiB blocks over 1 to 64 connections.
//! Reports throughput, p50/p99 request latency, server CPU seconds per GB and peak RSS.
//! `--mode` picks the channel: `plain` (authentication off), network crypto (`ctr`, `gcm`:
//! `spark.network.crypto.enabled=true` with that cipher on both servers, Spark's default
//! engine version 1) or `tls` (`spark.ssl.rpc.enabled=true`; a certificate from a CA made
//! for the run), where every byte is encrypted by the server and decrypted by the client.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::{Buf as _, BytesMut};
use serde_json::{Value, json};
use spark_protocol::client::chunk_fetch_requests;
use spark_protocol::crypto::auth::{AuthMessage, ClientHandshake};
use spark_protocol::crypto::{Cipher, EngineVersion, Opener, Sealer};
use spark_protocol::frame::Message;
use spark_protocol::ids::{MapId, ShuffleId};
use spark_protocol::layout;
use spark_protocol::message::{BlockTransferMessage as Btm, ExecutorShuffleInfo};
use tokio::process::{Child, Command};

use crate::procs::{free_port, release_bin, vm_hwm, wait_listening, work_dir};
use crate::stats::{median, round};

/// Arguments of `spark-fetch`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Measured runs per cell (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Block sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "4096,65536,1048576")]
    block_sizes: Vec<u64>,
    /// Concurrent connections.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    connections: Vec<usize>,
    /// Work directory (default: target/loadtest).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Spark installation (default: the pyspark package of the project's .venv).
    #[arg(long)]
    spark_home: Option<PathBuf>,
    /// Channel: `plain`, `ctr` or `gcm` (network crypto with that cipher), or `tls`.
    #[arg(long, default_value = "plain", value_parser = parse_mode)]
    mode: Mode,
}

/// The channel both servers are measured on.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mode {
    /// Authentication off.
    Plain,
    /// `spark.network.crypto.enabled=true` with this cipher, engine version 1.
    Crypto(Cipher),
    /// `spark.ssl.rpc.enabled=true`.
    Tls,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    match s {
        "plain" => Ok(Mode::Plain),
        "tls" => Ok(Mode::Tls),
        other => Cipher::parse(other)
            .map(Mode::Crypto)
            .ok_or_else(|| format!("unknown mode {other:?}: plain, ctr, gcm or tls")),
    }
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Crypto(Cipher::Ctr) => "network crypto, AES/CTR/NoPadding",
            Self::Crypto(Cipher::Gcm) => "network crypto, AES/GCM/NoPadding",
            Self::Tls => "TLS (spark.ssl.rpc)",
        }
    }
}

/// The secret both servers and the client share in the crypto modes.
const SECRET: &str = "5f0c2d1b9e8a7c6d4b3a29180716253443526170819fa0b1c2d3e4f5a6b7c8d9";

pub(crate) const APP: &str = "app-20261121000000-0042";
const EXEC: &str = "1";

/// The map outputs of one block size: `maps` outputs of `parts` partitions of `block` bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    pub(crate) shuffle: i32,
    pub(crate) block: u64,
    pub(crate) maps: i64,
    pub(crate) parts: i32,
}

/// Writes map outputs as Spark's executors do (data + index placed by Spark's formula).
pub(crate) fn write_outputs(dirs: &[PathBuf], layouts: &[Layout]) -> anyhow::Result<()> {
    for l in layouts {
        let payload = vec![0x5au8; (l.block * l.parts as u64) as usize];
        let lens = vec![l.block; l.parts as usize];
        for m in 0..l.maps {
            let (s, mid) = (ShuffleId::new(l.shuffle)?, MapId::new(m)?);
            for (name, bytes) in [
                (layout::data_file(s, mid), &payload[..]),
                (layout::index_file(s, mid), &layout::encode_index(&lens)[..]),
            ] {
                let p = layout::placement(dirs, 64, &name);
                std::fs::create_dir_all(p.parent().context("parent")?)?;
                std::fs::write(&p, bytes)?;
            }
        }
    }
    Ok(())
}

/// Registers the executor over Spark's protocol, on a channel of `mode`.
async fn register(
    addr: &str,
    dirs: &[PathBuf],
    mode: Mode,
    tls: Option<&TlsRun>,
) -> anyhow::Result<()> {
    let mut c = Conn::connect(addr, mode, tls).await?;
    let m = Btm::RegisterExecutor {
        app_id: APP.into(),
        exec_id: EXEC.into(),
        info: ExecutorShuffleInfo {
            local_dirs: dirs.iter().map(|d| d.display().to_string()).collect(),
            sub_dirs_per_local_dir: 64,
            shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
        },
    };
    c.rpc(m.to_bytes())
        .await
        .with_context(|| format!("registration at {addr}"))?;
    Ok(())
}

/// A CA and a certificate for `localhost` made for one run: PEM for this service, a PKCS12
/// key store for Spark's (`openssl`), and the client's configuration.
pub(crate) struct TlsRun {
    cert: PathBuf,
    key: PathBuf,
    keystore: PathBuf,
    client: std::sync::Arc<rustls::ClientConfig>,
}

impl TlsRun {
    fn new(dir: &Path) -> anyhow::Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate()?;
        let cert =
            CertificateParams::new(vec!["localhost".to_owned()])?.signed_by(&key, &issuer)?;
        let (c, k, ks) = (
            dir.join("tls.crt"),
            dir.join("tls.key"),
            dir.join("keystore.p12"),
        );
        std::fs::write(&c, cert.pem())?;
        std::fs::write(&k, key.serialize_pem())?;
        let out = std::process::Command::new("openssl")
            .args([
                "pkcs12",
                "-export",
                "-name",
                "ess",
                "-passout",
                "pass:changeit",
            ])
            .arg("-in")
            .arg(&c)
            .arg("-inkey")
            .arg(&k)
            .arg("-out")
            .arg(&ks)
            .output()
            .context("running openssl (for the JVM's key store)")?;
        if !out.status.success() {
            bail!("openssl pkcs12: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(Self {
            cert: c,
            key: k,
            keystore: ks,
            client: tls_client(&ca_cert.pem())?,
        })
    }
}

/// One measurement: bytes fetched, the time it took, and each request's latency.
#[derive(Debug, Default)]
pub(crate) struct Sample {
    pub(crate) bytes: u64,
    pub(crate) secs: f64,
    pub(crate) latencies: Vec<f64>,
}

/// Blocks per request: Spark groups blocks into requests of some 10 MB.
fn blocks_per_request(block: u64) -> usize {
    usize::try_from((8 << 20) / block)
        .unwrap_or(128)
        .clamp(1, 128)
}

/// A lean Spark-protocol connection for load: block bodies are counted and dropped from one
/// reused buffer, so the client costs the same, and little, against every server. With
/// network crypto, it decrypts everything it reads (as an executor does).
struct Conn {
    rd: tokio::io::BufReader<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
    wr: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    scratch: Vec<u8>,
    next_id: i64,
    crypt: Option<Crypt>,
}

struct Crypt {
    opener: Opener,
    sealer: Sealer,
    raw: BytesMut,
    plain: BytesMut,
}

/// The TLS client configuration of a run: trusts the run's CA only.
pub(crate) fn tls_client(ca_pem: &str) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    Ok(std::sync::Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

impl Conn {
    async fn connect(addr: &str, mode: Mode, tls: Option<&TlsRun>) -> anyhow::Result<Self> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        type Halves = (
            Box<dyn tokio::io::AsyncRead + Send + Unpin>,
            Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
        );
        let (r, w): Halves = match (mode, tls) {
            (Mode::Tls, Some(t)) => {
                let stream = tokio_rustls::TlsConnector::from(t.client.clone())
                    .connect("localhost".try_into()?, s)
                    .await?;
                let (r, w) = tokio::io::split(stream);
                (Box::new(r), Box::new(w))
            }
            (Mode::Tls, None) => bail!("TLS mode without certificates"),
            _ => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
        };
        let mut c = Self {
            rd: tokio::io::BufReader::with_capacity(256 << 10, r),
            wr: w,
            scratch: vec![0; 256 << 10],
            next_id: 1,
            crypt: None,
        };
        if let Mode::Crypto(cipher) = mode {
            let (hs, challenge) = ClientHandshake::start(APP, SECRET.as_bytes())?;
            let body = c.rpc(challenge.to_bytes()).await?;
            let keys = hs.finish(&AuthMessage::decode(body)?)?;
            let (opener, sealer) = keys.client_channel(cipher, EngineVersion::V1, 1 << 31)?;
            c.crypt = Some(Crypt {
                opener,
                sealer,
                raw: BytesMut::with_capacity(512 << 10),
                plain: BytesMut::with_capacity(512 << 10),
            });
        }
        Ok(c)
    }

    async fn write(&mut self, b: &[u8]) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt as _;
        match &mut self.crypt {
            Some(c) => {
                let mut out = BytesMut::with_capacity(c.sealer.sealed_len(b.len()));
                c.sealer.seal(b, &mut out);
                self.wr.write_all(&out).await?;
            }
            None => self.wr.write_all(b).await?,
        }
        self.wr.flush().await?;
        Ok(())
    }

    /// Reads exactly `n` bytes into the scratch buffer's start.
    async fn read_exact(&mut self, n: usize) -> anyhow::Result<()> {
        use tokio::io::AsyncReadExt as _;
        let Some(c) = &mut self.crypt else {
            self.rd.read_exact(&mut self.scratch[..n]).await?;
            return Ok(());
        };
        while c.plain.len() < n {
            c.opener.open(&mut c.raw, &mut c.plain)?;
            if c.plain.len() >= n {
                break;
            }
            c.raw.reserve(256 << 10);
            if self.rd.read_buf(&mut c.raw).await? == 0 {
                bail!("connection closed");
            }
        }
        self.scratch[..n].copy_from_slice(&c.plain[..n]);
        c.plain.advance(n);
        Ok(())
    }

    /// Reads one frame's length and type.
    async fn head(&mut self) -> anyhow::Result<(u64, u8)> {
        self.read_exact(9).await?;
        let len = u64::from_be_bytes(self.scratch[..8].try_into()?);
        let t = self.scratch[8];
        Ok((len.checked_sub(9).context("bad frame length")?, t))
    }

    /// An RPC's reply body.
    async fn rpc(&mut self, body: bytes::Bytes) -> anyhow::Result<bytes::Bytes> {
        let request_id = self.next_id;
        self.next_id += 1;
        self.write(&Message::RpcRequest { request_id, body }.to_bytes())
            .await?;
        let (rest, t) = self.head().await?;
        let n = usize::try_from(rest)?;
        if n > self.scratch.len() {
            bail!("reply of {n} bytes");
        }
        self.read_exact(n).await?;
        let mut frame = vec![t];
        frame.extend_from_slice(&self.scratch[..n]);
        match Message::decode(frame.into())? {
            Message::RpcResponse { body, .. } => Ok(body),
            other => bail!("refused: {other:?}"),
        }
    }

    async fn fetch_handle(&mut self, m: &Btm) -> anyhow::Result<(i64, i32)> {
        match Btm::decode(self.rpc(m.to_bytes()).await?)? {
            Btm::StreamHandle {
                stream_id,
                num_chunks,
            } => Ok((stream_id, num_chunks)),
            other => bail!("unexpected {other:?}"),
        }
    }

    /// Sends pipelined chunk requests and consumes the replies; returns the body bytes.
    async fn chunks(&mut self, stream_id: i64, n: i32, block: u64) -> anyhow::Result<u64> {
        self.write(&chunk_fetch_requests(stream_id, n)).await?;
        let mut bytes = 0;
        for _ in 0..n {
            let (rest, t) = self.head().await?;
            if t != 1 || rest < 12 {
                bail!("unexpected frame type {t}");
            }
            let mut left = rest;
            while left > 0 {
                let k = usize::try_from(left.min(self.scratch.len() as u64))?;
                self.read_exact(k).await?;
                left -= k as u64;
            }
            if rest - 12 != block {
                bail!("chunk of {} bytes, expected {block}", rest - 12);
            }
            bytes += block;
        }
        Ok(bytes)
    }
}

/// `conns` connections, each fetching requests of consecutive blocks (default protocol:
/// FetchShuffleBlocks, then pipelined ChunkFetchRequests) until `dur` has passed.
pub(crate) async fn load(
    addr: &str,
    app: &'static str,
    exec: &'static str,
    l: Layout,
    conns: usize,
    dur: Duration,
) -> anyhow::Result<Sample> {
    load_in(addr, app, exec, l, conns, dur, Mode::Plain, None).await
}

/// [`load`] on a channel of `mode`.
#[allow(clippy::too_many_arguments)]
async fn load_in(
    addr: &str,
    app: &'static str,
    exec: &'static str,
    l: Layout,
    conns: usize,
    dur: Duration,
    mode: Mode,
    tls: Option<std::sync::Arc<TlsRun>>,
) -> anyhow::Result<Sample> {
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::new();
    for c in 0..conns {
        let addr = addr.to_owned();
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(&addr, mode, tls.as_deref()).await?;
            let k = blocks_per_request(l.block);
            let total = l.maps as usize * l.parts as usize;
            let mut next = (c * 7919) % total;
            let mut s = Sample::default();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let mut maps: Vec<i64> = Vec::new();
                let mut reduces: Vec<Vec<i32>> = Vec::new();
                for j in 0..k {
                    let b = (next + j) % total;
                    let (m, r) = ((b / l.parts as usize) as i64, (b % l.parts as usize) as i32);
                    if maps.last() != Some(&m) {
                        maps.push(m);
                        reduces.push(Vec::new());
                    }
                    reduces.last_mut().expect("pushed").push(r);
                }
                next = (next + k) % total;
                let (stream_id, n) = conn
                    .fetch_handle(&Btm::FetchShuffleBlocks {
                        app_id: app.into(),
                        exec_id: exec.into(),
                        shuffle_id: l.shuffle,
                        map_ids: maps,
                        reduce_ids: reduces,
                        batch_fetch_enabled: false,
                    })
                    .await?;
                s.bytes += conn.chunks(stream_id, n, l.block).await?;
                s.latencies.push(t0.elapsed().as_secs_f64());
            }
            Ok::<_, anyhow::Error>(s)
        }));
    }
    let mut all = Sample::default();
    for t in tasks {
        let s = t.await??;
        all.bytes += s.bytes;
        all.latencies.extend(s.latencies);
    }
    all.secs = start.elapsed().as_secs_f64();
    Ok(all)
}

/// A percentile of the samples.
pub(crate) fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// User + system CPU seconds of a process.
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit(')').next().context("stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    // /proc reports clock ticks in USER_HZ, which Linux fixes at 100 for user space.
    Ok(ticks / 100.0)
}

/// Per-run figures of one server in one cell.
#[derive(Debug, Default)]
struct Series {
    mbps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    cpu: Vec<f64>,
}

struct Server {
    name: &'static str,
    addr: String,
    pid: u32,
    _child: Child,
}

impl Server {
    /// Starts `cmd` and waits until it listens on `port`.
    async fn spawn(
        mut cmd: Command,
        name: &'static str,
        port: u16,
        within: Duration,
    ) -> anyhow::Result<Self> {
        let child = cmd.spawn()?;
        let pid = child.id().context("pid")?;
        wait_listening(([127, 0, 0, 1], port).into(), within).await?;
        Ok(Self {
            name,
            addr: format!("127.0.0.1:{port}"),
            pid,
            _child: child,
        })
    }
}

async fn start_ours(
    work: &Path,
    vol: &Path,
    mode: Mode,
    tls: Option<&TlsRun>,
) -> anyhow::Result<Server> {
    let (g, a, s) = (free_port()?, free_port()?, free_port()?);
    let mut cmd = Command::new(release_bin("shuffle-service")?);
    if let Some(t) = tls {
        cmd.arg("--spark-tls-cert")
            .arg(&t.cert)
            .arg("--spark-tls-key")
            .arg(&t.key);
    }
    if let Mode::Crypto(_) = mode {
        let f = work.join("spark-secret");
        std::fs::write(&f, SECRET)?;
        std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        cmd.arg("--spark-auth-secret-file").arg(&f);
    }
    cmd.arg("--grpc-listen")
        .arg(format!("127.0.0.1:{g}"))
        .arg("--admin-listen")
        .arg(format!("127.0.0.1:{a}"))
        .arg("--spark-listen")
        .arg(format!("127.0.0.1:{s}"))
        .arg("--data-dir")
        .arg(work.join("svc"))
        .arg("--volume")
        .arg(format!("{}:hostPath", vol.display()))
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    Server::spawn(cmd, "ours", s, Duration::from_secs(20))
        .await
        .context("starting shuffle-service")
}

/// The physical limit (`limit.rs`), in its own process.
async fn start_limit(dirs: &[PathBuf], mode: Mode, tls: Option<&TlsRun>) -> anyhow::Result<Server> {
    let port = free_port()?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("limit-server")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"));
    for d in dirs {
        cmd.arg("--dir").arg(d);
    }
    if let Mode::Crypto(_) = mode {
        cmd.arg("--secret").arg(SECRET);
    }
    if let Some(t) = tls {
        cmd.arg("--tls-cert")
            .arg(&t.cert)
            .arg("--tls-key")
            .arg(&t.key);
    }
    cmd.kill_on_drop(true);
    Server::spawn(cmd, "limit", port, Duration::from_secs(20))
        .await
        .context("starting the limit server")
}

fn spark_home(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_owned());
    }
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let out = std::process::Command::new(&py)
        .args([
            "-c",
            "import os, pyspark; print(os.path.dirname(pyspark.__file__))",
        ])
        .output()
        .with_context(|| {
            format!(
                "{}: pyspark not installed (scripts/test-deps.sh)",
                py.display()
            )
        })?;
    if !out.status.success() {
        bail!("pyspark not importable from {}", py.display());
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

async fn start_jvm(
    home: &Path,
    work: &Path,
    vol: &Path,
    mode: Mode,
    tls: Option<&TlsRun>,
) -> anyhow::Result<Server> {
    let port = free_port()?;
    let crypto = match (mode, tls) {
        (Mode::Tls, Some(t)) => format!(
            " -Dspark.ssl.rpc.enabled=true -Dspark.ssl.rpc.keyStore={} -Dspark.ssl.rpc.keyStorePassword=changeit -Dspark.ssl.rpc.keyPassword=changeit",
            t.keystore.display()
        ),
        (Mode::Plain | Mode::Tls, _) => String::new(),
        (Mode::Crypto(c), _) => format!(
            " -Dspark.authenticate=true -Dspark.authenticate.secret={SECRET} -Dspark.network.crypto.enabled=true -Dspark.network.crypto.saslFallback=false -Dspark.network.crypto.cipher={}",
            c.spark_name()
        ),
    };
    let mut cmd = Command::new(home.join("bin/spark-class"));
    cmd.arg("org.apache.spark.deploy.ExternalShuffleService")
        .env("SPARK_HOME", home)
        .env(
            "SPARK_SHUFFLE_OPTS",
            format!(
                "-Dspark.shuffle.service.port={port} -Dspark.local.dir={}{crypto}",
                vol.display()
            ),
        )
        .env("SPARK_LOG_DIR", work.join("jvm-logs"))
        .env("SPARK_LOCAL_IP", "127.0.0.1")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(work.join("jvm-ess.log"))?)
        .kill_on_drop(true);
    Server::spawn(cmd, "spark-jvm", port, Duration::from_secs(60))
        .await
        .context("starting Spark's ExternalShuffleService")
}

/// Runs the comparison.
pub(crate) async fn run(args: Args) -> anyhow::Result<Value> {
    let work = work_dir(args.dir.as_deref())?;
    let vol = work.path().join("vol");
    let dirs = vec![vol.join("spark-1/executor-1/blockmgr-1")];
    std::fs::create_dir_all(&dirs[0])?;
    let layouts: Vec<Layout> = args
        .block_sizes
        .iter()
        .enumerate()
        .map(|(i, &block)| {
            // At most 4096 blocks and 256 MiB per size, over 16 map outputs.
            let blocks = ((256u64 << 20) / block).clamp(16, 4096);
            Layout {
                shuffle: i as i32,
                block,
                maps: 16,
                parts: (blocks / 16) as i32,
            }
        })
        .collect();
    eprintln!("writing map outputs");
    write_outputs(&dirs, &layouts)?;
    let home = spark_home(args.spark_home.as_deref())?;
    let tls = match args.mode {
        Mode::Tls => Some(std::sync::Arc::new(TlsRun::new(work.path())?)),
        _ => None,
    };
    let mut servers = vec![
        start_ours(work.path(), &vol, args.mode, tls.as_deref()).await?,
        start_jvm(&home, work.path(), &vol, args.mode, tls.as_deref()).await?,
    ];
    servers.push(start_limit(&dirs, args.mode, tls.as_deref()).await?);
    for s in &servers {
        register(&s.addr, &dirs, args.mode, tls.as_deref()).await?;
        // Warm-up (the JVM's JIT; both servers' page cache).
        for l in &layouts {
            let warm = Duration::from_secs(1);
            load_in(&s.addr, APP, EXEC, *l, 4, warm, args.mode, tls.clone()).await?;
        }
    }
    let dur = Duration::from_secs(args.seconds);
    let mut rows = Vec::new();
    for l in &layouts {
        for &conns in &args.connections {
            let mut per: Vec<Series> = (0..servers.len()).map(|_| Series::default()).collect();
            for run in 0..args.runs {
                for k in 0..servers.len() {
                    // Alternate which server goes first.
                    let i = (k + run) % servers.len();
                    let s = &servers[i];
                    let cpu0 = cpu_seconds(s.pid)?;
                    let mut sample =
                        load_in(&s.addr, APP, EXEC, *l, conns, dur, args.mode, tls.clone()).await?;
                    let cpu = cpu_seconds(s.pid)? - cpu0;
                    let gb = sample.bytes as f64 / 1e9;
                    per[i].mbps.push(sample.bytes as f64 / 1e6 / sample.secs);
                    per[i]
                        .p50
                        .push(percentile(&mut sample.latencies, 0.5) * 1e3);
                    per[i]
                        .p99
                        .push(percentile(&mut sample.latencies, 0.99) * 1e3);
                    per[i].cpu.push(cpu / gb.max(1e-9));
                }
            }
            let cell = |i: usize| {
                json!({
                    "mb_per_s": round(median(&per[i].mbps), 1),
                    "p50_ms": round(median(&per[i].p50), 3),
                    "p99_ms": round(median(&per[i].p99), 3),
                    "cpu_s_per_gb": round(median(&per[i].cpu), 3),
                    "runs_mb_per_s": per[i].mbps.iter().map(|v| round(*v, 1)).collect::<Vec<_>>(),
                })
            };
            let ratio = median(&per[0].mbps) / median(&per[1].mbps).max(1e-9);
            let p99_ratio = median(&per[0].p99) / median(&per[1].p99).max(1e-9);
            let of_limit =
                (servers.len() > 2).then(|| median(&per[0].mbps) / median(&per[2].mbps).max(1e-9));
            eprintln!(
                "block {:>8} conns {conns:>2}: ours {:>8.1} MB/s, jvm {:>8.1} MB/s, ratio {ratio:.2}, p99 ratio {p99_ratio:.2}, of limit {}",
                l.block,
                median(&per[0].mbps),
                median(&per[1].mbps),
                of_limit.map_or("-".to_owned(), |f| format!("{f:.2}"))
            );
            let mut row = json!({
                "block_bytes": l.block,
                "connections": conns,
                "ours": cell(0),
                "spark_jvm": cell(1),
                "throughput_ratio": round(ratio, 2),
                "p99_ratio": round(p99_ratio, 2),
            });
            if let Some(f) = of_limit {
                row["limit"] = cell(2);
                row["fraction_of_limit"] = json!(round(f, 2));
            }
            rows.push(row);
        }
    }
    let rss: Vec<Value> = servers
        .iter()
        .map(|s| json!({"server": s.name, "peak_rss_mib": round(vm_hwm(s.pid).unwrap_or(0) as f64 / (1 << 20) as f64, 1)}))
        .collect();
    Ok(json!({
        "benchmark": "spark-fetch",
        "mode": args.mode.name(),
        "hardware_aes": hardware_aes(),
        "seconds_per_run": args.seconds,
        "runs": args.runs,
        "rows": rows,
        "peak_rss": rss,
    }))
}

/// The CPU's AES instructions, as `/proc/cpuinfo` lists them (AES-NI, VAES, carry-less
/// multiplication for GCM, AVX-512).
fn hardware_aes() -> Vec<&'static str> {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: std::collections::HashSet<&str> = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    ["aes", "vaes", "pclmulqdq", "vpclmulqdq", "avx2", "avx512f"]
        .into_iter()
        .filter(|f| flags.contains(f))
        .collect()
}
