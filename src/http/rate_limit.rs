//! The per-user limit on starting consents, by `governor`'s keyed GCRA limiter: each user may
//! start `burst` consents at once and then one every `period / burst`. Owns the limiter and
//! the bound on how many users it tracks; the route decides what to answer. The map is
//! bounded: when it is full, users whose allowance has filled up again (the same as no entry)
//! are dropped, and if that is not enough the whole map starts afresh (every user merely gets
//! a full allowance back; it takes [`MAX_TRACKED`] users consenting within one period).

use std::{
    num::NonZeroU32,
    sync::{PoisonError, RwLock},
    time::Duration,
};

use governor::{
    Quota,
    clock::{Clock, DefaultClock},
    middleware::NoOpMiddleware,
    state::keyed::DashMapStateStore,
};

/// Consents a user may start per minute on `POST /api/integrations/google/connect`.
pub const CONNECTS_PER_MINUTE: u32 = 10;
/// Most users tracked at once.
const MAX_TRACKED: usize = 100_000;

type Keyed<C> = governor::RateLimiter<
    String,
    DashMapStateStore<String>,
    C,
    NoOpMiddleware<<C as Clock>::Instant>,
>;

/// Allowances keyed by user id.
pub struct RateLimiter<C: Clock + Clone = DefaultClock> {
    /// Read-locked by every check (the map shards its own locking); write-locked only to
    /// start afresh when the map is full.
    limiter: RwLock<Keyed<C>>,
    quota: Quota,
    clock: C,
    max_tracked: usize,
}

impl RateLimiter {
    /// `burst` requests at once, refilled evenly over `period`.
    pub fn new(burst: u32, period: Duration) -> Self {
        Self::with_clock(burst, period, MAX_TRACKED, DefaultClock::default())
    }

    /// The limit of the connect route.
    pub fn for_connect() -> Self {
        Self::new(CONNECTS_PER_MINUTE, Duration::from_secs(60))
    }
}

impl<C: Clock + Clone> RateLimiter<C> {
    fn with_clock(burst: u32, period: Duration, max_tracked: usize, clock: C) -> Self {
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let every = (period / burst.get()).max(Duration::from_nanos(1));
        let quota = Quota::with_period(every)
            .expect("a period above zero")
            .allow_burst(burst);
        Self {
            limiter: RwLock::new(Keyed::dashmap_with_clock(quota, clock.clone())),
            quota,
            clock,
            max_tracked: max_tracked.max(1),
        }
    }

    /// Takes one request from `key`'s allowance; `Err(wait)` when none is left, `wait` being
    /// how long until one is.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        if self.tracked() >= self.max_tracked {
            self.make_room();
        }
        let limiter = self.limiter.read().unwrap_or_else(PoisonError::into_inner);
        limiter
            .check_key(&key.to_string())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    fn make_room(&self) {
        let mut limiter = self.limiter.write().unwrap_or_else(PoisonError::into_inner);
        // Another check may have made room while this one waited for the lock.
        if limiter.len() < self.max_tracked {
            return;
        }
        limiter.retain_recent();
        if limiter.len() >= self.max_tracked {
            *limiter = Keyed::dashmap_with_clock(self.quota, self.clock.clone());
        }
        limiter.shrink_to_fit();
    }

    /// Users tracked right now.
    pub fn tracked(&self) -> usize {
        self.limiter
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    #[test]
    fn burst_then_refill_per_user() {
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::with_clock(3, Duration::from_secs(3), 100, clock.clone());
        for _ in 0..3 {
            assert!(limiter.check("a").is_ok());
        }
        let wait = limiter.check("a").unwrap_err();
        assert!(
            wait <= Duration::from_secs(1) && wait > Duration::from_millis(900),
            "{wait:?}"
        );
        // Another user has an allowance of their own.
        assert!(limiter.check("b").is_ok());
        // One second later one request is allowed again, and only one.
        clock.advance(Duration::from_secs(1));
        assert!(limiter.check("a").is_ok());
        assert!(limiter.check("a").is_err());
    }

    #[test]
    fn the_map_stays_bounded() {
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::with_clock(2, Duration::from_secs(60), 100, clock.clone());
        for i in 0..1000 {
            let _ = limiter.check(&format!("user-{i}"));
            assert!(limiter.tracked() <= 100);
        }
        // Full allowances are swept first: after a refill, the map empties out as users come.
        clock.advance(Duration::from_secs(120));
        assert!(limiter.check("new").is_ok());
        assert!(limiter.tracked() <= 2, "{}", limiter.tracked());
    }

    #[test]
    fn the_connect_limit_waits_whole_refills() {
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::with_clock(
            CONNECTS_PER_MINUTE,
            Duration::from_secs(60),
            MAX_TRACKED,
            clock.clone(),
        );
        for _ in 0..CONNECTS_PER_MINUTE {
            assert!(limiter.check("alice").is_ok());
        }
        let wait = limiter.check("alice").unwrap_err();
        assert_eq!(wait, Duration::from_secs(6));
        clock.advance(Duration::from_secs(6));
        assert!(limiter.check("alice").is_ok());
    }
}
