//! Liveness, readiness and metrics: no token needed, no user data or secrets exposed.

use axum::{
    Json, Router,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

use super::{AppState, Error};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(app): State<AppState>) -> Result<Json<serde_json::Value>, Error> {
    if !app.store.ping().await {
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
