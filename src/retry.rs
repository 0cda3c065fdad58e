//! The one retry policy of the service: capped exponential backoff with jitter. Every loop that
//! waits after a failure (microservice pushes, actor restarts, row reloads, the initial load,
//! the resume of unfinished pushes) takes its delays from here, so they all behave alike and
//! run on tokio's clock (tests pause it instead of waiting). Owns no state and no I/O.

use std::{future::Future, time::Duration};

/// How long to wait after the n-th failure in a row: `base * 2^(n-1)`, capped at `max`, less
/// up to `jitter` (a fraction) at random so that many callers failing together do not retry
/// together.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    /// Fraction of the delay that may be taken off at random (0.0 to 1.0).
    pub jitter: f64,
}

impl Backoff {
    /// Doubling from `base` up to `max`, with 20% jitter.
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            jitter: 0.2,
        }
    }

    /// The same policy with exact delays (for loops of one caller, and tests).
    pub const fn exact(self) -> Self {
        Self {
            jitter: 0.0,
            ..self
        }
    }

    /// The delay after `failures` failures in a row (the first failure is 1; 0 waits nothing).
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let doubled = self
            .base
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        let capped = doubled.min(self.max);
        if self.jitter <= 0.0 {
            return capped;
        }
        capped.saturating_sub(capped.mul_f64(rand::random::<f64>() * self.jitter.min(1.0)))
    }

    /// Runs `attempt` until it succeeds, or until `attempts` tries failed (`None`: no limit),
    /// sleeping on tokio's clock between tries. `failed` hears of each error with the number
    /// of the try that made it, for the caller's log line.
    pub async fn retry<T, E, F, Fut>(
        &self,
        attempts: Option<u32>,
        mut attempt: F,
        mut failed: impl FnMut(&E, u32),
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut tries = 0u32;
        loop {
            tries = tries.saturating_add(1);
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(e) => {
                    failed(&e, tries);
                    if attempts.is_some_and(|limit| tries >= limit) {
                        return Err(e);
                    }
                    tokio::time::sleep(self.delay(tries)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_double_then_cap_and_jitter_only_shortens() {
        let exact = Backoff::new(100 * MS, 1000 * MS).exact();
        let delays: Vec<u64> = (0..7).map(|n| exact.delay(n).as_millis() as u64).collect();
        assert_eq!(delays, [0, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(exact.delay(u32::MAX), 1000 * MS, "no overflow");
        let jittered = Backoff::new(100 * MS, 1000 * MS);
        for failures in 1..10 {
            let d = jittered.delay(failures);
            assert!(d <= exact.delay(failures) && d >= exact.delay(failures).mul_f64(0.8));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_sleeps_the_policy_between_tries_and_stops_at_the_limit() {
        let policy = Backoff::new(100 * MS, 300 * MS).exact();
        let started = tokio::time::Instant::now();
        let mut calls = 0;
        let mut heard = Vec::new();
        let result: Result<(), u32> = policy
            .retry(
                Some(4),
                || {
                    calls += 1;
                    let n = calls;
                    async move { Err(n) }
                },
                |e, n| heard.push((*e, n)),
            )
            .await;
        assert_eq!(result, Err(4));
        assert_eq!(heard, [(1, 1), (2, 2), (3, 3), (4, 4)]);
        // 100 + 200 + 300 between the four tries; none after the last.
        assert_eq!(started.elapsed(), 600 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_returns_the_first_success() {
        let policy = Backoff::new(10 * MS, 10 * MS).exact();
        let mut calls = 0;
        let result: Result<u32, &str> = policy
            .retry(
                None,
                || {
                    calls += 1;
                    let n = calls;
                    async move { if n < 3 { Err("not yet") } else { Ok(n) } }
                },
                |_, _| {},
            )
            .await;
        assert_eq!(result, Ok(3));
    }
}
