//! The gRPC front end (`shuffle.v1`): authentication from metadata, decoding into typed ids,
//! then the [`Core`]. Errors map to `Status` in one place (`error.rs`).

use std::collections::HashMap;
use std::time::Duration;

use shuffle_proto::v1::shuffle_admin_server::ShuffleAdmin;
use shuffle_proto::v1::shuffle_server::Shuffle;
use shuffle_proto::v1::{self as pb, write_map_output_request::Item};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::core::MapOutput;
use crate::core::{Block, Caller, Core, Presented, Registrant};
use crate::core::{BlockRange, Blocks, ExecutorRegistration, FetchRequest};
use crate::error::{Result as CoreResult, ShuffleError};
use spark_protocol::ids::{AppId, ExecId, MapId, ReduceId, ShuffleId};

/// The gRPC service.
#[derive(Debug, Clone)]
pub(crate) struct ShuffleService {
    core: Core,
    admin_hashes: Vec<[u8; 32]>,
    /// Admin calls without a token are allowed only on a loopback listener.
    admin_open: bool,
}

/// Fetch chunks queued per stream: backpressure bounds memory to this many chunks.
const FETCH_QUEUE: usize = 1;

fn bearer<T>(req: &Request<T>) -> Option<&str> {
    req.metadata()
        .get(shuffle_proto::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
}

impl ShuffleService {
    /// A service over `core`.
    pub(crate) fn new(core: Core, admin_hashes: Vec<[u8; 32]>, admin_open: bool) -> Self {
        Self {
            core,
            admin_hashes,
            admin_open,
        }
    }

    fn is_admin(&self, token: &str) -> bool {
        service_runtime::token::matches_any(token, &self.admin_hashes)
    }

    /// What the caller presented; an admin bearer is recognised, not passed on as a token.
    fn presented<'a, T>(&self, req: &'a Request<T>) -> Presented<'a> {
        let token = bearer(req);
        let admin = token.is_some_and(|t| self.is_admin(t));
        Presented {
            token: token.filter(|_| !admin),
            admin,
        }
    }

    fn app<T>(&self, req: &Request<T>, app_id: &str) -> Result<AppId, Status> {
        let app: AppId = app_id.parse().map_err(ShuffleError::from)?;
        self.core
            .authorize(&app, &Caller::Grpc(self.presented(req)))?;
        Ok(app)
    }

    fn check_admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if self.admin_hashes.is_empty() {
            return if self.admin_open {
                Ok(())
            } else {
                Err(Status::permission_denied(
                    "no admin token configured; admin calls are disabled",
                ))
            };
        }
        let token = bearer(req).ok_or_else(|| Status::unauthenticated("missing admin token"))?;
        if self.is_admin(token) {
            Ok(())
        } else {
            Err(Status::permission_denied("not an admin token"))
        }
    }
}

struct StreamGuard(prometheus::IntGauge);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[tonic::async_trait]
impl Shuffle for ShuffleService {
    async fn register_application(
        &self,
        req: Request<pb::RegisterApplicationRequest>,
    ) -> Result<Response<pb::RegisterApplicationResponse>, Status> {
        async {
            let presented = self.presented(&req);
            let r = req.get_ref().clone();
            let app: AppId = r.app_id.parse().map_err(ShuffleError::from)?;
            let timeout =
                (r.heartbeat_timeout_ms > 0).then(|| Duration::from_millis(r.heartbeat_timeout_ms));
            let (token, timeout) = self
                .core
                .register_app(&app, timeout, r.namespace, r.driver_pod, &presented)
                .await?;
            Ok(Response::new(pb::RegisterApplicationResponse {
                token,
                heartbeat_timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            }))
        }
        .await
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        self.app(&req, &req.get_ref().app_id)
            .and_then(|app| self.core.heartbeat(&app).map_err(Status::from))
            .map(|()| Response::new(pb::HeartbeatResponse {}))
    }

    async fn unregister_application(
        &self,
        req: Request<pb::UnregisterApplicationRequest>,
    ) -> Result<Response<pb::UnregisterApplicationResponse>, Status> {
        async {
            let app = self.app(&req, &req.get_ref().app_id)?;
            let n = self.core.remove_app(&app, "unregistered").await?;
            Ok(Response::new(pb::UnregisterApplicationResponse {
                directories_scheduled: n as u64,
            }))
        }
        .await
    }

    async fn register_executor(
        &self,
        req: Request<pb::RegisterExecutorRequest>,
    ) -> Result<Response<pb::RegisterExecutorResponse>, Status> {
        async {
            self.app(&req, &req.get_ref().app_id)?;
            let r = ExecutorRegistration::try_from(req.into_inner())?;
            self.core.register_executor(r, Registrant::Grpc).await?;
            Ok(Response::new(pb::RegisterExecutorResponse {}))
        }
        .await
    }

    async fn write_map_output(
        &self,
        req: Request<Streaming<pb::WriteMapOutputRequest>>,
    ) -> Result<Response<pb::WriteMapOutputResponse>, Status> {
        let token = bearer(&req).map(str::to_owned);
        let admin = token.as_deref().is_some_and(|t| self.is_admin(t));
        let mut stream = req.into_inner();
        async {
            let first = stream
                .message()
                .await?
                .ok_or_else(|| Status::invalid_argument("empty stream"))?;
            let Some(Item::Header(h)) = first.item else {
                return Err(Status::invalid_argument(
                    "the first message must be the header",
                ));
            };
            let app: AppId = h.app_id.parse().map_err(ShuffleError::from)?;
            self.core.authorize(
                &app,
                &Caller::Grpc(Presented {
                    token: token.as_deref().filter(|_| !admin),
                    admin,
                }),
            )?;
            let exec: ExecId = h.exec_id.parse().map_err(ShuffleError::from)?;
            let out = MapOutput {
                shuffle: ShuffleId::new(h.shuffle_id).map_err(ShuffleError::from)?,
                map: MapId::new(h.map_id).map_err(ShuffleError::from)?,
                lengths: h.partition_lengths,
            };
            out.total()?;
            let (tx, rx) = mpsc::channel(8);
            let write = self.core.write_map_output(&app, &exec, out, rx);
            let feed = async move {
                loop {
                    let item = match stream.message().await {
                        Ok(Some(m)) => m.item,
                        Ok(None) => return,
                        Err(e) => {
                            let _ = tx
                                .send(Err(ShuffleError::InvalidArgument(format!(
                                    "stream failed: {e}"
                                ))))
                                .await;
                            return;
                        }
                    };
                    let msg = match item {
                        Some(Item::Data(b)) => Ok(b),
                        _ => Err(ShuffleError::InvalidArgument(
                            "only data may follow the header".into(),
                        )),
                    };
                    let stop = msg.is_err();
                    if tx.send(msg).await.is_err() || stop {
                        return;
                    }
                }
            };
            let (written, ()) = tokio::join!(write, feed);
            Ok(Response::new(pb::WriteMapOutputResponse {
                bytes_written: written?,
            }))
        }
        .await
    }

    type FetchBlocksStream = ReceiverStream<Result<pb::FetchBlocksResponse, Status>>;

    async fn fetch_blocks(
        &self,
        req: Request<pb::FetchBlocksRequest>,
    ) -> Result<Response<Self::FetchBlocksStream>, Status> {
        (|| {
            let r = FetchRequest::try_from(req.get_ref())?;
            let fetch = self.core.fetch(r, &Caller::Grpc(self.presented(&req)))?;
            let executor = std::sync::Arc::clone(fetch.executor());
            let (tx, rx) = mpsc::channel(FETCH_QUEUE);
            let core = self.core.clone();
            let m = core.metrics().clone();
            m.open_streams.inc();
            let guard = StreamGuard(m.open_streams.clone());
            tokio::task::spawn_blocking(move || {
                let _guard = guard;
                for (i, block) in fetch.enumerate() {
                    if send_block(&core, &executor, i, &block, &tx).is_err() {
                        return;
                    }
                }
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        })()
    }

    async fn remove_shuffle(
        &self,
        req: Request<pb::RemoveShuffleRequest>,
    ) -> Result<Response<pb::RemoveShuffleResponse>, Status> {
        async {
            let app = self.app(&req, &req.get_ref().app_id)?;
            let shuffle = ShuffleId::new(req.get_ref().shuffle_id).map_err(ShuffleError::from)?;
            let n = self.core.remove_shuffle(&app, shuffle).await?;
            Ok(Response::new(pb::RemoveShuffleResponse {
                files_removed: n,
            }))
        }
        .await
    }

    async fn remove_blocks(
        &self,
        req: Request<pb::RemoveBlocksRequest>,
    ) -> Result<Response<pb::RemoveBlocksResponse>, Status> {
        async {
            let app = self.app(&req, &req.get_ref().app_id)?;
            let r = req.into_inner();
            let exec: ExecId = r.exec_id.parse().map_err(ShuffleError::from)?;
            let removed = self.core.remove_blocks(&app, &exec, r.block_ids).await?;
            Ok(Response::new(pb::RemoveBlocksResponse { removed }))
        }
        .await
    }

    async fn get_local_dirs(
        &self,
        req: Request<pb::GetLocalDirsRequest>,
    ) -> Result<Response<pb::GetLocalDirsResponse>, Status> {
        (|| {
            let app = self.app(&req, &req.get_ref().app_id)?;
            let execs = req
                .get_ref()
                .exec_ids
                .iter()
                .map(|e| e.parse::<ExecId>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(ShuffleError::from)?;
            let dirs = self.core.local_dirs(&app, &execs)?;
            let dirs: HashMap<String, pb::LocalDirs> = dirs
                .into_iter()
                .map(|(e, d)| {
                    (
                        e.to_string(),
                        pb::LocalDirs {
                            dirs: d.iter().map(|p| p.display().to_string()).collect(),
                        },
                    )
                })
                .collect();
            Ok(Response::new(pb::GetLocalDirsResponse { dirs }))
        })()
    }
}

/// Sends one block in chunks. `Err` means stop the stream (client gone or error sent).
fn send_block(
    core: &Core,
    exec: &crate::core::Executor,
    index: usize,
    block: &Block,
    tx: &mpsc::Sender<Result<pb::FetchBlocksResponse, Status>>,
) -> Result<(), ()> {
    let fail = |e: ShuffleError| {
        let _ = tx.blocking_send(Err(e.into()));
    };
    // The file is opened now, when its turn comes, and closed when the block is sent.
    let opened = core.open_block(exec, block).map_err(fail)?;
    let seg_len = opened.len;
    let block_index = u32::try_from(index).unwrap_or(u32::MAX);
    let m = core.metrics();
    if seg_len == 0 {
        tx.blocking_send(Ok(pb::FetchBlocksResponse {
            block_index,
            offset: 0,
            data: bytes::Bytes::new(),
            last: true,
            block_length: 0,
        }))
        .map_err(|_| ())?;
        m.blocks_served.inc();
        return Ok(());
    }
    let mut reader = crate::core::SegmentReader::new(opened).map_err(fail)?;
    let mut offset = 0u64;
    while let Some(data) = reader
        .next_chunk(shuffle_proto::CHUNK_BYTES)
        .map_err(fail)?
    {
        let n = data.len() as u64;
        let last = offset + n == seg_len;
        tx.blocking_send(Ok(pb::FetchBlocksResponse {
            block_index,
            offset,
            data,
            last,
            block_length: seg_len,
        }))
        .map_err(|_| ())?;
        m.bytes_served.inc_by(n);
        offset += n;
    }
    m.blocks_served.inc();
    Ok(())
}

#[tonic::async_trait]
impl ShuffleAdmin for ShuffleService {
    async fn list_applications(
        &self,
        req: Request<pb::ListApplicationsRequest>,
    ) -> Result<Response<pb::ListApplicationsResponse>, Status> {
        self.check_admin(&req).map(|()| {
            let applications = self
                .core
                .list_apps()
                .into_iter()
                .map(|a| pb::ApplicationInfo {
                    app_id: a.app_id.to_string(),
                    namespace: a.namespace,
                    driver_pod: a.driver_pod,
                    executors: u32::try_from(a.executors).unwrap_or(u32::MAX),
                    idle_ms: u64::try_from(a.idle.as_millis()).unwrap_or(u64::MAX),
                    liveness: if a.heartbeat_timeout.is_some() {
                        "heartbeat"
                    } else {
                        "idle-ttl"
                    }
                    .into(),
                })
                .collect();
            Response::new(pb::ListApplicationsResponse { applications })
        })
    }
}

// === conversions at the edge: gRPC messages into the core's requests ===

impl TryFrom<&pb::BlockRange> for BlockRange {
    type Error = ShuffleError;

    fn try_from(b: &pb::BlockRange) -> CoreResult<Self> {
        Ok(Self {
            shuffle: ShuffleId::new(b.shuffle_id)?,
            map: MapId::new(b.map_id)?,
            start: ReduceId::new(b.start_reduce)?,
            end: ReduceId::new(b.end_reduce)?,
        })
    }
}

impl TryFrom<&pb::FetchBlocksRequest> for FetchRequest {
    type Error = ShuffleError;

    fn try_from(r: &pb::FetchBlocksRequest) -> CoreResult<Self> {
        Ok(Self {
            app: r.app_id.parse()?,
            exec: r.exec_id.parse()?,
            blocks: Blocks::Ranges(
                r.blocks
                    .iter()
                    .map(BlockRange::try_from)
                    .collect::<CoreResult<_>>()?,
            ),
        })
    }
}

impl TryFrom<pb::RegisterExecutorRequest> for ExecutorRegistration {
    type Error = ShuffleError;

    fn try_from(r: pb::RegisterExecutorRequest) -> CoreResult<Self> {
        Ok(Self {
            app: r.app_id.parse()?,
            exec: r.exec_id.parse()?,
            local_dirs: r.local_dirs,
            sub_dirs: r.sub_dirs_per_local_dir,
            shuffle_manager: r.shuffle_manager,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `grpc_requests` fuzz corpus (`fuzz/corpus/grpc_requests`, inputs AFL found
    /// included) through the conversions: what converts holds the message's blocks, in order,
    /// and its ids unchanged.
    #[test]
    fn grpc_requests_corpus() {
        use prost::Message as _;
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/grpc_requests");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let data = std::fs::read(e.unwrap().path()).unwrap();
            n += 1;
            let Some((kind, body)) = data.split_first() else {
                continue;
            };
            if kind % 2 == 0 {
                if let Ok(m) = pb::FetchBlocksRequest::decode(body)
                    && let Ok(r) = FetchRequest::try_from(&m)
                {
                    assert_eq!(r.blocks.count(), m.blocks.len());
                    assert_eq!((r.app.as_str(), r.exec.as_str()), (&*m.app_id, &*m.exec_id));
                }
            } else if let Ok(m) = pb::RegisterExecutorRequest::decode(body)
                && let Ok(r) = ExecutorRegistration::try_from(m.clone())
            {
                assert_eq!((r.app.as_str(), r.exec.as_str()), (&*m.app_id, &*m.exec_id));
            }
        }
        assert!(n > 0, "no corpus in {}", dir.display());
    }

    #[test]
    fn ids_are_validated_at_the_edge() {
        let mut r = pb::FetchBlocksRequest {
            app_id: "app-1".into(),
            exec_id: "1".into(),
            blocks: vec![pb::BlockRange {
                shuffle_id: 0,
                map_id: 1,
                start_reduce: 0,
                end_reduce: 1,
            }],
        };
        assert_eq!(FetchRequest::try_from(&r).unwrap().blocks.count(), 1);
        r.blocks[0].map_id = -1;
        assert!(FetchRequest::try_from(&r).is_err());
        r.blocks.clear();
        r.app_id = "../x".into();
        assert!(FetchRequest::try_from(&r).is_err());
    }
}
