//! The reference microservice's HTTP side: the router, the `/api` guard (bearer, recording,
//! faults), the contract's three handlers, their errors and extractors. Must not touch: the
//! table's writes (`store`, `group_commit`), the signature check (`verify`).

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{FromRequest, FromRequestParts, Path, Request, State},
    http::{StatusCode, request::Parts},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{DateTime, NaiveDateTime, Utc};
use sea_orm::DbErr;
use serde_json::json;
use tracing::Instrument;

use super::{
    Inner, ReceivedRequest, faults,
    store::Applied,
    verify::{TOKEN_VERSION_HEADER, TokenVersion},
};

/// Largest request body read; the contract's bodies are a few kilobytes.
const MAX_BODY: usize = 1024 * 1024;

/// Longest user id the `VARCHAR(50)` key holds; checked up front so SQLite, which does not
/// enforce it, answers like PostgreSQL would.
const MAX_USER_ID_LEN: usize = 50;

/// The fields `connect` requires, in the order error messages name them.
pub(super) const REQUIRED_FIELDS: [&str; 4] =
    ["access_token", "refresh_token", "token_expiry", "scope"];

/// Every route: the contract's under `/api` (guarded, recorded), plus, with sandbox controls,
/// the token read and the control endpoint. Anything else is a JSON 404, so routes left out
/// look like any unknown path.
pub(super) fn router(inner: Arc<Inner>) -> Router {
    let mut api = Router::new()
        .route(
            "/api/users/{user_id}/google-calendar/connect",
            post(connect),
        )
        .route(
            "/api/google-tokens/{user_id}",
            axum::routing::delete(disconnect),
        );
    if inner.sandbox_controls {
        api = api.route("/api/users/{user_id}/google-calendar", get(show));
    }
    let api = api.route_layer(middleware::from_fn_with_state(inner.clone(), guard));
    let mut router = Router::new().merge(api);
    if inner.sandbox_controls {
        router = router.route("/sandbox/control", post(faults::control));
    }
    router.fallback(unknown_route).with_state(inner)
}

async fn unknown_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "Not found")
}

/// Wraps every `/api` call: injects faults, checks the bearer token and the signature, and
/// records the exchange.
async fn guard(State(inner): State<Arc<Inner>>, request: Request, next: Next) -> Response {
    let received_at = Utc::now();
    let (mut parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .unwrap_or_default();
    let user_id = Path::<HashMap<String, String>>::from_request_parts(&mut parts, &())
        .await
        .ok()
        .and_then(|Path(mut params)| params.remove("user_id"))
        .unwrap_or_default();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut record = ReceivedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        user_id,
        body: serde_json::from_slice(&bytes).ok(),
        authorization: header("authorization"),
        traceparent: header("traceparent"),
        token_version: header(TOKEN_VERSION_HEADER),
        webhook_id: header(standardwebhooks::HEADER_WEBHOOK_ID),
        webhook_timestamp: header(standardwebhooks::HEADER_WEBHOOK_TIMESTAMP),
        webhook_signature: header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE),
        status: 0,
        received_at,
        injected_fault: false,
    };
    // Continue the caller's trace, so one trace shows both services.
    let span = tracing::info_span!(
        "reference_microservice.request",
        http.request.method = %record.method,
        otel.kind = "server",
        user.id = %record.user_id,
        http.response.status_code = tracing::field::Empty,
    );
    crate::continue_trace(&span, &parts.headers);
    // Handled on a task of its own, so a call whose sender gave up (closed the connection)
    // still completes and is recorded, as on a server that does not notice the disconnect:
    // that is how a timed-out push lands late.
    let handled = tokio::spawn(async move {
        let (response, injected_fault) = handle(&inner, &record.user_id, parts, bytes, next)
            .instrument(span.clone())
            .await;
        record.injected_fault = injected_fault;
        record.status = response.status().as_u16();
        span.record("http.response.status_code", record.status);
        inner.record(record);
        response
    });
    handled.await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "reference microservice handler failed");
        ApiError::internal("Internal server error").into_response()
    })
}

/// Fault injection, then the bearer check, the signature and its binding to `user_id`'s
/// request, then the route's handler; whether the answer is an injected fault.
async fn handle(
    inner: &Inner,
    user_id: &str,
    parts: Parts,
    bytes: Bytes,
    next: Next,
) -> (Response, bool) {
    if let Some(fault) = inner.injected_fault().await {
        return (fault.into_response(), true);
    }
    if !inner.authorized(&parts.headers) {
        let refused = ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized");
        return (refused.into_response(), false);
    }
    if let Some(refused) = inner.push_refusal(&parts.method, user_id, &bytes, &parts.headers) {
        return (refused.into_response(), false);
    }
    let request = Request::from_parts(parts, Body::from(bytes));
    (next.run(request).await, false)
}

async fn connect(
    State(inner): State<Arc<Inner>>,
    UserId(user_id): UserId,
    TokenVersion(version): TokenVersion,
    body: ConnectBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    if let Applied::Stale { pushed, held } = inner.store.upsert(&user_id, &body, version).await? {
        return Err(ApiError::stale(pushed, held));
    }
    tracing::debug!(%user_id, ?version, "reference microservice stored tokens");
    Ok(Json(json!({
        "success": true,
        "message": "Google Calendar connected successfully",
        "user_id": user_id,
        "token_expiry": body.token_expiry,
    })))
}

async fn disconnect(
    State(inner): State<Arc<Inner>>,
    UserId(user_id): UserId,
    TokenVersion(version): TokenVersion,
) -> Result<Json<serde_json::Value>, ApiError> {
    match inner.store.delete(&user_id, version).await? {
        Applied::Stale { pushed, held } => return Err(ApiError::stale(pushed, held)),
        Applied::NothingToDelete => return Err(ApiError::not_found()),
        Applied::Done => {}
    }
    tracing::debug!(%user_id, ?version, "reference microservice deleted tokens");
    Ok(Json(json!({
        "success": true,
        "message": "Google Calendar disconnected successfully",
        "user_id": user_id,
    })))
}

/// Not in the contract: lets the demo and tests look at what the microservice holds. Served
/// only with sandbox controls: it hands out plaintext tokens.
async fn show(
    State(inner): State<Arc<Inner>>,
    UserId(user_id): UserId,
) -> Result<Json<serde_json::Value>, ApiError> {
    let tokens = inner
        .store
        .get(&user_id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(json!({
        "user_id": user_id,
        "access_token": tokens.access_token,
        "refresh_token": tokens.refresh_token,
        "token_expiry": tokens.token_expiry,
        "scope": tokens.scope,
        "updated_at": tokens.updated_at,
        "token_version": inner.store.version(&user_id).await?,
    })))
}

/// An `/api` error answer: `{"success": false, "message": ...}` with a status.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "No tokens found for user")
    }

    /// `409`: the user is already at version `held`, which is `pushed` or newer.
    fn stale(pushed: i64, held: i64) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            format!("Stale Token-Version {pushed}: version {held} is already held for this user"),
        )
    }

    pub(super) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl From<DbErr> for ApiError {
    /// Database failures are logged; the client only learns that something failed.
    fn from(error: DbErr) -> Self {
        tracing::error!(%error, "reference microservice database error");
        Self::internal("Internal server error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "success": false, "message": self.message });
        (self.status, Json(body)).into_response()
    }
}

/// The `{user_id}` of the route, 1 to 50 characters.
struct UserId(String);

impl<S: Send + Sync> FromRequestParts<S> for UserId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(user_id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("Invalid user_id: {e}")))?;
        if user_id.is_empty() || user_id.chars().count() > MAX_USER_ID_LEN {
            return Err(ApiError::bad_request(
                "Invalid user_id: must be 1 to 50 characters",
            ));
        }
        Ok(Self(user_id))
    }
}

/// A validated `connect` body; rejections answer in the contract's JSON shape.
pub(super) struct ConnectBody {
    pub(super) access_token: String,
    pub(super) refresh_token: String,
    /// As received, echoed back in the answer.
    pub(super) token_expiry: String,
    pub(super) scope: String,
    /// `token_expiry` parsed, for the `TIMESTAMP` column.
    pub(super) expiry: NaiveDateTime,
}

impl<S: Send + Sync> FromRequest<S> for ConnectBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("Invalid body: {e}")))?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("Invalid JSON body: {e}")))?;
        Self::validate(&value)
    }
}

impl ConnectBody {
    fn validate(value: &serde_json::Value) -> Result<Self, ApiError> {
        let field = |name: &str| {
            value
                .get(name)
                .and_then(serde_json::Value::as_str)
                .filter(|s| !s.trim().is_empty())
        };
        let missing: Vec<&str> = REQUIRED_FIELDS
            .into_iter()
            .filter(|name| field(name).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(ApiError::bad_request(format!(
                "Missing required fields: {}",
                missing.join(", ")
            )));
        }
        let token_expiry = field("token_expiry").unwrap_or_default().to_owned();
        let expiry = DateTime::parse_from_rfc3339(&token_expiry)
            .map_err(|_| {
                ApiError::bad_request("Invalid token_expiry: must be an ISO 8601 timestamp")
            })?
            .naive_utc();
        Ok(Self {
            access_token: field("access_token").unwrap_or_default().to_owned(),
            refresh_token: field("refresh_token").unwrap_or_default().to_owned(),
            token_expiry,
            scope: field("scope").unwrap_or_default().to_owned(),
            expiry,
        })
    }
}
