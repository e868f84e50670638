//! Serving: gRPC (with health and reflection), Spark's protocol, the admin port, the liveness
//! sweep; and the
//! shutdown sequence: readiness 503 and gRPC health NOT_SERVING first, then stop accepting,
//! let in-flight streams finish within the grace period, then stop background tasks.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use shuffle_proto::v1::shuffle_admin_server::ShuffleAdminServer;
use shuffle_proto::v1::shuffle_server::ShuffleServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Layer as _;

use crate::config::Config;
use crate::core::Core;
use crate::error::{Result, ShuffleError};
use crate::lifecycle;
use crate::listen;
use crate::service::ShuffleService;
use crate::spark::budget::FrameMemory;
use crate::spark::conn::Limits;
use crate::spark::handler::Shared;
use crate::spark::listener;
use tokio::sync::Semaphore;

/// Streams one Spark connection may hold open (Spark's client keeps a handful).
const MAX_STREAMS_PER_CONNECTION: usize = 4096;

/// HTTP/2 stream window: large, so one stream is not throttled to 64 KiB in flight.
const STREAM_WINDOW: u32 = 8 << 20;
/// Largest HTTP/2 frame the server accepts (WriteMapOutput data); clients that advertise a
/// large frame size get large DATA frames back.
const MAX_FRAME: u32 = 1 << 20;
/// HTTP/2 connection window.
const CONNECTION_WINDOW: u32 = 32 << 20;

/// The bound listeners.
#[derive(Debug)]
pub struct Listeners {
    /// gRPC API.
    pub grpc: TcpListener,
    /// Admin HTTP.
    pub admin: TcpListener,
    /// Spark's protocol, when enabled.
    pub spark: Option<TcpListener>,
    /// The probes' Unix socket, when configured.
    pub probe: Option<service_runtime::probe::ProbeSocket>,
}

impl Listeners {
    /// Binds the configured addresses.
    ///
    /// # Errors
    /// [`ShuffleError::Bind`], naming the address.
    pub async fn bind(config: &Config) -> Result<Self> {
        let bind = |a: std::net::SocketAddr| async move {
            TcpListener::bind(a)
                .await
                .map_err(|e| ShuffleError::bind(a, e))
        };
        Ok(Self {
            grpc: bind(config.grpc_listen).await?,
            admin: bind(config.admin_listen).await?,
            spark: match config.spark_listen {
                Some(a) => Some(bind(a).await?),
                None => None,
            },
            probe: match &config.probe_socket {
                Some(p) => Some(service_runtime::probe::ProbeSocket::bind(p).map_err(
                    |source| ShuffleError::Bind {
                        addr: p.display().to_string(),
                        source,
                    },
                )?),
                None => None,
            },
        })
    }
}

/// Raises the soft open-file limit to the hard one and warns when the connection caps and
/// open block files together could still exhaust it (one listener's flood would then take the
/// others' descriptors).
pub fn raise_open_file_limit(config: &Config) {
    let limits = match service_runtime::rlimit::raise_open_files() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "open-file limit not raised");
            return;
        }
    };
    // Spark connections, block files, gRPC and admin connections, and a margin for the
    // database, volumes, listeners and the Kubernetes client.
    let needed = config.spark_max_connections as u64
        + config.spark_open_files as u64
        + config.connections.grpc_max_connections as u64
        + config.connections.admin_max_connections as u64
        + 256;
    tracing::info!(soft = ?limits.soft, hard = ?limits.hard, before = ?limits.before, needed, "open-file limit");
    if limits.soft.is_some_and(|soft| soft < needed) {
        tracing::warn!(
            soft = ?limits.soft,
            needed,
            "the open-file limit is below the connection caps and open files allowed: lower --spark-max-connections, --spark-open-files, --grpc-max-connections, --admin-max-connections, or raise the limit"
        );
    }
}

/// Serves until `shutdown` resolves.
///
/// # Errors
/// Start-up failures: the gRPC reflection service, a listener's TLS files.
pub async fn run(
    config: &Config,
    core: Core,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let background = core.background();
    let Listeners {
        grpc,
        admin,
        spark,
        probe,
    } = listeners;
    let spark_task = match spark {
        // Cancelled at shutdown, or with the background tasks at the very end.
        Some(l) => Some(spark_front_end(config, &core, l, background.child_token())?),
        None => None,
    };
    let draining = Arc::new(AtomicBool::new(false));
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ShuffleServer<ShuffleService>>().await;
    // Both versions of the reflection service: grpcurl and grpcui speak v1, Python's
    // grpcio-reflection, older grpcurl and several GUI clients only v1alpha.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(shuffle_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(shuffle_proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let service = ShuffleService::new(
        core.clone(),
        config.admin_token_hashes.clone(),
        config.grpc_listen.ip().is_loopback(),
    );
    let stop = CancellationToken::new();
    // Connections closing gracefully (see `linger`), awaited before the service exits.
    let lingering = TaskTracker::new();
    let routes = tonic::service::Routes::new(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(ShuffleServer::new(service.clone()))
        .add_service(ShuffleAdminServer::new(service))
        .prepare();
    let grpc_service =
        crate::grpc_metrics::GrpcMetricsLayer::new(core.metrics().clone()).layer(routes);
    let tls = |files: &Option<service_runtime::tls::TlsFiles>,
               alpn: &[&[u8]],
               listener: &'static str|
     -> Result<_> {
        files
            .as_ref()
            .map(|f| {
                crate::tls::server_config(
                    f,
                    alpn,
                    config.tls_reload_interval,
                    listener,
                    core.metrics(),
                    stop.clone(),
                )
            })
            .transpose()
    };
    let grpc_settings = listen::Listener {
        protocol: listen::Protocol::Grpc {
            stream_window: STREAM_WINDOW,
            connection_window: CONNECTION_WINDOW,
            max_frame: MAX_FRAME,
        },
        max_connections: config.connections.grpc_max_connections,
        max_connections_per_peer: config.connections.grpc_max_connections_per_peer,
        limits: config.connections,
        tls: tls(&config.grpc_tls, &[b"h2"], "grpc")?,
    };
    let admin_settings = listen::Listener {
        protocol: listen::Protocol::Admin,
        max_connections: config.connections.admin_max_connections,
        max_connections_per_peer: config.connections.admin_max_connections_per_peer,
        limits: config.connections,
        tls: tls(&config.admin_tls, &[b"http/1.1"], "admin")?,
    };
    let grpc_task = {
        let (metrics, lingering, stop) = (core.metrics().clone(), lingering.clone(), stop.clone());
        tokio::spawn(async move {
            listen::serve(grpc, grpc_settings, grpc_service, &metrics, lingering, stop).await;
        })
    };
    let probe_task = probe.map(|socket| {
        let router = crate::admin::probe_router(core.clone(), Arc::clone(&draining));
        tokio::spawn(socket.serve(router, stop.clone()))
    });
    let admin_router = crate::admin::router(core.clone(), Arc::clone(&draining));
    let admin_task = {
        let (metrics, lingering, stop) = (core.metrics().clone(), lingering.clone(), stop.clone());
        tokio::spawn(async move {
            listen::serve(
                admin,
                admin_settings,
                admin_router,
                &metrics,
                lingering,
                stop,
            )
            .await;
        })
    };
    core.adopt(tokio::spawn(lifecycle::run(
        core.clone(),
        config.sweep_interval,
        config.usage_scan_interval,
        background.clone(),
    )));
    if let Some(k) = &config.kube {
        core.adopt(tokio::spawn(crate::kube::run(
            core.clone(),
            k.clone(),
            config.sweep_interval,
            background.clone(),
        )));
    }

    shutdown.await;
    draining.store(true, Ordering::SeqCst);
    health
        .set_not_serving::<ShuffleServer<ShuffleService>>()
        .await;
    stop.cancel();
    let drain = async {
        if let Some((stop_spark, task)) = spark_task {
            stop_spark.cancel();
            let _ = task.await;
        }
        let _ = grpc_task.await;
        let _ = admin_task.await;
        if let Some(task) = probe_task {
            let _ = task.await;
        }
    };
    if tokio::time::timeout(config.shutdown_grace, drain)
        .await
        .is_err()
    {
        tracing::warn!(grace = ?config.shutdown_grace, "grace period elapsed with streams still open");
    }
    lingering.close();
    let _ = tokio::time::timeout(crate::linger::LINGER, lingering.wait()).await;
    core.shutdown().await;
    Ok(())
}

fn spark_front_end(
    config: &Config,
    core: &Core,
    listener: TcpListener,
    stop: CancellationToken,
) -> Result<(CancellationToken, tokio::task::JoinHandle<()>)> {
    let secrets = core.spark_secrets().clone();
    let tls = match &config.spark_tls {
        Some(files) => Some(crate::tls::server_config(
            files,
            &[],
            config.tls_reload_interval,
            "spark",
            core.metrics(),
            stop.clone(),
        )?),
        None => None,
    };
    tracing::info!(
        addr = %listener
            .local_addr()
            .map_or_else(|e| e.to_string(), |a| a.to_string()),
        authentication = secrets.enabled(),
        tls = tls.is_some(),
        "Spark protocol listener ready"
    );
    let shared = Arc::new(Shared {
        core: core.clone(),
        secrets,
        max_streams: MAX_STREAMS_PER_CONNECTION,
        logs: crate::spark::handler::SparkLogs::new(core.metrics()),
        ciphers: config.spark_ciphers.clone(),
        require_encryption: config.spark_require_encryption,
    });
    let units = |bytes: u64| usize::try_from(bytes / 1024).unwrap_or(usize::MAX).max(1);
    let limits = Limits {
        max_frame: config.spark_max_frame,
        preauth_max_frame: config.spark_preauth_max_frame,
        frame_memory: FrameMemory::new(
            config.spark_frame_memory,
            config.spark_frame_memory_per_peer(),
            core.metrics().spark_frame_memory.clone(),
        )
        .ipv6_prefix(config.connections.peer_ipv6_prefix),
        idle_timeout: config.spark_idle_timeout,
        auth_timeout: config.spark_auth_timeout,
        small_body: config.spark_small_body,
        connection_memory: usize::try_from(config.spark_connection_memory).unwrap_or(usize::MAX),
        global_memory: Arc::new(Semaphore::new(units(config.spark_memory))),
        open_files: Arc::new(Semaphore::new(config.spark_open_files)),
    };
    let task = tokio::spawn(listener::serve(
        listener,
        shared,
        limits,
        listener::Caps {
            max_connections: config.spark_max_connections,
            max_per_peer: config.spark_max_connections_per_peer,
            max_per_app: config.spark_max_connections_per_app,
            ipv6_prefix: config.connections.peer_ipv6_prefix,
        },
        tls,
        stop.clone(),
    ));
    Ok((stop, task))
}
