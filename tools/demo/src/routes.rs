//! The demo page's routes: the page itself, and the calls it makes as a main app's backend
//! would (connect, disconnect, refresh now, the state it polls), plus the demo's own control
//! that makes the current grant end soon, and Google's revocation of it (`risc`). The state carries the events the app received and
//! the microservice's copy with its tokens cut short ([`redacted`]): never a token value.

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Query, State},
    response::{Html, IntoResponse, Response},
    routing::{get, post},
};
use jsonwebtoken::{EncodingKey, Header};
use serde::Deserialize;
use serde_json::{Value, json};
use tokenwarden_sandbox::{AppEventsReceiver, GrantSelector, ReferenceMicroservice, SandboxGoogle};

const PAGE: &str = include_str!("page.html");
/// Events of the user the state lists: the latest ones, enough for a few grants' lives.
const EVENTS_SHOWN: usize = 20;
/// How soon "End this grant soon" ends the grant unless the page asks otherwise: long enough
/// to watch the warning arrive first, short enough to wait for.
const GRANT_ENDS_IN_SECS: u64 = 120;

/// What the page's routes share: where the service is, how to call it, and the stand-ins.
#[derive(Clone)]
pub(crate) struct Demo {
    pub service_url: String,
    pub jwt_secret: String,
    pub admin_token: String,
    pub microservice: ReferenceMicroservice,
    pub google: SandboxGoogle,
    pub receiver: AppEventsReceiver,
    pub http: reqwest::Client,
}

/// A token as the page may show it: its first 6 characters and a fingerprint (the first 8 hex
/// digits of its SHA-256), enough to see it change, never any more of the value itself (a
/// prefix alone is the same for every token: Google's access tokens all start `ya29.`).
fn redacted(token: &str) -> String {
    use sha2::Digest;
    let prefix: String = token.chars().take(6).collect();
    let digest = sha2::Sha256::digest(token.as_bytes());
    let fingerprint: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}… #{fingerprint}")
}

/// The contract's user ids: 1 to 50 of `A-Z a-z 0-9 - _ . @`.
fn valid_user_id(user_id: &str) -> bool {
    (1..=50).contains(&user_id.len())
        && user_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

pub(crate) fn page_router(demo: Demo) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/dashboard/integrations", get(page))
        .route("/demo/connect", post(connect))
        .route("/demo/disconnect", post(disconnect))
        .route("/demo/refresh", post(refresh))
        .route("/demo/grant-end", post(grant_end))
        .route("/demo/google-revokes", post(crate::risc::google_revokes))
        .route("/demo/state", get(state))
        .with_state(Arc::new(demo))
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

#[derive(Deserialize)]
pub(crate) struct UserParam {
    pub user_id: String,
}

impl Demo {
    pub(crate) fn jwt(&self, user_id: &str) -> anyhow::Result<String> {
        let exp = chrono::Utc::now().timestamp() + 3600;
        Ok(jsonwebtoken::encode(
            &Header::default(),
            &json!({"sub": user_id, "exp": exp}),
            &EncodingKey::from_secret(self.jwt_secret.as_bytes()),
        )?)
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: &str,
    ) -> anyhow::Result<Value> {
        let response = self
            .http
            .request(method, format!("{}{path}", self.service_url))
            .bearer_auth(bearer)
            .send()
            .await?;
        Ok(response.json().await.unwrap_or(Value::Null))
    }
}

pub(crate) fn answer(result: anyhow::Result<Value>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(e) => (
            axum::http::StatusCode::BAD_GATEWAY,
            Json(json!({"error": "demo", "message": e.to_string()})),
        )
            .into_response(),
    }
}

/// The Google address `user_id` is connected with, as the frontend sees it in its status; an
/// error naming what to do when the user is not connected.
pub(crate) async fn connected_email(demo: &Demo, user_id: &str) -> anyhow::Result<String> {
    checked(user_id)?;
    let jwt = demo.jwt(user_id)?;
    let status = demo
        .call(
            reqwest::Method::GET,
            "/api/integrations/google/status",
            &jwt,
        )
        .await?;
    match status["google_email"].as_str() {
        Some(email) if status["connected"] == true => Ok(email.to_string()),
        _ => anyhow::bail!("connect {user_id} first"),
    }
}

pub(crate) fn checked(user_id: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        valid_user_id(user_id),
        "user id: 1 to 50 of A-Z a-z 0-9 - _ . @"
    );
    Ok(())
}

/// Proxies connect as a main app's backend would: the service's browser-binding cookie is
/// passed on to the browser, which presents it at the callback (page and service share the
/// loopback host, and cookies ignore ports).
async fn connect(State(demo): State<Arc<Demo>>, Json(p): Json<UserParam>) -> Response {
    let result = async {
        checked(&p.user_id)?;
        let jwt = demo.jwt(&p.user_id)?;
        let response = demo
            .http
            .post(format!(
                "{}/api/integrations/google/connect",
                demo.service_url
            ))
            .bearer_auth(jwt)
            .send()
            .await?;
        let cookies: Vec<_> = response
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .cloned()
            .collect();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        anyhow::Ok((cookies, body))
    }
    .await;
    match result {
        Ok((cookies, body)) => {
            let mut response = Json(body).into_response();
            for cookie in cookies {
                response
                    .headers_mut()
                    .append(axum::http::header::SET_COOKIE, cookie);
            }
            response
        }
        Err(e) => answer(Err(e)),
    }
}

async fn disconnect(State(demo): State<Arc<Demo>>, Json(p): Json<UserParam>) -> Response {
    answer(
        async {
            checked(&p.user_id)?;
            let jwt = demo.jwt(&p.user_id)?;
            demo.call(reqwest::Method::DELETE, "/api/integrations/google", &jwt)
                .await
        }
        .await,
    )
}

async fn refresh(State(demo): State<Arc<Demo>>, Json(p): Json<UserParam>) -> Response {
    answer(
        async {
            checked(&p.user_id)?;
            let path = format!("/admin/actors/{}/refresh", p.user_id);
            demo.call(reqwest::Method::POST, &path, &demo.admin_token)
                .await
        }
        .await,
    )
}

#[derive(Deserialize)]
struct GrantEndParam {
    user_id: String,
    /// Seconds from now; [`GRANT_ENDS_IN_SECS`] when left out.
    ends_in_secs: Option<u64>,
}

/// Makes the user's current grant time-limited, ending `ends_in_secs` from now, as if the user
/// had chosen time-based access on Google's consent screen; then asks for a refresh at once,
/// whose answer tells the service the end (the service learns an end only from Google's
/// answers). From there the service warns the app, ends the grant at its end and DELETEs the
/// microservice's copy.
async fn grant_end(State(demo): State<Arc<Demo>>, Json(p): Json<GrantEndParam>) -> Response {
    answer(
        async {
            let email = connected_email(&demo, &p.user_id).await?;
            let secs = p.ends_in_secs.unwrap_or(GRANT_ENDS_IN_SECS);
            let selector = GrantSelector::Email(email.to_string());
            demo.google
                .set_grant_end(&selector, Some(Duration::from_secs(secs)))
                .ok_or_else(|| anyhow::anyhow!("the sandbox has no grant for {email}"))?;
            let path = format!("/admin/actors/{}/refresh", p.user_id);
            demo.call(reqwest::Method::POST, &path, &demo.admin_token)
                .await?;
            Ok(json!({"message": format!("the grant ends in {secs} s")}))
        }
        .await,
    )
}

/// The events the app received for `user_id`, newest first: what the page lists.
fn app_events(receiver: &AppEventsReceiver, user_id: &str) -> Vec<Value> {
    let mut events: Vec<Value> = receiver
        .events()
        .into_iter()
        .filter(|e| !e.duplicate)
        .filter_map(|e| {
            let body = e.body?;
            (body["user_id"] == user_id).then(|| {
                json!({
                    "type": body["type"],
                    "reason": body["reason"],
                    "occurred_at": body["occurred_at"],
                    "authorization_expires_at": body["authorization_expires_at"],
                    "received_at": e.received_at,
                })
            })
        })
        .collect();
    events.reverse();
    events.truncate(EVENTS_SHOWN);
    events
}

/// Everything the page shows, with the microservice's tokens cut short.
async fn state(State(demo): State<Arc<Demo>>, Query(p): Query<UserParam>) -> Response {
    answer(
        async {
            checked(&p.user_id)?;
            let jwt = demo.jwt(&p.user_id)?;
            let status = demo
                .call(
                    reqwest::Method::GET,
                    "/api/integrations/google/status",
                    &jwt,
                )
                .await?;
            let actors = demo
                .call(
                    reqwest::Method::GET,
                    "/admin/actors?limit=20",
                    &demo.admin_token,
                )
                .await?;
            let copy = demo.microservice.stored(&p.user_id).await?.map(|t| {
                json!({
                    "access_token": redacted(&t.access_token),
                    "refresh_token": redacted(&t.refresh_token),
                    "token_expiry": t.token_expiry,
                    "scope": t.scope,
                })
            });
            Ok(json!({
                "status": status,
                "actors": actors,
                "microservice": copy,
                "app_events": app_events(&demo.receiver, &p.user_id),
            }))
        }
        .await,
    )
}
