//! The user-facing Google Calendar routes (CONTRACT section 3): start a consent, take
//! Google's callback, show the connection, disconnect. The callback never waits for the
//! microservice: it saves, tells the supervisor and the sync dispatcher, and redirects.

use std::collections::HashMap;

use axum::{
    Json, Router,
    extract::{RawQuery, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use base64::Engine;
use chrono::Utc;
use rand::RngCore;
use serde_json::{Value, json};

use super::{AppState, Error, auth::AuthUser, rfc3339};
use crate::store::{NewTokens, StoreError, SyncInfo};

/// How long a consent round-trip may take.
const STATE_TTL: chrono::Duration = chrono::Duration::minutes(10);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/integrations/google/connect", post(connect))
        .route("/api/integrations/google/callback", get(callback))
        .route("/api/integrations/google/status", get(status))
        .route("/api/integrations/google", delete(disconnect))
}

#[tracing::instrument(skip_all, fields(userId = %user.user_id))]
async fn connect(State(app): State<AppState>, user: AuthUser) -> Result<Json<Value>, Error> {
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
    app.store
        .create_oauth_state(
            &state,
            &user.user_id,
            &consent.pkce_verifier,
            Utc::now() + STATE_TTL,
        )
        .await?;
    Ok(Json(json!({"auth_url": consent.url.as_str()})))
}

/// A `302 Found` (axum's `Redirect::to` answers 303, which the contract rules out).
fn found(location: &str) -> Response {
    (
        StatusCode::FOUND,
        [(header::LOCATION, location.to_string())],
    )
        .into_response()
}

async fn callback(State(app): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let params: HashMap<String, String> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let base = format!("{}/dashboard/integrations", app.config.frontend_url);
    match complete_consent(&app, &params).await {
        Ok(user_id) => {
            tracing::info!(userId = %user_id, "Google Calendar connected");
            found(&format!("{base}?google=connected"))
        }
        Err(reason) => {
            tracing::warn!(reason, "Google Calendar connection failed");
            found(&format!("{base}?google=error&reason={reason}"))
        }
    }
}

/// Runs the callback's steps; the error is the `reason` code of the redirect.
async fn complete_consent(
    app: &AppState,
    params: &HashMap<String, String>,
) -> Result<String, &'static str> {
    let taken = match params.get("state") {
        Some(state) if !state.is_empty() && state.len() <= 128 => {
            app.store.take_oauth_state(state).await.map_err(|e| {
                tracing::error!(error = %e, "cannot read OAuth state");
                "server_error"
            })?
        }
        _ => None,
    };
    if let Some(error) = params.get("error") {
        return Err(google_error_reason(error));
    }
    let taken = taken
        .filter(|t| t.expires_at > Utc::now())
        .ok_or("invalid_state")?;
    let user_id = taken.user_id;
    let code = params
        .get("code")
        .filter(|c| !c.is_empty())
        .ok_or("missing_code")?;
    let tokens = app
        .google
        .exchange_code(&user_id, code, &taken.pkce_verifier)
        .await
        .map_err(|e| {
            tracing::warn!(userId = %user_id, error = %e, "code exchange failed");
            "exchange_failed"
        })?;
    let email = match app.google.email(&user_id, &tokens.access_token).await {
        Ok(email) => email,
        Err(e) => {
            // The email is informative only; the connection is still good without it.
            tracing::warn!(userId = %user_id, error = %e, "cannot read the account's email");
            None
        }
    };
    let new_tokens = NewTokens {
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        expires_at: tokens.expires_at,
        scope: tokens
            .scope
            .unwrap_or_else(|| app.config.google.scopes.join(" ")),
        email,
    };
    let seed = match app.store.save_connection(&user_id, &new_tokens).await {
        Ok(seed) => seed,
        Err(StoreError::NoRefreshToken) => return Err("no_refresh_token"),
        Err(e) => {
            tracing::error!(userId = %user_id, error = %e, "cannot save tokens");
            return Err("server_error");
        }
    };
    app.sync.changed(&user_id);
    app.supervisor.user_connected(seed);
    Ok(user_id)
}

/// Google's `error` parameter as a reason code: known shape only, never echoed raw.
fn google_error_reason(error: &str) -> &'static str {
    match error {
        "access_denied" => "access_denied",
        "invalid_scope" => "invalid_scope",
        "invalid_request" => "invalid_request",
        "unauthorized_client" => "unauthorized_client",
        "server_error" | "temporarily_unavailable" => "google_unavailable",
        _ => "oauth_error",
    }
}

#[tracing::instrument(skip_all, fields(userId = %user.user_id))]
async fn status(State(app): State<AppState>, user: AuthUser) -> Result<Json<Value>, Error> {
    let row = app.store.user(&user.user_id).await?;
    let Some(row) = row else {
        return Ok(Json(json!({
            "connected": false,
            "google_email": null,
            "calendar_id": null,
            "token_expiry": null,
            "scope": null,
            "needs_reconnect": false,
            "sync": sync_json(&SyncInfo { state: "none".into(), ..Default::default() }),
        })));
    };
    Ok(Json(json!({
        "connected": row.google_calendar_connected,
        "google_email": row.google_email,
        "calendar_id": row.google_calendar_id,
        "token_expiry": row.google_token_expiry.map(rfc3339),
        "scope": row.google_scope,
        "needs_reconnect": row.needs_reconnect,
        "sync": sync_json(&SyncInfo::from(&row)),
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
    app.supervisor.user_disconnected(&user.user_id);
    app.sync.changed(&user.user_id);
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
