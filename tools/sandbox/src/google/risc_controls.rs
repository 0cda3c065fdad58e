//! The sandbox's own handles on its RISC side, from Rust ([`SandboxGoogle`]'s `risc_*`
//! methods) and over HTTP under `/sandbox/risc` for out-of-process drivers: read the state
//! (key id, JWKS fetches, the stream, every SET sent and its answer), rotate the signing key,
//! create a service account (its key file), send an event, send raw bytes.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::Value;

use super::{
    Inner, SandboxGoogle,
    risc::{RiscStream, RiscView},
    risc_keys::{KeyRole, ServiceAccountKeyFile, shared_key},
    risc_set::{RiscEvent, SentSet, SetOptions, SetSigning},
    wire::OAuthError,
};

/// The address of generated service accounts when none is given.
const DEFAULT_SERVICE_ACCOUNT: &str = "risc-receiver@sandbox-project.iam.gserviceaccount.com";

impl Inner {
    fn risc_view(&self) -> RiscView {
        let issuer = self.risc_issuer();
        let risc = self.risc();
        RiscView {
            issuer,
            kid: risc.current.as_ref().map(|k| k.kid().to_owned()),
            rotations: risc.rotations,
            jwks_fetches: risc.jwks_fetches,
            jwks_fetched_at: risc.jwks_fetched_at.clone(),
            service_accounts: risc
                .service_accounts
                .iter()
                .map(|a| a.client_email.clone())
                .collect(),
            stream: risc.stream.clone(),
            sent: risc.sent.clone(),
        }
    }

    /// A key file for a new service account, registered at once. Its RSA key is the
    /// process-wide one for service accounts (key generation is slow in debug builds).
    async fn create_service_account(
        &self,
        client_email: &str,
    ) -> anyhow::Result<ServiceAccountKeyFile> {
        let key = shared_key(KeyRole::ServiceAccount).await?;
        let file = ServiceAccountKeyFile::new(client_email, &key);
        self.register_service_account(&file)?;
        Ok(file)
    }
}

impl SandboxGoogle {
    /// `<base>/.well-known/risc-configuration` (`GOOGLE_RISC_CONFIGURATION_URL`).
    pub fn risc_configuration_url(&self) -> String {
        format!("{}/.well-known/risc-configuration", self.base_url())
    }

    /// `<base>/risc/jwks`, the configuration's `jwks_uri`.
    pub fn risc_jwks_url(&self) -> String {
        format!("{}/risc/jwks", self.base_url())
    }

    /// The RISC API's base (`GOOGLE_RISC_API_URL`): the sandbox's base URL.
    pub fn risc_api_url(&self) -> String {
        self.base_url()
    }

    /// The `issuer` of the configuration and of every SET.
    pub fn risc_issuer(&self) -> String {
        self.inner.risc_issuer()
    }

    /// The current signing key's `kid` (generating the key if it was never needed).
    pub async fn risc_key_id(&self) -> anyhow::Result<String> {
        Ok(self.inner.risc_key().await?.kid().to_owned())
    }

    /// The JWKS as `/risc/jwks` serves it, without counting as a fetch.
    pub async fn risc_jwks(&self) -> anyhow::Result<jsonwebtoken::jwk::JwkSet> {
        let key = self.inner.risc_key().await?;
        Ok(jsonwebtoken::jwk::JwkSet {
            keys: vec![key.jwk().clone()],
        })
    }

    /// Replaces the signing key with a freshly generated one (a new `kid`; the old key leaves
    /// the JWKS); returns the new `kid`.
    pub async fn rotate_risc_key(&self) -> anyhow::Result<String> {
        self.inner.rotate_risc_key().await
    }

    /// The RISC side's state: key id, JWKS fetches, stream, SETs sent and their answers.
    pub fn risc_state(&self) -> RiscView {
        self.inner.risc_view()
    }

    /// How many times `/risc/jwks` was fetched.
    pub fn risc_jwks_fetches(&self) -> u64 {
        self.inner.risc().jwks_fetches
    }

    /// The receiver registered with `stream:update`, if any.
    pub fn risc_stream(&self) -> Option<RiscStream> {
        self.inner.risc().stream.clone()
    }

    /// Every SET sent (the latest 1024), oldest first, with the receiver's answers.
    pub fn risc_sent(&self) -> Vec<SentSet> {
        self.inner.risc().sent.clone()
    }

    /// Creates a service account whose key file (Google's JSON format) the stream API then
    /// accepts; write it with [`ServiceAccountKeyFile::to_json`].
    pub async fn create_risc_service_account(
        &self,
        client_email: &str,
    ) -> anyhow::Result<ServiceAccountKeyFile> {
        self.inner.create_service_account(client_email).await
    }

    /// Makes the stream API accept JWTs signed with the key of this key file.
    pub fn register_risc_service_account(
        &self,
        file: &ServiceAccountKeyFile,
    ) -> anyhow::Result<()> {
        self.inner.register_service_account(file)
    }

    /// Sends `event` as Google would (or forged as `options` say) to the registered receiver
    /// or `options.url`; records and returns the receiver's answer. The `aud` is, unless
    /// given, the configured client id, else the client of the grant the event names, else of
    /// the latest grant. Sends whatever is asked, requested by the stream or not.
    pub async fn send_risc_event(
        &self,
        event: RiscEvent,
        options: SetOptions,
    ) -> anyhow::Result<SentSet> {
        self.inner.send_event(event, options).await
    }

    /// POSTs `body` as is, with `content_type`, to the registered receiver or `url`.
    pub async fn send_raw_risc_body(
        &self,
        body: impl Into<Vec<u8>>,
        content_type: &str,
        url: Option<&str>,
    ) -> anyhow::Result<SentSet> {
        let url = url.map(str::to_owned);
        self.inner.send_raw(body.into(), content_type, url).await
    }

    /// The claims the sandbox would send for `event` with `options` (a fresh `jti` each call).
    pub fn risc_set_claims(&self, event: &RiscEvent, options: &SetOptions) -> Value {
        self.inner.set_claims(event, options)
    }

    /// Signs any claims as a SET, as `signing` says: for tests that build their own.
    pub async fn sign_risc_set(
        &self,
        claims: &Value,
        signing: SetSigning,
    ) -> anyhow::Result<String> {
        self.inner.sign_set(claims, signing).await
    }
}

/// The sandbox's RISC controls.
pub(super) fn routes() -> Router<Arc<Inner>> {
    Router::new()
        .route("/sandbox/risc", get(view))
        .route("/sandbox/risc/rotate", post(rotate))
        .route("/sandbox/risc/service-account", post(service_account))
        .route("/sandbox/risc/send", post(send))
        .route("/sandbox/risc/raw", post(raw))
}

async fn view(State(inner): State<Arc<Inner>>) -> Json<RiscView> {
    Json(inner.risc_view())
}

async fn rotate(State(inner): State<Arc<Inner>>) -> Response {
    let previous = inner.risc().current.as_ref().map(|k| k.kid().to_owned());
    match inner.rotate_risc_key().await {
        Ok(kid) => Json(serde_json::json!({"kid": kid, "previous_kid": previous})).into_response(),
        Err(e) => failure(e),
    }
}

/// `POST /sandbox/risc/service-account` `{"client_email": ...}` (optional): answers the new
/// key file. It holds a private key: this control is for loopback drivers only.
async fn service_account(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Request {
        client_email: Option<String>,
    }
    let request = match parse::<Request>(&body) {
        Ok(request) => request,
        Err(e) => return e.into_response(),
    };
    let email = request
        .client_email
        .unwrap_or_else(|| DEFAULT_SERVICE_ACCOUNT.to_owned());
    match inner.create_service_account(&email).await {
        Ok(file) => Json(file).into_response(),
        Err(e) => failure(e),
    }
}

/// `POST /sandbox/risc/send`: an event (`{"event": "account_disabled", "sub": "1", ...}`)
/// with any of [`SetOptions`]' fields beside it; answers the [`SentSet`].
async fn send(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    #[derive(Deserialize)]
    struct Request {
        #[serde(flatten)]
        event: RiscEvent,
        #[serde(flatten)]
        options: SetOptions,
    }
    let request = match parse::<Request>(&body) {
        Ok(request) => request,
        Err(e) => return e.into_response(),
    };
    match inner.send_event(request.event, request.options).await {
        Ok(sent) => Json(sent).into_response(),
        Err(e) => failure(e),
    }
}

/// `POST /sandbox/risc/raw` `{"body": "...", "content_type": ..., "url": ...}`: sends the
/// body as is (content type `application/secevent+jwt` unless given).
async fn raw(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Request {
        body: String,
        content_type: Option<String>,
        url: Option<String>,
    }
    let request = match parse::<Request>(&body) {
        Ok(request) => request,
        Err(e) => return e.into_response(),
    };
    let content_type = request
        .content_type
        .unwrap_or_else(|| super::risc_set::SET_CONTENT_TYPE.to_owned());
    match inner
        .send_raw(request.body.into_bytes(), &content_type, request.url)
        .await
    {
        Ok(sent) => Json(sent).into_response(),
        Err(e) => failure(e),
    }
}

/// Parses a control's JSON body; an error says where, not what (a value may be a token).
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, OAuthError> {
    let body = if body.is_empty() { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| {
        let at = format!("Invalid body at line {}, column {}.", e.line(), e.column());
        OAuthError::invalid_request(at)
    })
}

/// A control that could not be carried out (no receiver, no retired key, ...).
fn failure(e: anyhow::Error) -> Response {
    OAuthError::new(StatusCode::CONFLICT, "failed", e.to_string()).into_response()
}
