//! The operator console (docs/api.md: The operator console; docs/contract.md section 4a):
//! server-rendered pages under `/console` for a person holding `ADMIN_TOKEN`. It shows what the
//! admin API shows (and a little history) and offers the same two actions, "Refresh now" and
//! "Resync".
//!
//! - here: the routes, the handlers, the operator extractor and the action log;
//! - `session`: the signed session cookie, the CSRF tokens and the origin check;
//! - `pages`: the frame, the sign-in form and the overview; `users`: the users pages;
//!   `grant`: the grant's reason and end and the user's events to the app on those pages.
//!
//! Every form posts a CSRF token, and every post passes [`refuse_cross_site`] first. Every
//! action is logged with `action`, `userId` when there is one, the `peer` address and any
//! `forwardedFor` header. No page shows a token value: the pages read schedule and sync data
//! only, never the token columns.

mod grant;
mod pages;
mod security;
mod session;
mod sign_in;
mod users;

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
};

use axum::{
    Router,
    body::Bytes,
    extract::{ConnectInfo, FromRequestParts, Path, Query, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts},
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use chrono::Utc;
use maud::Markup;
use serde::Deserialize;

use super::{AppState, Error, auth_throttle::client_ip};
use crate::{
    metrics::StatusLabels,
    node::{Change, Runs},
};
use pages::Frame;
#[cfg(feature = "test-util")]
pub use session::forge_cookie;
pub use session::{COOKIE, LIFETIME};
use session::{Keys, Session};

/// Refreshes listed under "Next refreshes due".
const NEXT_DUE: u64 = 10;
/// Longest search text taken; more is cut (ids are 50 characters, emails rarely longer).
const MAX_QUERY_CHARS: usize = 200;

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/console", get(sign_in::home).post(sign_in::sign_in))
        .route("/console/sign-out", post(sign_in::sign_out))
        .route("/console/sessions/end-all", post(sign_in::end_all_sessions))
        .route("/console/users", get(list_users))
        .route("/console/users/{user_id}", get(show_user))
        .route("/console/users/{user_id}/refresh", post(refresh_now))
        .route("/console/users/{user_id}/resync", post(resync))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_cross_site,
        ))
        .layer(middleware::from_fn_with_state(state, refuse_other_hosts))
        .layer(middleware::map_response(page_headers))
}

/// Where a request came from, for the action log: the connection's peer and, separately,
/// what a proxy says in `X-Forwarded-For` (which anyone can send, so it never replaces the
/// peer).
struct Peer {
    /// The address the sign-in throttle counts by.
    client: IpAddr,
    addr: Option<String>,
    forwarded_for: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Self {
            client: client_ip(&parts.extensions),
            addr: parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.to_string()),
            forwarded_for: parts
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .map(|v| v.chars().take(MAX_QUERY_CHARS).collect()),
        })
    }
}

/// Logs one console action.
fn audit(action: &'static str, user_id: Option<&str>, peer: &Peer) {
    let (addr, forwarded_for) = (peer.addr.as_deref(), peer.forwarded_for.as_deref());
    if matches!(action, "sign_in_failed" | "sign_in_throttled") {
        tracing::warn!(
            action,
            peer = addr,
            forwardedFor = forwarded_for,
            "console sign-in refused"
        );
    } else {
        tracing::info!(
            action,
            userId = user_id,
            peer = addr,
            forwardedFor = forwarded_for,
            "console action"
        );
    }
}

/// A signed-in operator; pages and actions take one. Without a valid session a page
/// redirects to the sign-in form and an action is refused.
struct Operator {
    keys: Keys,
    session: Session,
}

impl Operator {
    fn csrf(&self) -> String {
        self.keys.csrf_token(&self.session)
    }

    fn frame<'a>(&self, title: &'a str, csrf: &'a str, flash: Option<&'a str>) -> Frame<'a> {
        Frame { title, csrf, flash }
    }

    /// Whether an action's form carried this session's CSRF token; if not, the action
    /// answers [`stale_form`].
    fn csrf_ok(&self, form: &FormFields) -> bool {
        form.get("csrf")
            .is_some_and(|token| self.keys.csrf_matches(&self.session, token))
    }
}

impl Operator {
    /// The operator whose session the request's cookie holds: signed with this admin token,
    /// unexpired, and still live in the database (not signed out, not ended by an operator).
    async fn of(app: &AppState, headers: &HeaderMap) -> Result<Option<Self>, Error> {
        let keys = Keys::from_admin_token(&app.config.admin_token);
        let now = crate::clock::now();
        let Some(session) = keys.session(headers, now) else {
            return Ok(None);
        };
        if !app.store.console_session_live(&session.id, now).await? {
            return Ok(None);
        }
        Ok(Some(Self { keys, session }))
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Response> {
        match Self::of(app, &parts.headers).await {
            Ok(Some(operator)) => Ok(operator),
            Ok(None) if matches!(parts.method, Method::GET | Method::HEAD) => {
                Err(Redirect::to("/console").into_response())
            }
            Ok(None) => Err(forbidden(
                "You are not signed in, or your session has ended.",
            )),
            Err(e) => Err(e.into_response()),
        }
    }
}

/// A form body's fields, read whatever its declared content type (a post that omits the
/// header must end in the same refusal as one that omits the token).
struct FormFields(Vec<(String, String)>);

impl FormFields {
    fn parse(body: &Bytes) -> Self {
        Self(url::form_urlencoded::parse(body).into_owned().collect())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Refuses, with 403, any post whose `Origin` or `Sec-Fetch-Site` says it came from
/// another site, before its handler runs.
async fn refuse_cross_site(
    State(app): State<AppState>,
    peer: Peer,
    request: Request,
    next: Next,
) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    match session::cross_site(request.headers(), &app.config.google.redirect_uri) {
        None => next.run(request).await,
        Some(reason) => {
            tracing::warn!(
                action = "cross_site_refused",
                reason,
                path = request.uri().path(),
                peer = peer.addr.as_deref(),
                forwardedFor = peer.forwarded_for.as_deref(),
                "console refused a cross-site post"
            );
            forbidden("This form was sent from another site.")
        }
    }
}

/// Refuses, with 403, a request whose `Host` is not one the console is served under: an
/// answer to a DNS-rebound name would let another site's page read the console
/// (`session::host_allowed`).
async fn refuse_other_hosts(
    State(app): State<AppState>,
    peer: Peer,
    request: Request,
    next: Next,
) -> Response {
    let allowed: Vec<String> = [
        Some(&app.config.google.redirect_uri),
        Some(app.config.cluster.advertise_url.url()),
    ]
    .into_iter()
    .flatten()
    .filter_map(|url| url.host_str().map(str::to_string))
    .collect();
    if session::host_allowed(request.headers(), &allowed) {
        return next.run(request).await;
    }
    tracing::warn!(
        action = "other_host_refused",
        peer = peer.addr.as_deref(),
        forwardedFor = peer.forwarded_for.as_deref(),
        "console refused a request for another host name"
    );
    forbidden("This console is not served under that host name.")
}

/// Headers of every console answer: never cached (pages show live state, actions answer
/// once), never framed, no referrer to other origins, and the content security policy of
/// `pages`. The referrer policy is `same-origin`, not `no-referrer`: under `no-referrer` a
/// browser sends `Origin: null` with every form post (Fetch, "serializing a request origin"),
/// and [`refuse_cross_site`] would refuse the console's own forms, sign-in first.
async fn page_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(pages::content_security_policy()),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn forbidden(message: &str) -> Response {
    (StatusCode::FORBIDDEN, pages::refusal("Forbidden", message)).into_response()
}

/// The answer to a post without its session's CSRF token.
fn stale_form() -> Response {
    forbidden("The form's security token is missing or stale: reload the page and try again.")
}

fn secure_cookie(app: &AppState) -> bool {
    app.config.google.redirect_uri.scheme() == "https"
}

async fn overview_page(app: &AppState, csrf: &str) -> Result<Markup, Error> {
    let now = crate::clock::now();
    let statuses = users::STATUSES
        .iter()
        .map(|&status| {
            let gauge = app
                .metrics
                .actors_by_status
                .get_or_create(&StatusLabels { status });
            (status, gauge.get())
        })
        .collect();
    let backlog = app.store.sync_backlog().await?;
    let expiring = app.store.expiring_first(NEXT_DUE).await?;
    let views =
        futures::future::join_all(expiring.iter().map(|l| app.supervisor.get(&l.user_id))).await;
    let mut next_due: Vec<_> = expiring
        .into_iter()
        .zip(views)
        .map(|(listing, view)| {
            let due = match view {
                Ok(Some(crate::actors::ActorView::Live(info))) => info.next_refresh_at,
                _ => None,
            };
            (listing.user_id, due)
        })
        .collect();
    next_due.sort_by_key(|(_, due)| due.unwrap_or(chrono::DateTime::<Utc>::MAX_UTC));
    let overview = pages::Overview {
        statuses,
        users: app.metrics.actors.get(),
        hour: app.history.last_hour(now),
        backlog_users: backlog.users,
        backlog_oldest: backlog.oldest,
        in_flight: app.metrics.sync_queue_depth.get(),
        next_due,
    };
    let frame = Frame {
        title: "Overview",
        csrf,
        flash: None,
    };
    Ok(pages::page(&frame, pages::overview(&overview, now)))
}

#[derive(Deserialize)]
struct ListParams {
    #[serde(default)]
    q: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    cursor: String,
}

/// `GET /console/users?q=&status=&cursor=`: search by user id or email, filter by status.
async fn list_users(
    State(app): State<AppState>,
    operator: Operator,
    Query(params): Query<ListParams>,
) -> Result<Markup, Error> {
    let text: String = params.q.trim().chars().take(MAX_QUERY_CHARS).collect();
    let status = users::STATUSES.into_iter().find(|s| *s == params.status);
    let cursor = users::Cursor::parse(&params.cursor);
    let query = (!text.is_empty()).then_some(text.as_str());
    let (rows, next) = users::page(&app.store, &app.supervisor, query, status, cursor).await?;
    let csrf = operator.csrf();
    let frame = operator.frame("Users", &csrf, None);
    let content = users::list(&rows, &text, status, next.as_ref(), crate::clock::now());
    Ok(pages::page(&frame, content))
}

#[derive(Deserialize)]
struct Flash {
    #[serde(default)]
    done: String,
}

/// The message of an action's outcome, from the fixed set (nothing from the URL is shown).
fn flash_text(done: &str) -> Option<&'static str> {
    Some(match done {
        "refresh" => "Refresh requested: the actor refreshes the access token now.",
        "no_actor" => "This user has no running actor: there is nothing to refresh.",
        "resync" => "Resync queued: the user's current tokens are pushed to the microservice.",
        "no_user" => "There is no such user.",
        _ => return None,
    })
}

/// `GET /console/users/{user_id}`: one user, their recent history and the two actions.
async fn show_user(
    State(app): State<AppState>,
    operator: Operator,
    Path(user_id): Path<String>,
    Query(flash): Query<Flash>,
) -> Result<Response, Error> {
    let csrf = operator.csrf();
    let flash = flash_text(&flash.done);
    let Some(row) = users::row(&app.store, &app.supervisor, &user_id).await? else {
        let frame = operator.frame("No such user", &csrf, flash);
        let content =
            maud::html! { h1 { "No such user" } p { "No user " (user_id) " is known here." } };
        return Ok((StatusCode::NOT_FOUND, pages::page(&frame, content)).into_response());
    };
    let history = app.history.user(&user_id);
    let now = crate::clock::now();
    let events = grant::events_section(&app.store, &user_id, now).await?;
    let security = security::section(&app.store, &user_id, now).await?;
    let events = maud::html! { (events) (security) };
    let frame = operator.frame("User", &csrf, flash);
    let content = users::one(&row, &history, events, &csrf, now);
    Ok(pages::page(&frame, content).into_response())
}

fn back_to(user_id: &str, done: &str) -> Response {
    Redirect::to(&format!("{}?done={done}", pages::user_href(user_id))).into_response()
}

/// `POST /console/users/{user_id}/refresh` (`csrf`): asks the user's actor to refresh now.
async fn refresh_now(
    State(app): State<AppState>,
    operator: Operator,
    peer: Peer,
    Path(user_id): Path<String>,
    body: Bytes,
) -> Response {
    if !operator.csrf_ok(&FormFields::parse(&body)) {
        return stale_form();
    }
    audit("refresh_now", Some(&user_id), &peer);
    // On a cluster, the user's owner (wherever it runs) is asked, as the admin route does.
    let queued = match app.node.refresh(&user_id, false).await {
        Ok(Runs::Here(())) => true,
        Ok(Runs::Elsewhere(relayed)) => relayed.status == reqwest::StatusCode::ACCEPTED,
        Ok(Runs::Nobody) | Err(_) => false,
    };
    back_to(&user_id, if queued { "refresh" } else { "no_actor" })
}

/// `POST /console/users/{user_id}/resync` (`csrf`): pushes the user's current state to the
/// microservice again.
async fn resync(
    State(app): State<AppState>,
    operator: Operator,
    peer: Peer,
    Path(user_id): Path<String>,
    body: Bytes,
) -> Result<Response, Error> {
    if !operator.csrf_ok(&FormFields::parse(&body)) {
        return Ok(stale_form());
    }
    audit("resync", Some(&user_id), &peer);
    if !app.store.queue_resync(&user_id).await? {
        return Ok(back_to(&user_id, "no_user"));
    }
    app.node.user_changed(&user_id, Change::Resync).await;
    Ok(back_to(&user_id, "resync"))
}
