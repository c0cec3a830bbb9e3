//! A tower layer around the gRPC server that counts calls by method and status code and times
//! them (see [`crate::metrics`]).
//!
//! The code is read from the response headers. tonic sends every error a handler returns, and
//! every refusal of the auth interceptor or the router, as a trailers-only response, so the
//! status is there; a unary success carries none there and is `OK`. A stream that ends in an
//! error after its first message counts as `OK`. A path the server does not serve is labelled
//! `other` (whatever the answer: `Unimplemented`, or `Unauthenticated` from the interceptor
//! first), so made-up paths cannot add series.
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::http::{Request, Response};
use prost::Message;

use crate::metrics::{grpc_code_name, Metrics};

/// Wraps a service in [`GrpcMetricsService`].
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: Arc<Metrics>,
    served: Arc<HashSet<String>>,
}

impl GrpcMetricsLayer {
    /// Counts calls in `metrics`; `served` are the paths (`/package.Service/Method`) the server
    /// has, see [`served_methods`].
    pub fn new(metrics: Arc<Metrics>, served: HashSet<String>) -> GrpcMetricsLayer {
        GrpcMetricsLayer {
            metrics,
            served: Arc::new(served),
        }
    }
}

/// Every `/package.Service/Method` path the encoded file descriptor sets describe.
pub fn served_methods(sets: &[&[u8]]) -> HashSet<String> {
    let mut paths = HashSet::new();
    for set in sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
            tracing::warn!("a compiled-in file descriptor set does not decode");
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let name = service.name.unwrap_or_default();
                for method in service.method {
                    let m = method.name.unwrap_or_default();
                    paths.insert(match package.as_str() {
                        "" => format!("/{name}/{m}"),
                        p => format!("/{p}.{name}/{m}"),
                    });
                }
            }
        }
    }
    paths
}

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
            served: self.served.clone(),
        }
    }
}

/// Counts and times each call of the service it wraps.
#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
    served: Arc<HashSet<String>>,
}

impl<S, B, R> tower_service::Service<Request<B>> for GrpcMetricsService<S>
where
    S: tower_service::Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let start = Instant::now();
        let path = req.uri().path();
        let method = match self.served.contains(path) {
            true => path.to_string(),
            false => "other".to_string(),
        };
        let metrics = self.metrics.clone();
        let call = self.inner.call(req);
        Box::pin(async move {
            let res = call.await;
            if let Ok(r) = &res {
                let code = r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .unwrap_or(0);
                metrics.grpc_request(method, grpc_code_name(code), start.elapsed().as_secs_f64());
            }
            res
        })
    }
}
