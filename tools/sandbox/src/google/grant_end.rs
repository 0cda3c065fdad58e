//! Time-limited grants, as Google's "time-based access" makes them (docs/contract.md section 9): a
//! user may consent for a limited time, after which the grant is over.
//!
//! While a grant has an end, the code exchange's answer and every refresh answer carry
//! `refresh_token_expires_in`, the whole seconds left (rounded down, so a client that trusts it
//! never plans a call past the end); from the end on, a refresh gets Google's `400
//! invalid_grant` "Token has been expired or revoked.". A grant gets an end from the
//! `grant_lifetime` control when it is made, or at any time from `POST /sandbox/grant`, which
//! also moves or clears it. Refresh requests naming a time-limited grant are timed on arrival,
//! before any fault or latency, so a test can prove no call reached "Google" at or after the
//! end (`refreshes_after_grant_end` counts them for every grant).

use std::{fmt, sync::Arc, time::Duration};

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use super::{Inner, SandboxGoogle, after, state::ProviderState, wire::OAuthError};

/// Arrival times kept per grant (the latest ones): enough for any test, bounded for a long run.
const ARRIVALS_KEPT: usize = 64;

/// Names one grant of the sandbox.
#[derive(Clone, PartialEq, Eq)]
pub enum GrantSelector {
    /// Any refresh token the grant handed out, current or superseded.
    RefreshToken(String),
    /// The account's address: its newest grant (a reconnect makes a new one).
    Email(String),
    /// The grant's `sub`, as `/v1/userinfo` and the id token give it.
    Sub(String),
}

impl fmt::Debug for GrantSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RefreshToken(_) => f.write_str("RefreshToken([redacted])"),
            Self::Email(email) => f.debug_tuple("Email").field(email).finish(),
            Self::Sub(sub) => f.debug_tuple("Sub").field(sub).finish(),
        }
    }
}

/// One grant as `POST /sandbox/grant` answers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantView {
    pub sub: String,
    pub email: String,
    pub revoked: bool,
    /// When the grant ends; `None` for ongoing access.
    pub expires_at: Option<DateTime<Utc>>,
    /// What a token answer would carry now as `refresh_token_expires_in` (0 once ended).
    pub expires_in_secs: Option<u64>,
    /// When the latest refresh requests naming this grant arrived (kept while it has an end).
    pub refresh_requests: Vec<DateTime<Utc>>,
}

impl ProviderState {
    /// Gives a grant just made the end the `grant_lifetime` control asks for, if any.
    pub(super) fn start_grant_clock(&mut self, grant: usize, now: DateTime<Utc>) {
        let lifetime = self.controls.grant_lifetime;
        if !lifetime.is_zero() {
            self.grant_ends.insert(grant, after(now, lifetime));
        }
    }

    /// Whether the grant had an end and `now` is at or past it.
    pub(super) fn grant_ended(&self, grant: usize, now: DateTime<Utc>) -> bool {
        self.grant_ends.get(&grant).is_some_and(|end| now >= *end)
    }

    /// The `refresh_token_expires_in` of an answer given at `now`: whole seconds left, rounded
    /// down; `None` for ongoing access.
    pub(super) fn seconds_left(&self, grant: usize, now: DateTime<Utc>) -> Option<u64> {
        let end = self.grant_ends.get(&grant)?;
        Some(u64::try_from((*end - now).num_seconds()).unwrap_or(0))
    }

    /// Notes a refresh request that arrived at `now` naming `token` (known or not).
    pub(super) fn note_refresh_request(&mut self, token: Option<&str>, now: DateTime<Utc>) {
        let Some(grant) = token
            .and_then(|t| self.refresh_tokens.get(t))
            .map(|r| r.grant)
        else {
            return;
        };
        let Some(end) = self.grant_ends.get(&grant) else {
            return;
        };
        if now >= *end {
            self.stats.refreshes_after_grant_end += 1;
        }
        let arrivals = self.refresh_arrivals.entry(grant).or_default();
        if arrivals.len() == ARRIVALS_KEPT {
            arrivals.remove(0);
        }
        arrivals.push(now);
    }

    fn find_grant(&self, selector: &GrantSelector) -> Option<usize> {
        match selector {
            GrantSelector::RefreshToken(t) => self.refresh_tokens.get(t.as_str()).map(|r| r.grant),
            GrantSelector::Email(email) => self.grants.iter().rposition(|g| *g.email == **email),
            GrantSelector::Sub(sub) => sub
                .parse::<usize>()
                .ok()
                .and_then(|n| n.checked_sub(1))
                .filter(|i| *i < self.grants.len()),
        }
    }

    /// Sets the grant's end to `expires_in` from `now`, or makes it ongoing.
    fn set_grant_end(&mut self, grant: usize, expires_in: Option<Duration>, now: DateTime<Utc>) {
        match expires_in {
            Some(d) => {
                self.grant_ends.insert(grant, after(now, d));
            }
            None => {
                self.grant_ends.remove(&grant);
            }
        }
    }

    fn grant_view(&self, grant: usize, now: DateTime<Utc>) -> GrantView {
        let g = &self.grants[grant];
        GrantView {
            sub: super::state::grant_sub(grant),
            email: g.email.to_string(),
            revoked: g.revoked,
            expires_at: self.grant_ends.get(&grant).copied(),
            expires_in_secs: self.seconds_left(grant, now),
            refresh_requests: self
                .refresh_arrivals
                .get(&grant)
                .cloned()
                .unwrap_or_default(),
        }
    }
}

impl SandboxGoogle {
    /// Makes every grant made from now on end `d` after its consent; zero is ongoing access.
    pub fn set_grant_lifetime(&self, d: Duration) {
        self.inner.update(|c| c.grant_lifetime = d);
    }

    /// The grant `selector` names, if any.
    pub fn grant(&self, selector: &GrantSelector) -> Option<GrantView> {
        let state = self.inner.state();
        let grant = state.find_grant(selector)?;
        Some(state.grant_view(grant, Utc::now()))
    }

    /// Sets the end of the grant `selector` names to `expires_in` from now (`Duration::ZERO`:
    /// ended now), or with `None` makes it ongoing; `None` if no grant matches.
    pub fn set_grant_end(
        &self,
        selector: &GrantSelector,
        expires_in: Option<Duration>,
    ) -> Option<GrantView> {
        let now = Utc::now();
        let mut state = self.inner.state();
        let grant = state.find_grant(selector)?;
        state.set_grant_end(grant, expires_in, now);
        Some(state.grant_view(grant, now))
    }
}

/// The body of `POST /sandbox/grant`: exactly one of the three names, and `expires_in_secs`
/// to change the end (a number of seconds from now, or `null` for ongoing access) or, left
/// out, to only read the grant.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantRequest {
    refresh_token: Option<String>,
    email: Option<String>,
    sub: Option<String>,
    #[serde(default, deserialize_with = "present")]
    expires_in_secs: Option<Option<u64>>,
}

/// Tells `"expires_in_secs": null` (clear the end) from a body without the key (no change).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(deserializer).map(Some)
}

impl GrantRequest {
    fn selector(self) -> Option<GrantSelector> {
        match (self.refresh_token, self.email, self.sub) {
            (Some(t), None, None) => Some(GrantSelector::RefreshToken(t)),
            (None, Some(e), None) => Some(GrantSelector::Email(e)),
            (None, None, Some(s)) => Some(GrantSelector::Sub(s)),
            _ => None,
        }
    }
}

/// `POST /sandbox/grant`: reads a grant, or sets, moves or clears its end.
pub(super) async fn grant_control(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    let request = match serde_json::from_slice::<GrantRequest>(&body) {
        Ok(request) => request,
        // Where, not what: serde's message may quote a value, and a value may be a token.
        Err(e) => {
            let at = format!("Invalid body at line {}, column {}.", e.line(), e.column());
            return OAuthError::invalid_request(at).into_response();
        }
    };
    let change = request.expires_in_secs;
    let Some(selector) = request.selector() else {
        return OAuthError::invalid_request(
            "Name the grant by exactly one of refresh_token, email and sub.",
        )
        .into_response();
    };
    let now = Utc::now();
    let mut state = inner.state();
    let Some(grant) = state.find_grant(&selector) else {
        return OAuthError::new(StatusCode::NOT_FOUND, "not_found", "No grant matches.")
            .into_response();
    };
    if let Some(expires_in) = change {
        state.set_grant_end(grant, expires_in.map(Duration::from_secs), now);
    }
    Json(state.grant_view(grant, now)).into_response()
}
