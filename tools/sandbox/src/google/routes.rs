//! The provider's HTTP face: the router, one handler per endpoint (authorization, token,
//! revocation, userinfo, stats) and the request-level checks around `ProviderState`'s
//! bookkeeping: client authentication, the authorization request's validation, and the fault
//! modes applied to a refresh before it reaches a grant.

use std::{collections::HashMap, sync::Arc, sync::atomic::Ordering};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::Utc;

use crate::{MAX_HANG, token_prefix, wait_while};

use super::{
    Inner, RefreshMode, SandboxStats, control,
    wire::{OAuthError, TokenResponse, basic_credentials, bearer_token, no_store, parse_form},
};

impl Inner {
    /// Checks the client credentials of a `/token` request and returns the client id it
    /// presented, if any. Without a configured client id, anything is accepted.
    fn authenticate_client(
        &self,
        headers: &HeaderMap,
        form: &HashMap<String, String>,
    ) -> Result<Option<String>, OAuthError> {
        let presented = basic_credentials(headers).or_else(|| {
            form.get("client_id").map(|id| {
                let secret = form.get("client_secret").cloned().unwrap_or_default();
                (id.clone(), secret)
            })
        });
        let Some(expected_id) = &self.client_id else {
            return Ok(presented.map(|(id, _)| id));
        };
        match presented {
            Some((id, secret))
                if id == *expected_id
                    && self.client_secret.as_ref().is_none_or(|s| *s == secret) =>
            {
                Ok(Some(id))
            }
            _ => Err(OAuthError::invalid_client()),
        }
    }

    /// Validates an authorization request and returns where to redirect the browser.
    fn authorize(&self, params: &HashMap<String, String>) -> Result<String, OAuthError> {
        let param = |name: &str| {
            params
                .get(name)
                .map(String::as_str)
                .filter(|v| !v.is_empty())
        };
        let mut redirect = param("redirect_uri")
            .and_then(|uri| url::Url::parse(uri).ok())
            .ok_or_else(|| OAuthError::invalid_request("Missing or invalid redirect_uri."))?;
        let client_id = param("client_id")
            .ok_or_else(|| OAuthError::invalid_request("Missing required parameter: client_id"))?;
        if self.client_id.as_deref().is_some_and(|c| c != client_id) {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_client",
                "The OAuth client was not found.",
            ));
        }
        if param("response_type") != Some("code") {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_response_type",
                "response_type must be code.",
            ));
        }
        let scope = param("scope")
            .ok_or_else(|| OAuthError::invalid_request("Missing required parameter: scope"))?;
        let challenge = param("code_challenge")
            .filter(|_| param("code_challenge_method") == Some("S256"))
            .ok_or_else(|| {
                OAuthError::invalid_request(
                    "PKCE is required: code_challenge with code_challenge_method=S256.",
                )
            })?;

        let mut state = self.state();
        let mut query = redirect.query_pairs_mut();
        if param("deny") == Some("1") || state.controls.deny {
            query.append_pair("error", "access_denied");
        } else {
            let email = param("login_hint").map(str::to_owned);
            let unticked: Vec<&str> = param("untick")
                .unwrap_or_default()
                .split_whitespace()
                .chain(state.controls.untick_scopes.iter().map(String::as_str))
                .collect();
            let consented: Vec<&str> = scope
                .split_whitespace()
                .filter(|s| !unticked.contains(s))
                .collect();
            let consented = consented.join(" ");
            let code = state.issue_code(
                client_id,
                params["redirect_uri"].as_str(),
                &consented,
                challenge,
                email,
            );
            query.append_pair("code", &code);
        }
        if let Some(s) = param("state") {
            query.append_pair("state", s);
        }
        drop(query);
        Ok(redirect.into())
    }

    /// Answers a refresh-token grant, applying the fault controls first.
    async fn refresh(
        &self,
        form: &HashMap<String, String>,
        client: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        let controls = self.controls();
        let injected = controls.refresh_mode.injected_error().or_else(|| {
            (controls.error_rate > 0.0 && rand::random::<f64>() < controls.error_rate)
                .then(OAuthError::internal_failure)
        });
        if let Some(error) = injected {
            self.state().stats.refresh_failures_injected += 1;
            if controls.refresh_mode == RefreshMode::Hang {
                self.hang().await;
            }
            return Err(error);
        }
        let token = form.get("refresh_token").ok_or_else(|| {
            OAuthError::invalid_request("Missing required parameter: refresh_token")
        })?;
        self.state().refresh(token, client, Utc::now())
    }

    /// Holds a request while the refresh mode stays `Hang`, at most [`MAX_HANG`].
    async fn hang(&self) {
        let deadline = tokio::time::Instant::now() + MAX_HANG;
        wait_while(&self.changes, deadline, || {
            !self.stopping.load(Ordering::SeqCst)
                && self.state().controls.refresh_mode == RefreshMode::Hang
        })
        .await;
    }
}

/// Every route of the provider; the RISC transmitter's only when `risc` is on.
pub(super) fn router(inner: Arc<Inner>, risc: bool) -> Router {
    let router = Router::new()
        .route("/o/oauth2/v2/auth", get(authorize))
        .route("/token", post(token))
        .route("/revoke", post(revoke))
        .route("/v1/userinfo", get(userinfo))
        .route("/sandbox/control", post(control))
        .route("/sandbox/stats", get(stats))
        .route("/sandbox/grant", post(super::grant_end::grant_control));
    let router = if risc {
        router
            .merge(super::risc::routes())
            .merge(super::risc_controls::routes())
    } else {
        router
    };
    router.with_state(inner)
}

async fn authorize(State(inner): State<Arc<Inner>>, RawQuery(query): RawQuery) -> Response {
    let params = parse_form(query.unwrap_or_default().as_bytes());
    match inner.authorize(&params) {
        Ok(location) => (StatusCode::FOUND, [(header::LOCATION, location)]).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn token(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let form = parse_form(&body);
    // Noted before anything can fail or wait: what counts is that the call was made.
    if form.get("grant_type").map(String::as_str) == Some("refresh_token") {
        let token = form.get("refresh_token").map(String::as_str);
        inner.state().note_refresh_request(token, Utc::now());
    }
    let latency = inner.controls().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let answer = match inner.authenticate_client(&headers, &form) {
        Err(error) => Err(error),
        Ok(client) => match form.get("grant_type").map(String::as_str) {
            Some("authorization_code") => {
                inner
                    .state()
                    .exchange_code(&form, client.as_deref(), Utc::now())
            }
            Some("refresh_token") => inner.refresh(&form, client.as_deref()).await,
            Some(_) => Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "Invalid grant_type.",
            )),
            None => Err(OAuthError::invalid_request(
                "Missing required parameter: grant_type",
            )),
        },
    };
    match answer {
        Ok(tokens) => {
            tracing::debug!(
                access = token_prefix(&tokens.access_token),
                "sandbox issued tokens"
            );
            (no_store(), Json(tokens)).into_response()
        }
        Err(error) => error.into_response(),
    }
}

/// Revokes the grant of the token named in the form body (or, as Google allows, the query).
async fn revoke(
    State(inner): State<Arc<Inner>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let mut form = parse_form(query.unwrap_or_default().as_bytes());
    form.extend(parse_form(&body));
    let Some(token) = form.get("token").filter(|t| !t.is_empty()) else {
        return OAuthError::bare(StatusCode::BAD_REQUEST, "invalid_request").into_response();
    };
    let mut state = inner.state();
    state.revoke_requests.push(token.clone());
    if !state.revoke_grant_of(token) {
        return OAuthError::bare(StatusCode::BAD_REQUEST, "invalid_token").into_response();
    }
    state.stats.revocations += 1;
    tracing::debug!(token = token_prefix(token), "sandbox revoked a grant");
    Json(serde_json::json!({})).into_response()
}

async fn userinfo(State(inner): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    let info = bearer_token(&headers).and_then(|t| inner.state().userinfo(t, Utc::now()));
    match info {
        Some(info) => Json(info).into_response(),
        None => OAuthError::bare(StatusCode::UNAUTHORIZED, "invalid_token").into_response(),
    }
}

async fn stats(State(inner): State<Arc<Inner>>) -> Json<SandboxStats> {
    Json(inner.state().stats.clone())
}
