//! The sandbox Google OAuth provider: an HTTP server shaped like Google's authorization,
//! token, revocation and userinfo endpoints.
//!
//! It owns every grant, code and token it hands out, the fault controls that make it misbehave
//! on purpose (failing, hanging or rejecting refreshes, latency, refresh-token rotation) and the
//! counters tests read back. Consent is given at once, so a browser-less test can walk the whole
//! authorization-code flow with PKCE over real HTTP.
//!
//! Memory per grant is kept small because a load test may create about a million: tokens map
//! to a grant index, grants are compact, repeated strings (scope, client id) are shared, and
//! long-expired access tokens are swept away.
//!
//! Beside it: `controls` (the fault controls and `POST /sandbox/control`), `wire` (Google's
//! answer shapes and request parsing) and `cli` (the `sandbox-google` subcommand).

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, TimeDelta, Utc};
use rand::{Rng, distributions::Alphanumeric};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::{net::TcpListener, sync::watch};

use super::{MAX_HANG, RunningServer, token_prefix, wait_while};

mod cli;
mod controls;
mod wire;

pub use cli::{SandboxGoogleArgs, run};
use controls::{Controls, control};
pub use controls::{RefreshMode, SandboxControls};
use wire::{OAuthError, TokenResponse, basic_credentials, bearer_token, no_store, parse_form};

/// How long an authorization code can be exchanged, as at Google.
const CODE_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// How long an expired access token is still remembered, so "was it valid at time T" can be
/// answered for recent T without keeping every token of a long load test.
const EXPIRED_ACCESS_RETENTION: Duration = Duration::from_secs(60 * 60);

/// Access tokens issued between two sweeps of long-expired ones.
const SWEEP_EVERY: usize = 50_000;

/// Pending codes above which expired ones are swept on the next authorization.
const CODE_SWEEP_THRESHOLD: usize = 10_000;

/// The scope Google substitutes for the short `email` scope in what it grants.
const USERINFO_EMAIL_SCOPE: &str = "https://www.googleapis.com/auth/userinfo.email";

/// Google's description for a refresh token it no longer honours.
const EXPIRED_OR_REVOKED: &str = "Token has been expired or revoked.";

/// Starting configuration of a [`SandboxGoogle`]; everything but the client credentials and
/// `record_issued` can be changed later through the controls.
#[derive(Clone)]
pub struct SandboxGoogleConfig {
    /// When set, `/o/oauth2/v2/auth` and `/token` reject any other client id.
    pub client_id: Option<String>,
    /// When set together with `client_id`, `/token` rejects any other secret.
    pub client_secret: Option<String>,
    /// Lifetime of every access token issued (`expires_in`).
    pub token_lifetime: Duration,
    /// Whether each refresh answers with a new refresh token, superseding the old one.
    pub rotate_refresh_tokens: bool,
    /// How long a superseded refresh token keeps working after rotation.
    pub rotation_grace: Duration,
    /// Delay added to every `/token` answer.
    pub latency: Duration,
    /// Probability (0.0 to 1.0) that a refresh is answered with a 500.
    pub error_rate: f64,
    /// Keep every issued token string for [`SandboxGoogle::issued_tokens`]; load tests turn it
    /// off to keep memory flat.
    pub record_issued: bool,
}

impl Default for SandboxGoogleConfig {
    fn default() -> Self {
        Self {
            client_id: None,
            client_secret: None,
            token_lifetime: Duration::from_secs(3600),
            rotate_refresh_tokens: false,
            rotation_grace: Duration::from_secs(30),
            latency: Duration::ZERO,
            error_rate: 0.0,
            record_issued: true,
        }
    }
}

/// Counters of what the provider has done, as `GET /sandbox/stats` answers them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxStats {
    /// Authorization codes handed out by `/o/oauth2/v2/auth`.
    pub codes_issued: u64,
    /// Successful authorization-code exchanges.
    pub code_exchanges: u64,
    /// Successful refresh-token grants.
    pub refreshes: u64,
    /// Refreshes answered with an error by a fault control (mode or error rate).
    pub refresh_failures_injected: u64,
    /// `/revoke` requests that revoked a grant.
    pub revocations: u64,
    /// Refreshes with a superseded refresh token after its grace had ended (all refused).
    pub stale_refresh_uses: u64,
    /// Refreshes with a superseded refresh token, within the grace or not.
    pub superseded_refresh_uses: u64,
    /// Grants created (one per successful code exchange).
    pub grants: u64,
    /// Grants not revoked.
    pub active_grants: u64,
    /// Refreshes that came after the grant's latest access token had already expired: each
    /// is a user whose calendar access lapsed for a while.
    #[serde(default)]
    pub expired_before_refresh: u64,
}

/// A grant created directly by [`SandboxGoogle::seed_grants`], as a code exchange would.
#[derive(Clone)]
pub struct SeededGrant {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_at: DateTime<Utc>,
    pub scope: String,
}

/// Handle on a running sandbox provider; clones share the same server.
#[derive(Clone)]
pub struct SandboxGoogle {
    inner: Arc<Inner>,
}

/// What the handlers and the handle share.
struct Inner {
    /// Where the server listens.
    addr: SocketAddr,
    /// Client id every request must present, if configured.
    client_id: Option<String>,
    /// Client secret `/token` requests must present, if configured with a client id.
    client_secret: Option<String>,
    /// Everything mutable. A plain mutex: no await happens while it is held.
    state: Mutex<ProviderState>,
    /// Announces control changes and shutdown, so hanging requests re-check their condition.
    changes: watch::Sender<()>,
    /// Set once shutdown begins; releases hanging requests for good.
    stopping: AtomicBool,
    /// The serving task, taken by shutdown.
    server: Mutex<Option<RunningServer>>,
}

/// The provider's mutable memory.
struct ProviderState {
    controls: Controls,
    /// Pending authorization codes, removed at their first exchange attempt.
    codes: HashMap<String, PendingCode>,
    /// Grants by index; a grant's `sub` is its index plus one.
    grants: Vec<Grant>,
    /// Every refresh token issued, current or superseded, so stale uses can be counted.
    refresh_tokens: HashMap<Arc<str>, RefreshEntry>,
    /// Access tokens, minus the long-expired ones swept away.
    access_tokens: HashMap<String, AccessEntry>,
    /// Shared copies of repeated strings (scopes, client ids).
    interned: HashSet<Arc<str>>,
    /// Every token issued, when `record_issued` is on.
    issued: Option<Vec<String>>,
    /// Every token named in a `/revoke` request.
    revoke_requests: Vec<String>,
    stats: SandboxStats,
    /// Numbers the made-up addresses of users who gave no `login_hint`.
    anonymous_users: u64,
    /// Access tokens issued since the last sweep.
    issued_since_sweep: usize,
}

/// A code waiting to be exchanged, with what the exchange must match.
struct PendingCode {
    client_id: String,
    redirect_uri: String,
    scope: String,
    challenge: String,
    email: String,
    expires_at: DateTime<Utc>,
}

/// One user's consent to one client.
struct Grant {
    email: Box<str>,
    scope: Arc<str>,
    client_id: Arc<str>,
    /// The refresh token currently handed out, if the grant has one; shares the map's key.
    refresh_token: Option<Arc<str>>,
    /// When the latest access token issued for this grant expires.
    access_expires_at: DateTime<Utc>,
    revoked: bool,
}

#[derive(Clone, Copy)]
struct RefreshEntry {
    grant: usize,
    /// When rotation replaced this token; the grace period counts from here.
    superseded_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Copy)]
struct AccessEntry {
    grant: usize,
    expires_at: DateTime<Utc>,
}

impl SandboxGoogle {
    /// Starts serving on `listener` in a spawned task and returns the handle.
    pub async fn start(config: SandboxGoogleConfig, listener: TcpListener) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            addr,
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            state: Mutex::new(ProviderState::new(&config)),
            changes: watch::Sender::new(()),
            stopping: AtomicBool::new(false),
            server: Mutex::new(None),
        });
        let server = RunningServer::spawn(listener, router(inner.clone()));
        *lock(&inner.server) = Some(server);
        tracing::debug!(%addr, "sandbox Google provider listening");
        Ok(Self { inner })
    }

    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// The authorization endpoint (`GOOGLE_OAUTH_AUTH_URL`).
    pub fn auth_url(&self) -> String {
        format!("{}/o/oauth2/v2/auth", self.base_url())
    }

    /// The token endpoint (`GOOGLE_OAUTH_TOKEN_URL`).
    pub fn token_url(&self) -> String {
        format!("{}/token", self.base_url())
    }

    /// The revocation endpoint (`GOOGLE_OAUTH_REVOKE_URL`).
    pub fn revoke_url(&self) -> String {
        format!("{}/revoke", self.base_url())
    }

    /// The userinfo endpoint (`GOOGLE_USERINFO_URL`).
    pub fn userinfo_url(&self) -> String {
        format!("{}/v1/userinfo", self.base_url())
    }

    /// Sets how refresh-token grants are answered.
    pub fn set_refresh_mode(&self, mode: RefreshMode) {
        self.inner.update(|c| c.refresh_mode = mode);
    }

    /// Sets the lifetime of access tokens issued from now on.
    pub fn set_token_lifetime(&self, d: Duration) {
        self.inner.update(|c| c.lifetime = d);
    }

    /// Turns refresh-token rotation on or off and sets the grace of superseded tokens.
    pub fn set_rotation(&self, on: bool, grace: Duration) {
        self.inner.update(|c| {
            c.rotate = on;
            c.grace = grace;
        });
    }

    /// Makes every authorization redirect with `error=access_denied`.
    pub fn set_deny(&self, on: bool) {
        self.inner.update(|c| c.deny = on);
    }

    /// Makes code exchanges answer without a refresh token.
    pub fn set_omit_refresh_token(&self, on: bool) {
        self.inner.update(|c| c.omit_refresh_token = on);
    }

    /// Makes every consent grant the requested scopes less these (a partial consent).
    pub fn set_untick_scopes(&self, scopes: &[&str]) {
        let scopes = scopes.iter().map(|s| s.to_string()).collect();
        self.inner.update(|c| c.untick_scopes = scopes);
    }

    /// Sets the delay added to every `/token` answer.
    pub fn set_latency(&self, d: Duration) {
        self.inner.update(|c| c.latency = d);
    }

    /// Sets the probability (clamped to 0.0..=1.0) of a 500 on a refresh.
    pub fn set_error_rate(&self, r: f64) {
        self.inner.update(|c| c.error_rate = clamp_rate(r));
    }

    /// The current fault controls.
    pub fn controls(&self) -> SandboxControls {
        self.inner.state().controls.view()
    }

    /// The counters, as `GET /sandbox/stats` answers them.
    pub fn stats(&self) -> SandboxStats {
        self.inner.state().stats.clone()
    }

    /// Every access and refresh token issued so far (empty when `record_issued` is off).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.inner.state().issued.clone().unwrap_or_default()
    }

    /// Every token named in a `/revoke` request, known or not.
    pub fn revoked_tokens(&self) -> Vec<String> {
        self.inner.state().revoke_requests.clone()
    }

    /// Whether `/token` would accept this refresh token right now (fault modes aside).
    pub fn is_refresh_token_valid(&self, t: &str) -> bool {
        self.inner.state().refresh_usable(t, Utc::now())
    }

    /// Whether this access token was issued, is unexpired and its grant is not revoked.
    pub fn is_access_token_valid(&self, t: &str) -> bool {
        let state = self.inner.state();
        state
            .access_tokens
            .get(t)
            .is_some_and(|a| Utc::now() < a.expires_at && !state.grants[a.grant].revoked)
    }

    /// When this access token expires (or expired), if it is still remembered.
    pub fn access_token_expires_at(&self, t: &str) -> Option<DateTime<Utc>> {
        self.inner
            .state()
            .access_tokens
            .get(t)
            .map(|a| a.expires_at)
    }

    /// Creates `count` grants directly, as if each user had consented, with the access
    /// token of grant `i` expiring at `expires_at(i)`: load tests seed users this way instead
    /// of walking a million consents.
    pub fn seed_grants(
        &self,
        count: usize,
        scope: &str,
        expires_at: impl Fn(usize) -> DateTime<Utc>,
    ) -> Vec<SeededGrant> {
        let mut state = self.inner.state();
        (0..count)
            .map(|i| {
                let code = PendingCode {
                    client_id: self.inner.client_id.clone().unwrap_or_default(),
                    redirect_uri: String::new(),
                    scope: scope.to_string(),
                    challenge: String::new(),
                    email: format!("seeded-{i}@sandbox.test"),
                    expires_at: Utc::now(),
                };
                let grant = state.create_grant(&code);
                let refresh_token = state.issue_refresh(grant);
                let (access_token, _) = state.issue_access(grant, Utc::now());
                let expires_at = expires_at(i);
                if let Some(entry) = state.access_tokens.get_mut(&access_token) {
                    entry.expires_at = expires_at;
                }
                state.grants[grant].access_expires_at = expires_at;
                SeededGrant {
                    access_token,
                    refresh_token,
                    expires_at,
                    scope: scope.to_string(),
                }
            })
            .collect()
    }

    /// Revokes the grant this token belongs to, as a user removing access in their Google
    /// account would; false if the token is unknown or the grant already revoked.
    pub fn revoke_grant_of(&self, t: &str) -> bool {
        self.inner.state().revoke_grant_of(t)
    }

    /// Stops the server: hanging requests are released, the port is freed.
    pub async fn shutdown(self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.changes.send_replace(());
        let server = lock(&self.inner.server).take();
        if let Some(server) = server {
            server.stop().await;
        }
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, ProviderState> {
        lock(&self.state)
    }

    /// Changes the controls and wakes requests that wait on them.
    fn update(&self, change: impl FnOnce(&mut Controls)) {
        change(&mut self.state().controls);
        self.changes.send_replace(());
    }

    fn controls(&self) -> Controls {
        self.state().controls.clone()
    }

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
        let injected = match controls.refresh_mode {
            RefreshMode::Ok => None,
            RefreshMode::Error500 => Some(OAuthError::internal_failure()),
            RefreshMode::Hang => Some(OAuthError::internal_failure()),
            RefreshMode::InvalidGrant => Some(OAuthError::invalid_grant(EXPIRED_OR_REVOKED)),
        }
        .or_else(|| {
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

impl ProviderState {
    fn new(config: &SandboxGoogleConfig) -> Self {
        Self {
            controls: Controls {
                refresh_mode: RefreshMode::Ok,
                latency: config.latency,
                error_rate: clamp_rate(config.error_rate),
                rotate: config.rotate_refresh_tokens,
                grace: config.rotation_grace,
                lifetime: config.token_lifetime,
                deny: false,
                omit_refresh_token: false,
                untick_scopes: Vec::new(),
            },
            codes: HashMap::new(),
            grants: Vec::new(),
            refresh_tokens: HashMap::new(),
            access_tokens: HashMap::new(),
            interned: HashSet::new(),
            issued: config.record_issued.then(Vec::new),
            revoke_requests: Vec::new(),
            stats: SandboxStats::default(),
            anonymous_users: 0,
            issued_since_sweep: 0,
        }
    }

    /// Stores a new one-time code and returns it.
    fn issue_code(
        &mut self,
        client_id: &str,
        redirect_uri: &str,
        scope: &str,
        challenge: &str,
        email: Option<String>,
    ) -> String {
        let now = Utc::now();
        if self.codes.len() >= CODE_SWEEP_THRESHOLD {
            self.codes.retain(|_, c| c.expires_at > now);
        }
        let email = email.unwrap_or_else(|| {
            self.anonymous_users += 1;
            format!("sandbox-user-{}@sandbox.test", self.anonymous_users)
        });
        let code = format!("4/sandbox-{}", random_string(43));
        self.codes.insert(
            code.clone(),
            PendingCode {
                client_id: client_id.to_owned(),
                redirect_uri: redirect_uri.to_owned(),
                scope: granted_scope(scope),
                challenge: challenge.to_owned(),
                email,
                expires_at: after(now, CODE_LIFETIME),
            },
        );
        self.stats.codes_issued += 1;
        code
    }

    /// Answers an authorization-code grant. The code is spent by any attempt, good or bad.
    fn exchange_code(
        &mut self,
        form: &HashMap<String, String>,
        client: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<TokenResponse, OAuthError> {
        let code = form
            .get("code")
            .ok_or_else(|| OAuthError::invalid_request("Missing required parameter: code"))?;
        let pending = self
            .codes
            .remove(code)
            .ok_or_else(|| OAuthError::invalid_grant("Malformed auth code."))?;
        if now >= pending.expires_at {
            return Err(OAuthError::invalid_grant("Auth code expired."));
        }
        if client.is_some_and(|c| c != pending.client_id) {
            return Err(OAuthError::invalid_grant(
                "Code was issued to another client.",
            ));
        }
        if form.get("redirect_uri") != Some(&pending.redirect_uri) {
            return Err(OAuthError::invalid_grant("redirect_uri does not match."));
        }
        let verifier = form
            .get("code_verifier")
            .ok_or_else(|| OAuthError::invalid_grant("Missing code verifier."))?;
        if URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != pending.challenge {
            return Err(OAuthError::invalid_grant("Invalid code verifier."));
        }
        self.stats.code_exchanges += 1;
        let grant = self.create_grant(&pending);
        let refresh_token = (!self.controls.omit_refresh_token).then(|| self.issue_refresh(grant));
        let (access_token, expires_in) = self.issue_access(grant, now);
        Ok(TokenResponse {
            access_token,
            expires_in,
            refresh_token,
            scope: pending.scope.clone(),
            token_type: "Bearer",
            id_token: Some(id_token(grant, &pending, now)),
        })
    }

    fn create_grant(&mut self, code: &PendingCode) -> usize {
        let grant = Grant {
            email: code.email.as_str().into(),
            scope: self.intern(&code.scope),
            client_id: self.intern(&code.client_id),
            refresh_token: None,
            access_expires_at: DateTime::<Utc>::MIN_UTC,
            revoked: false,
        };
        self.grants.push(grant);
        self.stats.grants += 1;
        self.stats.active_grants += 1;
        self.grants.len() - 1
    }

    /// Answers a refresh-token grant whose fault controls have already been applied.
    fn refresh(
        &mut self,
        token: &str,
        client: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<TokenResponse, OAuthError> {
        let entry = *self
            .refresh_tokens
            .get(token)
            .ok_or_else(|| OAuthError::invalid_grant(EXPIRED_OR_REVOKED))?;
        let grant = &self.grants[entry.grant];
        if grant.revoked {
            return Err(OAuthError::invalid_grant(EXPIRED_OR_REVOKED));
        }
        if client.is_some_and(|c| c != &*grant.client_id) {
            return Err(OAuthError::invalid_grant(
                "Token was issued to another client.",
            ));
        }
        let refresh_token = match entry.superseded_at {
            Some(at) => {
                self.stats.superseded_refresh_uses += 1;
                if now >= after(at, self.controls.grace) {
                    self.stats.stale_refresh_uses += 1;
                    return Err(OAuthError::invalid_grant(EXPIRED_OR_REVOKED));
                }
                // Hand back the current token so a client that lost the rotated one recovers.
                grant.refresh_token.as_deref().map(str::to_owned)
            }
            None if self.controls.rotate => Some(self.rotate(entry.grant, token, now)),
            None => None,
        };
        self.stats.refreshes += 1;
        if now >= self.grants[entry.grant].access_expires_at {
            self.stats.expired_before_refresh += 1;
        }
        let (access_token, expires_in) = self.issue_access(entry.grant, now);
        Ok(TokenResponse {
            access_token,
            expires_in,
            refresh_token,
            scope: self.grants[entry.grant].scope.to_string(),
            token_type: "Bearer",
            id_token: None,
        })
    }

    /// Replaces the grant's refresh token `old` by a new one; `old` enters its grace period.
    fn rotate(&mut self, grant: usize, old: &str, now: DateTime<Utc>) -> String {
        if let Some(entry) = self.refresh_tokens.get_mut(old) {
            entry.superseded_at = Some(now);
        }
        self.issue_refresh(grant)
    }

    /// Issues a refresh token and makes it the grant's current one.
    fn issue_refresh(&mut self, grant: usize) -> String {
        let token: Arc<str> = format!("1//sandbox-{}", random_string(40)).into();
        let entry = RefreshEntry {
            grant,
            superseded_at: None,
        };
        self.refresh_tokens.insert(token.clone(), entry);
        self.record_issued(&token);
        self.grants[grant].refresh_token = Some(token.clone());
        token.to_string()
    }

    /// Issues an access token; returns it with its `expires_in`.
    fn issue_access(&mut self, grant: usize, now: DateTime<Utc>) -> (String, u64) {
        self.sweep_expired_access(now);
        let token = format!("ya29.sandbox-{}", random_string(40));
        let lifetime = self.controls.lifetime;
        let entry = AccessEntry {
            grant,
            expires_at: after(now, lifetime),
        };
        self.access_tokens.insert(token.clone(), entry);
        self.record_issued(&token);
        self.grants[grant].access_expires_at = entry.expires_at;
        (token, lifetime.as_secs())
    }

    /// Every [`SWEEP_EVERY`] issues, forgets access tokens long past their expiry.
    fn sweep_expired_access(&mut self, now: DateTime<Utc>) {
        self.issued_since_sweep += 1;
        if self.issued_since_sweep < SWEEP_EVERY {
            return;
        }
        self.issued_since_sweep = 0;
        self.access_tokens
            .retain(|_, a| after(a.expires_at, EXPIRED_ACCESS_RETENTION) > now);
    }

    fn record_issued(&mut self, token: &str) {
        if let Some(issued) = &mut self.issued {
            issued.push(token.to_owned());
        }
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.interned.get(s) {
            return shared.clone();
        }
        let shared: Arc<str> = s.into();
        self.interned.insert(shared.clone());
        shared
    }

    /// The grant a token (access or refresh, current or superseded) belongs to.
    fn grant_of(&self, token: &str) -> Option<usize> {
        self.access_tokens
            .get(token)
            .map(|a| a.grant)
            .or_else(|| self.refresh_tokens.get(token).map(|r| r.grant))
    }

    fn refresh_usable(&self, token: &str, now: DateTime<Utc>) -> bool {
        self.refresh_tokens.get(token).is_some_and(|r| {
            !self.grants[r.grant].revoked
                && r.superseded_at
                    .is_none_or(|at| now < after(at, self.controls.grace))
        })
    }

    /// Revokes the whole grant of `token`; false if unknown or already revoked.
    fn revoke_grant_of(&mut self, token: &str) -> bool {
        let Some(grant) = self.grant_of(token) else {
            return false;
        };
        let grant = &mut self.grants[grant];
        if grant.revoked {
            return false;
        }
        grant.revoked = true;
        self.stats.active_grants -= 1;
        true
    }

    fn userinfo(&self, token: &str, now: DateTime<Utc>) -> Option<serde_json::Value> {
        let access = self.access_tokens.get(token)?;
        let grant = &self.grants[access.grant];
        (now < access.expires_at && !grant.revoked).then(|| {
            serde_json::json!({
                "sub": grant_sub(access.grant),
                "email": &*grant.email,
                "email_verified": true,
            })
        })
    }
}

/// Every route of the provider.
fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/o/oauth2/v2/auth", get(authorize))
        .route("/token", post(token))
        .route("/revoke", post(revoke))
        .route("/v1/userinfo", get(userinfo))
        .route("/sandbox/control", post(control))
        .route("/sandbox/stats", get(stats))
        .with_state(inner)
}

async fn authorize(State(inner): State<Arc<Inner>>, RawQuery(query): RawQuery) -> Response {
    let params = parse_form(query.unwrap_or_default().as_bytes());
    match inner.authorize(&params) {
        Ok(location) => (StatusCode::FOUND, [(header::LOCATION, location)]).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn token(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let latency = inner.controls().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let form = parse_form(&body);
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

/// Locks a mutex, carrying on past poisoning: the state stays usable for the tests reading it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The requested scopes as Google grants them: `email` widened to the userinfo URL.
fn granted_scope(requested: &str) -> String {
    requested
        .split_whitespace()
        .map(|s| {
            if s == "email" {
                USERINFO_EMAIL_SCOPE
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// An unsigned, JWT-shaped id token: opaque to tokenwarden, readable when debugging.
fn id_token(grant: usize, code: &PendingCode, now: DateTime<Utc>) -> String {
    let header = serde_json::json!({ "alg": "none", "typ": "JWT" });
    let claims = serde_json::json!({
        "iss": "https://accounts.google.com",
        "aud": code.client_id,
        "sub": grant_sub(grant),
        "email": code.email,
        "email_verified": true,
        "iat": now.timestamp(),
        "exp": now.timestamp() + 3600,
    });
    let part = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.sandbox", part(header), part(claims))
}

fn grant_sub(grant: usize) -> String {
    (grant + 1).to_string()
}

fn random_string(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// `at + d`, saturating instead of overflowing.
fn after(at: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| at.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn clamp_rate(r: f64) -> f64 {
    if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) }
}
