//! The service's wall clock: [`now`] is what every schedule, expiry and backoff decision reads
//! (token expiries, refresh plans, a grant's end, the restart and retry waits), so that those
//! decisions and the tokio timers that wake them run on one time line.
//!
//! In production `now` is the system's UTC time. A test (with the `test-util` feature) calls
//! [`follow_tokio`] on its runtime's thread, and from then on `now` on that thread is the
//! moment of the call plus the time tokio's clock has moved since: with tokio's clock paused,
//! `tokio::time::advance` moves the refresh plans and the timers that serve them together, and
//! an hour of schedules runs in milliseconds. The override is per thread (a paused clock needs
//! tokio's current-thread runtime), so tests running side by side in one process never see
//! each other's time.
//!
//! Wire timestamps that another party checks against its own clock (webhook signatures, the
//! credentials between nodes, JWT expiry, cookies) keep the system clock: they are not part of
//! any schedule. This module must not import anything of the service.

use chrono::{DateTime, Utc};

/// The current time on the service's time line.
pub fn now() -> DateTime<Utc> {
    #[cfg(feature = "test-util")]
    if let Some(now) = follow::now() {
        return now;
    }
    Utc::now()
}

/// From now on, [`now`] on this thread follows tokio's clock (see the module's docs).
#[cfg(feature = "test-util")]
pub fn follow_tokio() {
    follow::start();
}

#[cfg(feature = "test-util")]
mod follow {
    use std::cell::Cell;

    use chrono::{DateTime, Utc};
    use tokio::time::Instant;

    thread_local! {
        static BASE: Cell<Option<(DateTime<Utc>, Instant)>> = const { Cell::new(None) };
    }

    pub(super) fn start() {
        BASE.with(|base| base.set(Some((Utc::now(), Instant::now()))));
    }

    pub(super) fn now() -> Option<DateTime<Utc>> {
        let (wall, instant) = BASE.with(Cell::get)?;
        let moved = chrono::Duration::from_std(Instant::now() - instant).unwrap_or_default();
        Some(wall + moved)
    }
}

#[cfg(all(test, feature = "test-util"))]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_paused_clock_moves_now_with_tokio_and_nothing_else() {
        follow_tokio();
        let start = now();
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            now() - start < chrono::Duration::milliseconds(1),
            "real time leaked in"
        );
        tokio::time::advance(Duration::from_secs(3600)).await;
        let moved = now() - start;
        assert!(moved >= chrono::Duration::seconds(3600), "{moved}");
        assert!(moved < chrono::Duration::seconds(3601), "{moved}");
    }

    #[test]
    fn other_threads_keep_the_system_clock() {
        let before = Utc::now();
        let seen = std::thread::spawn(now).join().expect("thread");
        assert!(seen >= before && seen - before < chrono::Duration::seconds(5));
    }
}
