//! gRPC request metrics as one tower layer around every service of the gRPC server, instead
//! of code in each RPC: `shuffle_rpc_requests_total{method,code}` and
//! `shuffle_rpc_duration_seconds{method}` (until the response or the stream starts).
//!
//! The method label is bounded: names of the `shuffle.v1` RPCs only, everything else
//! (health, reflection, unknown paths a client made up) is `other`. The code is the
//! `grpc-status` of a trailers-only response (an error returned by the handler), else `OK`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use crate::metrics::Metrics;

/// Every RPC of `shuffle.v1` (the metric's method label).
const METHODS: &[&str] = &[
    "RegisterApplication",
    "Heartbeat",
    "UnregisterApplication",
    "RegisterExecutor",
    "WriteMapOutput",
    "FetchBlocks",
    "RemoveShuffle",
    "RemoveBlocks",
    "GetLocalDirs",
    "ListApplications",
];

/// The layer.
#[derive(Debug, Clone)]
pub(crate) struct GrpcMetricsLayer {
    metrics: Metrics,
}

impl GrpcMetricsLayer {
    /// A layer recording into `metrics`.
    pub(crate) fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service the layer wraps around the gRPC server's routes.
#[derive(Debug, Clone)]
pub(crate) struct GrpcMetrics<S> {
    inner: S,
    metrics: Metrics,
}

fn method_label(path: &str) -> &'static str {
    let Some(rest) = path.strip_prefix("/shuffle.v1.") else {
        return "other";
    };
    let name = rest.rsplit('/').next().unwrap_or_default();
    METHODS
        .iter()
        .find(|m| **m == name)
        .copied()
        .unwrap_or("other")
}

fn code_label<B>(res: &http::Response<B>) -> String {
    match res
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
    {
        None | Some(0) => "OK".to_owned(),
        Some(c) => format!("{:?}", tonic::Code::from_i32(c)),
    }
}

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_label(req.uri().path());
        let start = Instant::now();
        let metrics = self.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            if method != "other" {
                let code = match &res {
                    Ok(r) => code_label(r),
                    Err(_) => "Internal".to_owned(),
                };
                metrics.rpcs.with_label_values(&[method, &code]).inc();
                metrics
                    .rpc_duration
                    .with_label_values(&[method])
                    .observe(start.elapsed().as_secs_f64());
            }
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(
            method_label("/shuffle.v1.Shuffle/FetchBlocks"),
            "FetchBlocks"
        );
        assert_eq!(
            method_label("/shuffle.v1.ShuffleAdmin/ListApplications"),
            "ListApplications"
        );
        assert_eq!(method_label("/shuffle.v1.Shuffle/MadeUp123"), "other");
        assert_eq!(method_label("/grpc.health.v1.Health/Check"), "other");
    }
}
