//! The provider's fault controls: how refreshes are answered, latency, error rate, rotation,
//! token lifetime, refused or partial consents. Set from Rust through [`super::SandboxGoogle`]
//! or over HTTP with a partial update to `POST /sandbox/control`, which answers them all.

use std::{sync::Arc, time::Duration};

use axum::{
    Json,
    body::Bytes,
    extract::State,
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};

use super::{EXPIRED_OR_REVOKED, Inner, wire::OAuthError};

/// How `/token` answers refresh-token grants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefreshMode {
    /// Refreshes work normally.
    #[default]
    Ok,
    /// Every refresh gets a 500 `{"error":"internal_failure"}`.
    Error500,
    /// Every refresh is held open (at most 120 s, or until the mode changes) and then gets a
    /// 500, without consuming or rotating anything.
    Hang,
    /// Every refresh gets `invalid_grant`, as if the user had revoked access.
    InvalidGrant,
    /// Every refresh gets a 401 `invalid_client`, as if our client secret were wrong: not the
    /// user's doing, so tokenwarden must never ask them to reconnect for it.
    InvalidClient,
    /// Every refresh gets a 401 `deleted_client`, as for an OAuth client Google deleted.
    DeletedClient,
    /// Every refresh gets a 400 `admin_policy_enforced`, as when a Workspace admin blocks us.
    AdminPolicyEnforced,
    /// Every refresh gets a 429.
    RateLimited,
}

impl RefreshMode {
    /// The answer this mode gives every refresh instead of the real one, if any.
    pub(super) fn injected_error(self) -> Option<OAuthError> {
        use axum::http::StatusCode as S;
        match self {
            Self::Ok => None,
            Self::Error500 | Self::Hang => Some(OAuthError::internal_failure()),
            Self::InvalidGrant => Some(OAuthError::invalid_grant(EXPIRED_OR_REVOKED)),
            Self::InvalidClient => Some(OAuthError::invalid_client()),
            Self::DeletedClient => Some(OAuthError::new(
                S::UNAUTHORIZED,
                "deleted_client",
                "The OAuth client was deleted.",
            )),
            Self::AdminPolicyEnforced => Some(OAuthError::new(
                S::BAD_REQUEST,
                "admin_policy_enforced",
                "Access to this app is blocked by the administrator's policy.",
            )),
            Self::RateLimited => Some(OAuthError::new(
                S::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                "Rate limit exceeded.",
            )),
        }
    }
}

/// The provider's fault controls, as `POST /sandbox/control` accepts and answers them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SandboxControls {
    /// How refresh-token grants are answered.
    pub refresh_mode: RefreshMode,
    /// Delay added to every `/token` answer, in milliseconds.
    pub latency_ms: u64,
    /// Probability of a 500 on a refresh.
    pub error_rate: f64,
    /// Whether refreshes rotate the refresh token.
    pub rotate_refresh_tokens: bool,
    /// How long a superseded refresh token keeps working, in seconds.
    pub rotation_grace_secs: u64,
    /// Lifetime of newly issued access tokens, in seconds.
    pub token_lifetime_secs: u64,
    /// Whether every authorization is refused (`error=access_denied`).
    pub deny: bool,
    /// Whether code exchanges answer without a refresh token.
    pub omit_refresh_token: bool,
    /// Scopes every consent leaves out, as a user unticking them on Google's consent screen
    /// would (one consent: the `untick` parameter of `/o/oauth2/v2/auth`).
    #[serde(default)]
    pub untick_scopes: Vec<String>,
    /// How long each new grant lasts, in seconds, as a user choosing time-based access would;
    /// 0 is ongoing access.
    #[serde(default)]
    pub grant_lifetime_secs: u64,
}

/// Controls as used internally, with durations rather than whole seconds.
#[derive(Clone)]
pub(super) struct Controls {
    pub(super) refresh_mode: RefreshMode,
    pub(super) latency: Duration,
    pub(super) error_rate: f64,
    pub(super) rotate: bool,
    pub(super) grace: Duration,
    pub(super) lifetime: Duration,
    pub(super) deny: bool,
    pub(super) omit_refresh_token: bool,
    pub(super) untick_scopes: Vec<String>,
    pub(super) grant_lifetime: Duration,
}

impl Controls {
    pub(super) fn view(&self) -> SandboxControls {
        SandboxControls {
            refresh_mode: self.refresh_mode,
            latency_ms: u64::try_from(self.latency.as_millis()).unwrap_or(u64::MAX),
            error_rate: self.error_rate,
            rotate_refresh_tokens: self.rotate,
            rotation_grace_secs: self.grace.as_secs(),
            token_lifetime_secs: self.lifetime.as_secs(),
            deny: self.deny,
            omit_refresh_token: self.omit_refresh_token,
            untick_scopes: self.untick_scopes.clone(),
            grant_lifetime_secs: self.grant_lifetime.as_secs(),
        }
    }
}

/// A partial update of the controls, as `POST /sandbox/control` takes it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlUpdate {
    refresh_mode: Option<RefreshMode>,
    latency_ms: Option<u64>,
    error_rate: Option<f64>,
    rotate_refresh_tokens: Option<bool>,
    rotation_grace_secs: Option<u64>,
    token_lifetime_secs: Option<u64>,
    deny: Option<bool>,
    omit_refresh_token: Option<bool>,
    untick_scopes: Option<Vec<String>>,
    grant_lifetime_secs: Option<u64>,
}

impl ControlUpdate {
    fn apply(self, c: &mut Controls) {
        if let Some(v) = self.refresh_mode {
            c.refresh_mode = v;
        }
        if let Some(v) = self.latency_ms {
            c.latency = Duration::from_millis(v);
        }
        if let Some(v) = self.error_rate {
            c.error_rate = v;
        }
        if let Some(v) = self.rotate_refresh_tokens {
            c.rotate = v;
        }
        if let Some(v) = self.rotation_grace_secs {
            c.grace = Duration::from_secs(v);
        }
        if let Some(v) = self.token_lifetime_secs {
            c.lifetime = Duration::from_secs(v);
        }
        if let Some(v) = self.deny {
            c.deny = v;
        }
        if let Some(v) = self.omit_refresh_token {
            c.omit_refresh_token = v;
        }
        if let Some(v) = self.untick_scopes {
            c.untick_scopes = v;
        }
        if let Some(v) = self.grant_lifetime_secs {
            c.grant_lifetime = Duration::from_secs(v);
        }
    }
}

pub(super) async fn control(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    let update = match serde_json::from_slice::<ControlUpdate>(&body) {
        Ok(update) => update,
        Err(e) => return OAuthError::invalid_request(e.to_string()).into_response(),
    };
    if update.error_rate.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
        return OAuthError::invalid_request("error_rate must be between 0.0 and 1.0")
            .into_response();
    }
    inner.update(|c| update.apply(c));
    Json(inner.state().controls.view()).into_response()
}
