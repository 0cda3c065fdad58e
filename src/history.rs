//! What happened lately, in memory, for the operator console: each user's last refreshes and
//! pushes, and per-minute counts of both over the last hour (the console's chart). The
//! actors record refresh outcomes and the sync records deliveries; the console only reads.
//!
//! Bounded on purpose: [`PER_USER`] events per user and [`MAX_USERS`] users, the users first
//! recorded leaving first. It is a window for a person looking at the console, not an audit
//! log (the logs and traces are that), and it is lost at a restart. Never holds a token value:
//! an event carries an outcome label and, for a failure, the error text the admin API already
//! shows.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
};

use chrono::{DateTime, Utc};

use crate::ids::UserId;

/// Events kept per user.
pub const PER_USER: usize = 20;
/// Users kept at once: 10,000 users of 20 small events is a few megabytes at most.
pub const MAX_USERS: usize = 10_000;
/// Minutes of counts kept: the console shows the last hour.
pub const MINUTES: usize = 60;
/// Error texts are cut to this many characters: enough to read, bounded in memory.
const DETAIL_CHARS: usize = 200;

/// What an event was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// A refresh at Google, with its reason (`scheduled`, `forced`, `retry`).
    Refresh(&'static str),
    /// A push of the user's tokens to the microservice.
    Push,
    /// A delete at the microservice (the user disconnected).
    Delete,
}

impl Activity {
    /// How the console names it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Refresh(_) => "refresh",
            Self::Push => "push",
            Self::Delete => "delete",
        }
    }
}

/// One refresh or delivery of one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at: DateTime<Utc>,
    pub activity: Activity,
    /// The outcome's label, as the metrics name it (`ok`, `transient`, `failed`, ...).
    pub outcome: &'static str,
    /// Whether it counts as a failure.
    pub failed: bool,
    /// The error of a failure, cut short.
    pub detail: Option<String>,
}

/// Counts of one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Minute {
    /// Minutes since the Unix epoch: which minute these counts are of.
    pub minute: i64,
    pub refreshes: u32,
    pub refresh_failures: u32,
    pub pushes: u32,
    pub push_failures: u32,
}

/// The shared handle; cheap to share behind an `Arc`.
pub struct History {
    /// One lock for both parts: each record is a few pointer moves, far below the cost of
    /// the refresh or the HTTP call it records, so contention stays negligible.
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    users: HashMap<UserId, VecDeque<Event>>,
    /// Users in the order they were first recorded: who leaves first at the cap.
    order: VecDeque<UserId>,
    /// A ring indexed by minute modulo [`MINUTES`]; a slot of an older minute is stale.
    minutes: Vec<Minute>,
}

impl Default for History {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                minutes: vec![Minute::default(); MINUTES],
                ..Inner::default()
            }),
        }
    }
}

impl History {
    /// Records one event of `user_id`, now.
    pub fn record(
        &self,
        user_id: &str,
        activity: Activity,
        outcome: &'static str,
        failed: bool,
        detail: Option<&str>,
    ) {
        self.record_at(
            crate::clock::now(),
            user_id,
            activity,
            outcome,
            failed,
            detail,
        );
    }

    fn record_at(
        &self,
        at: DateTime<Utc>,
        user_id: &str,
        activity: Activity,
        outcome: &'static str,
        failed: bool,
        detail: Option<&str>,
    ) {
        let event = Event {
            at,
            activity,
            outcome,
            failed,
            detail: detail.map(|d| d.chars().take(DETAIL_CHARS).collect()),
        };
        // A poisoned lock only means a panic elsewhere mid-record: the data is still usable.
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.count(at, activity, failed);
        if let Some(events) = inner.users.get_mut(user_id) {
            if events.len() == PER_USER {
                events.pop_back();
            }
            events.push_front(event);
            return;
        }
        if inner.users.len() >= MAX_USERS
            && let Some(oldest) = inner.order.pop_front()
        {
            inner.users.remove(&oldest);
        }
        let user_id = UserId::from(user_id);
        inner.order.push_back(user_id.clone());
        inner.users.insert(user_id, VecDeque::from([event]));
    }

    /// `user_id`'s recent events, newest first.
    pub fn user(&self, user_id: &str) -> Vec<Event> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .users
            .get(user_id)
            .map(|events| events.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The counts of the [`MINUTES`] minutes up to `now`'s, oldest first; quiet minutes are
    /// zeros.
    pub fn last_hour(&self, now: DateTime<Utc>) -> Vec<Minute> {
        let current = minute_of(now);
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (current - MINUTES as i64 + 1..=current)
            .map(|minute| {
                let slot = inner.minutes[slot_of(minute)];
                if slot.minute == minute {
                    slot
                } else {
                    Minute {
                        minute,
                        ..Minute::default()
                    }
                }
            })
            .collect()
    }
}

impl Inner {
    fn count(&mut self, at: DateTime<Utc>, activity: Activity, failed: bool) {
        let minute = minute_of(at);
        let slot = &mut self.minutes[slot_of(minute)];
        if slot.minute != minute {
            *slot = Minute {
                minute,
                ..Minute::default()
            };
        }
        match (activity, failed) {
            (Activity::Refresh(_), false) => slot.refreshes += 1,
            (Activity::Refresh(_), true) => slot.refresh_failures += 1,
            (Activity::Push | Activity::Delete, false) => slot.pushes += 1,
            (Activity::Push | Activity::Delete, true) => slot.push_failures += 1,
        }
    }
}

fn minute_of(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(60)
}

fn slot_of(minute: i64) -> usize {
    minute.rem_euclid(MINUTES as i64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFRESH: Activity = Activity::Refresh("scheduled");

    #[test]
    fn keeps_the_newest_events_of_a_user_newest_first() {
        let history = History::default();
        let start = crate::clock::now();
        for i in 0..(PER_USER as i64 + 5) {
            let at = start + chrono::Duration::seconds(i);
            history.record_at(at, "u", REFRESH, "ok", false, None);
        }
        let events = history.user("u");
        assert_eq!(events.len(), PER_USER);
        assert_eq!(
            events[0].at,
            start + chrono::Duration::seconds(PER_USER as i64 + 4)
        );
        assert!(events.windows(2).all(|w| w[0].at > w[1].at));
        assert!(history.user("nobody").is_empty());
    }

    #[test]
    fn the_first_users_recorded_leave_first_at_the_cap() {
        let history = History::default();
        for i in 0..=MAX_USERS {
            history.record(&format!("u{i}"), Activity::Push, "ok", false, None);
        }
        assert!(history.user("u0").is_empty());
        assert_eq!(history.user("u1").len(), 1);
        assert_eq!(history.user(&format!("u{MAX_USERS}")).len(), 1);
    }

    #[test]
    fn counts_by_minute_and_forgets_minutes_older_than_an_hour() {
        let history = History::default();
        let now = crate::clock::now();
        let an_hour_ago = now - chrono::Duration::minutes(MINUTES as i64);
        history.record_at(an_hour_ago, "u", REFRESH, "ok", false, None);
        history.record_at(now, "u", REFRESH, "ok", false, None);
        history.record_at(now, "u", REFRESH, "transient", true, Some("timeout"));
        history.record_at(now, "u", Activity::Push, "ok", false, None);
        history.record_at(now, "u", Activity::Delete, "failed", true, None);
        let hour = history.last_hour(now);
        assert_eq!(hour.len(), MINUTES);
        let last = hour[MINUTES - 1];
        assert_eq!(
            (
                last.refreshes,
                last.refresh_failures,
                last.pushes,
                last.push_failures
            ),
            (1, 1, 1, 1)
        );
        // The event of an hour ago shared the slot and was replaced, not added to.
        assert_eq!(hour.iter().map(|m| m.refreshes).sum::<u32>(), 1);
        assert!(hour.windows(2).all(|w| w[0].minute + 1 == w[1].minute));
    }

    #[test]
    fn long_error_texts_are_cut() {
        let history = History::default();
        let long = "x".repeat(DETAIL_CHARS * 3);
        history.record("u", Activity::Push, "failed", true, Some(&long));
        let detail = history.user("u")[0].detail.clone().unwrap();
        assert_eq!(detail.chars().count(), DETAIL_CHARS);
    }
}
