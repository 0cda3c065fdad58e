//! What a push carries beyond SEED.md's body (docs/contract.md section 5a): its `Token-Version`,
//! and its Standard Webhooks signature (`webhook-id`, `webhook-timestamp`, `webhook-signature`),
//! checked with the `standardwebhooks` crate against one secret or, during a rotation, several,
//! and then bound to its request by `binding`.

use std::fmt;

use axum::http::{HeaderMap, Method, StatusCode, request::Parts};
use standardwebhooks::{Webhook, WebhookError};

use super::{ApiError, Inner, binding};

/// The header carrying the user's change counter.
pub const TOKEN_VERSION_HEADER: &str = "token-version";

/// The prefix of a Standard Webhooks secret; what follows is base64.
const SECRET_PREFIX: &str = "whsec_";

/// The secrets a push may be signed with: one, or during a rotation several (any may match).
pub(super) struct SigningKeys {
    keys: Vec<Webhook>,
}

impl fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKeys({} redacted)", self.keys.len())
    }
}

impl SigningKeys {
    /// Parses `whsec_<base64>`, or several comma-separated. Errors name the position of a bad
    /// secret, never its content.
    pub(super) fn parse(secrets: &str) -> anyhow::Result<Self> {
        let keys = secrets
            .split(',')
            .map(str::trim)
            .enumerate()
            .map(|(i, secret)| {
                let position = i + 1;
                let encoded = secret.strip_prefix(SECRET_PREFIX).ok_or_else(|| {
                    anyhow::anyhow!("signing secret {position} must look like whsec_<base64>")
                })?;
                if encoded.is_empty() {
                    anyhow::bail!("signing secret {position} is empty after whsec_");
                }
                Webhook::new(secret).map_err(|_| {
                    anyhow::anyhow!("signing secret {position} is not valid base64 after whsec_")
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self { keys })
    }

    /// Checks the push's signature over exactly `body`: valid when any secret verifies it
    /// (a `webhook-signature` may itself hold several). On failure, the first secret's reason:
    /// missing headers and a timestamp out of tolerance fail alike for every secret.
    pub(super) fn verify(&self, body: &[u8], headers: &HeaderMap) -> Result<(), WebhookError> {
        let mut first_error = None;
        for key in &self.keys {
            match key.verify(body, headers) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or(WebhookError::InvalidSignature))
    }
}

impl Inner {
    /// Why a push is refused (`401`) when signing is configured: no valid signature over its
    /// exact body, or a signed body not bound to this request (`binding`). Only pushes (POST
    /// and DELETE) are signed: the sandbox's token read is not one.
    pub(super) fn push_refusal(
        &self,
        method: &Method,
        user_id: &str,
        body: &[u8],
        headers: &HeaderMap,
    ) -> Option<ApiError> {
        let keys = self.signing.as_ref()?;
        if *method != Method::POST && *method != Method::DELETE {
            return None;
        }
        if let Err(reason) = keys.verify(body, headers) {
            // The reason is the crate's (a missing header, a timestamp out of tolerance, no
            // signature matching); it never includes a secret.
            tracing::warn!(%reason, "reference microservice refused a push: bad webhook signature");
            return Some(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Invalid webhook signature",
            ));
        }
        if let Err(reason) = binding::check(method, user_id, headers, body) {
            // A valid signature over a body meant for another request: a replay.
            tracing::warn!(
                %reason,
                "reference microservice refused a push: signed body not bound to it"
            );
            return Some(ApiError::new(
                StatusCode::UNAUTHORIZED,
                format!("Invalid webhook payload: {reason}"),
            ));
        }
        None
    }
}

/// The push's `Token-Version`, when it sent one: a positive integer.
pub(super) struct TokenVersion(pub(super) Option<i64>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for TokenVersion {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parse_token_version(&parts.headers).map(Self)
    }
}

/// `None` without the header (a sender that does not version); `400` unless it is exactly one
/// positive decimal integer that fits the `BIGINT` column.
pub(super) fn parse_token_version(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let mut values = headers.get_all(TOKEN_VERSION_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let malformed = || ApiError::bad_request("Invalid Token-Version: must be one positive integer");
    if values.next().is_some() {
        return Err(malformed());
    }
    let text = value.to_str().map_err(|_| malformed())?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    match text.parse::<i64>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(malformed()),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(TOKEN_VERSION_HEADER, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn token_version_is_one_positive_integer() {
        assert_eq!(parse_token_version(&headers(&[])).unwrap(), None);
        assert_eq!(parse_token_version(&headers(&["7"])).unwrap(), Some(7));
        assert_eq!(
            parse_token_version(&headers(&["9223372036854775807"])).unwrap(),
            Some(i64::MAX)
        );
        for bad in [
            &["0"][..],
            &["-1"],
            &["+3"],
            &["1.5"],
            &["abc"],
            &[""],
            &["9223372036854775808"],
            &["1", "2"],
        ] {
            assert!(parse_token_version(&headers(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secrets_parse_one_or_several_and_never_echo_a_bad_one() {
        let one = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
        assert_eq!(SigningKeys::parse(one).unwrap().keys.len(), 1);
        let two = format!("{one}, whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert_eq!(SigningKeys::parse(&two).unwrap().keys.len(), 2);
        for bad in [
            "",
            "C2FVsBQIhrscChlQIMV",
            "whsec_",
            "whsec_not*base64!",
            "whsec_AAAA,",
        ] {
            let error = SigningKeys::parse(bad).unwrap_err().to_string();
            assert!(error.starts_with("signing secret"), "{bad}: {error}");
            assert!(!error.contains("base64!"), "{error}");
        }
        assert!(!format!("{:?}", SigningKeys::parse(one).unwrap()).contains("C2FV"));
    }
}
