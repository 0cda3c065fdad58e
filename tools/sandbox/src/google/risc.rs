//! The sandbox Google as a RISC transmitter (docs/contract.md section 10), its Google-facing half:
//! the RISC configuration document, the JWKS of the transmitter's signing key, and the stream
//! management API (`/v1beta/stream`, `stream:update`, `stream:verify`) that a receiver's owner
//! calls with a service account's self-signed JWT, as Google's RISC API asks.
//!
//! The signing key is the process-wide shared one until a rotation replaces it (a new `kid`;
//! the old key leaves the JWKS at once). Every JWKS fetch is timed, so a test can prove a
//! receiver re-fetches at most once per 10 s. Service accounts are registered with their public
//! key (from a generated key file or one given at start); any other caller gets Google's 401.
//! Building, signing and delivering SETs, and the sandbox's own controls, live in `risc_set`
//! and `risc_controls`.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use serde::{Deserialize, Serialize};

use super::{
    Inner, SandboxGoogleConfig,
    risc_keys::{KeyRole, ServiceAccountKeyFile, SigningKey, shared_key},
    risc_set::{PUSH_DELIVERY, SUPPORTED_EVENTS, SentSet},
    wire::bearer_token,
};

/// The audience Google's RISC API requires in the service account's JWT.
pub const RISC_API_AUDIENCE: &str =
    "https://risc.googleapis.com/google.identity.risc.v1beta.RiscManagementService";

/// JWKS fetch times kept (the latest ones): enough for any test, bounded for a long run.
const FETCH_TIMES_KEPT: usize = 256;

/// SETs sent kept (the latest ones).
const SENT_KEPT: usize = 1024;

/// The RISC side's memory, under its own lock (never held across an await).
pub(super) struct RiscState {
    /// The `issuer` of the configuration and of every SET, if configured; else the base URL.
    pub(super) issuer: Option<String>,
    /// The key SETs are signed with; `None` until first needed (generation is not free).
    pub(super) current: Option<Arc<SigningKey>>,
    /// Keys replaced by rotations, newest last: no longer published.
    pub(super) retired: Vec<Arc<SigningKey>>,
    pub(super) rotations: u64,
    pub(super) jwks_fetches: u64,
    pub(super) jwks_fetched_at: Vec<DateTime<Utc>>,
    pub(super) service_accounts: Vec<ServiceAccount>,
    /// The receiver registered by `stream:update`.
    pub(super) stream: Option<RiscStream>,
    /// Every SET sent and what the receiver answered, oldest first.
    pub(super) sent: Vec<SentSet>,
    /// The client SETs are delivered with.
    pub(super) http: reqwest::Client,
}

/// A service account the stream API accepts.
pub(super) struct ServiceAccount {
    pub(super) client_email: String,
    pub(super) private_key_id: String,
    pub(super) key: DecodingKey,
}

/// The stream configuration, as `stream:update` takes it and `GET /v1beta/stream` answers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiscStream {
    pub delivery: RiscStreamDelivery,
    #[serde(default)]
    pub events_requested: Vec<String>,
}

/// Where and how SETs are delivered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiscStreamDelivery {
    pub delivery_method: String,
    pub url: String,
}

/// What `GET /sandbox/risc` answers: the transmitter's state, for tests and drivers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RiscView {
    pub issuer: String,
    /// The current signing key's id; `None` until a key was first needed.
    pub kid: Option<String>,
    pub rotations: u64,
    pub jwks_fetches: u64,
    /// When the latest JWKS fetches arrived.
    pub jwks_fetched_at: Vec<DateTime<Utc>>,
    pub service_accounts: Vec<String>,
    pub stream: Option<RiscStream>,
    pub sent: Vec<SentSet>,
}

impl RiscState {
    pub(super) fn new(config: &SandboxGoogleConfig) -> Self {
        Self {
            issuer: config.risc_issuer.clone(),
            current: None,
            retired: Vec::new(),
            rotations: 0,
            jwks_fetches: 0,
            jwks_fetched_at: Vec::new(),
            service_accounts: Vec::new(),
            stream: None,
            sent: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    pub(super) fn record_sent(&mut self, sent: SentSet) {
        if self.sent.len() == SENT_KEPT {
            self.sent.remove(0);
        }
        self.sent.push(sent);
    }
}

impl Inner {
    /// The issuer of the configuration and of every SET.
    pub(super) fn risc_issuer(&self) -> String {
        self.risc()
            .issuer
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.addr))
    }

    /// The current signing key, taking the shared one if none was needed yet.
    pub(super) async fn risc_key(&self) -> anyhow::Result<Arc<SigningKey>> {
        if let Some(key) = &self.risc().current {
            return Ok(key.clone());
        }
        let shared = shared_key(KeyRole::Transmitter).await?;
        // A rotation may have won the race meanwhile: keep its key.
        Ok(self.risc().current.get_or_insert(shared).clone())
    }

    /// Replaces the signing key with a fresh one; returns the new `kid`.
    pub(super) async fn rotate_risc_key(&self) -> anyhow::Result<String> {
        let fresh = Arc::new(SigningKey::generate().await?);
        let kid = fresh.kid().to_owned();
        let mut risc = self.risc();
        if let Some(old) = risc.current.replace(fresh) {
            risc.retired.push(old);
        }
        risc.rotations += 1;
        tracing::info!(%kid, "sandbox RISC signing key rotated");
        Ok(kid)
    }

    /// Accepts JWTs signed by the key of `file` for its `client_email`.
    pub(super) fn register_service_account(
        &self,
        file: &ServiceAccountKeyFile,
    ) -> anyhow::Result<()> {
        let key = SigningKey::from_pkcs8_pem(&file.private_key).map_err(|e| {
            anyhow::anyhow!("the key file's private_key is not a PKCS#8 RSA key: {e}")
        })?;
        let mut risc = self.risc();
        risc.service_accounts
            .retain(|a| a.client_email != file.client_email);
        risc.service_accounts.push(ServiceAccount {
            client_email: file.client_email.clone(),
            private_key_id: file.private_key_id.clone(),
            key: key.decoding_key(),
        });
        Ok(())
    }

    /// Checks the RISC API's `Authorization: Bearer <JWT>`: RS256, signed by a registered
    /// service account's key, `iss` = `sub` = its email, Google's audience, `iat` and an
    /// unexpired `exp`. Returns the account's email.
    fn authenticate_api_caller(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        let unauthenticated = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Request had invalid authentication credentials.",
            )
        };
        let token = bearer_token(headers).ok_or_else(unauthenticated)?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| unauthenticated())?;
        if header.alg != Algorithm::RS256 {
            return Err(unauthenticated());
        }
        let risc = self.risc();
        let candidates = risc.service_accounts.iter().filter(|a| {
            header
                .kid
                .as_deref()
                .is_none_or(|kid| kid == a.private_key_id)
        });
        for account in candidates {
            let mut validation = Validation::new(Algorithm::RS256);
            validation.set_audience(&[RISC_API_AUDIENCE]);
            validation.set_issuer(&[&account.client_email]);
            validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            let Ok(data) = jsonwebtoken::decode::<CallerClaims>(token, &account.key, &validation)
            else {
                continue;
            };
            if data.claims.sub == account.client_email {
                return Ok(account.client_email.clone());
            }
        }
        Err(unauthenticated())
    }
}

/// The claims the RISC API reads beyond those `jsonwebtoken` validates.
#[derive(Deserialize)]
struct CallerClaims {
    sub: String,
    // Required, as Google requires it; its value is not checked.
    #[allow(dead_code)]
    iat: i64,
}

/// An error of the RISC API, in Google's API shape:
/// `{"error": {"code": 401, "message": "...", "status": "UNAUTHENTICATED"}}`.
pub(super) struct ApiError {
    code: StatusCode,
    message: String,
}

impl ApiError {
    pub(super) fn new(code: StatusCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self.code {
            StatusCode::UNAUTHORIZED => "UNAUTHENTICATED",
            StatusCode::NOT_FOUND => "NOT_FOUND",
            StatusCode::BAD_REQUEST => "INVALID_ARGUMENT",
            StatusCode::PRECONDITION_FAILED => "FAILED_PRECONDITION",
            _ => "INTERNAL",
        };
        // Google answers a failed precondition with 400, naming it in `status`.
        let code = match self.code {
            StatusCode::PRECONDITION_FAILED => StatusCode::BAD_REQUEST,
            other => other,
        };
        let body = serde_json::json!({
            "error": {"code": code.as_u16(), "message": self.message, "status": status}
        });
        (code, Json(body)).into_response()
    }
}

/// The Google-facing RISC routes; the sandbox's own RISC controls are added by
/// `risc_controls`.
pub(super) fn routes() -> Router<Arc<Inner>> {
    Router::new()
        .route("/.well-known/risc-configuration", get(configuration))
        .route("/risc/jwks", get(jwks))
        .route("/v1beta/stream", get(get_stream))
        .route("/v1beta/stream:update", post(update_stream))
        .route("/v1beta/stream:verify", post(verify_stream))
}

async fn configuration(State(inner): State<Arc<Inner>>) -> Json<serde_json::Value> {
    let base = format!("http://{}", inner.addr);
    Json(serde_json::json!({
        "issuer": inner.risc_issuer(),
        "jwks_uri": format!("{base}/risc/jwks"),
        "delivery_methods_supported": [PUSH_DELIVERY],
        "configuration_endpoint": format!("{base}/v1beta/stream"),
        "verification_endpoint": format!("{base}/v1beta/stream:verify"),
    }))
}

async fn jwks(State(inner): State<Arc<Inner>>) -> Response {
    let key = match inner.risc_key().await {
        Ok(key) => key,
        Err(e) => {
            return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
        }
    };
    {
        let mut risc = inner.risc();
        risc.jwks_fetches += 1;
        if risc.jwks_fetched_at.len() == FETCH_TIMES_KEPT {
            risc.jwks_fetched_at.remove(0);
        }
        risc.jwks_fetched_at.push(Utc::now());
    }
    let set = JwkSet {
        keys: vec![key.jwk().clone()],
    };
    Json(set).into_response()
}

async fn get_stream(State(inner): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    if let Err(e) = inner.authenticate_api_caller(&headers) {
        return e.into_response();
    }
    match inner.risc().stream.clone() {
        Some(stream) => {
            let delivered: Vec<&String> = stream
                .events_requested
                .iter()
                .filter(|e| SUPPORTED_EVENTS.contains(&e.as_str()))
                .collect();
            let mut body = serde_json::to_value(&stream).unwrap_or_default();
            body["events_delivered"] = serde_json::json!(delivered);
            Json(body).into_response()
        }
        None => ApiError::new(StatusCode::NOT_FOUND, "No stream is configured.").into_response(),
    }
}

async fn update_stream(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = match inner.authenticate_api_caller(&headers) {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    let stream = match serde_json::from_slice::<RiscStream>(&body) {
        Ok(stream) => stream,
        Err(e) => {
            let at = format!("Invalid body at line {}, column {}.", e.line(), e.column());
            return ApiError::new(StatusCode::BAD_REQUEST, at).into_response();
        }
    };
    if stream.delivery.delivery_method != PUSH_DELIVERY {
        let message = format!("delivery_method must be {PUSH_DELIVERY}.");
        return ApiError::new(StatusCode::BAD_REQUEST, message).into_response();
    }
    if !url::Url::parse(&stream.delivery.url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
    {
        let message = "delivery.url must be an http or https URL.";
        return ApiError::new(StatusCode::BAD_REQUEST, message).into_response();
    }
    if let Some(unknown) = stream
        .events_requested
        .iter()
        .find(|e| !SUPPORTED_EVENTS.contains(&e.as_str()))
    {
        let message = format!("Unsupported event type: {unknown}");
        return ApiError::new(StatusCode::BAD_REQUEST, message).into_response();
    }
    tracing::info!(%caller, url = %stream.delivery.url, "sandbox RISC stream updated");
    inner.risc().stream = Some(stream);
    Json(serde_json::json!({})).into_response()
}

/// `stream:verify`: sends a `verification` SET with the given `state` to the registered
/// receiver, at once. Google answers `{}`; the sandbox does so only when the receiver
/// accepted the SET (a 2xx), and otherwise names what the receiver did, so the CLI can say.
async fn verify_stream(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(e) = inner.authenticate_api_caller(&headers) {
        return e.into_response();
    }
    #[derive(Deserialize)]
    struct VerifyRequest {
        #[serde(default)]
        state: Option<String>,
    }
    let request = if body.is_empty() {
        VerifyRequest { state: None }
    } else {
        match serde_json::from_slice::<VerifyRequest>(&body) {
            Ok(request) => request,
            Err(_) => {
                return ApiError::new(StatusCode::BAD_REQUEST, "Invalid body.").into_response();
            }
        }
    };
    if inner.risc().stream.is_none() {
        let message = "No stream is configured: call stream:update first.";
        return ApiError::new(StatusCode::PRECONDITION_FAILED, message).into_response();
    }
    let event = super::risc_set::RiscEvent::Verification {
        state: request.state,
    };
    match inner.send_event(event, Default::default()).await {
        Ok(sent) if sent.accepted() => Json(serde_json::json!({})).into_response(),
        Ok(sent) => {
            let what = match (sent.status, &sent.error) {
                (Some(status), _) => format!("the receiver answered {status}"),
                (None, Some(error)) => format!("the receiver could not be reached: {error}"),
                (None, None) => "the receiver did not answer".to_owned(),
            };
            let message = format!("The verification event was not accepted: {what}.");
            ApiError::new(StatusCode::PRECONDITION_FAILED, message).into_response()
        }
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
