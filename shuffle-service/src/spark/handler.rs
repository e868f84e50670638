//! RPC dispatch of the Spark front end: authentication state, the shuffle messages, and the
//! one mapping of core errors to the text of an `RpcFailure`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use spark_protocol::crypto::auth::{self, AuthMessage, SessionSecrets};
use spark_protocol::crypto::{Cipher, Opener, Sealer, digest};
use spark_protocol::sasl::Protection;

use super::request;
use super::stream::{Stream, StreamTable};
use crate::core::FetchRequest;
use crate::core::{Caller, Core, Offer, Refusal, Registrant};
use crate::core::{Secrets, Source};
use crate::error::{ShuffleError, failure_text};
use crate::lograte::LogLimit;
use spark_protocol::ids::{AppId, ExecId};
use spark_protocol::message::{BlockTransferMessage as Btm, RpcPayload};
use spark_protocol::sasl::DigestServer;

/// Work that finishes off the reader (a database write or file deletion).
pub(crate) type Deferred = Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send>>;

/// What the reader does with an RPC.
pub(crate) enum Action {
    /// Reply now (`Ok` = `RpcResponse`, `Err` = `RpcFailure`).
    Reply(Result<Bytes, String>),
    /// Reply when the work completes.
    Later(Deferred),
    /// Reply with a failure, then close the connection.
    FailAndClose(String),
}

/// Settings shared by every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The core.
    pub core: Core,
    /// Authentication secrets (disabled when empty).
    pub secrets: Secrets,
    /// Most open streams per connection.
    pub max_streams: usize,
    /// Rate limits of the log lines clients can trigger.
    pub logs: SparkLogs,
    /// Channel ciphers accepted with network crypto.
    pub ciphers: Vec<Cipher>,
    /// Connections that do not encrypt are refused.
    pub require_encryption: bool,
}

/// Rate limits of the Spark front end's log lines, one per event.
#[derive(Debug)]
pub(crate) struct SparkLogs {
    /// A connection closed for a malformed frame.
    pub malformed: LogLimit,
    /// A failed SASL authentication.
    pub auth_failed: LogLimit,
    /// A connection closed at once for the connection limit.
    pub connection_limit: LogLimit,
    /// An accept failure.
    pub accept_failed: LogLimit,
}

impl SparkLogs {
    /// Limits counting what they leave out in `shuffle_log_lines_suppressed_total`.
    pub(crate) fn new(m: &crate::metrics::Metrics) -> Self {
        let l = |event: &str| LogLimit::new(m.log_suppressed.with_label_values(&[event]));
        Self {
            malformed: l("spark_malformed_frame"),
            auth_failed: l("spark_auth_failed"),
            connection_limit: l("spark_connection_limit"),
            accept_failed: l("spark_accept_failed"),
        }
    }
}

/// What a completed handshake asks of the connection.
#[derive(Debug)]
pub(crate) enum NewChannel {
    /// Network crypto: the cipher is read from the client's first encrypted bytes.
    Pending(SessionSecrets),
    /// SASL `auth-conf`: both halves, ready.
    Ready(Opener, Sealer),
}

/// Largest SASL-wrapped piece accepted from a client (Spark's default is 64 KiB).
const MAX_SASL_PIECE: usize = 16 << 20;

/// One connection's state seen by the reader.
#[derive(Debug)]
pub(crate) struct Session {
    /// The authenticated application, once SASL completed.
    pub client: Option<AppId>,
    /// Where the secret the client proved came from: it decides who may end what the
    /// connection registers ([`Registrant::lifecycle`]).
    source: Option<Source>,
    /// A SASL handshake under way, with the secrets its server tries.
    sasl: Option<(AppId, DigestServer, Vec<Offer>)>,
    /// The channel of a handshake that just completed, for the connection to take.
    crypto: Option<NewChannel>,
    /// Open streams.
    pub streams: StreamTable,
}

fn fail(e: ShuffleError) -> String {
    failure_text(&e)
}

fn parse_app(app_id: &str) -> Result<AppId, String> {
    app_id.parse().map_err(|e| fail(ShuffleError::from(e)))
}

impl Session {
    /// A connection's fresh state; its open streams count in `shuffle_open_streams`.
    pub(crate) fn new(shared: &Shared) -> Self {
        Self {
            client: None,
            source: None,
            sasl: None,
            crypto: None,
            streams: StreamTable::counted(shared.core.metrics().open_streams.clone()),
        }
    }

    /// Whether requests may be served: authentication is off, or it completed.
    pub(crate) fn authorized(&self, shared: &Shared) -> bool {
        !shared.secrets.enabled() || self.client.is_some()
    }

    fn caller(&self) -> Caller<'_> {
        Caller::Spark {
            client: self.client.as_ref(),
        }
    }

    fn check_app(&self, core: &Core, app_id: &str) -> Result<AppId, String> {
        let app = parse_app(app_id)?;
        core.authorize(&app, &self.caller()).map_err(fail)?;
        Ok(app)
    }

    /// Handles an RPC body. `name` receives the message name for metrics.
    pub(crate) fn rpc(
        &mut self,
        shared: &Arc<Shared>,
        body: Bytes,
        name: &mut &'static str,
    ) -> Action {
        let payload = match RpcPayload::decode(body) {
            Ok(p) => p,
            Err(e) => {
                *name = "Malformed";
                return Action::Reply(Err(format!("malformed message: {e}")));
            }
        };
        match payload {
            RpcPayload::Sasl(m) => {
                *name = "SaslMessage";
                self.sasl_step(shared, &m.app_id, &m.payload)
            }
            RpcPayload::AuthEngine(body) => {
                *name = "AuthMessage";
                self.auth_engine(shared, body)
            }
            RpcPayload::Block(m) => {
                *name = m.name();
                if !self.authorized(shared) {
                    return Action::FailAndClose(
                        "authentication required before any request".into(),
                    );
                }
                self.block_message(shared, m)
            }
        }
    }

    /// The keys of a network-crypto handshake completed by the last RPC: every later byte
    /// of the connection is encrypted.
    pub(crate) fn take_crypto(&mut self) -> Option<NewChannel> {
        self.crypto.take()
    }

    fn auth_failed(shared: &Shared, app: &str, protocol: &str, e: &dyn std::fmt::Display) {
        shared.core.metrics().spark_auth_failures.inc();
        if let Some(left_out) = shared.logs.auth_failed.check() {
            tracing::warn!(app = %app, protocol, error = %e, left_out, "Spark authentication failed");
        }
    }

    /// The secrets that may authenticate a client of `app`, or the failure that closes the
    /// connection.
    fn offers(shared: &Shared, app: &AppId, protocol: &str) -> Result<Vec<Offer>, Action> {
        shared.core.spark_offers(app).map_err(|r| {
            if r == Refusal::NoSecret {
                Self::auth_failed(shared, app.as_str(), protocol, &"no secret");
            }
            Action::FailAndClose(r.message(app))
        })
    }

    /// Spark's `AuthEngine`: answers the challenge, after which the connection encrypts. The
    /// challenge is sealed with the client's secret: the one of `offers` that opens it is the
    /// one it knows.
    fn auth_engine(&mut self, shared: &Shared, body: Bytes) -> Action {
        if !shared.secrets.enabled() {
            return Action::Reply(Err(
                "authentication is not enabled on this shuffle service".into()
            ));
        }
        if self.client.is_some() || self.sasl.is_some() {
            return Action::FailAndClose("already authenticating".into());
        }
        let challenge = match AuthMessage::decode(body) {
            Ok(c) => c,
            Err(e) => return Action::FailAndClose(format!("malformed auth challenge: {e}")),
        };
        let app: AppId = match challenge.app_id.parse() {
            Ok(a) => a,
            Err(e) => return Action::FailAndClose(fail(ShuffleError::from(e))),
        };
        let offers = match Self::offers(shared, &app, "AuthEngine") {
            Ok(o) => o,
            Err(a) => return a,
        };
        let mut last = None;
        for offer in &offers {
            match auth::respond(&offer.secret, &challenge) {
                Ok((response, keys)) => {
                    let source = match shared.core.spark_accept(&app, offer) {
                        Ok(s) => s,
                        Err(r) => return Action::FailAndClose(r.message(&app)),
                    };
                    tracing::debug!(app = %app, "client authenticated (network crypto)");
                    self.client = Some(app);
                    self.source = Some(source);
                    self.crypto = Some(NewChannel::Pending(keys));
                    return Action::Reply(Ok(response.to_bytes()));
                }
                Err(e) => last = Some(e),
            }
        }
        let e = last.map_or_else(|| "no secret".to_owned(), |e| e.to_string());
        Self::auth_failed(shared, app.as_str(), "AuthEngine", &e);
        // Spark's own text; its client then tries SASL, which fails the same way.
        Action::FailAndClose("Authentication failed.".into())
    }

    fn sasl_step(&mut self, shared: &Shared, app_id: &str, token: &[u8]) -> Action {
        if !shared.secrets.enabled() {
            return Action::Reply(Err(
                "authentication is not enabled on this shuffle service".into()
            ));
        }
        if self.client.is_some() {
            return Action::Reply(Err("already authenticated".into()));
        }
        let app: AppId = match app_id.parse() {
            Ok(a) => a,
            Err(e) => return Action::FailAndClose(fail(ShuffleError::from(e))),
        };
        let (sasl_app, server, offers) = match &mut self.sasl {
            Some(s) => s,
            None => {
                let offers = match Self::offers(shared, &app, "SASL") {
                    Ok(o) => o,
                    Err(a) => return a,
                };
                let protection = if shared.require_encryption {
                    Protection::ConfOnly
                } else {
                    Protection::AuthOrConf
                };
                let secrets = offers.iter().map(|o| o.secret.clone()).collect();
                self.sasl.insert((
                    app.clone(),
                    DigestServer::new_any(secrets).offering(protection),
                    offers,
                ))
            }
        };
        if *sasl_app != app {
            return Action::FailAndClose("application changed during the handshake".into());
        }
        match server.step(token) {
            Ok(reply) => {
                if server.is_complete() {
                    let Some(offer) = server.matched().and_then(|i| offers.get(i)) else {
                        return Action::FailAndClose("Authentication failed.".into());
                    };
                    let source = match shared.core.spark_accept(&app, offer) {
                        Ok(s) => s,
                        Err(r) => return Action::FailAndClose(r.message(&app)),
                    };
                    tracing::debug!(app = %app, encrypted = server.confidentiality().is_some(), "client authenticated (SASL)");
                    if let Some(ha1) = server.confidentiality() {
                        let (open, seal) = digest::server(&ha1, MAX_SASL_PIECE);
                        self.crypto =
                            Some(NewChannel::Ready(Opener::Sasl(open), Sealer::Sasl(seal)));
                    }
                    self.client = Some(app);
                    self.source = Some(source);
                    self.sasl = None;
                }
                Action::Reply(Ok(Bytes::from(reply)))
            }
            Err(e) => {
                Self::auth_failed(shared, app.as_str(), "SASL", &e);
                Action::FailAndClose(e.to_string())
            }
        }
    }

    /// Checks the app id now, then runs `work` off the read loop.
    fn later<F, Fut>(&self, app_id: &str, core: &Core, work: F) -> Action
    where
        F: FnOnce(AppId, Core) -> Fut,
        Fut: Future<Output = Result<Bytes, String>> + Send + 'static,
    {
        match self.check_app(core, app_id) {
            Ok(app) => Action::Later(Box::pin(work(app, core.clone()))),
            Err(e) => Action::Reply(Err(e)),
        }
    }

    fn block_message(&mut self, shared: &Arc<Shared>, m: Btm) -> Action {
        let core = &shared.core;
        let who = Registrant::Spark(self.source);
        match m {
            Btm::RegisterExecutor {
                app_id,
                exec_id,
                info,
            } => self.later(&app_id, core, move |app, core| async move {
                let r = request::registration(app, &exec_id, info).map_err(fail)?;
                core.register_executor(r, who).await.map_err(fail)?;
                Ok(Bytes::new())
            }),
            Btm::FetchShuffleBlocks {
                app_id,
                exec_id,
                shuffle_id,
                map_ids,
                reduce_ids,
                batch_fetch_enabled: batch,
            } => {
                let r = parse_app(&app_id).and_then(|app| {
                    request::fetch_shuffle_blocks(
                        app, &exec_id, shuffle_id, map_ids, reduce_ids, batch,
                    )
                });
                if batch && r.is_ok() {
                    core.metrics().spark_batch_fetches.inc();
                }
                Action::Reply(r.and_then(|r| self.open_stream(shared, r)))
            }
            Btm::OpenBlocks {
                app_id,
                exec_id,
                block_ids,
            } => Action::Reply(
                parse_app(&app_id)
                    .and_then(|app| request::open_blocks(app, &exec_id, &block_ids))
                    .and_then(|r| self.open_stream(shared, r)),
            ),
            Btm::GetLocalDirsForExecutors { app_id, exec_ids } => {
                Action::Reply(self.local_dirs(core, &app_id, &exec_ids))
            }
            Btm::RemoveBlocks {
                app_id,
                exec_id,
                block_ids,
            } => self.later(&app_id, core, move |app, core| async move {
                let exec: ExecId = exec_id.parse().map_err(|e| fail(ShuffleError::from(e)))?;
                let n = core
                    .remove_blocks(&app, &exec, block_ids)
                    .await
                    .map_err(fail)?;
                Ok(Btm::BlocksRemoved {
                    num_removed_blocks: i32::try_from(n).unwrap_or(i32::MAX),
                }
                .to_bytes())
            }),
            Btm::DiagnoseCorruption {
                app_id,
                exec_id,
                shuffle_id,
                map_id,
                reduce_id,
                checksum,
                algorithm,
            } => self.later(&app_id, core, move |app, core| async move {
                let cause = match request::diagnosis(
                    &exec_id, shuffle_id, map_id, reduce_id, checksum, &algorithm,
                ) {
                    Ok(d) => core.diagnose(&app, d).await,
                    Err(cause) => cause,
                };
                Ok(Btm::CorruptionCause(cause).to_bytes())
            }),
            Btm::RegisterDriver {
                app_id,
                heartbeat_timeout_ms,
            } => self.later(&app_id, core, move |app, core| async move {
                let ms = u64::try_from(heartbeat_timeout_ms)
                    .map_err(|_| "negative heartbeat timeout".to_owned())?;
                core.register_driver(&app, Duration::from_millis(ms), who)
                    .await
                    .map_err(fail)?;
                Ok(Bytes::new())
            }),
            Btm::ShuffleServiceHeartbeat { app_id } => {
                // Normally one-way; answered when sent as an RPC.
                Action::Reply(
                    self.check_app(core, &app_id)
                        .and_then(|a| core.heartbeat(&a).map_err(fail))
                        .map(|()| Bytes::new()),
                )
            }
            other => Action::Reply(Err(format!(
                "Unexpected message: {} (not served by this shuffle service)",
                other.name()
            ))),
        }
    }

    /// Handles a one-way message: heartbeats count; the rest is ignored, as Spark does.
    pub(crate) fn one_way(&mut self, shared: &Shared, body: Bytes) -> &'static str {
        if !self.authorized(shared) {
            return "Unauthenticated";
        }
        match Btm::decode(body) {
            Ok(Btm::ShuffleServiceHeartbeat { app_id }) => {
                if let Ok(app) = self.check_app(&shared.core, &app_id)
                    && shared.core.heartbeat(&app).is_err()
                {
                    tracing::debug!(app = %app, "heartbeat of an unknown application");
                }
                "ShuffleServiceHeartbeat"
            }
            Ok(m) => m.name(),
            Err(_) => "Malformed",
        }
    }

    fn open_stream(&mut self, shared: &Shared, r: FetchRequest) -> Result<Bytes, String> {
        if self.streams.len() >= shared.max_streams {
            return Err(format!(
                "{} streams open on this connection; finish some first",
                self.streams.len()
            ));
        }
        let fetch = shared.core.fetch(r, &self.caller()).map_err(fail)?;
        let n = fetch.len();
        // A stream without chunks would never be finished, so it is not kept.
        let stream_id = if fetch.is_empty() {
            (rand::random::<u64>() >> 1) as i64
        } else {
            self.streams.open(Stream::new(fetch))
        };
        Ok(Btm::StreamHandle {
            stream_id,
            num_chunks: i32::try_from(n).unwrap_or(i32::MAX),
        }
        .to_bytes())
    }

    fn local_dirs(&self, core: &Core, app_id: &str, exec_ids: &[String]) -> Result<Bytes, String> {
        let app = self.check_app(core, app_id)?;
        let execs: Vec<ExecId> = exec_ids
            .iter()
            .map(|e| e.parse())
            .collect::<Result<_, _>>()
            .map_err(|e| fail(ShuffleError::from(e)))?;
        let dirs = core.local_dirs(&app, &execs).map_err(fail)?;
        let mut num = Vec::with_capacity(execs.len());
        let mut all = Vec::new();
        for e in &execs {
            let d = &dirs[e];
            num.push(i32::try_from(d.len()).unwrap_or(i32::MAX));
            all.extend(d.iter().map(|p| p.display().to_string()));
        }
        Ok(Btm::LocalDirsForExecutors {
            exec_ids: exec_ids.to_vec(),
            num_dirs_per_exec: num,
            all_dirs: all,
        }
        .to_bytes())
    }
}
