//! The provider's memory and its bookkeeping: pending codes, grants, refresh and access
//! tokens, the counters; issuing, exchanging, refreshing (rotation and its grace included),
//! revoking. Everything here is synchronous and runs under the one state mutex, with the time
//! passed in, so no request ever awaits while holding it.
//!
//! Memory per grant is kept small because a load test may create about a million: tokens map
//! to a grant index, grants are compact, repeated strings (scope, client id) are shared, and
//! long-expired access tokens are swept away.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use rand::{Rng, distributions::Alphanumeric};
use sha2::{Digest, Sha256};

use super::{
    Controls, EXPIRED_OR_REVOKED, RefreshMode, SandboxGoogleConfig, SandboxStats, after,
    clamp_rate,
    wire::{OAuthError, TokenResponse},
};

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

/// The provider's mutable memory.
pub(super) struct ProviderState {
    pub(super) controls: Controls,
    /// Pending authorization codes, removed at their first exchange attempt.
    pub(super) codes: HashMap<String, PendingCode>,
    /// Grants by index; a grant's `sub` is its index plus one.
    pub(super) grants: Vec<Grant>,
    /// Every refresh token issued, current or superseded, so stale uses can be counted.
    pub(super) refresh_tokens: HashMap<Arc<str>, RefreshEntry>,
    /// Access tokens, minus the long-expired ones swept away.
    pub(super) access_tokens: HashMap<String, AccessEntry>,
    /// Shared copies of repeated strings (scopes, client ids).
    pub(super) interned: HashSet<Arc<str>>,
    /// Every token issued, when `record_issued` is on.
    pub(super) issued: Option<Vec<String>>,
    /// Every token named in a `/revoke` request.
    pub(super) revoke_requests: Vec<String>,
    pub(super) stats: SandboxStats,
    /// Numbers the made-up addresses of users who gave no `login_hint`.
    pub(super) anonymous_users: u64,
    /// Access tokens issued since the last sweep.
    pub(super) issued_since_sweep: usize,
    /// When each time-limited grant ends, by grant index; ongoing grants have no entry.
    pub(super) grant_ends: HashMap<usize, DateTime<Utc>>,
    /// When the latest refresh requests naming a time-limited grant arrived, by grant index.
    pub(super) refresh_arrivals: HashMap<usize, Vec<DateTime<Utc>>>,
}

/// A code waiting to be exchanged, with what the exchange must match.
pub(super) struct PendingCode {
    pub(super) client_id: String,
    pub(super) redirect_uri: String,
    pub(super) scope: String,
    pub(super) challenge: String,
    pub(super) email: String,
    pub(super) expires_at: DateTime<Utc>,
}

/// One user's consent to one client.
pub(super) struct Grant {
    pub(super) email: Box<str>,
    pub(super) scope: Arc<str>,
    pub(super) client_id: Arc<str>,
    /// The refresh token currently handed out, if the grant has one; shares the map's key.
    pub(super) refresh_token: Option<Arc<str>>,
    /// When the latest access token issued for this grant expires.
    pub(super) access_expires_at: DateTime<Utc>,
    pub(super) revoked: bool,
}

#[derive(Clone, Copy)]
pub(super) struct RefreshEntry {
    pub(super) grant: usize,
    /// When rotation replaced this token; the grace period counts from here.
    pub(super) superseded_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Copy)]
pub(super) struct AccessEntry {
    pub(super) grant: usize,
    pub(super) expires_at: DateTime<Utc>,
}

impl ProviderState {
    pub(super) fn new(config: &SandboxGoogleConfig) -> Self {
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
                grant_lifetime: config.grant_lifetime,
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
            grant_ends: HashMap::new(),
            refresh_arrivals: HashMap::new(),
        }
    }

    /// Stores a new one-time code and returns it.
    pub(super) fn issue_code(
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
    pub(super) fn exchange_code(
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
        self.start_grant_clock(grant, now);
        let refresh_token = (!self.controls.omit_refresh_token).then(|| self.issue_refresh(grant));
        let (access_token, expires_in) = self.issue_access(grant, now);
        Ok(TokenResponse {
            access_token,
            expires_in,
            refresh_token,
            scope: pending.scope.clone(),
            token_type: "Bearer",
            id_token: Some(id_token(grant, &pending, now)),
            refresh_token_expires_in: self.seconds_left(grant, now),
        })
    }

    pub(super) fn create_grant(&mut self, code: &PendingCode) -> usize {
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
    pub(super) fn refresh(
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
        if grant.revoked || self.grant_ended(entry.grant, now) {
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
            refresh_token_expires_in: self.seconds_left(entry.grant, now),
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
    pub(super) fn issue_refresh(&mut self, grant: usize) -> String {
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
    pub(super) fn issue_access(&mut self, grant: usize, now: DateTime<Utc>) -> (String, u64) {
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
    pub(super) fn grant_of(&self, token: &str) -> Option<usize> {
        self.access_tokens
            .get(token)
            .map(|a| a.grant)
            .or_else(|| self.refresh_tokens.get(token).map(|r| r.grant))
    }

    pub(super) fn refresh_usable(&self, token: &str, now: DateTime<Utc>) -> bool {
        self.refresh_tokens.get(token).is_some_and(|r| {
            !self.grants[r.grant].revoked
                && !self.grant_ended(r.grant, now)
                && r.superseded_at
                    .is_none_or(|at| now < after(at, self.controls.grace))
        })
    }

    /// Revokes the whole grant of `token`; false if unknown or already revoked.
    pub(super) fn revoke_grant_of(&mut self, token: &str) -> bool {
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

    pub(super) fn userinfo(&self, token: &str, now: DateTime<Utc>) -> Option<serde_json::Value> {
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

pub(super) fn grant_sub(grant: usize) -> String {
    (grant + 1).to_string()
}

pub(super) fn random_string(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}
