//! Getting into the console and out of it: the sign-in form, signing in, signing out, and
//! ending every session. Owns the session's life in the database (started at sign-in, ended
//! at sign-out or by "End all sessions", so an ended session ends on every node at once) and
//! the throttle on wrong tokens. Must not touch: the pages' content (`pages`), the cookie's
//! format (`session`).

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use chrono::Utc;

use super::{
    FormFields, Operator, Peer, audit, overview_page, pages, secure_cookie, session, stale_form,
};
use crate::{
    crypto::secrets_match,
    http::{AppState, Error, auth_throttle::retry_after_secs},
};

/// The sign-in form with a fresh anti-forgery value, its cookie, and `extra` cookies.
fn sign_in_page(
    app: &AppState,
    status: StatusCode,
    error: Option<&str>,
    extra: Option<HeaderValue>,
) -> Response {
    let (token, cookie) = session::sign_in_token(secure_cookie(app));
    let mut response = (status, pages::sign_in(&token, error)).into_response();
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, cookie);
    if let Some(extra) = extra {
        headers.append(header::SET_COOKIE, extra);
    }
    response
}

/// `GET /console`: the overview when signed in, else the sign-in form (clearing a cookie
/// that no longer holds a session).
pub(super) async fn home(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    if let Some(operator) = Operator::of(&app, &headers).await? {
        return Ok(overview_page(&app, &operator.csrf()).await?.into_response());
    }
    let clear = session::has_cookie(&headers).then(|| session::clear_cookie(secure_cookie(&app)));
    Ok(sign_in_page(&app, StatusCode::OK, None, clear))
}

/// `POST /console` (`admin_token`, `csrf`): signs in. A good token gets the session cookie
/// and the overview in the same answer; a wrong one gets the form again with an error, 401;
/// after too many wrong ones from the address, every attempt gets 429 for the rest of the
/// minute. A `csrf` that is sent must equal the form's cookie (a browser always sends both);
/// before a session exists, the origin check is what refuses a cross-site sign-in, and a
/// forged sign-in needs the admin token anyway.
pub(super) async fn sign_in(
    State(app): State<AppState>,
    peer: Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let client = peer.client;
    if let Err(wait) = app.auth_throttle.check(client) {
        audit("sign_in_throttled", None, &peer);
        let seconds = retry_after_secs(wait);
        let message = format!("Too many wrong tokens from your address: try again in {seconds} s.");
        let mut page = sign_in_page(&app, StatusCode::TOO_MANY_REQUESTS, Some(&message), None);
        page.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        return Ok(page);
    }
    let form = FormFields::parse(&body);
    if let Some(token) = form.get("csrf")
        && !session::sign_in_token_matches(&headers, token)
    {
        let error = Some("The sign-in form expired: try again.");
        return Ok(sign_in_page(&app, StatusCode::FORBIDDEN, error, None));
    }
    let presented = form.get("admin_token").unwrap_or_default();
    if presented.is_empty() || !secrets_match(presented, &app.config.admin_token) {
        app.auth_throttle.failed(client);
        audit("sign_in_failed", None, &peer);
        let error = Some("Wrong admin token.");
        return Ok(sign_in_page(&app, StatusCode::UNAUTHORIZED, error, None));
    }
    let now = Utc::now();
    let secure = secure_cookie(&app);
    let keys = session::Keys::from_admin_token(&app.config.admin_token);
    let (session, cookie) = keys.issue(now, secure);
    app.store
        .start_console_session(&session.id, now, session.expires_at)
        .await?;
    audit("sign_in", None, &peer);
    let page = overview_page(&app, &keys.csrf_token(&session)).await?;
    let mut response = page.into_response();
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, cookie);
    headers.append(header::SET_COOKIE, session::clear_sign_in_cookie(secure));
    Ok(response)
}

/// `POST /console/sign-out` (`csrf`): ends the session, on every node, and clears the cookie.
pub(super) async fn sign_out(
    State(app): State<AppState>,
    headers: HeaderMap,
    peer: Peer,
    body: Bytes,
) -> Result<Response, Error> {
    if let Some(operator) = Operator::of(&app, &headers).await? {
        if !operator.csrf_ok(&FormFields::parse(&body)) {
            return Ok(stale_form());
        }
        app.store.end_console_session(&operator.session.id).await?;
        audit("sign_out", None, &peer);
    }
    let clear = session::clear_cookie(secure_cookie(&app));
    Ok(([(header::SET_COOKIE, clear)], Redirect::to("/console")).into_response())
}

/// `POST /console/sessions/end-all` (`csrf`): ends every console session, this one included
/// (for a cookie that may have been copied, or an operator who left).
pub(super) async fn end_all_sessions(
    State(app): State<AppState>,
    operator: Operator,
    peer: Peer,
    body: Bytes,
) -> Result<Response, Error> {
    if !operator.csrf_ok(&FormFields::parse(&body)) {
        return Ok(stale_form());
    }
    let ended = app.store.end_all_console_sessions().await?;
    audit("end_all_sessions", None, &peer);
    tracing::info!(sessions = ended, "console sessions ended");
    let clear = session::clear_cookie(secure_cookie(&app));
    Ok(([(header::SET_COOKIE, clear)], Redirect::to("/console")).into_response())
}
