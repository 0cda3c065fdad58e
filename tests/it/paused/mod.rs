//! Actor timing on a paused clock: an idle actor hibernating and waking for its refresh, the
//! retry backoff and parking through its long waits, the restart backoff after a crash, a
//! time-limited grant's end. The service runs in process, on SQLite, on tokio's current-thread runtime
//! with the clock paused, and `tokenwarden::clock` follows tokio's clock, so an hour of
//! schedules runs in milliseconds while every call (the sandbox Google, the reference
//! microservice, SQLite or PostgreSQL) stays real. Processes, signals and the cluster keep
//! their real-time tests elsewhere.

mod backoff;
mod schedule;

use std::{future::Future, time::Duration};

use chrono::{DateTime, Utc};

use crate::support::{Backend, Options};

/// Runs `$test(Backend, PausedClock)` on SQLite, on a paused current-thread runtime.
/// PostgreSQL always runs the cluster, whose leases are renewed on the clock and checked against
/// the database's: its timing keeps the real-time tests of `cluster` and the storage tests run
/// on both backends elsewhere.
macro_rules! paused_test {
    ($name:ident) => {
        mod $name {
            #[tokio::test(start_paused = true)]
            async fn sqlite() {
                let clock = $crate::paused::PausedClock::freeze();
                super::$name($crate::support::Backend::Sqlite, clock).await
            }
        }
    };
}
pub(crate) use paused_test;

/// The resolution of tokio's timers.
const TIMER_TICK: Duration = Duration::from_millis(1);

/// The test's clock: it moves only when the test advances it.
pub struct PausedClock {
    release: Option<std::sync::mpsc::Sender<()>>,
}

impl PausedClock {
    /// Freezes tokio's paused clock for the test. A paused clock otherwise moves on by itself
    /// whenever the runtime has nothing to run, which includes waiting for the database's
    /// answer or a loopback reply: time would jump to the next timer in the middle of a
    /// refresh. Tokio does not move it while a blocking task is in flight, so one waits here
    /// until the test ends.
    pub fn freeze() -> Self {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        tokio::task::spawn_blocking(move || {
            let _ = wait.recv();
        });
        tokenwarden::clock::follow_tokio();
        Self {
            release: Some(release),
        }
    }

    /// The service's time: the test's start plus every advance.
    pub fn now(&self) -> DateTime<Utc> {
        tokenwarden::clock::now()
    }

    /// Moves the clock on by `by`: every timer due by then fires.
    pub async fn advance(&self, by: Duration) {
        tokio::time::advance(by).await;
    }

    /// Moves the clock on to just past `at` (not back, if it has passed): tokio's timers tick
    /// in whole milliseconds, rounded up, so a timer set for `at` fires within one tick of it.
    pub async fn advance_to(&self, at: DateTime<Utc>) {
        let by = (at - self.now()).to_std().unwrap_or_default();
        self.advance(by + TIMER_TICK).await;
    }

    /// Lets the clock move on by itself again, for a shutdown that waits on timers.
    pub fn thaw(mut self) {
        self.release.take();
    }
}

impl Drop for PausedClock {
    fn drop(&mut self) {
        self.release.take();
    }
}

/// Waits in real time, without moving the clock.
pub async fn real_wait(duration: Duration) {
    tokio::task::spawn_blocking(move || std::thread::sleep(duration))
        .await
        .expect("a blocking sleep");
}

/// Waits in real time (up to 10 s) for `check`, with the clock all but standing still: what a
/// timer started (a database write, a call to Google or the microservice) finishes before the
/// test moves time again. Every 20 ms of real time the clock moves one tick: tokio rounds a
/// deadline up to its next millisecond, so a timer set for "now" (a refresh found due the
/// moment its actor woke) fires only once the clock has moved.
pub async fn until<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for round in 1u32.. {
        if check().await {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        real_wait(Duration::from_millis(2)).await;
        if round % 10 == 0 {
            tokio::time::advance(TIMER_TICK).await;
        }
    }
    false
}

/// Production-like timing: hour-long tokens refreshed 5 minutes early, actors parked when
/// their next refresh is over a minute away. No call in flight may time out while the test
/// moves time, so the timeouts are longer than any advance.
pub fn hourly(backend: Backend) -> Options {
    Options {
        backend,
        token_lifetime: Duration::from_secs(3600),
        refresh_lead_secs: 300,
        hibernate_after_secs: 60,
        refresh_retry_max_ms: 60_000,
        google_timeout_ms: 86_400_000,
        microservice_timeout_ms: 86_400_000,
        header_read_timeout_secs: 86_400,
        ..Options::default()
    }
}

/// The API shows times in whole seconds: a plan it shows as `t` lies in `[t, t + SHOWN_SECOND)`.
pub const SHOWN_SECOND: chrono::Duration = chrono::Duration::seconds(1);

/// An RFC 3339 field of a JSON answer.
pub fn time_of(value: &serde_json::Value) -> DateTime<Utc> {
    value
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("not a time: {value}"))
}
