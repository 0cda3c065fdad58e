//! `POST /api/integrations/google/risc` (docs/contract.md section 10): Google's Security Event
//! Tokens, pushed as RFC 8935 describes. A valid SET is answered `202` at once and acted on after
//! the answer; an invalid one `400 {"err", "description"}` and nothing changes. The action: the
//! SET's `jti` is recorded first (the insert that wins acts, on any node, so a duplicate is acted
//! on once), then the user its subject names loses the grant where the event says so, through the
//! same front-door write and hand-over to the owner as a disconnect. Must not touch: the actors'
//! state, the keys' cache (`risc::keys`).

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use chrono::Utc;
use serde_json::json;

use super::{AppState, MAX_BODY_BYTES};
use crate::{
    log_limit::LogLimit,
    metrics::RiscLabels,
    node::Change,
    risc::{self, Action, verify::SetError},
};

/// The receiver's route.
pub const ROUTE: &str = "/api/integrations/google/risc";

pub fn router() -> Router<AppState> {
    Router::new().route(ROUTE, post(receive))
}

/// RFC 8935's answer to a body over the limit.
pub fn oversized() -> Response {
    refusal(
        "invalid_request",
        &format!("the SET is larger than {MAX_BODY_BYTES} bytes"),
    )
}

fn refusal(err: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"err": err, "description": description})),
    )
        .into_response()
}

/// Whatever the content type (Google sends `application/secevent+jwt`), the body is the SET.
async fn receive(State(app): State<AppState>, body: Bytes) -> Response {
    let Ok(token) = std::str::from_utf8(&body) else {
        return refused(
            &app,
            &SetError::InvalidRequest("the body is not text".into()),
        );
    };
    let verified =
        risc::verify::verify(token.trim(), &app.risc_keys, &app.config.google.client_id).await;
    match verified {
        Ok(claims) => {
            let app = app.clone();
            tokio::spawn(async move { act(&app, claims).await });
            StatusCode::ACCEPTED.into_response()
        }
        Err(e) => refused(&app, &e),
    }
}

/// Refusals are warned of at most once per 10 s (anyone can post forged SETs at will); the
/// metric counts each.
static REFUSALS_LOG: LogLimit = LogLimit::new(std::time::Duration::from_secs(10));

fn refused(app: &AppState, error: &SetError) -> Response {
    app.metrics.risc_refused(error.code());
    match REFUSALS_LOG.warn_now() {
        Some(quiet) => tracing::warn!(
            err = error.code(),
            error = %error,
            alsoRefusedSinceLastWarning = quiet,
            "security event refused"
        ),
        None => tracing::debug!(err = error.code(), error = %error, "security event refused"),
    }
    refusal(error.code(), &error.to_string())
}

/// Records the SET once and does what its event asks. Google sends one event per SET; should
/// one carry several, the first decides and all are logged.
async fn act(app: &AppState, claims: risc::verify::SetClaims) {
    let Some((uri, payload)) = claims.events.iter().next() else {
        return;
    };
    let event = risc::classify(uri, payload);
    let count = |outcome: &'static str| {
        app.metrics.risc_event(RiscLabels {
            r#type: event.kind,
            outcome,
        })
    };
    match app
        .store
        .record_risc_event(&claims.jti, uri, Utc::now())
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(jti = %claims.jti, eventType = event.kind, "security event seen before; nothing done again");
            return count("duplicate");
        }
        Err(e) => {
            tracing::error!(jti = %claims.jti, error = %e, "cannot record a security event");
            return count("failed");
        }
    }
    let user = match &event.subject {
        Some(subject) => app.store.risc_user(subject).await,
        None => Ok(None),
    };
    let (user_id, outcome) = match user {
        Err(e) => {
            tracing::error!(jti = %claims.jti, error = %e, "cannot match a security event");
            (None, "failed")
        }
        Ok(None) => (None, "no_user"),
        Ok(Some((user_id, false))) => (Some(user_id), "no_grant"),
        Ok(Some((user_id, true))) if event.action == Action::Record => (Some(user_id), "recorded"),
        Ok(Some((user_id, true))) => {
            let outcome = end_grant(app, &user_id).await;
            (Some(user_id), outcome)
        }
    };
    tracing::warn!(
        jti = %claims.jti,
        eventType = event.kind,
        userId = user_id.as_deref().unwrap_or(""),
        detail = event.detail.as_deref().unwrap_or(""),
        outcome,
        "security event from Google"
    );
    if let Err(e) = app
        .store
        .finish_risc_event(&claims.jti, user_id.as_deref(), outcome)
        .await
    {
        tracing::warn!(jti = %claims.jti, error = %e, "cannot record a security event's outcome");
    }
    count(outcome);
}

/// Ends the user's grant (`security_event`) and hands the change to the user's owner, which
/// pushes the DELETE.
async fn end_grant(app: &AppState, user_id: &str) -> &'static str {
    match app.store.end_grant_for_security_event(user_id).await {
        Ok(Some(start)) => {
            app.node.user_changed(user_id, Change::Ended(start)).await;
            "grant_ended"
        }
        Ok(None) => "no_grant",
        Err(e) => {
            tracing::error!(userId = %user_id, error = %e, "cannot end a grant for a security event");
            "failed"
        }
    }
}
