//! Who is calling: [`AuthUser`] (the main app's HS256 JWT, `sub` = user id) and
//! [`AdminAuth`] (the admin bearer token, compared in constant time). As extractors, a
//! handler's signature says which one it needs.

use axum::{extract::FromRequestParts, http::request::Parts};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::{
    AppState, Error,
    auth_throttle::{client_ip, retry_after_secs},
};
use crate::{crypto::secrets_match, ids::UserId};

/// A caller authenticated by the main app's JWT.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub user_id: UserId,
}

/// A caller holding the admin token.
#[derive(Debug, Clone, Copy)]
pub struct AdminAuth;

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

/// User ids are 1 to 50 characters of `A-Z a-z 0-9 - _ . @` (docs/api.md: User routes).
pub fn valid_user_id(id: &str) -> bool {
    (1..=50).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Checks an HS256 JWT: signature, `exp` present and in the future (no leeway), and a valid
/// `sub`. `alg: none` and every other algorithm are refused.
pub fn verify_jwt(token: &str, secret: &[u8]) -> Result<UserId, Error> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "sub"]);
    let data =
        jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(secret), &validation)
            .map_err(|_| Error::Unauthorized("invalid or expired token"))?;
    if !valid_user_id(&data.claims.sub) {
        return Err(Error::Unauthorized("token subject is not a valid user id"));
    }
    Ok(UserId::from(data.claims.sub))
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let token = bearer(parts).ok_or(Error::Unauthorized("missing bearer token"))?;
        let user_id = verify_jwt(token, state.config.jwt_secret.expose_secret().as_bytes())?;
        Ok(Self { user_id })
    }
}

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = Error;

    /// A client that sent too many wrong tokens is answered `429` before its token is looked
    /// at, right or wrong (`auth_throttle`); a missing token is no guess and is not counted.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let client = client_ip(&parts.extensions);
        state
            .auth_throttle
            .check(client)
            .map_err(|wait| Error::TooManyRequests {
                retry_after_secs: retry_after_secs(wait),
            })?;
        let token = bearer(parts).ok_or(Error::Unauthorized("missing admin token"))?;
        if secrets_match(token, &state.config.admin_token) {
            Ok(Self)
        } else {
            state.auth_throttle.failed(client);
            tracing::warn!(peer = %client, "wrong admin token");
            Err(Error::Unauthorized("invalid admin token"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn sign(claims: serde_json::Value, secret: &[u8]) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn good_token_gives_its_subject() {
        let token = sign(json!({"sub": "alice@example.com", "exp": now() + 60}), b"s");
        assert_eq!(verify_jwt(&token, b"s").unwrap(), "alice@example.com");
    }

    #[test]
    fn bad_tokens_are_refused() {
        let cases = [
            sign(json!({"sub": "alice", "exp": now() + 60}), b"other"),
            sign(json!({"sub": "alice", "exp": now() - 1}), b"s"),
            sign(json!({"sub": "alice"}), b"s"),
            sign(json!({"sub": "", "exp": now() + 60}), b"s"),
            sign(json!({"sub": "a/b", "exp": now() + 60}), b"s"),
            sign(json!({"sub": "x".repeat(51), "exp": now() + 60}), b"s"),
            "not.a.jwt".to_string(),
        ];
        for token in cases {
            assert!(verify_jwt(&token, b"s").is_err(), "{token}");
        }
    }

    #[test]
    fn alg_none_is_refused() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let claims = b64.encode(format!(r#"{{"sub":"alice","exp":{}}}"#, now() + 60));
        let token = format!("{header}.{claims}.");
        assert!(verify_jwt(&token, b"s").is_err());
    }
}
