//! Liveness, readiness and metrics: no token needed, no user data or secrets exposed.

use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

use super::{AppState, Error};
use crate::store::Store;

/// How long a database check answers `/readyz` after it finished. Each real check opens a
/// write transaction (on SQLite, the write lock every refresh needs, on a pool of two
/// connections), and anyone may send probes: reusing the answer keeps a flood of them to one
/// check a second, while a locked database still shows within this plus the ping's own
/// timeout (docs/reliability.md, Security: Low 3).
const CHECK_REUSED_FOR: Duration = Duration::from_secs(1);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// The database check behind `/readyz`, shared by every probe.
#[derive(Default)]
pub struct Readiness {
    /// When the last check finished, and whether the database answered.
    last: Mutex<Option<(Instant, bool)>>,
    /// Held by the one probe running a check; the others answer from `last` meanwhile.
    checking: tokio::sync::Mutex<()>,
}

impl Readiness {
    /// Whether the database answers, checked at most once per [`CHECK_REUSED_FOR`].
    pub async fn database_ok(&self, store: &Store) -> bool {
        if let Some(ok) = self.last_within(CHECK_REUSED_FOR) {
            return ok;
        }
        let _checking = match self.checking.try_lock() {
            Ok(guard) => guard,
            // A check is running: the previous answer stands until it ends (the ping is
            // bounded, so that answer is at most a check old).
            Err(_) => match self.last_within(Duration::MAX) {
                Some(ok) => return ok,
                None => self.checking.lock().await,
            },
        };
        // A check may have finished while this probe waited for its turn.
        if let Some(ok) = self.last_within(CHECK_REUSED_FOR) {
            return ok;
        }
        let ok = store.ping().await;
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), ok));
        ok
    }

    fn last_within(&self, age: Duration) -> Option<bool> {
        let last = *self.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.filter(|(at, _)| at.elapsed() < age).map(|(_, ok)| ok)
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(app): State<AppState>) -> Result<Json<serde_json::Value>, Error> {
    if !app.readiness.database_ok(&app.store).await {
        return Err(Error::Unavailable("database is not answering".into()));
    }
    if !app.supervisor.is_loaded() {
        return Err(Error::Unavailable("user actors are still loading".into()));
    }
    Ok(Json(json!({"status": "ready"})))
}

async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}
