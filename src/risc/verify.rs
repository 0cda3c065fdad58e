//! Checking a Security Event Token (docs/contract.md section 10, RFC 8417): `RS256` only (never
//! `none`, never a symmetric algorithm that would take the public key as a secret), by a key of
//! Google's set looked up by `kid`; `iss` the configuration's issuer, `aud` the OAuth client id,
//! `iat` and `jti` present, no `exp` required but one that is present and past refuses it. Each
//! refusal carries RFC 8935's error code. Must not touch: the store, the actions.

use std::collections::HashMap;

use jsonwebtoken::{Algorithm, Validation, errors::ErrorKind};
use serde::Deserialize;

use super::keys::{KeyError, RiscKeys};

/// Why a SET is refused, as RFC 8935 names it (`err`) with a description.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    InvalidKey(String),
    #[error("the SET's issuer is not Google's RISC issuer")]
    InvalidIssuer,
    #[error("the SET is not addressed to this OAuth client")]
    InvalidAudience,
    /// Google's keys could not be fetched: the SET may be good, say so and let Google retry.
    #[error("{0}")]
    KeysUnavailable(String),
}

impl SetError {
    /// RFC 8935's `err` value.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidKey(_) => "invalid_key",
            Self::InvalidIssuer => "invalid_issuer",
            Self::InvalidAudience => "invalid_audience",
            Self::KeysUnavailable(_) => "invalid_key",
        }
    }
}

/// The claims of a verified SET that the service uses.
#[derive(Debug, Clone, Deserialize)]
pub struct SetClaims {
    pub jti: String,
    /// Event type URI to its payload (`subject`, `reason`, `state`, ...).
    pub events: HashMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct Raw {
    jti: Option<String>,
    iat: Option<serde_json::Value>,
    events: Option<HashMap<String, serde_json::Value>>,
}

/// The `alg` a JWT's header names, read without trusting anything else in it.
fn named_alg(token: &str) -> Option<String> {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let header = URL_SAFE_NO_PAD.decode(token.split('.').next()?).ok()?;
    let header: serde_json::Value = serde_json::from_slice(&header).ok()?;
    let alg = header.get("alg")?.as_str()?;
    Some(alg.chars().take(20).collect())
}

/// Verifies `token` against Google's keys for `client_id`.
pub async fn verify(token: &str, keys: &RiscKeys, client_id: &str) -> Result<SetClaims, SetError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| match named_alg(token) {
        // A JWT whose algorithm the library does not even know (`none`, say).
        Some(alg) => SetError::InvalidKey(format!("algorithm {alg:?} is not accepted: RS256 only")),
        None => SetError::InvalidRequest("the body is not a signed JWT".into()),
    })?;
    if header.alg != Algorithm::RS256 {
        return Err(SetError::InvalidKey(format!(
            "algorithm {:?} is not accepted: RS256 only",
            header.alg
        )));
    }
    let kid = header
        .kid
        .ok_or_else(|| SetError::InvalidKey("the SET names no key (kid)".into()))?;
    let (key, issuer) = keys.key(&kid).await.map_err(|e| match e {
        KeyError::UnknownKid(_) => SetError::InvalidKey(e.to_string()),
        KeyError::Unavailable(_) => SetError::KeysUnavailable(e.to_string()),
    })?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[client_id]);
    validation.set_required_spec_claims(&["iss", "aud"]);
    validation.validate_exp = true;
    validation.leeway = 0;
    let data =
        jsonwebtoken::decode::<Raw>(token, &key, &validation).map_err(|e| match e.kind() {
            ErrorKind::InvalidIssuer => SetError::InvalidIssuer,
            ErrorKind::InvalidAudience => SetError::InvalidAudience,
            ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => SetError::InvalidIssuer,
            ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => SetError::InvalidAudience,
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::InvalidRsaKey(_) => {
                SetError::InvalidKey("the signature does not verify".into())
            }
            ErrorKind::ExpiredSignature => SetError::InvalidRequest("the SET has expired".into()),
            _ => SetError::InvalidRequest(format!("the SET cannot be read: {e}")),
        })?;
    let raw = data.claims;
    let jti = raw
        .jti
        .filter(|j| !j.is_empty() && j.len() <= 255)
        .ok_or_else(|| SetError::InvalidRequest("the SET has no jti".into()))?;
    if raw.iat.is_none() {
        return Err(SetError::InvalidRequest("the SET has no iat".into()));
    }
    let events = raw
        .events
        .filter(|events| !events.is_empty())
        .ok_or_else(|| SetError::InvalidRequest("the SET has no events".into()))?;
    Ok(SetClaims { jti, events })
}
