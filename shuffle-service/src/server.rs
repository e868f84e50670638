//! Serving: gRPC (with health and reflection), the admin port, the liveness sweep; and the
//! shutdown sequence: readiness 503 and gRPC health NOT_SERVING first, then stop accepting,
//! let in-flight streams finish within the grace period, then stop background tasks.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use shuffle_proto::v1::shuffle_admin_server::ShuffleAdminServer;
use shuffle_proto::v1::shuffle_server::ShuffleServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

use crate::config::Config;
use crate::core::Core;
use crate::lifecycle;
use crate::service::ShuffleService;

/// HTTP/2 stream window: large, so one stream is not throttled to 64 KiB in flight.
const STREAM_WINDOW: u32 = 8 << 20;
/// Largest HTTP/2 frame the server accepts (WriteMapOutput data); clients that advertise a
/// large frame size get large DATA frames back.
const MAX_FRAME: u32 = 1 << 20;
/// HTTP/2 connection window.
const CONNECTION_WINDOW: u32 = 32 << 20;

/// Serves until `shutdown` resolves.
///
/// # Errors
/// Transport or reflection setup errors.
pub async fn run(
    config: &Config,
    core: Core,
    cleaner: tokio::task::JoinHandle<()>,
    background: CancellationToken,
    grpc: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let draining = Arc::new(AtomicBool::new(false));
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ShuffleServer<ShuffleService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(shuffle_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let service = ShuffleService::new(
        core.clone(),
        config.admin_token_hashes.clone(),
        config.grpc_listen.ip().is_loopback(),
        config.max_fetch_blocks,
    );
    let stop = CancellationToken::new();
    let grpc_stop = stop.clone();
    let grpc_task = tokio::spawn(
        tonic::transport::Server::builder()
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(ShuffleServer::new(service.clone()))
            .add_service(ShuffleAdminServer::new(service))
            .serve_with_incoming_shutdown(
                TcpIncoming::from(grpc).with_nodelay(Some(true)),
                async move { grpc_stop.cancelled().await },
            ),
    );
    let admin_stop = stop.clone();
    let admin_task = tokio::spawn(
        axum::serve(
            admin,
            crate::admin::router(core.clone(), Arc::clone(&draining)),
        )
        .with_graceful_shutdown(async move { admin_stop.cancelled().await })
        .into_future(),
    );
    let sweeper = tokio::spawn(lifecycle::run(
        core.clone(),
        config.sweep_interval,
        config.usage_scan_interval,
        background.clone(),
    ));

    shutdown.await;
    draining.store(true, Ordering::SeqCst);
    health
        .set_not_serving::<ShuffleServer<ShuffleService>>()
        .await;
    stop.cancel();
    let drain = async {
        let _ = grpc_task.await;
        let _ = admin_task.await;
    };
    if tokio::time::timeout(config.shutdown_grace, drain)
        .await
        .is_err()
    {
        tracing::warn!(grace = ?config.shutdown_grace, "grace period elapsed with streams still open");
    }
    background.cancel();
    let _ = sweeper.await;
    let _ = cleaner.await;
    Ok(())
}
