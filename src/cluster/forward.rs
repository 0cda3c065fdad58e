//! Admin calls about one user reach its owner wherever they land (CONTRACT section 8): a node
//! that does not run the user's actor asks the database which live node holds the user's
//! shard and repeats the call there, at that node's `NODE_ADVERTISE_URL`. The call carries a
//! credential for that one call (`credential`), never the admin token, and its answer is
//! relayed only if it proves the same key: the address comes from the database, and whoever
//! can change a row there must not receive the admin token nor answer the operator. A
//! forwarded call is answered where it arrives and never bounces.
//! Must not touch: the actors (the owner's own route answers), the store's writes.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use secrecy::SecretString;

use super::{
    ClusterNode,
    credential::{Call, ForwardKeys, Refused},
};
use crate::{config::without_userinfo, store::Store};

/// Carries a forwarded call's credential (`credential::ForwardKeys::sign`).
pub const FORWARDED_HEADER: &str = "tokenwarden-forwarded";
/// Carries the proof on the answer to a forwarded call.
pub const ANSWER_PROOF_HEADER: &str = "tokenwarden-forwarded-answer";
/// The routes that may be forwarded, as the router names them (the credential covers them).
pub const ACTOR_ROUTE: &str = "/admin/actors/{user_id}";
pub const ACTOR_REFRESH_ROUTE: &str = "/admin/actors/{user_id}/refresh";
/// Longest a forwarded admin call may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read from another node (an actor's view is well under a kilobyte).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// An answer relayed from the owner.
pub struct Relayed {
    pub status: StatusCode,
    pub body: serde_json::Value,
}

/// Why a call could not be relayed. Never holds a secret or the URL's userinfo.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The owner could not be found or reached: try again.
    #[error("{0}")]
    Unavailable(String),
    /// Something answered at the owner's address without proving it holds the cluster's key.
    #[error("{0}")]
    Unproven(String),
}

/// Repeats `method /admin/actors/{user_id}{suffix}` at the user's owner. `Ok(None)` when there
/// is no other owner to ask (a single node, no live owner, this node, or already forwarded).
pub async fn forward_admin(
    node: &ClusterNode,
    store: &Store,
    admin_token: &SecretString,
    method: Method,
    user_id: &str,
    suffix: &str,
    already_forwarded: bool,
) -> Result<Option<Relayed>, ForwardError> {
    if !node.ownership.is_cluster() || already_forwarded {
        return Ok(None);
    }
    let shard = node.ownership.shard_of(user_id);
    let owner = store
        .shard_owner(shard)
        .await
        .map_err(|e| ForwardError::Unavailable(format!("cannot find the user's node: {e}")))?;
    let Some((base, token)) = owner.filter(|(_, token)| *token != node.identity.process_token)
    else {
        return Ok(None);
    };
    // Errors name the URL without its userinfo: it may hold a proxy's password.
    let shown = without_userinfo(&base);
    let bad_url = || ForwardError::Unavailable(format!("bad advertise URL {shown}"));
    let mut url = url::Url::parse(&base).map_err(|_| bad_url())?;
    url.path_segments_mut()
        .map_err(|()| bad_url())?
        .pop_if_empty()
        .extend(["admin", "actors", user_id]);
    if !suffix.is_empty() {
        url.path_segments_mut()
            .map_err(|()| bad_url())?
            .push(suffix);
    }
    let route = if suffix.is_empty() {
        ACTOR_ROUTE
    } else {
        ACTOR_REFRESH_ROUTE
    };
    let keys = ForwardKeys::from_admin_token(admin_token);
    let call = Call {
        method: method.as_str(),
        route,
        user_id,
    };
    let signed = keys.sign(call, &token, now_ms());
    let unreachable = |e: reqwest::Error| {
        // Without the URL, which reqwest's errors would show with its userinfo.
        let e = e.without_url();
        ForwardError::Unavailable(format!("the user's node ({token:.8}…) did not answer: {e}"))
    };
    let mut response = node
        .http
        .request(method, url)
        .header(FORWARDED_HEADER, &signed.header)
        .timeout(FORWARD_TIMEOUT)
        .send()
        .await
        .map_err(unreachable)?;
    let status = response.status();
    let proof = response
        .headers()
        .get(ANSWER_PROOF_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(unproven(&shown, &token));
        }
        body.extend_from_slice(&chunk);
    }
    let proven = proof
        .is_some_and(|proof| keys.verify_answer(&signed.nonce, status.as_u16(), &body, &proof));
    if !proven {
        return Err(unproven(&shown, &token));
    }
    let body = serde_json::from_slice(&body)
        .map_err(|e| ForwardError::Unavailable(format!("the user's node answered no JSON: {e}")))?;
    Ok(Some(Relayed { status, body }))
}

/// An answer from the owner's address that does not prove the cluster's key: logged for the
/// operator (the address in the database may have been changed) and not relayed.
fn unproven(shown_url: &str, token: &str) -> ForwardError {
    tracing::warn!(
        advertiseUrl = %shown_url,
        owner = %format!("{token:.8}"),
        "a forwarded admin call was answered without the cluster's proof; not relayed"
    );
    ForwardError::Unproven(format!(
        "the address the database gives for the user's node ({shown_url}) answered without \
         proving it belongs to this cluster; the answer was not relayed"
    ))
}

/// Checks the credential of a forwarded `call` arriving at this node.
pub fn accept_forwarded(
    node: &ClusterNode,
    admin_token: &SecretString,
    header: &str,
    call: Call<'_>,
) -> Result<String, Refused> {
    ForwardKeys::from_admin_token(admin_token).verify(
        header,
        call,
        &node.identity.process_token,
        now_ms(),
        &node.forwarded,
    )
}

/// The proof to send with the answer to a forwarded call of `nonce`.
pub fn answer_proof(admin_token: &SecretString, nonce: &str, status: u16, body: &[u8]) -> String {
    ForwardKeys::from_admin_token(admin_token).sign_answer(nonce, status, body)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
