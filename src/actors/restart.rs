//! The restart policy of crashed user actors: how long a user waits before its actor is started
//! again (a delay that doubles while it keeps crashing within a window) and how many restarts
//! it had in all (shown by the admin API). Plain data on tokio's clock: `now` is an argument,
//! so tests drive it with a paused clock. Must not touch: the registry, actors, the store.

use std::{collections::HashMap, time::Duration};

use tokio::time::Instant;

use crate::{ids::UserId, retry::Backoff};

/// A failure this long after the previous one starts the backoff over.
pub const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// 100 ms after the first crash of a streak, doubling up to 30 s. Exact: crashes of different
/// users are not correlated, so there is no crowd to spread.
pub const RESTART_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(100), Duration::from_secs(30)).exact();

#[derive(Debug, Default)]
struct Record {
    total: u32,
    /// Failures in the current crash streak.
    streak: u32,
    last: Option<Instant>,
}

/// Crash records of the users that ever crashed (most never do, so most have none).
#[derive(Debug, Default)]
pub struct RestartPolicy {
    records: HashMap<UserId, Record>,
}

impl RestartPolicy {
    /// Records a crash of `user_id` at `now`; answers how long to wait before restarting it.
    pub fn failed(&mut self, user_id: &UserId, now: Instant) -> Duration {
        let record = self.records.entry(user_id.clone()).or_default();
        record.streak = match record.last {
            Some(last) if now.duration_since(last) < CRASH_WINDOW => record.streak + 1,
            _ => 1,
        };
        record.last = Some(now);
        record.total += 1;
        RESTART_BACKOFF.delay(record.streak)
    }

    /// How many times the user's actor was restarted since it connected.
    pub fn total(&self, user_id: &str) -> u32 {
        self.records.get(user_id).map_or(0, |r| r.total)
    }

    /// Drops the user's record (it disconnected).
    pub fn forget(&mut self, user_id: &str) {
        self.records.remove(user_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn a_crash_streak_doubles_the_delay_up_to_the_cap() {
        let mut policy = RestartPolicy::default();
        let zoe: UserId = UserId::from("zoe");
        let mut delays = Vec::new();
        for _ in 0..12 {
            delays.push(policy.failed(&zoe, Instant::now()).as_millis() as u64);
            tokio::time::advance(MS).await;
        }
        assert_eq!(
            delays,
            [
                100, 200, 400, 800, 1600, 3200, 6400, 12_800, 25_600, 30_000, 30_000, 30_000
            ]
        );
        assert_eq!(policy.total("zoe"), 12);
        assert_eq!(policy.total("nobody"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_streak_starts_over_after_a_quiet_window_but_the_total_stays() {
        let mut policy = RestartPolicy::default();
        let zoe: UserId = UserId::from("zoe");
        assert_eq!(policy.failed(&zoe, Instant::now()), 100 * MS);
        tokio::time::advance(CRASH_WINDOW - MS).await;
        assert_eq!(
            policy.failed(&zoe, Instant::now()),
            200 * MS,
            "within the window"
        );
        tokio::time::advance(CRASH_WINDOW).await;
        assert_eq!(
            policy.failed(&zoe, Instant::now()),
            100 * MS,
            "a quiet minute"
        );
        assert_eq!(policy.total("zoe"), 3);
        // Another user's crashes are counted apart.
        let ann: UserId = UserId::from("ann");
        assert_eq!(policy.failed(&ann, Instant::now()), 100 * MS);
        policy.forget("zoe");
        assert_eq!(policy.total("zoe"), 0);
        assert_eq!(
            policy.failed(&zoe, Instant::now()),
            100 * MS,
            "reconnected: afresh"
        );
    }
}
