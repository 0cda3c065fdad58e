//! Operator routes (README: Admin routes): the actor registry, forced refresh, and the resync
//! that pushes every connected user's tokens (the seed's upgrade path, without reconnects).

use std::collections::HashMap;

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppState, Error, auth::AdminAuth, rfc3339};
use crate::{actors::ActorView, store::SyncInfo};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/actors", get(list_actors))
        .route("/admin/actors/{user_id}", get(get_actor))
        .route("/admin/actors/{user_id}/refresh", post(refresh_actor))
        .route("/admin/resync", post(resync))
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
    let ids: Vec<String> = views.iter().map(|v| v.user_id().to_string()).collect();
    let syncs = app.store.sync_infos(&ids).await?;
    let next_cursor = (views.len() == limit)
        .then(|| ids.last().cloned())
        .flatten();
    let actors: Vec<Value> = views.iter().map(|v| actor_json(v, &syncs)).collect();
    Ok(Json(json!({
        "actors": actors,
        "next_cursor": next_cursor,
        "total": total,
    })))
}

async fn get_actor(
    State(app): State<AppState>,
    _: AdminAuth,
    Path(user_id): Path<String>,
) -> Result<Json<Value>, Error> {
    let Some(view) = app.supervisor.get(&user_id).await? else {
        return Err(no_actor(&user_id));
    };
    let syncs = app.store.sync_infos(std::slice::from_ref(&user_id)).await?;
    Ok(Json(actor_json(&view, &syncs)))
}

async fn refresh_actor(
    State(app): State<AppState>,
    _: AdminAuth,
    Path(user_id): Path<String>,
) -> Result<(StatusCode, Json<Value>), Error> {
    if !app.supervisor.refresh_now(&user_id).await {
        return Err(no_actor(&user_id));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"user_id": user_id, "refresh": "queued"})),
    ))
}

async fn resync(
    State(app): State<AppState>,
    _: AdminAuth,
) -> Result<(StatusCode, Json<Value>), Error> {
    let queued = app.store.queue_resync_all().await?;
    let (store, sync) = (app.store.clone(), app.sync.clone());
    tokio::spawn(async move {
        if let Err(e) = crate::sync::resume_unfinished_syncs(&store, &sync, false).await {
            tracing::error!(error = %e, "resync could not queue every user");
        }
    });
    tracing::info!(users = queued, "resync of every connected user queued");
    Ok((StatusCode::ACCEPTED, Json(json!({"queued": queued}))))
}

fn no_actor(user_id: &str) -> Error {
    Error::NotFound("actor_not_found", format!("no actor for user {user_id}"))
}

fn actor_json(view: &ActorView, syncs: &HashMap<String, SyncInfo>) -> Value {
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
            "sync": sync,
        }),
        ActorView::Restarting { user_id, restarts } => json!({
            "user_id": user_id,
            "status": "retrying",
            "token_expiry": null,
            "next_refresh_at": null,
            "last_refresh_at": null,
            "refresh_count": null,
            "restarts": restarts,
            "sync": sync,
        }),
    }
}
