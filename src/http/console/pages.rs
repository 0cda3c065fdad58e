//! The console's markup: the page frame, the sign-in form and the overview, rendered with
//! `maud` (which escapes every value it interpolates). The users pages are in `users.rs`.
//! Pages show schedule and sync data only: no token value, no token prefix, ever.
//!
//! The one style sheet and the one script are inline and allowed by their hashes in the
//! Content-Security-Policy ([`content_security_policy`]), so no other script can run here.

use std::sync::LazyLock;

use base64::{Engine, engine::general_purpose::STANDARD};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use sha2::{Digest, Sha256};

use crate::{history::Minute, http::rfc3339, ids::UserId};

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222}\
header{display:flex;gap:1.5em;align-items:center;padding:.6em 1.5em;background:#1f3a5f;color:#fff}\
header a{color:#fff}header form{margin-left:auto}main{padding:1em 1.5em;max-width:72em}\
table{border-collapse:collapse;margin:.5em 0}td,th{border-bottom:1px solid #ddd;padding:.25em .6em;\
text-align:left;vertical-align:top}.flash{background:#e6f4ea;padding:.5em 1em}\
.error{background:#fde8e8;padding:.5em 1em}.status-needs_reconnect{color:#b00020;font-weight:bold}\
.status-retrying{color:#a15c00}.muted{color:#777}.cards{display:flex;gap:1em;flex-wrap:wrap}\
.card{border:1px solid #ddd;padding:.5em 1em;min-width:10em}.card b{font-size:1.4em;display:block}";

/// Turns every `data-due` element's text into a live countdown to its RFC 3339 time, and
/// makes the page a plain entry of the history, so that reloading the page the sign-in post
/// answered asks for it again instead of posting the form again.
const SCRIPT: &str = "history.replaceState(null,'',location.href);function twTick(){for(const e of document.querySelectorAll('[data-due]')){\
const s=Math.round((Date.parse(e.dataset.due)-Date.now())/1000);\
e.textContent=s>0?'in '+Math.floor(s/60)+'m '+String(s%60).padStart(2,'0')+'s':'due now';}}\
twTick();setInterval(twTick,1000);";

/// The policy of every console page: nothing loads from anywhere, forms post here only,
/// no framing, and only the inline style and script above may run.
pub fn content_security_policy() -> &'static str {
    static POLICY: LazyLock<String> = LazyLock::new(|| {
        let hash = |text: &str| STANDARD.encode(Sha256::digest(text.as_bytes()));
        format!(
            "default-src 'none'; style-src 'sha256-{}'; script-src 'sha256-{}'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            hash(STYLE),
            hash(SCRIPT)
        )
    });
    &POLICY
}

/// What the frame of a signed-in page needs.
pub struct Frame<'a> {
    pub title: &'a str,
    /// The sign-out form's CSRF token.
    pub csrf: &'a str,
    /// A message to show above the content (the outcome of an action).
    pub flash: Option<&'a str>,
}

/// A signed-in page: the navigation (links "Overview" and "Users", buttons "Sign out" and
/// "End all sessions") and `content`.
pub fn page(frame: &Frame<'_>, content: Markup) -> Markup {
    document(
        frame.title,
        html! {
            header {
                strong { "tokenwarden console" }
                a href="/console" { "Overview" }
                a href="/console/users" { "Users" }
                form method="post" action="/console/sign-out" {
                    input type="hidden" name="csrf" value=(frame.csrf);
                    button type="submit" { "Sign out" }
                }
                form method="post" action="/console/sessions/end-all" {
                    input type="hidden" name="csrf" value=(frame.csrf);
                    button type="submit" title="Signs out every browser, this one included" {
                        "End all sessions"
                    }
                }
            }
            main {
                @if let Some(flash) = frame.flash {
                    p.flash role="status" { (flash) }
                }
                (content)
            }
        },
    )
}

/// The sign-in form: one password field for the admin token. The typed token is never put
/// back into the page, not even after a wrong one.
pub fn sign_in(csrf: &str, error: Option<&str>) -> Markup {
    document(
        "Sign in",
        html! {
            main {
                h1 { "tokenwarden console" }
                @if let Some(error) = error {
                    p.error role="alert" { (error) }
                }
                form method="post" action="/console" {
                    input type="hidden" name="csrf" value=(csrf);
                    label {
                        "Admin token "
                        input type="password" name="admin_token" autocomplete="current-password"
                            required autofocus;
                    }
                    " "
                    button type="submit" { "Sign in" }
                }
            }
        },
    )
}

/// A page that only says why a request was refused (its status says the rest).
pub fn refusal(title: &str, message: &str) -> Markup {
    document(
        title,
        html! {
            main {
                h1 { (title) }
                p.error { (message) }
                p { a href="/console" { "Back to the console" } }
            }
        },
    )
}

fn document(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " - tokenwarden" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                (body)
                script { (PreEscaped(SCRIPT)) }
            }
        }
    }
}

/// What the overview shows.
pub struct Overview {
    /// Users by status (the actors' gauge), in the order shown.
    pub statuses: Vec<(&'static str, i64)>,
    pub users: i64,
    /// The last hour, a minute each, oldest first.
    pub hour: Vec<Minute>,
    /// Users whose latest change the microservice has not acknowledged, and since when.
    pub backlog_users: u64,
    pub backlog_oldest: Option<DateTime<Utc>>,
    /// Users with a push queued or in flight in this process.
    pub in_flight: i64,
    /// The refreshes due next: user id and when.
    pub next_due: Vec<(UserId, Option<DateTime<Utc>>)>,
}

/// The overview's content.
pub fn overview(o: &Overview, now: DateTime<Utc>) -> Markup {
    let full_minute = o.hour.len().checked_sub(2).map(|i| o.hour[i]);
    let per_minute = full_minute.unwrap_or_default();
    let failures_refresh: u32 = o.hour.iter().map(|m| m.refresh_failures).sum();
    let failures_push: u32 = o.hour.iter().map(|m| m.push_failures).sum();
    html! {
        h1 { "Overview" }
        div.cards {
            div.card { b { (o.users) } "users with an actor" }
            @for (status, count) in &o.statuses {
                div.card { b.{"status-" (status)} { (count) } (status) }
            }
        }
        h2 { "Activity" }
        table {
            tr { th { "Refreshes in the last full minute" } td { (per_minute.refreshes) } }
            tr { th { "Pushes in the last full minute" } td { (per_minute.pushes) } }
            tr { th { "Refresh failures in the last hour" } td { (failures_refresh) } }
            tr { th { "Push failures in the last hour" } td { (failures_push) } }
            tr { th { "Sync backlog (users not yet acknowledged)" } td { (o.backlog_users) } }
            tr { th { "Pushes queued or in flight here" } td { (o.in_flight) } }
            tr {
                th { "Oldest unsynced change" }
                td { (when(o.backlog_oldest, now, "none")) }
            }
        }
        h2 { "Refreshes per minute, last hour" }
        (chart(&o.hour, |m| (m.refreshes, m.refresh_failures), "refreshes"))
        h2 { "Pushes per minute, last hour" }
        (chart(&o.hour, |m| (m.pushes, m.push_failures), "pushes"))
        h2 { "Next refreshes due" }
        @if o.next_due.is_empty() {
            p.muted { "No refresh is planned." }
        } @else {
            table {
                tr { th { "User" } th { "Due" } }
                @for (user_id, due) in &o.next_due {
                    tr {
                        td { a href=(user_href(user_id)) { (user_id) } }
                        td { (countdown(*due, now)) }
                    }
                }
            }
        }
    }
}

/// Bars of one count per minute (successes dark, failures red on top), with a tooltip each.
fn chart(hour: &[Minute], counts: impl Fn(&Minute) -> (u32, u32), what: &str) -> Markup {
    const WIDTH: usize = 600;
    const HEIGHT: u32 = 100;
    let bar = WIDTH / hour.len().max(1);
    let max = hour
        .iter()
        .map(|m| {
            let (ok, failed) = counts(m);
            ok + failed
        })
        .max()
        .unwrap_or(0)
        .max(1);
    let scale = |n: u32| n * HEIGHT / max;
    html! {
        svg width=(WIDTH) height=(HEIGHT + 16) viewBox={"0 0 " (WIDTH) " " (HEIGHT + 16)}
            role="img" aria-label={ (what) " per minute over the last hour" } {
            line x1="0" y1=(HEIGHT) x2=(WIDTH) y2=(HEIGHT) stroke="#999" {}
            @for (i, minute) in hour.iter().enumerate() {
                @let (ok, failed) = counts(minute);
                @let x = i * bar;
                @let at = DateTime::from_timestamp(minute.minute * 60, 0).map(|t| t.format("%H:%M").to_string()).unwrap_or_default();
                g {
                    title { (at) " UTC: " (ok) " " (what) ", " (failed) " failed" }
                    rect x=(x) y=(HEIGHT - scale(ok)) width=(bar.saturating_sub(1)) height=(scale(ok)) fill="#1f3a5f" {}
                    rect x=(x) y=(HEIGHT - scale(ok) - scale(failed)) width=(bar.saturating_sub(1)) height=(scale(failed)) fill="#c62828" {}
                }
            }
            text x="0" y=(HEIGHT + 13) font-size="11" fill="#555" { "60 min ago" }
            text x=(WIDTH) y=(HEIGHT + 13) font-size="11" fill="#555" text-anchor="end" { "now (peak " (max) ")" }
        }
    }
}

/// The link to one user's page.
pub fn user_href(user_id: &str) -> String {
    let encoded: String = url::form_urlencoded::byte_serialize(user_id.as_bytes()).collect();
    format!("/console/users/{encoded}")
}

/// A time with how far it is from now (`3m 10s ago`), or `none_text`.
pub fn when(at: Option<DateTime<Utc>>, now: DateTime<Utc>, none_text: &str) -> Markup {
    match at {
        None => html! { span.muted { (none_text) } },
        Some(at) => html! {
            time datetime=(rfc3339(at)) title=(rfc3339(at)) { (rfc3339(at)) }
            " " span.muted { "(" (relative(at, now)) ")" }
        },
    }
}

/// A time in the future counting down live (the script updates `data-due` elements).
pub fn countdown(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Markup {
    match at {
        None => html! { span.muted { "none planned" } },
        Some(at) => html! {
            time datetime=(rfc3339(at)) title=(rfc3339(at)) {
                span data-due=(rfc3339(at)) { (relative(at, now)) }
            }
        },
    }
}

fn relative(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (at - now).num_seconds();
    let span = secs.unsigned_abs();
    let text = match span {
        0..60 => format!("{span}s"),
        60..3600 => format!("{}m {:02}s", span / 60, span % 60),
        3600..86_400 => format!("{}h {:02}m", span / 3600, span % 3600 / 60),
        _ => format!("{}d {}h", span / 86_400, span % 86_400 / 3600),
    };
    if secs == 0 {
        "now".into()
    } else if secs > 0 {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sign_in_form_has_one_password_field_and_never_echoes_a_token() {
        let page = sign_in("csrf-value", Some("Wrong admin token.")).into_string();
        assert_eq!(page.matches("type=\"password\"").count(), 1);
        assert!(page.contains("name=\"admin_token\""));
        assert!(!page.contains("value=\"\""));
        assert!(page.contains("Wrong admin token."));
    }

    #[test]
    fn values_are_escaped() {
        let frame = Frame {
            title: "t",
            csrf: "c",
            flash: Some("<script>x</script>"),
        };
        let page = page(&frame, html! {}).into_string();
        assert!(!page.contains("<script>x"));
        assert!(page.contains("&lt;script&gt;x"));
    }

    #[test]
    fn relative_times_read_naturally() {
        let now = crate::clock::now();
        assert_eq!(
            relative(now + chrono::Duration::seconds(65), now),
            "in 1m 05s"
        );
        assert_eq!(
            relative(now - chrono::Duration::seconds(7200), now),
            "2h 00m ago"
        );
    }

    #[test]
    fn the_policy_allows_exactly_the_inline_style_and_script() {
        let policy = content_security_policy();
        assert!(policy.starts_with("default-src 'none';"));
        assert_eq!(policy.matches("'sha256-").count(), 2);
        assert!(!policy.contains("unsafe-inline"));
    }
}
