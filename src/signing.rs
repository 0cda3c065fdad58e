//! Standard Webhooks signatures on every push and every event to the app (docs/microservice.md: Writing a
//! microservice), made by the `standardwebhooks` crate, never by hand. Owns the signing keys
//! and the three headers; a leaf below `config`, which builds signers from the secrets. Must
//! not touch HTTP or the store.
//!
//! During a secret rotation several secrets are configured and each push carries one
//! signature by each, space-separated, so every receiver can verify with whichever secret it
//! has. The `webhook-id` is derived from the user and the `Token-Version`: every retry of one
//! change carries the same id, every other change another, so receivers can drop duplicates.
//!
//! The signature covers the body only, not the URL, the method or the `Token-Version` header,
//! so a signed body also names its user and version ([`Binding`], docs/contract.md section 5a): a
//! push captured on the wire cannot be replayed for another user, with another version, or as a
//! DELETE, because the receiver refuses a signed body that disagrees with the request.

use http::{HeaderMap, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::{Digest, Sha256};
use standardwebhooks::{
    HEADER_WEBHOOK_ID, HEADER_WEBHOOK_SIGNATURE, HEADER_WEBHOOK_TIMESTAMP, Webhook,
};

use crate::ids::TokenVersion;

/// The prefix of a Standard Webhooks secret.
const SECRET_PREFIX: &str = "whsec_";

/// Why a configured signing secret cannot be used (never showing the secret).
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret {position} of {count} does not start with whsec_")]
    Prefix { position: usize, count: usize },
    #[error("secret {position} of {count} is not valid base64 after whsec_")]
    Base64 { position: usize, count: usize },
    #[error("secret {position} of {count} is empty")]
    Empty { position: usize, count: usize },
}

/// What a signed push's body carries besides the seed's fields: the user of its URL and its
/// `Token-Version` (a JSON number), so the signature covers both. A signed DELETE's body is
/// exactly this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Binding<'a> {
    pub user_id: &'a str,
    pub token_version: TokenVersion,
}

/// Signs pushes with one or more secrets.
pub struct Signer {
    keys: Vec<Webhook>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} secrets)", self.keys.len())
    }
}

impl Signer {
    /// Parses `whsec_<base64>` secrets, comma-separated (two during a rotation).
    pub fn from_secrets(value: &SecretString) -> Result<Self, SecretError> {
        let parts: Vec<&str> = value.expose_secret().split(',').map(str::trim).collect();
        let count = parts.len();
        let mut keys = Vec::with_capacity(count);
        for (i, part) in parts.iter().enumerate() {
            let position = i + 1;
            let Some(encoded) = part.strip_prefix(SECRET_PREFIX) else {
                return Err(SecretError::Prefix { position, count });
            };
            if encoded.is_empty() {
                return Err(SecretError::Empty { position, count });
            }
            let key = Webhook::new(encoded).map_err(|_| SecretError::Base64 { position, count })?;
            keys.push(key);
        }
        Ok(Self { keys })
    }

    /// The three Standard Webhooks headers for `body`, sent at `timestamp` (Unix seconds).
    pub fn headers(
        &self,
        user_id: &str,
        version: TokenVersion,
        timestamp: i64,
        body: &[u8],
    ) -> HeaderMap {
        self.headers_with_id(&message_id(user_id, version), timestamp, body)
    }

    /// The three headers for `body` under a message id the caller keeps (an event to the
    /// app's stored id, the same on every attempt), sent at `timestamp` (Unix seconds).
    pub fn headers_with_id(&self, id: &str, timestamp: i64, body: &[u8]) -> HeaderMap {
        let signatures: Vec<String> = self
            .keys
            .iter()
            // Only a body that is not UTF-8 fails, and pushes are JSON or empty.
            .filter_map(|key| key.sign(id, timestamp, body).ok())
            .collect();
        let mut headers = HeaderMap::new();
        let mut put = |name: &'static str, value: String| {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        };
        put(HEADER_WEBHOOK_ID, id.to_string());
        put(HEADER_WEBHOOK_TIMESTAMP, timestamp.to_string());
        put(HEADER_WEBHOOK_SIGNATURE, signatures.join(" "));
        headers
    }
}

/// `msg_` and the first 128 bits of SHA-256 over the user and the version: stable across the
/// retries of one change, different for every other change.
pub fn message_id(user_id: &str, version: TokenVersion) -> String {
    let digest = Sha256::digest(format!("{user_id}\n{version}").as_bytes());
    format!("msg_{}", hex::encode(&digest[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET_A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SECRET_B: &str = "whsec_c2Vjb25kLXNlY3JldC1vZi10aGUtcm90YXRpb24=";

    fn verify(secret: &str, body: &[u8], headers: &HeaderMap) -> bool {
        Webhook::new(secret).unwrap().verify(body, headers).is_ok()
    }

    #[test]
    fn each_configured_secret_signs_and_verifies() {
        let signer = Signer::from_secrets(&format!("{SECRET_A}, {SECRET_B}").into()).unwrap();
        let now = chrono::Utc::now().timestamp();
        let body = br#"{"access_token":"a"}"#;
        let headers = signer.headers("alice", TokenVersion::new(7), now, body);
        assert!(verify(SECRET_A, body, &headers));
        assert!(verify(SECRET_B, body, &headers));
        assert!(!verify(SECRET_A, br#"{"access_token":"b"}"#, &headers));
        let signatures = headers[HEADER_WEBHOOK_SIGNATURE].to_str().unwrap();
        assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
    }

    #[test]
    fn a_given_message_id_is_sent_and_signed() {
        let signer = Signer::from_secrets(&SECRET_A.to_string().into()).unwrap();
        let now = chrono::Utc::now().timestamp();
        let body = br#"{"type":"connection.connected"}"#;
        let headers = signer.headers_with_id("msg_0123", now, body);
        assert_eq!(headers[HEADER_WEBHOOK_ID], "msg_0123");
        assert!(verify(SECRET_A, body, &headers));
    }

    #[test]
    fn message_id_is_stable_per_change_and_distinct_across_changes() {
        assert_eq!(
            message_id("alice", TokenVersion::new(3)),
            message_id("alice", TokenVersion::new(3))
        );
        assert_ne!(
            message_id("alice", TokenVersion::new(3)),
            message_id("alice", TokenVersion::new(4))
        );
        assert_ne!(
            message_id("alice", TokenVersion::new(3)),
            message_id("bob", TokenVersion::new(3))
        );
        // A user id cannot forge another user's id by carrying the separator's digits.
        assert_ne!(
            message_id("a1", TokenVersion::new(2)),
            message_id("a", TokenVersion::new(12))
        );
    }

    #[test]
    fn malformed_secrets_are_named_by_position_without_echoing() {
        for (value, expected) in [
            (
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "secret 1 of 1 does not start with whsec_",
            ),
            ("whsec_", "secret 1 of 1 is empty"),
            (
                &format!("{SECRET_A},whsec_@@@") as &str,
                "secret 2 of 2 is not valid base64 after whsec_",
            ),
        ] {
            let err = Signer::from_secrets(&value.to_string().into())
                .unwrap_err()
                .to_string();
            assert_eq!(err, expected);
        }
    }
}
