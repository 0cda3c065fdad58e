//! The axum front door: one file per resource, each with its own `router()`, merged here with
//! the cross-cutting layers (body limit, deadline, CORS, request metrics and spans), and
//! served by `serve` with limits on client connections.

mod admin;
mod auth;
mod browser_binding;
mod error;
mod health;
mod integrations;
mod rate_limit;
mod serve;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    http::header,
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, SecondsFormat, Utc};

pub use auth::{AdminAuth, AuthUser, valid_user_id, verify_jwt};
pub use error::Error;
pub use health::Readiness;
pub use rate_limit::{CONNECTS_PER_MINUTE, RateLimiter};
pub use serve::serve;

use crate::{
    actors::Supervisor,
    config::Config,
    google::GoogleClient,
    metrics::{HttpLabels, HttpMethod, Metrics},
    store::Store,
    sync::SyncDispatcher,
};

/// No route takes a body this large; bigger requests are refused before any handler runs.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest a request may take (a callback waits on Google at most twice its timeout).
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// What every handler can reach; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub google: GoogleClient,
    pub supervisor: Supervisor,
    pub sync: SyncDispatcher,
    pub metrics: Arc<Metrics>,
    /// Per-user limit on starting consents.
    pub connect_limiter: Arc<RateLimiter>,
    /// The database check `/readyz` probes share.
    pub readiness: Arc<Readiness>,
}

/// The whole front door.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(integrations::router(&state.config.frontend_url))
        .merge(admin::router())
        .merge(health::router())
        .fallback(not_found)
        .layer(middleware::from_fn(deadline))
        .layer(middleware::from_fn(limit_body))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn not_found() -> Error {
    Error::NotFound("not_found", "no such route".into())
}

/// Refuses a declared body above the limit with a JSON 413.
async fn limit_body(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES) {
        return Error::PayloadTooLarge(MAX_BODY_BYTES).into_response();
    }
    next.run(request).await
}

async fn deadline(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_DEADLINE, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Error::Timeout.into_response(),
    }
}

/// Records each request's duration by route (the matched pattern, never the raw path, so
/// user ids stay out of labels) and wraps it in a span named by the route. The method is
/// folded into the standard set plus `other`, in the labels and in the span alike: a client
/// inventing methods (or sending a 100 KB one) must not grow `/metrics` or the traces.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = HttpMethod::from(request.method());
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format!("{} {route}", method.as_str()),
        otel.kind = "server",
        http.request.method = method.as_str(),
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    crate::telemetry::continue_trace(&span, request.headers());
    let started = Instant::now();
    let response = {
        use tracing::Instrument;
        next.run(request).instrument(span.clone()).await
    };
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    state
        .metrics
        .http_duration
        .get_or_create(&HttpLabels {
            method,
            route,
            status,
        })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// RFC 3339 in UTC with a `Z` and whole seconds, as the contract writes timestamps.
pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}
