//! The OAuth client that speaks to Google (or to the sandbox provider standing in for it):
//! consent URL with PKCE, code exchange, refresh, revocation and the userinfo lookup. It turns
//! Google's answers into plain results, the end of a time-limited grant included
//! ([`grant_end`]), and classifies failures (transient, revoked, rejected, each with a precise
//! [`FailureReason`]); it never stores anything and never logs a token.

mod failure;
mod grant_end;
mod http_client;

use std::time::Duration;

use chrono::{DateTime, Utc};
use oauth2::{
    AuthUrl, AuthorizationCode, Client, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, Scope,
    StandardRevocableToken, StandardTokenResponse, TokenResponse, TokenUrl,
    basic::{
        BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
        BasicTokenType,
    },
};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::config::GoogleConfig;
use failure::classify;
pub use failure::{Failure, FailureReason, GoogleError};
pub use grant_end::GrantEndFields;
use http_client::OAuthHttp;
pub use http_client::describe as describe_reqwest_error;

/// A token answer: RFC 6749's fields plus the end of a time-limited grant.
type GoogleTokenResponse = StandardTokenResponse<GrantEndFields, BasicTokenType>;

/// oauth2's `BasicClient` but for the token answer, which reads the grant's end too.
type OAuthClient = Client<
    BasicErrorResponse,
    GoogleTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

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
    /// When a time-limited grant ends: the time the answer arrived plus the smaller of
    /// `refresh_token_expires_in` and `authorization_expires_in` (docs/contract.md section 9).
    /// `None` reads differently by where it came from, because Google repeats the end only when it
    /// has one:
    /// - from [`GoogleClient::exchange_code`], `None` means ongoing access: the new grant has
    ///   no end, so the caller clears any end stored for an earlier grant;
    /// - from [`GoogleClient::refresh`], `None` means no news: the caller keeps the stored end.
    pub authorization_expires_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .field("authorization_expires_at", &self.authorization_expires_at)
            .finish_non_exhaustive()
    }
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
        let oauth = Client::new(ClientId::new(config.client_id.clone()))
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
        Ok(token_set(&response, crate::clock::now()))
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
        Ok(token_set(&response, crate::clock::now()))
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
            .map_err(|e| GoogleError::Transient(Failure::from_reqwest(&e)))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status.is_server_error() {
            Err(GoogleError::Transient(Failure::from_status(
                status, "revoke",
            )))
        } else {
            Err(GoogleError::Rejected(Failure::from_status(
                status, "revoke",
            )))
        }
    }

    /// The account behind `access_token`, from userinfo: its address and its id (`sub`,
    /// what Google's security events name the account by).
    #[tracing::instrument(name = "oauth.userinfo", skip_all, fields(user.id = %user_id, otel.kind = "client"))]
    pub async fn account(
        &self,
        user_id: &str,
        access_token: &SecretString,
    ) -> Result<Account, GoogleError> {
        let response = self
            .http
            .client()
            .get(self.userinfo_url.clone())
            .headers(http_client::trace_headers())
            .bearer_auth(access_token.expose_secret())
            .send()
            .await
            .map_err(|e| GoogleError::Transient(Failure::from_reqwest(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(GoogleError::Rejected(Failure::from_status(
                status, "userinfo",
            )));
        }
        response.json().await.map_err(|_| {
            GoogleError::Rejected(Failure::new(
                FailureReason::Other,
                "userinfo answer is not JSON",
            ))
        })
    }

    /// The account's address, from userinfo.
    pub async fn email(
        &self,
        user_id: &str,
        access_token: &SecretString,
    ) -> Result<Option<String>, GoogleError> {
        Ok(self.account(user_id, access_token).await?.email)
    }
}

/// A Google account as userinfo describes it.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Account {
    pub email: Option<String>,
    pub sub: Option<String>,
}

/// The tokens of an answer received at `now`.
fn token_set(response: &GoogleTokenResponse, now: DateTime<Utc>) -> TokenSet {
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
        expires_at: expiry_after(now, lifetime),
        scope,
        authorization_expires_at: response.extra_fields().ends_at(now),
    }
}

/// When a token living `lifetime` from `now` expires. A lifetime past the calendar's end (a
/// broken or hostile `expires_in`) would overflow the addition and panic the refresh task:
/// it counts as [`DEFAULT_LIFETIME`] instead, like a missing one.
fn expiry_after(now: DateTime<Utc>, lifetime: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(lifetime)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or_else(|| now + chrono::Duration::hours(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(body: serde_json::Value) -> GoogleTokenResponse {
        serde_json::from_value(body).unwrap()
    }

    fn now() -> DateTime<Utc> {
        "2026-03-01T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn a_time_limited_answer_gives_the_grants_end() {
        let tokens = token_set(
            &answer(serde_json::json!({
                "access_token": "ya29.a", "token_type": "Bearer", "expires_in": 3599,
                "refresh_token": "1//r", "scope": "openid", "refresh_token_expires_in": 86400,
            })),
            now(),
        );
        assert_eq!(tokens.expires_at, now() + chrono::Duration::seconds(3599));
        assert_eq!(
            tokens.authorization_expires_at,
            Some(now() + chrono::Duration::days(1))
        );
        let shown = format!("{tokens:?}");
        assert!(shown.contains("authorization_expires_at") && !shown.contains("ya29"));
    }

    #[test]
    fn an_answer_without_an_end_gives_none() {
        let tokens = token_set(
            &answer(serde_json::json!({"access_token": "ya29.a", "token_type": "bearer"})),
            now(),
        );
        assert_eq!(tokens.authorization_expires_at, None);
        assert_eq!(tokens.expires_at, now() + chrono::Duration::hours(1));
    }

    #[test]
    fn a_malformed_end_does_not_lose_the_tokens() {
        let tokens = token_set(
            &answer(serde_json::json!({
                "access_token": "ya29.a", "token_type": "Bearer", "expires_in": 60,
                "refresh_token_expires_in": "soon", "authorization_expires_in": "120",
            })),
            now(),
        );
        assert_eq!(
            tokens.authorization_expires_at,
            Some(now() + chrono::Duration::seconds(120))
        );
    }
}
