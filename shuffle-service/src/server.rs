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
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::TcpIncoming;

use crate::linger::Lingering;

use crate::config::Config;
use crate::core::Core;
use crate::lifecycle;
use crate::service::ShuffleService;
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
}

impl Listeners {
    /// Binds the configured addresses.
    ///
    /// # Errors
    /// A bind failure, naming the address.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let bind = |a: std::net::SocketAddr| async move {
            TcpListener::bind(a)
                .await
                .map_err(|e| anyhow::anyhow!("bind {a}: {e}"))
        };
        Ok(Self {
            grpc: bind(config.grpc_listen).await?,
            admin: bind(config.admin_listen).await?,
            spark: match config.spark_listen {
                Some(a) => Some(bind(a).await?),
                None => None,
            },
        })
    }
}

/// Serves until `shutdown` resolves.
///
/// # Errors
/// Transport, reflection or secret setup errors.
pub async fn run(
    config: &Config,
    core: Core,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let background = core.background();
    let Listeners { grpc, admin, spark } = listeners;
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
    let grpc_stop = stop.clone();
    // Connections closing gracefully (see `linger`), awaited before the service exits.
    let lingering = TaskTracker::new();
    let router = tonic::transport::Server::builder()
        .layer(crate::grpc_metrics::GrpcMetricsLayer::new(
            core.metrics().clone(),
        ))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(ShuffleServer::new(service.clone()))
        .add_service(ShuffleAdminServer::new(service));
    let plain = {
        let lingering = lingering.clone();
        TcpIncoming::from(grpc)
            .with_nodelay(Some(true))
            .map(move |r| r.map(|s| Lingering::new(s, lingering.clone())))
    };
    let grpc_stopped = async move { grpc_stop.cancelled().await };
    let grpc_task =
        match &config.grpc_tls {
            None => tokio::spawn(router.serve_with_incoming_shutdown(plain, grpc_stopped)),
            Some(files) => {
                let tls = crate::tls::server_config(
                    files,
                    &[b"h2"],
                    config.tls_reload_interval,
                    stop.clone(),
                )?;
                tokio::spawn(router.serve_with_incoming_shutdown(
                    crate::tls::grpc_incoming(plain, tls),
                    grpc_stopped,
                ))
            }
        };
    let admin_stop = stop.clone();
    let admin_router = crate::admin::router(core.clone(), Arc::clone(&draining));
    let admin_stopped = async move { admin_stop.cancelled().await };
    let admin_task = match &config.admin_tls {
        None => tokio::spawn(
            axum::serve(admin, admin_router)
                .with_graceful_shutdown(admin_stopped)
                .into_future(),
        ),
        Some(files) => {
            let tls = crate::tls::server_config(
                files,
                &[b"http/1.1"],
                config.tls_reload_interval,
                stop.clone(),
            )?;
            tokio::spawn(
                axum::serve(crate::tls::TlsListener::new(admin, tls)?, admin_router)
                    .with_graceful_shutdown(admin_stopped)
                    .into_future(),
            )
        }
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
) -> anyhow::Result<(CancellationToken, tokio::task::JoinHandle<()>)> {
    let secrets = core.spark_secrets().clone();
    let tls = match &config.spark_tls {
        Some(files) => Some(crate::tls::server_config(
            files,
            &[],
            config.tls_reload_interval,
            stop.clone(),
        )?),
        None => None,
    };
    tracing::info!(
        addr = %listener.local_addr()?,
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
        idle_timeout: config.spark_idle_timeout,
        small_body: config.spark_small_body,
        connection_memory: usize::try_from(config.spark_connection_memory).unwrap_or(usize::MAX),
        global_memory: Arc::new(Semaphore::new(units(config.spark_memory))),
        open_files: Arc::new(Semaphore::new(config.spark_open_files)),
    };
    let task = tokio::spawn(listener::serve(
        listener,
        shared,
        limits,
        config.spark_max_connections,
        tls,
        stop.clone(),
    ));
    Ok((stop, task))
}
