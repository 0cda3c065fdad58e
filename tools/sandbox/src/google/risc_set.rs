//! Security Event Tokens as Google sends them (RFC 8417, pushed as RFC 8935 says): the event
//! types of docs/contract.md section 10, their subjects, the claims (`iss`, `aud`, `iat`, a random
//! `jti`, `events`, no `exp`), the RS256 signature by the transmitter's current key, and the POST
//! to the receiver with `Content-Type: application/secevent+jwt`, whose answer is recorded.
//!
//! Tests of a receiver also need SETs that must be refused, so a SET can be forged on request
//! (another key under the current `kid`, a key no JWKS names, a retired key, HS256 keyed with
//! the public modulus), have any claim overridden, or be replaced by raw bytes.

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD},
};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::AlgorithmParameters};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha512};

use super::{
    Inner,
    risc_keys::{KeyRole, SigningKey, shared_key},
    state::random_string,
};

/// The only delivery method: the transmitter POSTs each SET to the receiver.
pub const PUSH_DELIVERY: &str = "https://schemas.openid.net/secevent/risc/delivery-method/push";

/// The media type of a pushed SET (RFC 8935).
pub const SET_CONTENT_TYPE: &str = "application/secevent+jwt";

const OAUTH: &str = "https://schemas.openid.net/secevent/oauth/event-type/";
const RISC: &str = "https://schemas.openid.net/secevent/risc/event-type/";

/// Every event type the sandbox sends and a stream may request (docs/contract.md section 10's
/// table).
pub const SUPPORTED_EVENTS: [&str; 7] = [
    "https://schemas.openid.net/secevent/oauth/event-type/tokens-revoked",
    "https://schemas.openid.net/secevent/oauth/event-type/token-revoked",
    "https://schemas.openid.net/secevent/risc/event-type/account-disabled",
    "https://schemas.openid.net/secevent/risc/event-type/account-enabled",
    "https://schemas.openid.net/secevent/risc/event-type/sessions-revoked",
    "https://schemas.openid.net/secevent/risc/event-type/account-credential-change-required",
    "https://schemas.openid.net/secevent/risc/event-type/verification",
];

/// One security event. Account events name the account by its `sub` (the grant's, as
/// `/v1/userinfo` gives it); `token_revoked` names a refresh token by the identifier Google
/// would send for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RiscEvent {
    TokensRevoked {
        sub: String,
    },
    AccountDisabled {
        sub: String,
        /// `hijacking` or `bulk-account` at Google; absent if unset.
        #[serde(default)]
        reason: Option<String>,
    },
    SessionsRevoked {
        sub: String,
    },
    AccountEnabled {
        sub: String,
    },
    AccountCredentialChangeRequired {
        sub: String,
    },
    Verification {
        #[serde(default)]
        state: Option<String>,
    },
    TokenRevoked {
        /// The raw refresh token; only its identifier is sent.
        refresh_token: String,
        #[serde(default)]
        token_identifier_alg: TokenIdentifierAlg,
        /// Base64 alphabet of the hash: URL-safe instead of standard.
        #[serde(default)]
        url_safe: bool,
        /// Whether the hash keeps its `=` padding.
        #[serde(default = "yes")]
        padding: bool,
    },
}

fn yes() -> bool {
    true
}

/// How a `token-revoked` event names the token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenIdentifierAlg {
    /// The token's first 16 characters.
    Prefix,
    /// Base64 of SHA-512 over the raw SHA-512 digest of the token.
    #[default]
    HashBase64Sha512Sha512,
}

impl RiscEvent {
    /// A `token-revoked` naming `refresh_token` by Google's hash, standard base64, padded.
    pub fn token_revoked(refresh_token: impl Into<String>, alg: TokenIdentifierAlg) -> Self {
        Self::TokenRevoked {
            refresh_token: refresh_token.into(),
            token_identifier_alg: alg,
            url_safe: false,
            padding: true,
        }
    }

    /// The event type URI, the key of the SET's `events`.
    pub fn event_type(&self) -> String {
        let name = match self {
            Self::TokensRevoked { .. } => return format!("{OAUTH}tokens-revoked"),
            Self::TokenRevoked { .. } => return format!("{OAUTH}token-revoked"),
            Self::AccountDisabled { .. } => "account-disabled",
            Self::SessionsRevoked { .. } => "sessions-revoked",
            Self::AccountEnabled { .. } => "account-enabled",
            Self::AccountCredentialChangeRequired { .. } => "account-credential-change-required",
            Self::Verification { .. } => "verification",
        };
        format!("{RISC}{name}")
    }

    /// The account's `sub` the event names, if it names one.
    pub(super) fn sub(&self) -> Option<&str> {
        match self {
            Self::TokensRevoked { sub }
            | Self::AccountDisabled { sub, .. }
            | Self::SessionsRevoked { sub }
            | Self::AccountEnabled { sub }
            | Self::AccountCredentialChangeRequired { sub } => Some(sub),
            Self::Verification { .. } | Self::TokenRevoked { .. } => None,
        }
    }

    /// The event's body under its type in `events`.
    fn payload(&self, issuer: &str) -> Value {
        let account = |sub: &str| json!({"subject_type": "iss-sub", "iss": issuer, "sub": sub});
        match self {
            Self::AccountDisabled { sub, reason } => {
                let mut body = json!({"subject": account(sub)});
                if let Some(reason) = reason {
                    body["reason"] = json!(reason);
                }
                body
            }
            Self::Verification { state } => match state {
                Some(state) => json!({"state": state}),
                None => json!({}),
            },
            Self::TokenRevoked {
                refresh_token,
                token_identifier_alg,
                url_safe,
                padding,
            } => {
                let token = match token_identifier_alg {
                    TokenIdentifierAlg::Prefix => refresh_token.chars().take(16).collect(),
                    TokenIdentifierAlg::HashBase64Sha512Sha512 => {
                        token_hash(refresh_token, *url_safe, *padding)
                    }
                };
                json!({"subject": {
                    "subject_type": "oauth_token",
                    "token_type": "refresh_token",
                    "token_identifier_alg": token_identifier_alg,
                    "token": token,
                }})
            }
            other => json!({"subject": account(other.sub().unwrap_or_default())}),
        }
    }
}

/// `hash_base64_sha512_sha512`: base64 of SHA-512 over the raw SHA-512 digest of `token`.
pub fn token_hash(token: &str, url_safe: bool, padding: bool) -> String {
    let digest = Sha512::digest(Sha512::digest(token.as_bytes()));
    match (url_safe, padding) {
        (false, true) => STANDARD.encode(digest),
        (false, false) => STANDARD_NO_PAD.encode(digest),
        (true, true) => URL_SAFE.encode(digest),
        (true, false) => URL_SAFE_NO_PAD.encode(digest),
    }
}

/// How a SET is signed: properly, or forged in one of the ways a receiver must refuse.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetSigning {
    /// RS256 with the current key, its `kid` in the header.
    #[default]
    Current,
    /// RS256 with a key the JWKS does not hold, under the current key's `kid`.
    ForeignKey,
    /// RS256 with a key the JWKS does not hold, under that key's own `kid`.
    UnknownKid,
    /// RS256 with the key the last rotation retired, under its `kid`.
    Retired,
    /// HS256 keyed with the current key's public modulus (`n`), under its `kid`: the
    /// algorithm-confusion forgery.
    Hs256,
}

/// Changes to a SET and its delivery; every field is optional.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SetOptions {
    /// The `jti` (random when unset), e.g. to send the same SET twice.
    #[serde(default)]
    pub jti: Option<String>,
    /// The `aud`, a string or a list (see [`super::SandboxGoogle::send_risc_event`]).
    #[serde(default)]
    pub aud: Option<Value>,
    /// The `iss` of the SET and of its subject (the configuration's issuer when unset).
    #[serde(default)]
    pub iss: Option<String>,
    /// The `iat` in Unix seconds (now when unset).
    #[serde(default)]
    pub iat: Option<i64>,
    /// An `exp` in Unix seconds; Google sends none.
    #[serde(default)]
    pub exp: Option<i64>,
    #[serde(default)]
    pub signing: SetSigning,
    /// Deliver here instead of to the registered receiver.
    #[serde(default)]
    pub url: Option<String>,
}

/// One SET sent, and what the receiver answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentSet {
    /// The SET's `jti` (empty for raw bodies).
    pub jti: String,
    /// The event type URI (empty for raw bodies).
    pub event_type: String,
    pub url: String,
    /// The receiver's status, if it answered.
    pub status: Option<u16>,
    /// Why no answer came, if none did.
    pub error: Option<String>,
    /// The receiver's answer body.
    pub response_body: String,
    /// What was sent: the SET (a JWT) or the raw body.
    pub body: String,
    pub sent_at: DateTime<Utc>,
}

impl SentSet {
    /// Whether the receiver took the SET (any 2xx; docs/contract.md section 10 answers 202).
    pub fn accepted(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

impl Inner {
    /// The `aud` of a SET: the configured client id, else the client of the grant the event
    /// names, else of the latest grant, else a placeholder.
    fn set_audience(&self, event: &RiscEvent) -> Value {
        if let Some(id) = &self.client_id {
            return json!(id);
        }
        let state = self.state();
        let named = match event {
            RiscEvent::TokenRevoked { refresh_token, .. } => state.grant_of(refresh_token),
            other => other
                .sub()
                .and_then(|s| s.parse::<usize>().ok())
                .and_then(|n| n.checked_sub(1)),
        };
        let grant = named
            .and_then(|i| state.grants.get(i))
            .or(state.grants.last());
        json!(grant.map_or("sandbox-client-id", |g| &*g.client_id))
    }

    /// The claims of `event` as Google would send them, with `options`' overrides.
    pub(super) fn set_claims(&self, event: &RiscEvent, options: &SetOptions) -> Value {
        let issuer = options.iss.clone().unwrap_or_else(|| self.risc_issuer());
        let mut claims = json!({
            "iss": issuer,
            "aud": options.aud.clone().unwrap_or_else(|| self.set_audience(event)),
            "iat": options.iat.unwrap_or_else(|| Utc::now().timestamp()),
            "jti": options.jti.clone().unwrap_or_else(|| random_string(32)),
            "events": {event.event_type(): event.payload(&issuer)},
        });
        if let Some(exp) = options.exp {
            claims["exp"] = json!(exp);
        }
        claims
    }

    /// Signs `claims` as `signing` says.
    pub(super) async fn sign_set(
        &self,
        claims: &Value,
        signing: SetSigning,
    ) -> anyhow::Result<String> {
        let current = self.risc_key().await?;
        let rs256 = |key: &SigningKey, kid: &str| key.sign_as(kid, claims);
        let token = match signing {
            SetSigning::Current => rs256(&current, current.kid())?,
            SetSigning::ForeignKey => rs256(&*shared_key(KeyRole::Foreign).await?, current.kid())?,
            SetSigning::UnknownKid => {
                let foreign = shared_key(KeyRole::Foreign).await?;
                rs256(&foreign, foreign.kid())?
            }
            SetSigning::Retired => {
                let retired = self.risc().retired.last().cloned();
                let retired = retired
                    .ok_or_else(|| anyhow::anyhow!("no key was retired: rotate the key first"))?;
                rs256(&retired, retired.kid())?
            }
            SetSigning::Hs256 => {
                let AlgorithmParameters::RSA(rsa) = &current.jwk().algorithm else {
                    anyhow::bail!("the signing key is not an RSA key");
                };
                let mut header = Header::new(Algorithm::HS256);
                header.kid = Some(current.kid().to_owned());
                let key = EncodingKey::from_secret(rsa.n.as_bytes());
                jsonwebtoken::encode(&header, claims, &key)?
            }
        };
        Ok(token)
    }

    /// Builds, signs and delivers `event`; records and returns the receiver's answer.
    pub(super) async fn send_event(
        &self,
        event: RiscEvent,
        options: SetOptions,
    ) -> anyhow::Result<SentSet> {
        let claims = self.set_claims(&event, &options);
        let token = self.sign_set(&claims, options.signing).await?;
        let jti = claims["jti"].as_str().unwrap_or_default().to_owned();
        let mut sent = self
            .deliver(token.into_bytes(), SET_CONTENT_TYPE, options.url)
            .await?;
        sent.jti = jti;
        sent.event_type = event.event_type();
        self.risc().record_sent(sent.clone());
        tracing::debug!(event = %sent.event_type, status = ?sent.status, "sandbox sent a SET");
        Ok(sent)
    }

    /// Delivers a raw body (any bytes, any content type); records the answer.
    pub(super) async fn send_raw(
        &self,
        body: Vec<u8>,
        content_type: &str,
        url: Option<String>,
    ) -> anyhow::Result<SentSet> {
        let sent = self.deliver(body, content_type, url).await?;
        self.risc().record_sent(sent.clone());
        Ok(sent)
    }

    /// POSTs `body` to `url` or the registered receiver; an unreachable receiver is an
    /// answer (recorded), not an error.
    async fn deliver(
        &self,
        body: Vec<u8>,
        content_type: &str,
        url: Option<String>,
    ) -> anyhow::Result<SentSet> {
        let (url, http) = {
            let risc = self.risc();
            let url = url.or_else(|| risc.stream.as_ref().map(|s| s.delivery.url.clone()));
            let url = url.ok_or_else(|| {
                anyhow::anyhow!("no receiver is registered (stream:update) and no url was given")
            })?;
            (url, risc.http.clone())
        };
        let mut sent = SentSet {
            jti: String::new(),
            event_type: String::new(),
            url: url.clone(),
            status: None,
            error: None,
            response_body: String::new(),
            body: String::from_utf8_lossy(&body).into_owned(),
            sent_at: Utc::now(),
        };
        let answer = http
            .post(&url)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await;
        match answer {
            Ok(response) => {
                sent.status = Some(response.status().as_u16());
                sent.response_body = response.text().await.unwrap_or_default();
            }
            Err(e) => sent.error = Some(e.to_string()),
        }
        Ok(sent)
    }
}
