//! The Prometheus scrape endpoint (`[metrics] listen`, `GET /metrics`): the present state read
//! from the control plane, rendered with the daemon's counters (see [`crate::metrics`]).
use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::control::Control;
use crate::metrics::{Snapshot, VaultFigures};
use crate::model::{JobKind, JobState};

const KINDS: [JobKind; 2] = [JobKind::Backup, JobKind::Restore];
const STATES: [JobState; 5] = [
    JobState::Queued,
    JobState::Running,
    JobState::Succeeded,
    JobState::Failed,
    JobState::Cancelled,
];

/// The present state: jobs per kind and state (every pair, zeros too), each vault's usage and
/// capacity, and the pack store's totals. Blocking (reads the pack table).
pub fn snapshot(control: &Control) -> Snapshot {
    let (jobs, vaults) = {
        let st = control.rows.lock();
        let mut n: HashMap<(JobKind, JobState), u64> = HashMap::new();
        for j in st.jobs.values() {
            *n.entry((j.kind, j.state)).or_default() += 1;
        }
        let jobs = KINDS
            .iter()
            .flat_map(|k| STATES.iter().map(move |s| (*k, *s)))
            .map(|(k, s)| {
                let count = n.get(&(k, s)).copied().unwrap_or(0);
                (k.as_str(), s.as_str(), count)
            })
            .collect();
        let vaults = st
            .vaults
            .values()
            .map(|v| VaultFigures {
                vault_id: v.id.to_string(),
                project_id: v.project_id.clone(),
                used: crate::vault::used_bytes(&st, &v.id),
                capacity: Some(crate::vault::capacity(v)),
            })
            .collect();
        (jobs, vaults)
    };
    let (packs, pack_bytes) = match control.engine().pack_totals() {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "metrics: reading the pack table");
            (0, 0)
        }
    };
    Snapshot {
        jobs,
        vaults,
        packs,
        pack_bytes,
    }
}

/// `GET /metrics`; every other path is 404.
pub fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(control)
}

async fn scrape(State(control): State<Arc<Control>>) -> Response {
    let text = tokio::task::spawn_blocking(move || {
        let now = snapshot(&control);
        control.metrics().render(&now)
    })
    .await;
    match text {
        Ok(t) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            t,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("metrics: {e}\n")).into_response(),
    }
}
