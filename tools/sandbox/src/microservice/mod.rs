//! The reference microservice: the chat-agent side of SEED.md's token contract, an HTTP server
//! that stores what tokenwarden pushes in its own `google_calendar_tokens` table.
//!
//! It owns that table (SQLite or PostgreSQL through sea-orm raw SQL), the exact success and
//! error bodies of the contract, a record of every `/api` request it received (so tests can
//! check order, headers and payloads), and fault modes that make it fail, hang, flap, stall or
//! slow down on purpose. It can stop listening and come back on the same port with its data
//! intact, to stand for an outage.
//!
//! It also keeps CONTRACT 5a: a push carrying `Token-Version: n` is refused with `409` when the
//! user is already at `n` or newer (a DELETE's version counts, kept as a tombstone), and when
//! started with a signing secret every push must carry a valid Standard Webhooks signature
//! over a body naming the URL's user and the `Token-Version`, so a captured push cannot be
//! replayed for another user, with another version, or as a DELETE.
//!
//! Beyond the contract it has two test routes, served only when started with sandbox controls
//! (`--sandbox-controls`; tests, the demo and the load test turn them on): the fault controls
//! (`POST /sandbox/control`, unauthenticated) and `GET /api/users/{user_id}/google-calendar`,
//! which shows the stored tokens in plaintext. Without them, a copy deployed as a real
//! microservice offers nothing but the contract, and its bearer check is constant time.
//!
//! # Layout
//! - this file: configuration, the handle, the router, the `/api` guard and handlers, errors;
//! - `store`: the seed's table and the version table beside it, compare-and-write;
//! - `group_commit`: versioned pushes queued and applied many to a transaction;
//! - `verify`: the `Token-Version` header and the signature check;
//! - `binding`: a signed body bound to its request's user, version and method;
//! - `faults`: fault modes, latency and `POST /sandbox/control`.

mod binding;
mod faults;
mod group_commit;
mod store;
mod verify;

pub use faults::FaultMode;
pub use verify::TOKEN_VERSION_HEADER;

use std::{
    collections::HashMap,
    fmt,
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{FromRequest, FromRequestParts, Path, Request, State},
    http::{HeaderMap, StatusCode, header, request::Parts},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{DateTime, NaiveDateTime, Utc};
use sea_orm::DbErr;
use secrecy::SecretString;
use serde::Serialize;
use serde_json::json;
use tokio::{net::TcpListener, sync::watch};
use tracing::Instrument;

use super::RunningServer;
use faults::Faults;
use store::{Applied, Store};
use verify::{SigningKeys, TokenVersion};

/// Largest request body read; the contract's bodies are a few kilobytes.
const MAX_BODY: usize = 1024 * 1024;

/// Longest user id the `VARCHAR(50)` key holds; checked up front so SQLite, which does not
/// enforce it, answers like PostgreSQL would.
const MAX_USER_ID_LEN: usize = 50;

/// The fields `connect` requires, in the order error messages name them.
const REQUIRED_FIELDS: [&str; 4] = ["access_token", "refresh_token", "token_expiry", "scope"];

/// Starting configuration of a [`ReferenceMicroservice`].
#[derive(Clone)]
pub struct MicroserviceConfig {
    /// When set, every `/api` call must carry `Authorization: Bearer <this>`.
    pub bearer_token: Option<String>,
    /// When set (`whsec_<base64>`, or several comma-separated during a rotation), every push
    /// must carry a Standard Webhooks signature by one of them over its exact body, and that
    /// body must name the URL's user and the `Token-Version` (CONTRACT 5a).
    pub signing_secret: Option<String>,
    /// Where the table lives: `sqlite::memory:`, `sqlite://file?mode=rwc` or `postgres://...`.
    pub database_url: String,
    /// Keep every `/api` request for [`ReferenceMicroservice::received`]; load tests turn it off.
    pub record_requests: bool,
    /// Serve the test routes (fault controls, plaintext token read); off by default, so a
    /// deployed copy cannot be switched into failing or made to show tokens.
    pub sandbox_controls: bool,
}

impl Default for MicroserviceConfig {
    fn default() -> Self {
        Self {
            bearer_token: None,
            signing_secret: None,
            database_url: "sqlite::memory:".to_owned(),
            record_requests: true,
            sandbox_controls: false,
        }
    }
}

/// One `/api` request as the microservice received it.
#[derive(Clone, Debug, Serialize)]
pub struct ReceivedRequest {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Request path, without the query.
    pub path: String,
    /// The `{user_id}` of the route.
    pub user_id: String,
    /// The body, when it was JSON.
    pub body: Option<serde_json::Value>,
    /// The `Authorization` header, verbatim.
    pub authorization: Option<String>,
    /// The W3C `traceparent` header, verbatim.
    pub traceparent: Option<String>,
    /// The `Token-Version` header, verbatim.
    pub token_version: Option<String>,
    /// The `webhook-id` header, verbatim.
    pub webhook_id: Option<String>,
    /// The `webhook-timestamp` header, verbatim.
    pub webhook_timestamp: Option<String>,
    /// The `webhook-signature` header, verbatim.
    pub webhook_signature: Option<String>,
    /// The status answered.
    pub status: u16,
    /// When the request arrived (before any injected latency).
    pub received_at: DateTime<Utc>,
    /// Whether the answer was a fault-mode failure rather than the real handler's.
    pub injected_fault: bool,
}

/// What the table holds for one user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoredTokens {
    /// The access token last pushed.
    pub access_token: String,
    /// The refresh token last pushed.
    pub refresh_token: String,
    /// The expiry last pushed, RFC 3339 in UTC with a `Z`.
    pub token_expiry: String,
    /// The scope last pushed.
    pub scope: String,
    /// When the row was last written, RFC 3339 in UTC with a `Z`.
    pub updated_at: String,
}

/// Handle on a running reference microservice; clones share the same server and store.
#[derive(Clone)]
pub struct ReferenceMicroservice {
    inner: Arc<Inner>,
}

/// What the handlers and the handle share.
struct Inner {
    /// Where the server listens, kept so a restart comes back on the same port.
    addr: SocketAddr,
    /// The bearer token `/api` calls must present, if configured.
    bearer_token: Option<SecretString>,
    /// The secrets pushes must be signed with, if configured.
    signing: Option<SigningKeys>,
    /// Whether the test routes are served (see [`MicroserviceConfig::sandbox_controls`]).
    sandbox_controls: bool,
    store: Store,
    /// Fault mode and latency. A plain mutex: never held across an await.
    faults: Mutex<Faults>,
    /// Counts calls under `FlakyEveryOther`; reset when a mode is set.
    flaky_calls: AtomicU64,
    /// Counts releases of stalled calls; a stalled call goes on once it changes.
    releases: AtomicU64,
    /// Calls held by `StallThenApply` right now, so tests can wait for a push to arrive.
    stalled: AtomicUsize,
    /// The request log, when recording is on.
    received: Option<Mutex<Vec<ReceivedRequest>>>,
    /// Announces fault changes and stops, so hanging requests re-check their condition.
    changes: watch::Sender<()>,
    /// Set while a stop is in progress; releases hanging requests.
    stopping: AtomicBool,
    /// The serving task while listening. An async mutex so stop and restart run one at a time.
    server: tokio::sync::Mutex<Option<RunningServer>>,
}

impl ReferenceMicroservice {
    /// Checks the signing secrets, connects the database, creates the tables if missing and
    /// serves on `listener` in a spawned task.
    pub async fn start(config: MicroserviceConfig, listener: TcpListener) -> anyhow::Result<Self> {
        let signing = config
            .signing_secret
            .as_deref()
            .map(SigningKeys::parse)
            .transpose()?;
        let store = Store::connect(&config.database_url).await?;
        let inner = Arc::new(Inner {
            addr: listener.local_addr()?,
            bearer_token: config.bearer_token.map(SecretString::from),
            signing,
            sandbox_controls: config.sandbox_controls,
            store,
            faults: Mutex::new(Faults {
                mode: FaultMode::Healthy,
                latency: Duration::ZERO,
            }),
            flaky_calls: AtomicU64::new(0),
            releases: AtomicU64::new(0),
            stalled: AtomicUsize::new(0),
            received: config.record_requests.then(|| Mutex::new(Vec::new())),
            changes: watch::Sender::new(()),
            stopping: AtomicBool::new(false),
            server: tokio::sync::Mutex::new(None),
        });
        let server = RunningServer::spawn(listener, router(inner.clone()));
        *inner.server.lock().await = Some(server);
        Ok(Self { inner })
    }

    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// Sets how `/api` calls misbehave from now on.
    pub fn set_mode(&self, mode: FaultMode) {
        self.inner.set_mode(mode);
    }

    /// Sets the delay added before every `/api` answer.
    pub fn set_latency(&self, d: Duration) {
        lock(&self.inner.faults).latency = d;
        self.inner.changes.send_replace(());
    }

    /// Lets the calls held by [`FaultMode::StallThenApply`] go on and be applied; the mode
    /// stays, so later calls are held again.
    pub fn release_stalled(&self) {
        self.inner.release_stalled();
    }

    /// How many calls [`FaultMode::StallThenApply`] holds right now.
    pub fn stalled(&self) -> usize {
        self.inner.stalled.load(Ordering::SeqCst)
    }

    /// Every `/api` request received so far, oldest first (empty when recording is off).
    pub fn received(&self) -> Vec<ReceivedRequest> {
        self.inner
            .received
            .as_ref()
            .map(|r| lock(r).clone())
            .unwrap_or_default()
    }

    /// What the table holds for `user_id`.
    pub async fn stored(&self, user_id: &str) -> anyhow::Result<Option<StoredTokens>> {
        Ok(self.inner.store.get(user_id).await?)
    }

    /// The newest `Token-Version` accepted for `user_id` (a DELETE's included), if any.
    pub async fn token_version(&self, user_id: &str) -> anyhow::Result<Option<u64>> {
        let version = self.inner.store.version(user_id).await?;
        Ok(version.and_then(|v| u64::try_from(v).ok()))
    }

    /// How many users the table holds tokens for.
    pub async fn stored_count(&self) -> anyhow::Result<u64> {
        Ok(self.inner.store.count().await?)
    }

    /// Stores tokens for many users at once, as if each had been pushed (load-test seeding).
    pub async fn seed(&self, rows: &[(String, StoredTokens)]) -> anyhow::Result<()> {
        Ok(self.inner.store.seed(rows).await?)
    }

    /// Every stored user's access token, for end-of-run consistency checks.
    pub async fn access_tokens(&self) -> anyhow::Result<HashMap<String, String>> {
        Ok(self.inner.store.access_tokens().await?)
    }

    /// Stops listening, so connections are refused; the store is kept for [`Self::restart`].
    pub async fn stop(&self) {
        let mut server = self.inner.server.lock().await;
        self.inner.stop_server(&mut server).await;
    }

    /// Listens again on the same address and port (stopping first if still running).
    pub async fn restart(&self) -> anyhow::Result<()> {
        let mut server = self.inner.server.lock().await;
        self.inner.stop_server(&mut server).await;
        let listener = TcpListener::bind(self.inner.addr).await?;
        *server = Some(RunningServer::spawn(listener, router(self.inner.clone())));
        Ok(())
    }
}

impl Inner {
    async fn stop_server(&self, server: &mut Option<RunningServer>) {
        let Some(running) = server.take() else {
            return;
        };
        self.stopping.store(true, Ordering::SeqCst);
        self.changes.send_replace(());
        running.stop().await;
        self.stopping.store(false, Ordering::SeqCst);
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.bearer_token else {
            return true;
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Constant time, so response timing does not reveal how much of a guess was right.
        presented.is_some_and(|presented| crate::secrets_match(presented, expected))
    }

    fn record(&self, request: ReceivedRequest) {
        if let Some(received) = &self.received {
            lock(received).push(request);
        }
    }
}

/// Every route: the contract's under `/api` (guarded, recorded), plus, with sandbox controls,
/// the token read and the control endpoint. Anything else is a JSON 404, so routes left out
/// look like any unknown path.
fn router(inner: Arc<Inner>) -> Router {
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
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
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

    fn internal(message: impl Into<String>) -> Self {
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
struct ConnectBody {
    access_token: String,
    refresh_token: String,
    /// As received, echoed back in the answer.
    token_expiry: String,
    scope: String,
    /// `token_expiry` parsed, for the `TIMESTAMP` column.
    expiry: NaiveDateTime,
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

/// Command-line flags of `tokenwarden microservice`.
#[derive(clap::Args, Clone)]
pub struct MicroserviceArgs {
    /// Address to listen on; keep it on loopback
    #[arg(long, env = "MICROSERVICE_LISTEN", default_value = "127.0.0.1:4000")]
    pub listen: SocketAddr,
    /// Database for the google_calendar_tokens table (SQLite or postgres://)
    #[arg(
        long,
        env = "MICROSERVICE_DATABASE_URL",
        default_value = "sqlite::memory:",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Bearer token every /api call must carry (none required when unset)
    #[arg(
        long,
        env = "GOOGLE_CALENDAR_MICROSERVICE_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Standard Webhooks secret (whsec_<base64>; several comma-separated during a rotation):
    /// every push must then carry webhook-id, webhook-timestamp (within 5 minutes) and a
    /// webhook-signature by one of them over its exact body, which must name the URL's
    /// user_id and the Token-Version as token_version, or is refused with 401
    #[arg(long, env = "MICROSERVICE_SIGNING_SECRET", hide_env_values = true)]
    pub signing_secret: Option<String>,
    /// Also serve the test routes: POST /sandbox/control (fault injection, no authentication)
    /// and GET /api/users/{user_id}/google-calendar (stored tokens in plaintext). For tests and
    /// demos only; never on a copy that holds real tokens
    #[arg(long, env = "MICROSERVICE_SANDBOX_CONTROLS")]
    pub sandbox_controls: bool,
}

impl fmt::Debug for MicroserviceArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MicroserviceArgs")
            .field("listen", &self.listen)
            .field("database_url", &without_password(&self.database_url))
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field(
                "signing_secret",
                &self.signing_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("sandbox_controls", &self.sandbox_controls)
            .finish()
    }
}

/// The database URL with any password masked, for debug output.
fn without_password(database_url: &str) -> String {
    match url::Url::parse(database_url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("redacted"));
            parsed.into()
        }
        _ => database_url.to_owned(),
    }
}

/// Runs the reference microservice alone until Ctrl-C.
pub async fn run(args: MicroserviceArgs) -> anyhow::Result<()> {
    let bearer = args.token.is_some();
    let signed = args.signing_secret.is_some();
    let config = MicroserviceConfig {
        bearer_token: args.token,
        signing_secret: args.signing_secret,
        database_url: args.database_url,
        // Nothing out of process can read the log, so it would only grow.
        record_requests: false,
        sandbox_controls: args.sandbox_controls,
    };
    let listener = TcpListener::bind(args.listen).await?;
    let microservice = ReferenceMicroservice::start(config, listener).await?;
    if args.sandbox_controls {
        tracing::warn!(
            url = %microservice.base_url(),
            bearer,
            signed,
            control_url = %format!("{}/sandbox/control", microservice.base_url()),
            "reference microservice listening with sandbox controls: anyone who can reach it \
             can inject faults and read stored tokens"
        );
    } else {
        tracing::info!(
            url = %microservice.base_url(),
            bearer,
            signed,
            "reference microservice listening"
        );
    }
    tokio::signal::ctrl_c().await?;
    tracing::info!("reference microservice stopping");
    microservice.stop().await;
    Ok(())
}

/// Locks a mutex, carrying on past poisoning: the data stays usable for the tests reading it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
