//! One push as a case describes it (which user, which version, which credentials to leave out
//! or spoil), built the way tokenwarden sends it and sent to the microservice under test; or a
//! push already put on the wire, replayed unchanged elsewhere as an attacker who captured it
//! would (docs/contract.md section 5a: a signed body names its user and version, so such a replay
//! is refused).

use reqwest::Method;
use serde_json::{Value, json};
use standardwebhooks::{HEADER_WEBHOOK_ID, HEADER_WEBHOOK_SIGNATURE, HEADER_WEBHOOK_TIMESTAMP};

use crate::Target;

/// The header carrying the user's change counter (docs/contract.md section 5a).
const TOKEN_VERSION: &str = "Token-Version";

/// What a push does with the bearer token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Bearer {
    /// Sends the configured one, if any.
    #[default]
    Configured,
    /// Sends none.
    Missing,
    /// Sends one that is not the configured one.
    Wrong,
}

/// What a push does with the signature.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Signing {
    /// Signed by every configured secret, if any.
    #[default]
    Valid,
    /// No `webhook-*` headers at all.
    Missing,
    /// Signed, then the body changed after signing.
    TamperedBody,
    /// Signed correctly, with a timestamp this many seconds off now.
    TimestampOffset(i64),
}

/// One request to the microservice.
#[derive(Clone, Debug)]
pub(crate) struct Push {
    pub(crate) method: Method,
    pub(crate) user_id: String,
    /// The JSON body (POST); `None` sends an empty body (DELETE). With a secret, the body also
    /// names the user and the version (a DELETE's is exactly those two).
    pub(crate) body: Option<Value>,
    pub(crate) version: Option<u64>,
    pub(crate) bearer: Bearer,
    pub(crate) signing: Signing,
}

impl Push {
    /// `POST /api/users/{user_id}/google-calendar/connect` with `body` at `version`.
    pub(crate) fn connect(user_id: &str, body: Value, version: u64) -> Self {
        Self {
            method: Method::POST,
            user_id: user_id.to_owned(),
            body: Some(body),
            version: Some(version),
            bearer: Bearer::default(),
            signing: Signing::default(),
        }
    }

    /// `DELETE /api/google-tokens/{user_id}` at `version`.
    pub(crate) fn delete(user_id: &str, version: u64) -> Self {
        Self {
            method: Method::DELETE,
            user_id: user_id.to_owned(),
            body: None,
            version: Some(version),
            bearer: Bearer::default(),
            signing: Signing::default(),
        }
    }

    pub(crate) fn with_bearer(mut self, bearer: Bearer) -> Self {
        self.bearer = bearer;
        self
    }

    pub(crate) fn with_signing(mut self, signing: Signing) -> Self {
        self.signing = signing;
        self
    }
}

/// What the microservice answered, or why there was no answer.
#[derive(Clone, Debug)]
pub(crate) enum Answer {
    /// A status and the body, parsed when it was JSON.
    Status(u16, Option<Value>),
    /// No answer: refused, reset, timed out.
    Failed(String),
}

impl Answer {
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            Self::Status(status, _) => Some(*status),
            Self::Failed(_) => None,
        }
    }

    pub(crate) fn body(&self) -> Option<&Value> {
        match self {
            Self::Status(_, body) => body.as_ref(),
            Self::Failed(_) => None,
        }
    }

    /// The status as the table shows it, or `error` with the reason.
    pub(crate) fn short(&self) -> String {
        match self {
            Self::Status(status, _) => status.to_string(),
            Self::Failed(reason) => format!("error ({reason})"),
        }
    }
}

/// A push as it goes on the wire: built once, sent as is or replayed unchanged to another URL,
/// with another method or another `Token-Version` header.
#[derive(Clone, Debug)]
pub(crate) struct Wire {
    method: Method,
    /// The user of the URL it goes to.
    user_id: String,
    /// The bytes sent (after any tampering).
    body: Vec<u8>,
    /// Every header but `Content-Type`, which goes with a non-empty body.
    headers: Vec<(&'static str, String)>,
}

impl Wire {
    /// The same bytes and headers sent to `user_id`'s URL of the same method.
    pub(crate) fn for_user(mut self, user_id: &str) -> Self {
        user_id.clone_into(&mut self.user_id);
        self
    }

    /// The same bytes and headers sent with `method` (to that method's URL).
    pub(crate) fn with_method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }

    /// The same bytes and headers but `Token-Version`, which is `version`.
    pub(crate) fn with_version(mut self, version: u64) -> Self {
        self.headers.retain(|(name, _)| *name != TOKEN_VERSION);
        self.headers.push((TOKEN_VERSION, version.to_string()));
        self
    }

    fn path(&self) -> String {
        if self.method == Method::DELETE {
            format!("/api/google-tokens/{}", self.user_id)
        } else {
            format!("/api/users/{}/google-calendar/connect", self.user_id)
        }
    }
}

impl Target {
    /// Sends `push`, signed and authenticated as it asks.
    pub(crate) async fn send(&self, push: &Push) -> Answer {
        match self.wire(push) {
            Ok(wire) => self.deliver(&wire).await,
            Err(reason) => Answer::Failed(reason),
        }
    }

    /// Puts `push` on the wire as tokenwarden would: with a secret, its body names its user
    /// and version (a DELETE's body is exactly those two) and is signed by every secret.
    /// Fails only when it cannot be signed.
    pub(crate) fn wire(&self, push: &Push) -> Result<Wire, String> {
        let mut headers = Vec::new();
        if let Some(version) = push.version {
            headers.push((TOKEN_VERSION, version.to_string()));
        }
        match (push.bearer, &self.bearer) {
            (Bearer::Configured, Some(token)) => {
                headers.push(("authorization", format!("Bearer {token}")));
            }
            (Bearer::Wrong, _) => {
                let wrong = format!("Bearer wrong-{:016x}", rand::random::<u64>());
                headers.push(("authorization", wrong));
            }
            _ => {}
        }
        let mut body = push.body.clone();
        if !self.keys.is_empty() {
            let binding = json!({"user_id": push.user_id, "token_version": push.version});
            body = match (&push.method, body) {
                (&Method::DELETE, _) | (_, None) => Some(binding),
                (_, Some(mut fields)) => {
                    if let Some(fields) = fields.as_object_mut() {
                        fields.insert("user_id".into(), binding["user_id"].clone());
                        fields.insert("token_version".into(), binding["token_version"].clone());
                    }
                    Some(fields)
                }
            };
        }
        let body = body
            .map(|b| serde_json::to_vec(&b).unwrap_or_default())
            .unwrap_or_default();
        let mut sent = body.clone();
        if push.signing != Signing::Missing && !self.keys.is_empty() {
            let offset = match push.signing {
                Signing::TimestampOffset(seconds) => seconds,
                _ => 0,
            };
            let timestamp = chrono::Utc::now().timestamp() + offset;
            // Like tokenwarden's: the same for every retry of one change, distinct otherwise.
            let id = format!(
                "msg_{}_{}",
                push.user_id,
                push.version
                    .map_or_else(|| "0".to_owned(), |v| v.to_string())
            );
            let signatures = self
                .keys
                .iter()
                .map(|key| key.sign(&id, timestamp, &body))
                .collect::<Result<Vec<String>, _>>()
                .map_err(|e| format!("cannot sign: {e}"))?;
            headers.push((HEADER_WEBHOOK_ID, id));
            headers.push((HEADER_WEBHOOK_TIMESTAMP, timestamp.to_string()));
            headers.push((HEADER_WEBHOOK_SIGNATURE, signatures.join(" ")));
            if push.signing == Signing::TamperedBody {
                sent = tamper(&body);
            }
        }
        Ok(Wire {
            method: push.method.clone(),
            user_id: push.user_id.clone(),
            body: sent,
            headers,
        })
    }

    /// Sends `wire` exactly as built.
    pub(crate) async fn deliver(&self, wire: &Wire) -> Answer {
        let url = format!("{}{}", self.base_url, wire.path());
        let mut request = self.http.request(wire.method.clone(), url);
        for (name, value) in &wire.headers {
            request = request.header(*name, value);
        }
        if !wire.body.is_empty() {
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json");
        }
        match request.body(wire.body.clone()).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response
                    .bytes()
                    .await
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                Answer::Status(status, body)
            }
            Err(e) => Answer::Failed(describe(&e)),
        }
    }
}

/// The body with its access token changed after signing, still valid JSON, so only the
/// signature can tell.
fn tamper(body: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<Value>(body) {
        Ok(mut value) => {
            value["access_token"] = Value::from("ya29.tampered-after-signing");
            serde_json::to_vec(&value).unwrap_or_default()
        }
        Err(_) => b"{}".to_vec(),
    }
}

/// A transport failure in a few words: the innermost cause, which names what went wrong.
fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "timed out".to_owned();
    }
    let mut cause: &dyn std::error::Error = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tampering_keeps_json_and_changes_the_token() {
        let body =
            serde_json::to_vec(&serde_json::json!({"access_token": "a", "scope": "s"})).unwrap();
        let tampered: Value = serde_json::from_slice(&tamper(&body)).unwrap();
        assert_eq!(tampered["scope"], "s");
        assert_ne!(tampered["access_token"], "a");
    }
}
