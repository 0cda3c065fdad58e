//! The sandbox Google OAuth provider: an HTTP server shaped like Google's authorization,
//! token, revocation and userinfo endpoints.
//!
//! It owns every grant, code and token it hands out, the fault controls that make it misbehave
//! on purpose (failing, hanging or rejecting refreshes, latency, refresh-token rotation) and the
//! counters tests read back. Consent is given at once, so a browser-less test can walk the whole
//! authorization-code flow with PKCE over real HTTP.
//!
//! This file holds the configuration, the counters and the handle tests and tools drive it by.
//! Beside it: `state` (the grants and tokens, and their bookkeeping), `routes` (the HTTP
//! endpoints), `controls` (the fault controls and `POST /sandbox/control`), `wire` (Google's
//! answer shapes and request parsing) and `cli` (the `sandbox-google` subcommand). The RISC
//! transmitter (docs/contract.md section 10) is `risc` (configuration, JWKS, stream API),
//! `risc_set` (SETs and their delivery), `risc_controls` (its controls) and `risc_keys` (RSA keys,
//! key files).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use tokio::{net::TcpListener, sync::watch};

use super::RunningServer;

mod cli;
mod controls;
mod grant_end;
mod risc;
mod risc_controls;
mod risc_keys;
mod risc_set;
mod routes;
mod state;
mod wire;

pub use cli::{SandboxGoogleArgs, run};
use controls::{Controls, control};
pub use controls::{RefreshMode, SandboxControls};
pub use grant_end::{GrantSelector, GrantView};
use risc::RiscState;
pub use risc::{RISC_API_AUDIENCE, RiscStream, RiscStreamDelivery, RiscView};
pub use risc_keys::{ServiceAccountKeyFile, SigningKey};
pub use risc_set::{
    PUSH_DELIVERY, RiscEvent, SET_CONTENT_TYPE, SUPPORTED_EVENTS, SentSet, SetOptions, SetSigning,
    TokenIdentifierAlg, token_hash,
};
use routes::router;
use state::{PendingCode, ProviderState};

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
    /// How long each grant made by a code exchange lasts (`refresh_token_expires_in` in the
    /// answers, `invalid_grant` from its end on); zero is ongoing access.
    pub grant_lifetime: Duration,
    /// Whether the RISC transmitter's routes are served (docs/contract.md section 10).
    pub risc: bool,
    /// The `issuer` of the RISC configuration and of every SET; the base URL when unset.
    pub risc_issuer: Option<String>,
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
            grant_lifetime: Duration::ZERO,
            risc: true,
            risc_issuer: None,
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
    /// Refresh requests that arrived at or after their grant's end: calls a client that knew
    /// the end should never have made.
    #[serde(default)]
    pub refreshes_after_grant_end: u64,
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
    /// The RISC transmitter's memory, apart so signing and delivering never wait on grants.
    risc: Mutex<RiscState>,
    /// Announces control changes and shutdown, so hanging requests re-check their condition.
    changes: watch::Sender<()>,
    /// Set once shutdown begins; releases hanging requests for good.
    stopping: AtomicBool,
    /// The serving task, taken by shutdown.
    server: Mutex<Option<RunningServer>>,
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

    fn risc(&self) -> MutexGuard<'_, RiscState> {
        lock(&self.risc)
    }

    fn controls(&self) -> Controls {
        self.state().controls.clone()
    }
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
            risc: Mutex::new(RiscState::new(&config)),
            changes: watch::Sender::new(()),
            stopping: AtomicBool::new(false),
            server: Mutex::new(None),
        });
        let server = RunningServer::spawn(listener, router(inner.clone(), config.risc));
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

/// Locks a mutex, carrying on past poisoning: the state stays usable for the tests reading it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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
