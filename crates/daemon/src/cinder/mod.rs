//! The Cinder v3 REST front end: the Backups API of `../shared/seeds/cinder-backups-api.txt`
//! and the volume calls the `cinder` client needs, over the same control plane, projects,
//! tokens and roles as the gRPC API, so `python-cinderclient` drives a storage node unmodified.
//!
//! ```text
//! HTTP/1.1 (axum) --version: OpenStack-API-Version negotiated, echoed; 406 outside 3.0..=MAX
//!   --call: token (Basic or X-Auth-Token) -> caller, acting in the URL's project
//!   --backups.rs / volumes.rs: JSON <-> control calls on a blocking thread
//!   --fault.rs: control::Error -> Cinder fault body and status code (the one mapping)
//! ```
mod backups;
mod call;
mod count;
mod fault;
mod origin;
mod version;
mod volumes;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

use crate::auth::Auth;
use crate::control::Control;

pub use version::{MAX_VERSION, MIN_VERSION};

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) control: Arc<Control>,
    pub(crate) auth: Auth,
    /// Cinder's `noauth`: `X-Auth-Token: USER:PROJECT` without a secret.
    pub(crate) noauth: bool,
}

/// The routes.
pub fn router(control: Arc<Control>, auth: Auth, noauth: bool) -> Router {
    let metrics = control.metrics().clone();
    let shared = Shared {
        control,
        auth,
        noauth,
    };
    Router::new()
        .route("/", get(version::versions))
        .route("/v3", get(version::versions))
        .route("/v3/", get(version::versions))
        .route(
            "/v3/{project_id}/backups",
            get(backups::list).post(backups::create),
        )
        .route("/v3/{project_id}/backups/detail", get(backups::list_detail))
        .route(
            "/v3/{project_id}/backups/import_record",
            post(backups::import_record),
        )
        .route(
            "/v3/{project_id}/backups/{backup_id}",
            get(backups::show)
                .put(backups::update)
                .delete(backups::delete),
        )
        .route(
            "/v3/{project_id}/backups/{backup_id}/restore",
            post(backups::restore),
        )
        .route(
            "/v3/{project_id}/backups/{backup_id}/export_record",
            get(backups::export_record),
        )
        .route(
            "/v3/{project_id}/backups/{backup_id}/action",
            post(backups::action),
        )
        .route("/v3/{project_id}/volumes", get(volumes::list))
        .route("/v3/{project_id}/volumes/detail", get(volumes::list_detail))
        .route("/v3/{project_id}/volumes/{volume_id}", get(volumes::show))
        .fallback(fault::no_route)
        .layer(axum::middleware::from_fn(version::negotiate))
        .layer(axum::middleware::from_fn_with_state(metrics, count::count))
        .with_state(shared)
}
