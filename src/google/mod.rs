//! The OAuth client that speaks to Google (or to the sandbox provider standing in for it):
//! consent URL with PKCE, code exchange, refresh, revocation and the userinfo lookup. It turns
//! Google's answers into plain results and classifies failures (transient, revoked, rejected);
//! it never stores anything and never logs a token.

mod http_client;

use std::time::Duration;

use chrono::{DateTime, Utc};
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, Scope,
    TokenResponse, TokenUrl,
    basic::{BasicClient, BasicErrorResponse, BasicErrorResponseType},
};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::config::GoogleConfig;
pub use http_client::describe as describe_reqwest_error;
use http_client::{HttpError, OAuthHttp};

type OAuthClient =
    BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// Fallback lifetime when Google omits `expires_in` (it never should; we never assume it does).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// Tokens Google answered with.
pub struct TokenSet {
    pub access_token: SecretString,
    /// Present on the first consent, and on refreshes when the provider rotates.
    pub refresh_token: Option<SecretString>,
    pub expires_at: DateTime<Utc>,
    /// The scope Google granted, if it said.
    pub scope: Option<String>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Why a token request failed, classified by what the caller should do next.
#[derive(Debug, thiserror::Error)]
pub enum GoogleError {
    /// Network error, timeout, 429 or 5xx: try again later.
    #[error("transient failure: {0}")]
    Transient(String),
    /// The grant is gone (`invalid_grant`, `admin_policy_enforced`): the user must reconnect.
    #[error("grant revoked: {0}")]
    Revoked(String),
    /// Google refused for another reason (e.g. `invalid_client`): not the user's doing, so the
    /// tokens are kept, but retrying soon will not help.
    #[error("request rejected: {0}")]
    Rejected(String),
}

/// A fresh consent round-trip: the URL to send the browser to and the PKCE verifier to keep.
pub struct Consent {
    pub url: Url,
    pub pkce_verifier: SecretString,
}

/// Talks to Google's OAuth endpoints.
#[derive(Clone)]
pub struct GoogleClient {
    oauth: OAuthClient,
    http: OAuthHttp,
    scopes: Vec<String>,
    revoke_url: Url,
    userinfo_url: Url,
}

impl GoogleClient {
    pub fn new(config: &GoogleConfig) -> anyhow::Result<Self> {
        let oauth = BasicClient::new(ClientId::new(config.client_id.clone()))
            .set_client_secret(ClientSecret::new(
                config.client_secret.expose_secret().to_string(),
            ))
            .set_auth_uri(AuthUrl::from_url(config.auth_url.clone()))
            .set_token_uri(TokenUrl::from_url(config.token_url.clone()))
            .set_redirect_uri(RedirectUrl::from_url(config.redirect_uri.clone()));
        Ok(Self {
            oauth,
            http: OAuthHttp::new(config.timeout)?,
            scopes: config.scopes.clone(),
            revoke_url: config.revoke_url.clone(),
            userinfo_url: config.userinfo_url.clone(),
        })
    }

    /// Google's consent URL for `state`, asking for offline access and forcing the consent
    /// screen so that a refresh token comes back even for a returning user.
    pub fn consent(&self, state: &str) -> Consent {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let state = state.to_string();
        let (url, _) = self
            .oauth
            .authorize_url(move || CsrfToken::new(state))
            .add_scopes(self.scopes.iter().cloned().map(Scope::new))
            .add_extra_param("access_type", "offline")
            .add_extra_param("prompt", "consent")
            .set_pkce_challenge(challenge)
            .url();
        Consent {
            url,
            pkce_verifier: SecretString::from(verifier.secret().clone()),
        }
    }

    /// Exchanges an authorization code (with its PKCE verifier) for tokens.
    #[tracing::instrument(name = "oauth.exchange_code", skip_all, fields(user.id = %user_id, otel.kind = "client"))]
    pub async fn exchange_code(
        &self,
        user_id: &str,
        code: &str,
        pkce_verifier: &SecretString,
    ) -> Result<TokenSet, GoogleError> {
        let response = self
            .oauth
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .set_pkce_verifier(PkceCodeVerifier::new(
                pkce_verifier.expose_secret().to_string(),
            ))
            .request_async(&self.http)
            .await
            .map_err(classify)?;
        Ok(token_set(&response))
    }

    /// Uses a refresh token to get a new access token.
    #[tracing::instrument(name = "oauth.refresh", skip_all, fields(user.id = %user_id, otel.kind = "client"))]
    pub async fn refresh(
        &self,
        user_id: &str,
        refresh_token: &SecretString,
    ) -> Result<TokenSet, GoogleError> {
        let token = RefreshToken::new(refresh_token.expose_secret().to_string());
        let response = self
            .oauth
            .exchange_refresh_token(&token)
            .request_async(&self.http)
            .await
            .map_err(classify)?;
        Ok(token_set(&response))
    }

    /// Revokes a token (revoking the refresh token ends the whole grant). Sent as Google
    /// documents it, a form POST with `token=`; done by hand because the oauth2 crate refuses
    /// non-HTTPS revocation URLs, which the loopback sandbox uses.
    #[tracing::instrument(name = "oauth.revoke", skip_all, fields(user.id = %user_id, otel.kind = "client"))]
    pub async fn revoke(&self, user_id: &str, token: &SecretString) -> Result<(), GoogleError> {
        let response = self
            .http
            .client()
            .post(self.revoke_url.clone())
            .headers(http_client::trace_headers())
            .form(&[("token", token.expose_secret())])
            .send()
            .await
            .map_err(|e| GoogleError::Transient(http_client::describe(&e)))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status.is_server_error() {
            Err(GoogleError::Transient(format!("revoke answered {status}")))
        } else {
            Err(GoogleError::Rejected(format!("revoke answered {status}")))
        }
    }

    /// The account's email from the userinfo endpoint, if Google gives one.
    #[tracing::instrument(name = "oauth.userinfo", skip_all, fields(user.id = %user_id, otel.kind = "client"))]
    pub async fn email(
        &self,
        user_id: &str,
        access_token: &SecretString,
    ) -> Result<Option<String>, GoogleError> {
        #[derive(serde::Deserialize)]
        struct UserInfo {
            email: Option<String>,
        }
        let response = self
            .http
            .client()
            .get(self.userinfo_url.clone())
            .headers(http_client::trace_headers())
            .bearer_auth(access_token.expose_secret())
            .send()
            .await
            .map_err(|e| GoogleError::Transient(http_client::describe(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(GoogleError::Rejected(format!("userinfo answered {status}")));
        }
        let info: UserInfo = response
            .json()
            .await
            .map_err(|_| GoogleError::Rejected("userinfo answer is not JSON".into()))?;
        Ok(info.email)
    }
}

fn token_set(response: &oauth2::basic::BasicTokenResponse) -> TokenSet {
    let lifetime = response.expires_in().unwrap_or(DEFAULT_LIFETIME);
    let scope = response.scopes().map(|scopes| {
        scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    });
    TokenSet {
        access_token: SecretString::from(response.access_token().secret().clone()),
        refresh_token: response
            .refresh_token()
            .map(|t| SecretString::from(t.secret().clone())),
        expires_at: expiry_after(lifetime),
        scope,
    }
}

/// When a token living `lifetime` from now expires. A lifetime past the calendar's end (a
/// broken or hostile `expires_in`) would overflow the addition and panic the refresh task:
/// it counts as [`DEFAULT_LIFETIME`] instead, like a missing one.
fn expiry_after(lifetime: Duration) -> DateTime<Utc> {
    let now = Utc::now();
    chrono::Duration::from_std(lifetime)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or_else(|| now + chrono::Duration::hours(1))
}

/// Maps the oauth2 crate's error to what the caller should do. The crate's `Parse` variant
/// carries the raw body, which may hold a token, so no variant's payload is ever formatted.
fn classify(error: RequestTokenError<HttpError, BasicErrorResponse>) -> GoogleError {
    match error {
        RequestTokenError::ServerResponse(response) => {
            let code = response.error();
            match code {
                BasicErrorResponseType::InvalidGrant => GoogleError::Revoked(code.to_string()),
                BasicErrorResponseType::Extension(ext) => match ext.as_str() {
                    "admin_policy_enforced" => GoogleError::Revoked(ext.clone()),
                    "internal_failure" | "server_error" | "temporarily_unavailable" => {
                        GoogleError::Transient(ext.clone())
                    }
                    _ => GoogleError::Rejected(ext.clone()),
                },
                other => GoogleError::Rejected(other.to_string()),
            }
        }
        RequestTokenError::Request(e) => GoogleError::Transient(e.to_string()),
        RequestTokenError::Parse(_, _) => {
            GoogleError::Transient("unparseable answer from the token endpoint".into())
        }
        RequestTokenError::Other(_) => {
            GoogleError::Transient("unexpected answer from the token endpoint".into())
        }
    }
}
