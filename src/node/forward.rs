//! Admin calls about one user reach its owner wherever they land (docs/contract.md section 8): a node
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
    Node, NodeError,
    credential::{Call, ForwardKeys, Refused},
};
use crate::telemetry::without_userinfo;

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

/// The admin calls about one user that may be forwarded to its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminCall {
    /// `GET /admin/actors/{user_id}`.
    Actor,
    /// `POST /admin/actors/{user_id}/refresh`.
    Refresh,
}

impl AdminCall {
    fn method(self) -> Method {
        match self {
            Self::Actor => Method::GET,
            Self::Refresh => Method::POST,
        }
    }

    /// The route as the router names it.
    fn route(self) -> &'static str {
        match self {
            Self::Actor => ACTOR_ROUTE,
            Self::Refresh => ACTOR_REFRESH_ROUTE,
        }
    }

    /// The path segments after `/admin/actors/{user_id}`.
    fn suffix(self) -> &'static [&'static str] {
        match self {
            Self::Actor => &[],
            Self::Refresh => &["refresh"],
        }
    }
}

/// An answer relayed from the owner.
pub struct Relayed {
    pub status: StatusCode,
    pub body: serde_json::Value,
}

/// Repeats `call` at the user's owner. `Ok(None)` when there is no other owner to ask (a
/// single node, no live owner, this node, or already forwarded).
pub(super) async fn forward_admin(
    node: &Node,
    call: AdminCall,
    user_id: &str,
    already_forwarded: bool,
) -> Result<Option<Relayed>, NodeError> {
    if !node.ownership.is_cluster() || already_forwarded {
        return Ok(None);
    }
    let shard = node.ownership.shard_of(user_id);
    let owner = node
        .store
        .shard_owner(shard)
        .await
        .map_err(|e| NodeError::Unavailable(format!("cannot find the user's node: {e}")))?;
    let Some((base, token)) = owner.filter(|(_, token)| *token != node.identity.process_token)
    else {
        return Ok(None);
    };
    // Errors name the URL without its userinfo: it may hold a proxy's password.
    let shown = without_userinfo(&base);
    let bad_url = || NodeError::Unavailable(format!("bad advertise URL {shown}"));
    let mut url = url::Url::parse(&base).map_err(|_| bad_url())?;
    url.path_segments_mut()
        .map_err(|()| bad_url())?
        .pop_if_empty()
        .extend(["admin", "actors", user_id])
        .extend(call.suffix());
    let method = call.method();
    let keys = ForwardKeys::from_admin_token(&node.admin_token);
    let call = Call {
        method: method.as_str(),
        route: call.route(),
        user_id,
    };
    let signed = keys.sign(call, &token, now_ms());
    let unreachable = |e: reqwest::Error| {
        // Without the URL, which reqwest's errors would show with its userinfo.
        let e = e.without_url();
        NodeError::Unavailable(format!("the user's node ({token:.8}…) did not answer: {e}"))
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
        .map_err(|e| NodeError::Unavailable(format!("the user's node answered no JSON: {e}")))?;
    Ok(Some(Relayed { status, body }))
}

/// An answer from the owner's address that does not prove the cluster's key: logged for the
/// operator (the address in the database may have been changed) and not relayed.
fn unproven(shown_url: &str, token: &str) -> NodeError {
    tracing::warn!(
        advertiseUrl = %shown_url,
        owner = %format!("{token:.8}"),
        "a forwarded admin call was answered without the cluster's proof; not relayed"
    );
    NodeError::Unproven(format!(
        "the address the database gives for the user's node ({shown_url}) answered without \
         proving it belongs to this cluster; the answer was not relayed"
    ))
}

/// Checks the credential of a forwarded `call` arriving at this node.
pub(super) fn accept_forwarded(
    node: &Node,
    header: &str,
    call: Call<'_>,
) -> Result<String, Refused> {
    ForwardKeys::from_admin_token(&node.admin_token).verify(
        header,
        call,
        &node.identity.process_token,
        now_ms(),
        &node.forwarded,
    )
}

/// The proof to send with the answer to a forwarded call of `nonce`.
pub(super) fn answer_proof(
    admin_token: &SecretString,
    nonce: &str,
    status: u16,
    body: &[u8],
) -> String {
    ForwardKeys::from_admin_token(admin_token).sign_answer(nonce, status, body)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
