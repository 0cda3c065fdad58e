//! The axum front door: one file per resource (the operator console a folder of its own,
//! `console/`), each with its own `router()`, merged here with
//! the cross-cutting layers (body limit, deadline, CORS, request metrics and spans), and
//! served by `serve` with limits on client connections.
//!
//! The deadline is tower's `TimeoutLayer` behind axum's `HandleErrorLayer`, which turns its
//! error into the contract's JSON 504. tower-http's timeout answers an empty-bodied 504
//! instead, with nothing to tell it from any other 504 short of guessing by status and body.

mod admin;
mod auth;
mod auth_throttle;
mod browser_binding;
mod console;
mod error;
mod health;
mod integrations;
mod rate_limit;
mod risc;
mod serve;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    error_handling::HandleErrorLayer,
    extract::{MatchedPath, Request, State},
    http::header,
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, SecondsFormat, Utc};
use tower::{BoxError, ServiceBuilder};

pub use auth::{AdminAuth, AuthUser, valid_user_id, verify_jwt};
pub use auth_throttle::AuthThrottle;
#[cfg(feature = "test-util")]
pub use console::forge_cookie as forge_console_cookie;
pub use console::{COOKIE as CONSOLE_COOKIE, LIFETIME as CONSOLE_SESSION_LIFETIME};
pub use error::Error;
pub use health::Readiness;
pub use rate_limit::{CALLBACKS_PER_MINUTE, CONNECTS_PER_MINUTE, RateLimiter};
pub use serve::serve;

use crate::{
    actors::Supervisor,
    config::Config,
    google::GoogleClient,
    history::History,
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
    /// Recent refreshes and pushes, for the console.
    pub history: Arc<History>,
    /// Per-user limit on starting consents.
    pub connect_limiter: Arc<RateLimiter>,
    /// Per-address count of wrong admin tokens (admin routes and console sign-in).
    pub auth_throttle: Arc<AuthThrottle>,
    /// Google's RISC signing keys, cached.
    pub risc_keys: Arc<crate::risc::keys::RiscKeys>,
    /// The database check `/readyz` probes share.
    pub readiness: Arc<Readiness>,
    /// This process in its cluster: who runs a user, and where a change goes.
    pub node: crate::node::Node,
}

/// The whole front door.
pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .merge(integrations::router(state.config.frontend_url.as_str()))
        .merge(admin::router())
        .merge(console::router(state.clone()))
        .merge(risc::router())
        .merge(health::router())
        .fallback(not_found);
    with_deadline(routes, REQUEST_DEADLINE)
        .layer(middleware::from_fn(limit_body))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn not_found() -> Error {
    Error::NotFound("not_found", "no such route".into())
}

/// Refuses a body above the limit with a JSON 413, whether its length is declared or not.
/// A body of undeclared length (chunked) is read here, up to the limit and within the
/// request deadline's length, and handed on whole: otherwise an oversized one got axum's
/// plain-text 413 from whichever extractor hit the limit, or none at all from a handler that
/// never reads its body. (Bodies are small: no route takes more than a form or a token.)
async fn limit_body(request: Request, next: Next) -> Response {
    use axum::body::HttpBody as _;
    // Google's security events are answered in RFC 8935's terms, an oversized one too.
    let too_large = if request.uri().path() == risc::ROUTE {
        risc::oversized
    } else {
        || Error::PayloadTooLarge(MAX_BODY_BYTES).into_response()
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let hint = request.body().size_hint();
    let limit = MAX_BODY_BYTES as u64;
    if declared.is_some_and(|len| len > limit) || hint.lower() > limit {
        // A client still sending when the answer comes gets a connection reset instead of
        // the answer: read a declared body of moderate size to its end first, then refuse.
        if declared.is_some_and(|len| len <= DRAIN_BYTES) {
            let _ = tokio::time::timeout(DRAIN_DEADLINE, drain(request.into_body())).await;
        }
        return too_large();
    }
    // hyper ends a body at its declared length: nothing more can arrive.
    if hint.upper().is_some_and(|len| len <= limit) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(REQUEST_DEADLINE, read_limited(body)).await {
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, bytes.into())).await,
        Ok(Err(Error::PayloadTooLarge(_))) => too_large(),
        Ok(Err(error)) => error.into_response(),
        Err(_) => Error::Timeout.into_response(),
    }
}

/// The whole body, or `PayloadTooLarge` as soon as it passes the limit.
/// The largest declared body read to its end (and dropped) before it is refused, and how long
/// that may take.
const DRAIN_BYTES: u64 = 1024 * 1024;
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

async fn drain(body: axum::body::Body) {
    use futures::StreamExt as _;
    let mut stream = body.into_data_stream();
    while let Some(Ok(_)) = stream.next().await {}
}

async fn read_limited(body: axum::body::Body) -> Result<Vec<u8>, Error> {
    use futures::StreamExt as _;
    let mut stream = body.into_data_stream();
    let mut read = Vec::new();
    while let Some(chunk) = stream.next().await {
        // The client broke off or sent a malformed chunk; it will hardly read the answer.
        let chunk =
            chunk.map_err(|_| Error::BadRequest("the request body could not be read".into()))?;
        if read.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(Error::PayloadTooLarge(MAX_BODY_BYTES));
        }
        read.extend_from_slice(&chunk);
    }
    Ok(read)
}

/// Answers `504 {"error": "timeout"}` for a request still running after `limit` (its handler
/// is dropped).
fn with_deadline<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    limit: Duration,
) -> Router<S> {
    router.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(deadline_passed))
            .timeout(limit),
    )
}

/// The routes never fail (axum services are infallible), so the timeout's `Elapsed` is the
/// only error that reaches here.
async fn deadline_passed(_: BoxError) -> Error {
    Error::Timeout
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
    if adopts_caller_trace(&route) {
        crate::telemetry::continue_trace(&span, request.headers());
    } else {
        crate::telemetry::link_trace(&span, request.headers());
    }
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

/// Whether a request on `route` may continue its caller's trace: only on routes whose
/// handlers verify the caller (a user's JWT, the admin token: every `/admin/` route takes
/// `AdminAuth`) before any work that reaches Google or the microservice. Every other route
/// (the callback, Google's RISC pushes, health, metrics, the console, anything unmatched)
/// starts a trace of its own and links the caller's, as OpenTelemetry advises for public
/// endpoints: an anonymous `traceparent` and `tracestate` would otherwise travel on to Google
/// and into the pushes, and graft our spans onto a trace of the caller's choosing.
fn adopts_caller_trace(route: &str) -> bool {
    route.starts_with("/admin/") || integrations::AUTHENTICATED_ROUTES.contains(&route)
}

/// RFC 3339 in UTC with a `Z` and whole seconds, as the contract writes timestamps.
pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, routing::get};
    use tower::ServiceExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_request_past_the_deadline_gets_the_json_504() {
        let slow = Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "late"
            }),
        );
        let response = with_deadline(slow, Duration::from_secs(30))
            .oneshot(Request::get("/slow").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), http::StatusCode::GATEWAY_TIMEOUT);
        let body = axum::body::to_bytes(response.into_body(), MAX_BODY_BYTES)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "timeout");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}
