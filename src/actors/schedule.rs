//! Timing as plain data: each user's [`Schedule`] (its refresh plan and history, one value
//! whether the user is live or parked) and the supervisor's [`WakeSchedule`] of parked users
//! (wake order, the wake budget, the backlog tick and when its one timer must fire).
//!
//! Every function takes `now` as an argument: nothing here reads a clock, spawns a task or sends
//! a message, so the whole policy is tested with plain values. Wall-clock plans (a token's
//! expiry is a wall-clock time) become tokio delays in one place, [`delay_until`].
//! Must not touch: actors, the store, metrics.

use std::{collections::BTreeSet, time::Duration};

use chrono::{DateTime, Utc};

use super::messages::{ActorInfo, ActorStatus};
use crate::{
    ids::{TokenVersion, UserId},
    store::{ActorStart, ReconnectReason},
};

/// A retrying user parks when its retry is further away than this (or than
/// `ACTOR_HIBERNATE_AFTER_SECS`, if shorter).
pub const RETRY_PARK_AFTER: Duration = Duration::from_secs(10);
/// The wake budget's floor, so that a small `REFRESH_CONCURRENCY` still wakes users in
/// batches worth a tick.
const WAKE_HIGH_WATER_MIN: usize = 256;
/// Users woken per refresh permit: enough queued at the semaphore to keep every permit busy
/// until the next tick, few enough that a backlog costs a few thousand live actors at most.
const WAKE_PER_PERMIT: usize = 4;
/// The pause between wake ticks while a backlog drains: long enough for the users just woken
/// to start their refreshes and show in the count, short enough not to leave permits idle.
pub const WAKE_BACKLOG_TICK: Duration = Duration::from_millis(20);
/// The most a parked user is woken ahead of its refresh.
const WAKE_AHEAD_MAX: Duration = Duration::from_secs(5);

/// How long from `now` until `at`, zero if it has passed: the one conversion of a wall-clock
/// plan into a delay on tokio's clock.
pub fn delay_until(now: DateTime<Utc>, at: DateTime<Utc>) -> Duration {
    (at - now).to_std().unwrap_or(Duration::ZERO)
}

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// One user's refresh plan and history: what the live actor works from and what a parked user
/// keeps. The same value moves between the two, so no field is copied by hand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    pub token_expiry: Option<DateTime<Utc>>,
    /// The refresh (or retry) planned, jitter included; kept across parking so waking does not
    /// move it.
    pub next_refresh_at: Option<DateTime<Utc>>,
    pub last_refresh_at: Option<DateTime<Utc>>,
    pub refresh_count: i64,
    /// The row's change counter the actor last saw.
    pub version: TokenVersion,
    /// Failed refreshes in a row: a user parked while it waits to retry resumes its backoff
    /// where it was when woken.
    pub failures: u32,
    /// Why the user must reconnect, while it must.
    pub reconnect_reason: Option<ReconnectReason>,
    /// When a time-limited grant ends: at that moment the user needs a reconnect, with no
    /// call to Google at or after it.
    pub authorization_expires_at: Option<DateTime<Utc>>,
    /// When to warn the app that the grant nears its end; `None` once warned, without an
    /// end, or without app events.
    pub warn_at: Option<DateTime<Utc>>,
}

/// What is due at a user's next wake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextDue {
    /// The planned refresh (or retry).
    Refresh,
    /// The warning that a time-limited grant nears its end.
    Warn,
    /// The end of a time-limited grant.
    Expire,
}

/// When to warn of a grant ending at `end`, `warning` ahead (at once if already that close);
/// `None` without an end, without app events (`warning` `None`) or once `warned`.
pub fn warn_at(
    end: Option<DateTime<Utc>>,
    warning: Option<Duration>,
    warned: bool,
) -> Option<DateTime<Utc>> {
    let (end, warning) = (end?, warning?);
    (!warned).then(|| end - chrono(warning))
}

impl Schedule {
    /// A user's schedule as loaded from its row, with the refresh planned for it and the app
    /// warned `warning` before a time-limited grant ends.
    pub fn from_start(
        start: &ActorStart,
        planned: Option<DateTime<Utc>>,
        warning: Option<Duration>,
    ) -> Self {
        Self {
            token_expiry: start.token_expiry,
            next_refresh_at: planned.filter(|_| !start.needs_reconnect),
            last_refresh_at: start.last_refresh_at,
            refresh_count: start.refresh_count,
            version: start.version,
            failures: 0,
            reconnect_reason: start.reconnect_reason.filter(|_| start.needs_reconnect),
            authorization_expires_at: start.authorization_expires_at,
            warn_at: warn_at(
                start.authorization_expires_at,
                warning,
                start.authorization_warned,
            ),
        }
    }

    /// The next thing due and when: the planned refresh, unless the grant's warning or its end
    /// comes first (a refresh planned at or after the end never happens). Ties go to the end,
    /// then the warning.
    pub fn next_due(&self) -> Option<(DateTime<Utc>, NextDue)> {
        [
            self.authorization_expires_at
                .map(|at| (at, NextDue::Expire)),
            self.warn_at.map(|at| (at, NextDue::Warn)),
            self.next_refresh_at
                .filter(|at| self.authorization_expires_at.is_none_or(|end| *at < end))
                .map(|at| (at, NextDue::Refresh)),
        ]
        .into_iter()
        .flatten()
        .min_by_key(|(at, _)| *at)
    }

    /// Whether a user with this schedule has nothing to do for longer than staying live is
    /// worth: waiting for a reconnect, or its refresh further away than `hibernate_after` (its
    /// retry further than [`RETRY_PARK_AFTER`], if shorter: while Google is down every user
    /// ends up retrying, and a million live actors waiting would not fit in memory).
    pub fn is_idle(
        &self,
        needs_reconnect: bool,
        now: DateTime<Utc>,
        hibernate_after: Duration,
    ) -> bool {
        if needs_reconnect {
            return true;
        }
        let wait = if self.failures > 0 {
            hibernate_after.min(RETRY_PARK_AFTER)
        } else {
            hibernate_after
        };
        self.next_due()
            .is_some_and(|(at, _)| delay_until(now, at) > wait)
    }

    /// What `/admin/actors` shows of a user with this schedule.
    pub fn info(&self, user_id: &UserId, status: ActorStatus, restarts: u32) -> ActorInfo {
        ActorInfo {
            user_id: user_id.clone(),
            status,
            token_expiry: self.token_expiry,
            next_refresh_at: self.next_refresh_at,
            last_refresh_at: self.last_refresh_at,
            refresh_count: self.refresh_count,
            restarts,
            reconnect_reason: self.reconnect_reason,
            authorization_expires_at: self.authorization_expires_at,
        }
    }
}

/// How many woken users may be on their way to Google at once, for `concurrency` refresh
/// permits (see [`WAKE_PER_PERMIT`]).
pub fn wake_high_water(concurrency: usize) -> usize {
    WAKE_HIGH_WATER_MIN.max(WAKE_PER_PERMIT.saturating_mul(concurrency))
}

/// How long before its refresh a parked user is woken: half the hibernation threshold (so it
/// wakes as a live actor would have stayed), at most [`WAKE_AHEAD_MAX`].
pub fn wake_ahead(hibernate_after: Duration) -> Duration {
    (hibernate_after / 2).min(WAKE_AHEAD_MAX)
}

/// What a wake tick took from the schedule.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// The users to wake, most overdue first.
    pub users: Vec<UserId>,
    /// More were due than the budget allowed; they wait for the next tick.
    pub backlog: bool,
}

/// Parked users ordered by wake time, and the one timer that wakes them.
#[derive(Debug)]
pub struct WakeSchedule {
    /// Parked users by wake time (ms since the epoch): a sorted set, so the earliest is cheap
    /// and users due together wake in a stable order.
    queue: BTreeSet<(i64, UserId)>,
    /// See [`wake_ahead`].
    ahead: chrono::Duration,
    /// See [`wake_high_water`].
    high_water: usize,
    /// While a backlog drains, no wake tick before this (ms since the epoch): without it every
    /// overdue user parked meanwhile would pull the next tick in to "now".
    not_before: i64,
    /// When the timer armed last fires (ms since the epoch), until its tick runs.
    armed: Option<i64>,
}

impl WakeSchedule {
    /// An empty schedule for this hibernation threshold and number of refresh permits.
    pub fn new(hibernate_after: Duration, concurrency: usize) -> Self {
        Self {
            queue: BTreeSet::new(),
            ahead: chrono(wake_ahead(hibernate_after)),
            high_water: wake_high_water(concurrency),
            not_before: i64::MIN,
            armed: None,
        }
    }

    /// Parked users waiting for their wake time.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.queue.len()
    }

    /// When a user parked with this plan is woken; `None` (only a message wakes it) without a
    /// planned refresh.
    fn wake_at(&self, next_refresh_at: Option<DateTime<Utc>>) -> Option<i64> {
        next_refresh_at.map(|at| (at - self.ahead).timestamp_millis())
    }

    /// Schedules a parked user planning its refresh at `next_refresh_at`.
    pub fn insert(&mut self, user_id: &UserId, next_refresh_at: Option<DateTime<Utc>>) {
        if let Some(at) = self.wake_at(next_refresh_at) {
            self.queue.insert((at, user_id.clone()));
        }
    }

    /// Unschedules a user, given the plan it was inserted with (a no-op if it is not there).
    pub fn remove(&mut self, user_id: &UserId, next_refresh_at: Option<DateTime<Utc>>) {
        if let Some(at) = self.wake_at(next_refresh_at) {
            self.queue.remove(&(at, user_id.clone()));
        }
    }

    /// A wake tick: takes the users whose wake time has come, most overdue first, as many as
    /// `refreshing` (refreshes in progress) leaves room for. The rest stay scheduled and the
    /// next tick comes no sooner than [`WAKE_BACKLOG_TICK`] from now.
    pub fn take_due(&mut self, now: DateTime<Utc>, refreshing: usize) -> Due {
        self.armed = None;
        let now = now.timestamp_millis();
        let mut budget = self.high_water.saturating_sub(refreshing);
        let mut due = Due::default();
        while let Some((wake_at, _)) = self.queue.first() {
            if *wake_at > now {
                break;
            }
            if budget == 0 {
                self.not_before = now.saturating_add(WAKE_BACKLOG_TICK.as_millis() as i64);
                due.backlog = true;
                break;
            }
            if let Some((_, user_id)) = self.queue.pop_first() {
                due.users.push(user_id);
            }
            budget -= 1;
        }
        due
    }

    /// Whether the wake timer must be (re)armed: `Some(when)` if nothing is armed or the armed
    /// timer fires later than the earliest wake (held back to the backlog tick), recorded as
    /// armed; `None` if the armed timer will do, or nothing is scheduled.
    pub fn arm(&mut self) -> Option<DateTime<Utc>> {
        let &(earliest, _) = self.queue.first()?;
        let fire_at = earliest.max(self.not_before);
        if self.armed.is_some_and(|armed| armed <= fire_at) {
            return None;
        }
        self.armed = Some(fire_at);
        DateTime::from_timestamp_millis(fire_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn a_time_limited_grant_is_warned_then_ends_and_no_refresh_is_planned_past_its_end() {
        let warning = Some(Duration::from_secs(100));
        let mut schedule = Schedule {
            next_refresh_at: Some(t(50)),
            authorization_expires_at: Some(t(300)),
            warn_at: warn_at(Some(t(300)), warning, false),
            ..Schedule::default()
        };
        assert_eq!(schedule.warn_at, Some(t(200)));
        assert_eq!(schedule.next_due(), Some((t(50), NextDue::Refresh)));
        schedule.next_refresh_at = Some(t(250));
        assert_eq!(schedule.next_due(), Some((t(200), NextDue::Warn)));
        schedule.warn_at = None;
        assert_eq!(schedule.next_due(), Some((t(250), NextDue::Refresh)));
        // A refresh planned at or after the end never happens: the end comes instead.
        schedule.next_refresh_at = Some(t(300));
        assert_eq!(schedule.next_due(), Some((t(300), NextDue::Expire)));
        schedule.next_refresh_at = Some(t(400));
        assert_eq!(schedule.next_due(), Some((t(300), NextDue::Expire)));
        // Idle is judged by whatever comes first.
        assert!(!schedule.is_idle(false, t(299), Duration::from_secs(10)));
        assert!(schedule.is_idle(false, t(200), Duration::from_secs(10)));
    }

    #[test]
    fn the_warning_is_once_per_grant_and_only_with_app_events() {
        let warning = Some(Duration::from_secs(100));
        assert_eq!(warn_at(Some(t(300)), warning, true), None, "warned");
        assert_eq!(warn_at(Some(t(300)), None, false), None, "no app events");
        assert_eq!(warn_at(None, warning, false), None, "ongoing access");
        // A grant that arrives already inside the window is warned at once (the time has
        // passed, so it is due as soon as the actor looks).
        assert_eq!(warn_at(Some(t(50)), warning, false), Some(t(-50)));
    }

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_700_000_000_000 + ms).unwrap()
    }

    fn user(name: &str) -> UserId {
        UserId::from(name)
    }

    /// A schedule waking users 1 s ahead of their refresh, with a budget of 256.
    fn schedule() -> WakeSchedule {
        WakeSchedule::new(2000 * MS, 1)
    }

    fn names(due: &Due) -> Vec<&str> {
        due.users.iter().map(|u| &**u).collect()
    }

    #[test]
    fn wakes_ahead_of_the_refresh_most_overdue_first() {
        let mut s = schedule();
        s.insert(&user("late"), Some(at(3000)));
        s.insert(&user("early"), Some(at(1500)));
        s.insert(&user("later"), Some(at(9000)));
        s.insert(&user("reconnect"), None);
        assert_eq!(s.len(), 3, "no plan, no wake entry");
        // Woken 1 s ahead: at 2000 ms "late" (3000 - 1000) is due too, "later" is not.
        assert!(s.take_due(at(400), 0).users.is_empty());
        let due = s.take_due(at(2000), 0);
        assert_eq!(names(&due), ["early", "late"]);
        assert!(!due.backlog);
        assert_eq!(s.len(), 1, "taken users leave the schedule");
    }

    #[test]
    fn the_budget_leaves_the_rest_for_the_next_tick() {
        let mut s = schedule();
        for i in 0..300 {
            s.insert(&user(&format!("u{i:03}")), Some(at(i)));
        }
        // 256 may be on their way to Google, 250 already are: 6 more now.
        let due = s.take_due(at(10_000), 250);
        assert_eq!(
            names(&due),
            ["u000", "u001", "u002", "u003", "u004", "u005"]
        );
        assert!(due.backlog);
        assert_eq!(s.len(), 294);
        // None at all while the refreshes in progress fill the budget.
        let due = s.take_due(at(10_000), 300);
        assert!(due.users.is_empty() && due.backlog);
        let due = s.take_due(at(10_020), 0);
        assert_eq!(due.users.len(), 256);
        assert_eq!(due.users[0].as_ref(), "u006", "in due order");
        assert!(due.backlog);
        let due = s.take_due(at(10_040), 0);
        assert_eq!(due.users.len(), 38);
        assert!(!due.backlog, "drained");
    }

    #[test]
    fn the_budget_grows_with_the_refresh_permits() {
        assert_eq!(wake_high_water(1), 256);
        assert_eq!(wake_high_water(64), 256);
        assert_eq!(wake_high_water(100), 400);
        assert_eq!(wake_ahead(2000 * MS), 1000 * MS);
        assert_eq!(wake_ahead(Duration::from_secs(60)), Duration::from_secs(5));
    }

    #[test]
    fn the_timer_fires_at_the_earliest_wake_and_only_rearms_earlier() {
        let mut s = schedule();
        assert_eq!(s.arm(), None, "nothing to wake");
        s.insert(&user("a"), Some(at(6000)));
        assert_eq!(s.arm(), Some(at(5000)));
        assert_eq!(s.arm(), None, "armed already");
        s.insert(&user("b"), Some(at(9000)));
        assert_eq!(s.arm(), None, "a later wake keeps the timer");
        s.insert(&user("c"), Some(at(4000)));
        assert_eq!(s.arm(), Some(at(3000)), "an earlier wake pulls it in");
        // The tick clears the armed timer; the next one is set for what is left.
        assert_eq!(names(&s.take_due(at(3000), 0)), ["c"]);
        assert_eq!(s.arm(), Some(at(5000)));
    }

    #[test]
    fn a_backlog_holds_the_next_tick_back() {
        let mut s = WakeSchedule::new(2000 * MS, 1);
        for i in 0..3 {
            s.insert(&user(&format!("u{i}")), Some(at(1000)));
        }
        let due = s.take_due(at(5000), 255);
        assert_eq!(due.users.len(), 1);
        assert!(due.backlog);
        // Overdue users are due "now", but the tick waits for the refreshes just started.
        assert_eq!(s.arm(), Some(at(5020)));
        s.insert(&user("overdue"), Some(at(0)));
        assert_eq!(
            s.arm(),
            None,
            "parking another overdue user does not pull it in"
        );
        // Once drained, the hold no longer applies to later wakes.
        assert_eq!(s.take_due(at(5020), 0).users.len(), 3);
        s.insert(&user("next"), Some(at(8000)));
        assert_eq!(s.arm(), Some(at(7000)));
    }

    #[test]
    fn removal_unschedules_a_user_woken_or_forgotten() {
        let mut s = schedule();
        let (a, b) = (user("a"), user("b"));
        s.insert(&a, Some(at(2000)));
        s.insert(&b, Some(at(2000)));
        s.remove(&a, Some(at(2000)));
        s.remove(&a, Some(at(2000)));
        s.remove(&user("never"), None);
        assert_eq!(names(&s.take_due(at(9000), 0)), ["b"]);
        assert_eq!(s.len(), 0);
        assert_eq!(s.arm(), None);
    }

    #[test]
    fn idle_means_a_refresh_beyond_the_threshold_or_a_short_retry_beyond_ten_seconds() {
        let plan = |ms: i64, failures: u32| Schedule {
            token_expiry: Some(at(ms + 60_000)),
            next_refresh_at: Some(at(ms)),
            failures,
            ..Schedule::default()
        };
        let after = Duration::from_secs(60);
        assert!(plan(61_000, 0).is_idle(false, at(0), after));
        assert!(!plan(60_000, 0).is_idle(false, at(0), after));
        assert!(
            plan(10_001, 2).is_idle(false, at(0), after),
            "a retry parks sooner"
        );
        assert!(!plan(9_000, 2).is_idle(false, at(0), after));
        assert!(
            Schedule::default().is_idle(true, at(0), after),
            "waiting to reconnect"
        );
        assert!(
            !Schedule::default().is_idle(false, at(0), after),
            "no plan, stays"
        );
        assert_eq!(delay_until(at(0), at(-5)), Duration::ZERO);
        assert_eq!(delay_until(at(0), at(250)), 250 * MS);
    }
}
