//! The user-facing Google Calendar routes (docs/api.md: User routes): start a consent, take
//! Google's callback, show the connection, disconnect. The callback never waits for the
//! microservice: it saves, tells the supervisor and the sync dispatcher, and redirects.
//! Only these routes answer the frontend's cross-origin calls, with credentials, because the
//! browser-binding cookie travels with them.
//!
//! The callback is the one unauthenticated route here, so it is limited per client address
//! (`rate_limit::client_key`), and an invented `state` costs one read and no write.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use axum::{
    Extension, Json, Router,
    extract::{ConnectInfo, RawQuery, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use base64::Engine;
use chrono::Utc;
use rand::RngCore;
use secrecy::SecretString;
use serde_json::{Value, json};
use tower_http::cors::CorsLayer;

use super::{
    AppState, Error,
    auth::AuthUser,
    browser_binding::CookieScope,
    rate_limit::{RateLimiter, client_key},
    rfc3339,
};
use crate::{
    config::GoogleConfig,
    google::TokenSet,
    ids::UserId,
    node::Change,
    store::{NewTokens, StoreError, StoredTokens, SyncInfo, SyncState},
};

/// How long a consent round-trip may take.
const STATE_TTL: chrono::Duration = chrono::Duration::minutes(10);

/// The routes that require a user's bearer token: the caller is verified before any work
/// that reaches Google or the microservice, so their trace context may be adopted
/// (`super::adopts_caller_trace`). The callback is not among them.
pub(super) const AUTHENTICATED_ROUTES: [&str; 3] = [CONNECT, STATUS, DISCONNECT];
const CONNECT: &str = "/api/integrations/google/connect";
const CALLBACK: &str = "/api/integrations/google/callback";
const STATUS: &str = "/api/integrations/google/status";
const DISCONNECT: &str = "/api/integrations/google";

/// The callback's per-client limit, one per router.
#[derive(Clone)]
struct CallbackLimiter(Arc<RateLimiter>);

pub fn router(frontend_url: &str) -> Router<AppState> {
    let cors = CorsLayer::new()
        .allow_origin(
            HeaderValue::from_str(frontend_url).unwrap_or(HeaderValue::from_static("null")),
        )
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]);
    let limiter = CallbackLimiter(Arc::new(RateLimiter::for_callback()));
    Router::new()
        .route(CONNECT, post(connect))
        .route(CALLBACK, get(callback).layer(Extension(limiter)))
        .route(STATUS, get(status))
        .route(DISCONNECT, delete(disconnect))
        .layer(cors)
}

fn cookie_scope(app: &AppState) -> CookieScope {
    CookieScope::for_callback(&app.config.google.redirect_uri)
}

#[tracing::instrument(skip_all, fields(userId = %user.user_id))]
async fn connect(State(app): State<AppState>, user: AuthUser) -> Result<Response, Error> {
    if let Err(wait) = app.connect_limiter.check(&user.user_id) {
        tracing::warn!(userId = %user.user_id, "connect rate limit reached");
        return Err(Error::TooManyRequests {
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        });
    }
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    let state = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let consent = app.google.consent(&state);
    let binding = app
        .config
        .browser_binding
        .then(|| cookie_scope(&app).issue(&state, STATE_TTL));
    app.store
        .create_oauth_state(
            &state,
            &user.user_id,
            &consent.pkce_verifier,
            binding.as_ref().map(|b| b.hash.clone()),
            Utc::now() + STATE_TTL,
        )
        .await?;
    let mut response = Json(json!({"auth_url": consent.url.as_str()})).into_response();
    if let Some(binding) = binding {
        response
            .headers_mut()
            .append(header::SET_COOKIE, binding.set_cookie);
    }
    Ok(response)
}

/// A `302 Found` (axum's `Redirect::to` answers 303, which the contract rules out).
fn found(location: &str) -> Response {
    (
        StatusCode::FOUND,
        [(header::LOCATION, location.to_string())],
    )
        .into_response()
}

async fn callback(
    State(app): State<AppState>,
    Extension(CallbackLimiter(limiter)): Extension<CallbackLimiter>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let base = app.config.frontend_url.join("/dashboard/integrations");
    let client = client_key(peer.map(|Extension(ConnectInfo(addr))| addr.ip()), &headers);
    if let Some(client) = client
        && limiter.check(&client).is_err()
    {
        // A redirect like every other callback outcome, not a 429: the one who lands here is
        // a browser sent back by Google, and the frontend can say "try again in a minute"
        // where a bare JSON error would strand the user. Nothing is read or spent (the state
        // and its cookie stay, so a reload a little later can still finish), and debug only:
        // a flood must not turn into a flood of log lines.
        tracing::debug!("callback rate limit reached");
        return found(&format!("{base}?google=error&reason=rate_limited"));
    }
    let params: HashMap<String, String> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let state = params
        .get("state")
        .map(String::as_str)
        .filter(|s| valid_state_shape(s));
    let mut response = match complete_consent(&app, &headers, state, &params).await {
        Ok(user_id) => {
            tracing::info!(userId = %user_id, "Google Calendar connected");
            found(&format!("{base}?google=connected"))
        }
        Err(failure) => {
            let reason = failure.reason();
            tracing::warn!(reason, "Google Calendar connection failed");
            found(&format!("{base}?google=error&reason={reason}"))
        }
    };
    // The round-trip is over either way (a state is single-use): drop its cookie.
    if app.config.browser_binding
        && let Some(state) = state
    {
        response
            .headers_mut()
            .append(header::SET_COOKIE, cookie_scope(&app).expire(state));
    }
    response
}

/// States this service makes are 43 base64url characters; anything far off is not one.
fn valid_state_shape(state: &str) -> bool {
    !state.is_empty()
        && state.len() <= 128
        && state
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Why a consent did not connect; its code is the `reason` of the redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConsentFailure {
    /// Google's `error` parameter: the user said no.
    AccessDenied,
    InvalidScope,
    InvalidRequest,
    UnauthorizedClient,
    /// Google's `server_error` or `temporarily_unavailable`.
    GoogleUnavailable,
    /// Any other `error` from Google, never echoed raw.
    OauthError,
    /// No such state, spent, or expired.
    InvalidState,
    /// The state's cookie is not this browser's.
    BrowserMismatch,
    MissingCode,
    ExchangeFailed,
    /// A configured required scope was unticked.
    MissingScope,
    /// Google gave no refresh token and none is stored.
    NoRefreshToken,
    ServerError,
}

impl ConsentFailure {
    fn reason(self) -> &'static str {
        match self {
            Self::AccessDenied => "access_denied",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidRequest => "invalid_request",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::GoogleUnavailable => "google_unavailable",
            Self::OauthError => "oauth_error",
            Self::InvalidState => "invalid_state",
            Self::BrowserMismatch => "browser_mismatch",
            Self::MissingCode => "missing_code",
            Self::ExchangeFailed => "exchange_failed",
            Self::MissingScope => "missing_scope",
            Self::NoRefreshToken => "no_refresh_token",
            Self::ServerError => "server_error",
        }
    }

    /// Google's `error` parameter, by its known shape only.
    fn from_google(error: &str) -> Self {
        match error {
            "access_denied" => Self::AccessDenied,
            "invalid_scope" => Self::InvalidScope,
            "invalid_request" => Self::InvalidRequest,
            "unauthorized_client" => Self::UnauthorizedClient,
            "server_error" | "temporarily_unavailable" => Self::GoogleUnavailable,
            _ => Self::OauthError,
        }
    }
}

/// Runs the callback's steps for `state` (already checked for shape).
async fn complete_consent(
    app: &AppState,
    headers: &HeaderMap,
    state: Option<&str>,
    params: &HashMap<String, String>,
) -> Result<UserId, ConsentFailure> {
    let taken = match state {
        Some(state) => app.store.take_oauth_state(state).await.map_err(|e| {
            tracing::error!(error = %e, "cannot read OAuth state");
            ConsentFailure::ServerError
        })?,
        None => None,
    };
    if let Some(error) = params.get("error") {
        return Err(ConsentFailure::from_google(error));
    }
    let (Some(state), Some(taken)) = (state, taken.filter(|t| t.expires_at > Utc::now())) else {
        return Err(ConsentFailure::InvalidState);
    };
    let user_id = taken.user_id;
    if app.config.browser_binding
        && !cookie_scope(app).presented_matches(headers, state, taken.browser_hash.as_deref())
    {
        // Someone else's consent link (or a browser that lost the cookie): the state is spent
        // and nothing is stored, so the link cannot attach this browser's account to the user.
        tracing::warn!(userId = %user_id, "OAuth callback from a browser that did not start the flow");
        return Err(ConsentFailure::BrowserMismatch);
    }
    let code = params
        .get("code")
        .filter(|c| !c.is_empty())
        .ok_or(ConsentFailure::MissingCode)?;
    let tokens = app
        .google
        .exchange_code(&user_id, code, &taken.pkce_verifier)
        .await
        .map_err(|e| {
            tracing::warn!(userId = %user_id, error = %e, "code exchange failed");
            ConsentFailure::ExchangeFailed
        })?;
    // A consent in which the user unticked a configured scope is refused: such a token cannot
    // do the calendar work it is for, and pushing it would only move the failure to the agent.
    let missing = missing_scopes(&app.config.google, &tokens);
    if !missing.is_empty() {
        drop_partial_grant(app, &user_id, &tokens, &missing).await;
        return Err(ConsentFailure::MissingScope);
    }
    let account = match app.google.account(&user_id, &tokens.access_token).await {
        Ok(account) => account,
        Err(e) => {
            // The email is informative and the `sub` only matches security events: the
            // connection is still good without them (the ones known are kept).
            tracing::warn!(userId = %user_id, error = %e, "cannot read the account's email");
            Default::default()
        }
    };
    let new_tokens = NewTokens {
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        expires_at: tokens.expires_at,
        scope: tokens
            .scope
            .unwrap_or_else(|| app.config.google.scopes.join(" ")),
        email: account.email,
        authorization_expires_at: tokens.authorization_expires_at,
        google_sub: account.sub,
    };
    let start = match app.store.save_connection(&user_id, &new_tokens).await {
        Ok(start) => start,
        Err(StoreError::NoRefreshToken) => return Err(ConsentFailure::NoRefreshToken),
        Err(e) => {
            tracing::error!(userId = %user_id, error = %e, "cannot save tokens");
            return Err(ConsentFailure::ServerError);
        }
    };
    let known = new_tokens.refresh_token.map(|refresh_token| StoredTokens {
        access_token: new_tokens.access_token,
        refresh_token,
        token_expiry: new_tokens.expires_at,
        scope: new_tokens.scope,
    });
    app.node
        .user_changed(&user_id, Change::Connected(start, known))
        .await;
    Ok(user_id)
}

/// The configured required scopes that `tokens` were not granted.
fn missing_scopes<'a>(google: &'a GoogleConfig, tokens: &TokenSet) -> Vec<&'a str> {
    let requested = google.scopes.join(" ");
    let granted = tokens.scope.as_deref().unwrap_or(&requested);
    google
        .required_scopes
        .iter()
        .map(String::as_str)
        .filter(|needed| !granted.split_whitespace().any(|g| g == *needed))
        .collect()
}

/// Logs a refused partial consent and revokes its grant, only when the user has no
/// connection: at Google a revocation ends every grant of this app for the account, an
/// existing good one included.
async fn drop_partial_grant(app: &AppState, user_id: &str, tokens: &TokenSet, missing: &[&str]) {
    let connected = match app.store.connection_status(user_id).await {
        Ok(status) => status.is_some_and(|s| s.connected),
        // Unknown: keep whatever may exist rather than revoke a possibly good grant.
        Err(e) => {
            tracing::error!(userId = %user_id, error = %e, "cannot read the user's connection");
            true
        }
    };
    tracing::warn!(
        userId = %user_id,
        missing = %missing.join(" "),
        keptExisting = connected,
        "consent lacks required scopes; nothing stored"
    );
    if !connected {
        let token: &SecretString = tokens
            .refresh_token
            .as_ref()
            .unwrap_or(&tokens.access_token);
        if let Err(e) = app.google.revoke(user_id, token).await {
            tracing::warn!(userId = %user_id, error = %e, "revocation at Google failed");
        }
    }
}

#[tracing::instrument(skip_all, fields(userId = %user.user_id))]
async fn status(State(app): State<AppState>, user: AuthUser) -> Result<Json<Value>, Error> {
    let Some(status) = app.store.connection_status(&user.user_id).await? else {
        return Ok(Json(json!({
            "connected": false,
            "google_email": null,
            "calendar_id": null,
            "token_expiry": null,
            "scope": null,
            "needs_reconnect": false,
            "reconnect_reason": null,
            "authorization_expires_at": null,
            "sync": sync_json(&SyncInfo { state: SyncState::None, ..Default::default() }),
        })));
    };
    Ok(Json(json!({
        "connected": status.connected,
        "google_email": status.google_email,
        "calendar_id": status.calendar_id,
        "token_expiry": status.token_expiry.map(rfc3339),
        "scope": status.scope,
        "needs_reconnect": status.needs_reconnect,
        "reconnect_reason": status.reconnect_reason,
        "authorization_expires_at": status.authorization_expires_at.map(rfc3339),
        "sync": sync_json(&status.sync),
    })))
}

fn sync_json(sync: &SyncInfo) -> Value {
    json!({
        "state": sync.state,
        "synced_at": sync.synced_at.map(rfc3339),
        "last_error": sync.last_error,
    })
}

#[tracing::instrument(skip_all, fields(userId = %user.user_id))]
async fn disconnect(State(app): State<AppState>, user: AuthUser) -> Result<Json<Value>, Error> {
    let Some(refresh_token) = app.store.disconnect(&user.user_id).await? else {
        return Err(Error::NotFound(
            "not_connected",
            "Google Calendar is not connected".into(),
        ));
    };
    app.node
        .user_changed(&user.user_id, Change::Disconnected)
        .await;
    // Best effort: the tokens are already gone here; a grant left alive at Google is what
    // revocation prevents, so failures are logged loudly.
    if let Some(token) = refresh_token
        && let Err(e) = app.google.revoke(&user.user_id, &token).await
    {
        tracing::warn!(userId = %user.user_id, error = %e, "revocation at Google failed");
    }
    tracing::info!(userId = %user.user_id, "Google Calendar disconnected");
    Ok(Json(json!({
        "success": true,
        "message": "Google Calendar disconnected successfully"
    })))
}
