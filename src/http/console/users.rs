//! The users pages: the searchable, filterable, paged list (users waiting for a reconnect
//! first) and one user's page with their recent refreshes and pushes, their events to the app
//! and the buttons "Refresh now" and "Resync". Rows come from the store (email, sync state,
//! the grant's end and reconnect reason) joined with the supervisor's view of each actor
//! (status, schedule). Both show why a user must reconnect and when a time-limited grant ends
//! (`grant`).

use chrono::{DateTime, Utc};
use maud::{Markup, html};

use super::{
    grant,
    pages::{countdown, user_href, when},
};
use crate::{
    actors::{ActorView, Supervisor},
    history::Event,
    http::{Error, rfc3339},
    store::{Store, UserListing},
};

/// Rows per page.
pub const PAGE: usize = 50;
/// Most rows one request reads while looking for a status only the actors know: a page of
/// a rare status may come up short, with a link to go on.
const SCAN_LIMIT: usize = 1000;
/// The statuses the list can be filtered by, in the order offered.
pub const STATUSES: [&str; 5] = [
    "needs_reconnect",
    "retrying",
    "refreshing",
    "active",
    "hibernating",
];

/// One user as the pages show them.
pub struct Row {
    pub listing: UserListing,
    pub actor: Option<ActorView>,
}

impl Row {
    /// The status shown: the actor's, else what the row says.
    pub fn status(&self) -> &'static str {
        match &self.actor {
            Some(ActorView::Live(info)) => info.status.as_str(),
            Some(ActorView::Restarting { .. }) => "retrying",
            None if self.listing.needs_reconnect => "needs_reconnect",
            None if self.listing.connected => "starting",
            None => "disconnected",
        }
    }

    fn info(&self) -> Option<&crate::actors::ActorInfo> {
        match &self.actor {
            Some(ActorView::Live(info)) => Some(info),
            _ => None,
        }
    }

    fn token_expiry(&self) -> Option<DateTime<Utc>> {
        self.info()
            .map_or(self.listing.token_expiry, |i| i.token_expiry)
    }

    fn next_refresh_at(&self) -> Option<DateTime<Utc>> {
        self.info().and_then(|i| i.next_refresh_at)
    }

    fn last_refresh_at(&self) -> Option<DateTime<Utc>> {
        self.info()
            .map_or(self.listing.last_refresh_at, |i| i.last_refresh_at)
    }

    fn refresh_count(&self) -> i64 {
        self.info()
            .map_or(self.listing.refresh_count, |i| i.refresh_count)
    }

    /// Why the user must reconnect: the actor's (it ends grants), else the row's.
    fn reconnect_reason(&self) -> Option<crate::store::ReconnectReason> {
        self.info()
            .map_or(self.listing.reconnect_reason, |i| i.reconnect_reason)
    }

    /// When a time-limited grant ends: the actor's (a refresh may have moved it), else the
    /// row's.
    fn authorization_expires_at(&self) -> Option<DateTime<Utc>> {
        self.info()
            .map_or(self.listing.authorization_expires_at, |i| {
                i.authorization_expires_at
            })
    }

    /// The status cell's content, with the reason when the user must reconnect.
    fn status_cell(&self) -> Markup {
        grant::status(self.status(), self.reconnect_reason())
    }

    fn restarts(&self) -> Option<u32> {
        match &self.actor {
            Some(ActorView::Live(info)) => Some(info.restarts),
            Some(ActorView::Restarting { restarts, .. }) => Some(*restarts),
            None => None,
        }
    }
}

/// Where a page starts: after `after` in the group of users waiting for a reconnect, or in
/// the group of the others. Written `r:<user id>` or `c:<user id>` in the `cursor` parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub reconnect_group: bool,
    pub after: String,
}

impl Cursor {
    pub fn parse(raw: &str) -> Option<Self> {
        let (group, after) = raw.split_once(':')?;
        let reconnect_group = match group {
            "r" => true,
            "c" => false,
            _ => return None,
        };
        Some(Self {
            reconnect_group,
            after: after.to_string(),
        })
    }

    pub fn to_param(&self) -> String {
        let group = if self.reconnect_group { "r" } else { "c" };
        format!("{group}:{}", self.after)
    }
}

/// The rows the store and the supervisor give for one user id.
pub async fn row(
    store: &Store,
    supervisor: &Supervisor,
    user_id: &str,
) -> Result<Option<Row>, Error> {
    let listing = store.console_user(user_id).await?;
    let Some(listing) = listing else {
        return Ok(None);
    };
    let actor = supervisor.get(user_id).await.ok().flatten();
    Ok(Some(Row { listing, actor }))
}

/// One page of the list: users matching `text`, of `status` if given, from `cursor`.
/// Returns the rows and where the next page starts.
pub async fn page(
    store: &Store,
    supervisor: &Supervisor,
    text: Option<&str>,
    status: Option<&str>,
    cursor: Option<Cursor>,
) -> Result<(Vec<Row>, Option<Cursor>), Error> {
    let groups: &[bool] = match status {
        Some("needs_reconnect") => &[true],
        Some(_) => &[false],
        None => &[true, false],
    };
    let (mut group, mut after) = match cursor {
        Some(c) if groups.contains(&c.reconnect_group) => (
            groups
                .iter()
                .position(|g| *g == c.reconnect_group)
                .unwrap_or(0),
            Some(c.after),
        ),
        _ => (0, None),
    };
    let mut rows = Vec::new();
    let mut scanned = 0;
    loop {
        let reconnect_group = groups[group];
        let batch = store
            .console_users(text, reconnect_group, after.as_deref(), PAGE as u64)
            .await?;
        let full = batch.len() == PAGE;
        let views =
            futures::future::join_all(batch.iter().map(|l| supervisor.get(&l.user_id))).await;
        scanned += batch.len();
        for (listing, view) in batch.into_iter().zip(views) {
            after = Some(listing.user_id.to_string());
            let row = Row {
                listing,
                actor: view.ok().flatten(),
            };
            if status.is_none_or(|s| row.status() == s) {
                rows.push(row);
                if rows.len() == PAGE {
                    let next = after.take().map(|after| Cursor {
                        reconnect_group,
                        after,
                    });
                    return Ok((rows, next));
                }
            }
        }
        if !full {
            group += 1;
            after = None;
            if group == groups.len() {
                return Ok((rows, None));
            }
        } else if scanned >= SCAN_LIMIT {
            let next = after.map(|after| Cursor {
                reconnect_group,
                after,
            });
            return Ok((rows, next));
        }
    }
}

/// The list's content: the search form (`q`, `status`), the table and the next-page link.
pub fn list(
    rows: &[Row],
    text: &str,
    status: Option<&str>,
    next: Option<&Cursor>,
    now: DateTime<Utc>,
) -> Markup {
    let next_href = next.map(|cursor| {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query.append_pair("q", text);
        query.append_pair("status", status.unwrap_or(""));
        query.append_pair("cursor", &cursor.to_param());
        format!("/console/users?{}", query.finish())
    });
    html! {
        h1 { "Users" }
        form method="get" action="/console/users" {
            label { "User id or email " input type="search" name="q" value=(text); }
            " "
            label {
                "Status "
                select name="status" {
                    option value="" selected[status.is_none()] { "any (needs_reconnect first)" }
                    @for s in STATUSES {
                        option value=(s) selected[status == Some(s)] { (s) }
                    }
                }
            }
            " "
            button type="submit" { "Search" }
        }
        @if rows.is_empty() {
            p.muted { "No user matches." }
        } @else {
            table {
                tr {
                    th { "User" } th { "Email" } th { "Status" } th { "Grant ends" } th { "Token expiry" }
                    th { "Next refresh" } th { "Last refresh" } th { "Refreshes" }
                    th { "Restarts" } th { "Sync" } th { "Last error" }
                }
                @for row in rows {
                    tr {
                        td { a href=(user_href(&row.listing.user_id)) { (row.listing.user_id) } }
                        td { (row.listing.google_email.as_deref().unwrap_or("")) }
                        td { (row.status_cell()) }
                        td { (grant::grant_end(row.authorization_expires_at(), now)) }
                        td { (when(row.token_expiry(), now, "none")) }
                        td { (countdown(row.next_refresh_at(), now)) }
                        td { (when(row.last_refresh_at(), now, "never")) }
                        td { (row.refresh_count()) }
                        td { (row.restarts().map_or(String::new(), |r| r.to_string())) }
                        td { (row.listing.sync.state.as_str()) }
                        td { (row.listing.sync.last_error.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
        @if let Some(href) = next_href {
            p { a href=(href) { "Next page" } }
        }
    }
}

/// One user's content: every field, the buttons, the recent history and `events` (the
/// user's events to the app, `grant::events_section`).
pub fn one(row: &Row, history: &[Event], events: Markup, csrf: &str, now: DateTime<Utc>) -> Markup {
    let href = user_href(&row.listing.user_id);
    let sync = &row.listing.sync;
    html! {
        h1 { "User " (row.listing.user_id) }
        table {
            tr { th { "Email" } td { (row.listing.google_email.as_deref().unwrap_or("")) } }
            tr { th { "Status" } td { (row.status_cell()) } }
            tr { th { "Grant ends" } td { (grant::grant_end(row.authorization_expires_at(), now)) } }
            tr { th { "Token expiry" } td { (when(row.token_expiry(), now, "none")) } }
            tr { th { "Next refresh" } td { (countdown(row.next_refresh_at(), now)) } }
            tr { th { "Last refresh" } td { (when(row.last_refresh_at(), now, "never")) } }
            tr { th { "Refresh count" } td { (row.refresh_count()) } }
            tr { th { "Restarts" } td { (row.restarts().map_or(String::from("no actor"), |r| r.to_string())) } }
            tr { th { "Sync state" } td { (sync.state.as_str()) } }
            tr { th { "Synced at" } td { (when(sync.synced_at, now, "never")) } }
            tr { th { "Sync attempts" } td { (sync.attempts) } }
            tr { th { "Last error" } td { (sync.last_error.as_deref().unwrap_or("")) } }
        }
        form method="post" action={(href) "/refresh"} {
            input type="hidden" name="csrf" value=(csrf);
            button type="submit" { "Refresh now" }
        }
        form method="post" action={(href) "/resync"} {
            input type="hidden" name="csrf" value=(csrf);
            button type="submit" { "Resync" }
        }
        h2 { "Recent refreshes and pushes" }
        @if history.is_empty() {
            p.muted { "Nothing recorded since this node started." }
        } @else {
            table {
                tr { th { "When" } th { "What" } th { "Outcome" } th { "Error" } }
                @for event in history {
                    tr {
                        td { time datetime=(rfc3339(event.at)) { (rfc3339(event.at)) } }
                        td {
                            (event.activity.label())
                            @if let crate::history::Activity::Refresh(reason) = event.activity {
                                " (" (reason) ")"
                            }
                        }
                        td class=[event.failed.then_some("status-needs_reconnect")] { (event.outcome) }
                        td { (event.detail.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
        (events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_unknown_groups() {
        for cursor in [
            Cursor {
                reconnect_group: true,
                after: "a:b".into(),
            },
            Cursor {
                reconnect_group: false,
                after: "alice@x.test".into(),
            },
        ] {
            assert_eq!(Cursor::parse(&cursor.to_param()), Some(cursor));
        }
        assert_eq!(Cursor::parse("x:alice"), None);
        assert_eq!(Cursor::parse("alice"), None);
    }
}
