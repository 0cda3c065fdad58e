//! Admin calls about one user reach its owner wherever they land (CONTRACT section 8): a node
//! that does not run the user's actor asks the database which live node holds the user's
//! shard and repeats the call there, at that node's `NODE_ADVERTISE_URL`, with the same admin
//! token. A forwarded call is marked, so it is answered where it arrives and never bounces.
//! Must not touch: the actors (the owner's own route answers), the store's writes.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};

use super::ClusterNode;
use crate::{config::without_userinfo, store::Store};

/// Marks a call already forwarded once.
pub const FORWARDED_HEADER: &str = "tokenwarden-forwarded";
/// Longest a forwarded admin call may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// An answer relayed from the owner.
pub struct Relayed {
    pub status: StatusCode,
    pub body: serde_json::Value,
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
) -> Result<Option<Relayed>, String> {
    if !node.ownership.is_cluster() || already_forwarded {
        return Ok(None);
    }
    let shard = node.ownership.shard_of(user_id);
    let owner = store
        .shard_owner(shard)
        .await
        .map_err(|e| format!("cannot find the user's node: {e}"))?;
    let Some((base, token)) = owner.filter(|(_, token)| *token != node.identity.process_token)
    else {
        return Ok(None);
    };
    // Errors name the URL without its userinfo: it may hold a proxy's password.
    let shown = without_userinfo(&base);
    let mut url = url::Url::parse(&base).map_err(|e| format!("bad advertise URL {shown}: {e}"))?;
    url.path_segments_mut()
        .map_err(|()| format!("bad advertise URL {shown}"))?
        .pop_if_empty()
        .extend(["admin", "actors", user_id]);
    if !suffix.is_empty() {
        url.path_segments_mut()
            .map_err(|()| format!("bad advertise URL {shown}"))?
            .push(suffix);
    }
    let response = node
        .http
        .request(method, url)
        .bearer_auth(admin_token.expose_secret())
        .header(FORWARDED_HEADER, "1")
        .timeout(FORWARD_TIMEOUT)
        .send()
        .await
        // Without the URL, which reqwest's errors would show with its userinfo.
        .map_err(|e| {
            let e = e.without_url();
            format!("the user's node ({token:.8}…) did not answer: {e}")
        })?;
    let status = response.status();
    let body = response.json().await.map_err(|e| {
        let e = e.without_url();
        format!("the user's node answered no JSON: {e}")
    })?;
    Ok(Some(Relayed { status, body }))
}
