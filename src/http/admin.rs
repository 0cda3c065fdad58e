//! Operator routes (docs/api.md: Admin routes): the actor registry, forced refresh, the resync
//! that pushes every connected user's tokens (the seed's upgrade path, without reconnects),
//! and the cluster's live nodes. On a cluster, a call about one user that lands on a node not
//! running the user's actor is answered by the user's owner (`node::Node::actor`); the
//! owner takes the forwarded call's credential in place of the admin token and proves its
//! answer ([`Caller`]).

use std::collections::HashMap;

use axum::{
    Json, Router,
    body::Body,
    extract::{FromRequestParts, MatchedPath, Path, Query, State},
    http::{HeaderValue, StatusCode, header::AUTHORIZATION, request::Parts},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppState, Error, auth::AdminAuth, rfc3339};
use crate::{
    actors::ActorView,
    ids::UserId,
    node::{
        ACTOR_REFRESH_ROUTE, ACTOR_ROUTE, ANSWER_PROOF_HEADER, Call, FORWARDED_HEADER, NodeError,
        Refused, Runs,
    },
    store::SyncInfo,
    telemetry::without_userinfo,
};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// Largest answer this node signs for another (an actor's view is well under a kilobyte).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/actors", get(list_actors))
        .route(ACTOR_ROUTE, get(get_actor))
        .route(ACTOR_REFRESH_ROUTE, post(refresh_actor))
        .route("/admin/resync", post(resync))
        .route("/admin/nodes", get(list_nodes))
}

#[derive(Deserialize)]
struct ListParams {
    limit: Option<String>,
    cursor: Option<String>,
}

fn parse_limit(raw: Option<&str>) -> Result<usize, Error> {
    match raw.filter(|s| !s.is_empty()) {
        None => Ok(DEFAULT_LIMIT),
        Some(raw) => match raw.parse::<usize>() {
            Ok(0) | Err(_) => Err(Error::BadRequest(format!(
                "limit must be a whole number from 1 to {MAX_LIMIT}"
            ))),
            Ok(n) => Ok(n.min(MAX_LIMIT)),
        },
    }
}

async fn list_actors(
    State(app): State<AppState>,
    _: AdminAuth,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, Error> {
    let Query(params) = params.map_err(|e| Error::BadRequest(e.body_text()))?;
    let limit = parse_limit(params.limit.as_deref())?;
    let cursor = params.cursor.filter(|c| !c.is_empty());
    let (views, total) = app.supervisor.list(cursor, limit).await?;
    let ids: Vec<UserId> = views.iter().map(|v| v.user_id().clone()).collect();
    let syncs = app.store.sync_infos(&ids).await?;
    let next_cursor = (views.len() == limit)
        .then(|| ids.last().cloned())
        .flatten();
    let node = app.node.ownership.node_id();
    let actors: Vec<Value> = views.iter().map(|v| actor_json(v, &syncs, node)).collect();
    Ok(Json(json!({
        "actors": actors,
        "next_cursor": next_cursor,
        "total": total,
    })))
}

/// Who asks about one user: the operator (the admin token), or another node forwarding the
/// operator's call with a credential for exactly this call (`node::forward`), which is
/// answered with the proof that this node holds the same key.
enum Caller {
    /// `forwarded`: marked as forwarded by a node of an earlier version (which sends the
    /// admin token itself): answered here, never sent on.
    Operator {
        forwarded: bool,
    },
    Node {
        nonce: String,
    },
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Error> {
        let Some(credential) = parts.headers.get(FORWARDED_HEADER).cloned() else {
            AdminAuth::from_request_parts(parts, app).await?;
            return Ok(Self::Operator { forwarded: false });
        };
        let route = parts
            .extensions
            .get::<MatchedPath>()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        let Path(user_id) = Path::<String>::from_request_parts(parts, app)
            .await
            .map_err(|e| Error::BadRequest(e.body_text()))?;
        let call = Call {
            method: parts.method.as_str(),
            route: &route,
            user_id: &user_id,
        };
        let accepted = credential
            .to_str()
            .map_err(|_| Refused::Malformed)
            .and_then(|c| app.node.accept_forwarded(c, call));
        match accepted {
            Ok(nonce) => Ok(Self::Node { nonce }),
            Err(_) if parts.headers.contains_key(AUTHORIZATION) => {
                AdminAuth::from_request_parts(parts, app).await?;
                Ok(Self::Operator { forwarded: true })
            }
            Err(refused) => {
                tracing::warn!(reason = %refused, "forwarded admin call refused");
                Err(Error::Unauthorized("invalid forwarded credential"))
            }
        }
    }
}

impl Caller {
    fn forwarded(&self) -> bool {
        !matches!(self, Self::Operator { forwarded: false })
    }

    /// The answer as sent: to a forwarding node, with the proof over its nonce, status and
    /// body that lets that node relay it.
    async fn answer(self, app: &AppState, result: Result<Response, Error>) -> Response {
        let response = result.unwrap_or_else(IntoResponse::into_response);
        let Self::Node { nonce } = self else {
            return response;
        };
        let (mut head, body) = response.into_parts();
        let Ok(body) = axum::body::to_bytes(body, MAX_ANSWER_BYTES).await else {
            return Error::Internal(anyhow::anyhow!("an answer too large to forward"))
                .into_response();
        };
        let proof = app.node.answer_proof(&nonce, head.status.as_u16(), &body);
        // Base64url is always a valid header value.
        if let Ok(proof) = HeaderValue::from_str(&proof) {
            head.headers.insert(ANSWER_PROOF_HEADER, proof);
        }
        Response::from_parts(head, Body::from(body))
    }
}

async fn get_actor(
    State(app): State<AppState>,
    caller: Caller,
    Path(user_id): Path<UserId>,
) -> Response {
    let result = async {
        let view = match app.node.actor(&user_id, caller.forwarded()).await {
            Ok(Runs::Here(view)) => view,
            elsewhere => return at_owner(elsewhere, &user_id),
        };
        let syncs = app.store.sync_infos(std::slice::from_ref(&user_id)).await?;
        let node = app.node.ownership.node_id();
        Ok(Json(actor_json(&view, &syncs, node)).into_response())
    }
    .await;
    caller.answer(&app, result).await
}

async fn refresh_actor(
    State(app): State<AppState>,
    caller: Caller,
    Path(user_id): Path<String>,
) -> Response {
    let result = async {
        if let elsewhere @ (Ok(Runs::Elsewhere(_) | Runs::Nobody) | Err(_)) =
            app.node.refresh(&user_id, caller.forwarded()).await
        {
            return at_owner(elsewhere, &user_id);
        }
        let node = app.node.ownership.node_id();
        Ok((
            StatusCode::ACCEPTED,
            Json(json!({"user_id": user_id, "refresh": "queued", "node": node})),
        )
            .into_response())
    }
    .await;
    caller.answer(&app, result).await
}

/// The answer about a user this node has no actor for: its owner's, relayed; `404` when no
/// other node owns the user either, `502` when the owner's address answered without proving
/// it belongs to the cluster.
fn at_owner<T>(runs: Result<Runs<T>, NodeError>, user_id: &str) -> Result<Response, Error> {
    match runs {
        Ok(Runs::Elsewhere(relayed)) => {
            let status =
                StatusCode::from_u16(relayed.status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            Ok((status, Json(relayed.body)).into_response())
        }
        Ok(Runs::Here(_) | Runs::Nobody) => Err(no_actor(user_id)),
        Err(NodeError::Here(e)) => Err(Error::Internal(e)),
        Err(NodeError::Unavailable(message)) => Err(Error::Unavailable(message)),
        Err(NodeError::Unproven(message)) => Ok((
            StatusCode::BAD_GATEWAY,
            Json(json!({"error": "bad_gateway", "message": message})),
        )
            .into_response()),
    }
}

/// `GET /admin/nodes`: every live node of the cluster; on a single node, this one. An
/// advertise URL is shown without its `user:password@`, which may be a proxy's credentials.
async fn list_nodes(State(app): State<AppState>, _: AdminAuth) -> Result<Json<Value>, Error> {
    let cluster = &app.node;
    let nodes: Vec<Value> = if cluster.ownership.is_cluster() {
        app.store
            .live_nodes()
            .await?
            .into_iter()
            .map(|n| {
                json!({
                    "node_id": n.node_id,
                    "advertise_url": without_userinfo(&n.advertise_url),
                    "started_at": rfc3339(n.started_at),
                    "last_seen": rfc3339(n.last_seen),
                    "shards": n.shards,
                    "actors": n.actors,
                })
            })
            .collect()
    } else {
        vec![json!({
            "node_id": cluster.identity.node_id,
            "advertise_url": without_userinfo(&cluster.identity.advertise_url),
            "started_at": rfc3339(cluster.identity.started_at),
            "last_seen": rfc3339(chrono::Utc::now()),
            "shards": app.store.shard_count(),
            "actors": app.metrics.actors.get(),
        })]
    };
    Ok(Json(json!({"nodes": nodes})))
}

async fn resync(
    State(app): State<AppState>,
    _: AdminAuth,
) -> Result<(StatusCode, Json<Value>), Error> {
    let queued = app.store.queue_resync_all().await?;
    app.node.resync_all().await?;
    tracing::info!(users = queued, "resync of every connected user queued");
    Ok((StatusCode::ACCEPTED, Json(json!({"queued": queued}))))
}

fn no_actor(user_id: &str) -> Error {
    Error::NotFound("actor_not_found", format!("no actor for user {user_id}"))
}

fn actor_json(view: &ActorView, syncs: &HashMap<UserId, SyncInfo>, node: &str) -> Value {
    let user_id = view.user_id();
    // An actor whose row is gone (it is about to stop) has no sync state: empty fields.
    let sync = syncs.get(user_id);
    let sync = json!({
        "state": sync.map_or("", |s| s.state.as_str()),
        "synced_at": sync.and_then(|s| s.synced_at).map(rfc3339),
        "attempts": sync.map_or(0, |s| s.attempts),
        "last_error": sync.and_then(|s| s.last_error.as_deref()),
    });
    match view {
        ActorView::Live(info) => json!({
            "user_id": info.user_id,
            "status": info.status,
            "token_expiry": info.token_expiry.map(rfc3339),
            "next_refresh_at": info.next_refresh_at.map(rfc3339),
            "last_refresh_at": info.last_refresh_at.map(rfc3339),
            "refresh_count": info.refresh_count,
            "restarts": info.restarts,
            "reconnect_reason": info.reconnect_reason,
            "authorization_expires_at": info.authorization_expires_at.map(rfc3339),
            "sync": sync,
            "node": node,
        }),
        ActorView::Restarting { user_id, restarts } => json!({
            "user_id": user_id,
            "status": "retrying",
            "token_expiry": null,
            "next_refresh_at": null,
            "last_refresh_at": null,
            "refresh_count": null,
            "restarts": restarts,
            "reconnect_reason": null,
            "authorization_expires_at": null,
            "sync": sync,
            "node": node,
        }),
    }
}
