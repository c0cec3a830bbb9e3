//! Counts and times each REST request in the daemon's metrics, by method, route template and
//! status code. The route is the template that matched (`/v3/{project_id}/backups/{backup_id}`),
//! never the raw path, and a request no route matched is `unmatched`: ids and made-up paths
//! cannot add series.
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::metrics::{http_method_name, Metrics};

/// The middleware (`axum::middleware::from_fn_with_state`).
pub async fn count(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = http_method_name(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let res = next.run(req).await;
    metrics.rest_request(
        method,
        route,
        res.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    res
}
