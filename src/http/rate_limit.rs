//! A per-user token bucket held in memory: each user may start `burst` consents at once and
//! then one every `period / burst`. The map is bounded: when it is full, buckets that have
//! filled up again (equivalent to no entry) are swept, and if that is not enough an arbitrary
//! one is dropped (that user merely gets a fresh bucket).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Consents a user may start per minute on `POST /api/integrations/google/connect`.
pub const CONNECTS_PER_MINUTE: u32 = 10;
/// Most users tracked at once.
const MAX_TRACKED: usize = 100_000;

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets keyed by user id.
pub struct RateLimiter {
    burst: f64,
    /// Tokens gained per second.
    refill: f64,
    max_tracked: usize,
    /// A plain mutex: held for a few arithmetic operations, never across an await.
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// `burst` requests at once, refilled evenly over `period`.
    pub fn new(burst: u32, period: Duration) -> Self {
        Self::with_capacity(burst, period, MAX_TRACKED)
    }

    fn with_capacity(burst: u32, period: Duration, max_tracked: usize) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            burst,
            refill: burst / period.as_secs_f64().max(f64::EPSILON),
            max_tracked: max_tracked.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The limit of the connect route.
    pub fn for_connect() -> Self {
        Self::new(CONNECTS_PER_MINUTE, Duration::from_secs(60))
    }

    /// Takes one token for `key`; `Err(wait)` when none is left, `wait` being how long until
    /// one is.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !buckets.contains_key(key) && buckets.len() >= self.max_tracked {
            self.evict(&mut buckets, now);
        }
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        bucket.tokens = self.level(bucket, now);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.refill))
        }
    }

    fn level(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        (bucket.tokens + elapsed * self.refill).min(self.burst)
    }

    fn evict(&self, buckets: &mut HashMap<String, Bucket>, now: Instant) {
        buckets.retain(|_, b| self.level(b, now) < self.burst);
        if buckets.len() >= self.max_tracked
            && let Some(key) = buckets.keys().next().cloned()
        {
            buckets.remove(&key);
        }
    }

    /// Users tracked right now.
    pub fn tracked(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill_per_user() {
        let limiter = RateLimiter::new(3, Duration::from_secs(3));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at("a", t0).is_ok());
        }
        let wait = limiter.check_at("a", t0).unwrap_err();
        assert!(
            wait <= Duration::from_secs(1) && wait > Duration::from_millis(900),
            "{wait:?}"
        );
        // Another user has a bucket of their own.
        assert!(limiter.check_at("b", t0).is_ok());
        // One second later one token is back, and only one.
        let t1 = t0 + Duration::from_secs(1);
        assert!(limiter.check_at("a", t1).is_ok());
        assert!(limiter.check_at("a", t1).is_err());
    }

    #[test]
    fn the_map_stays_bounded() {
        let limiter = RateLimiter::with_capacity(2, Duration::from_secs(60), 100);
        let t0 = Instant::now();
        for i in 0..1000 {
            let _ = limiter.check_at(&format!("user-{i}"), t0);
            assert!(limiter.tracked() <= 100);
        }
        // Full buckets are swept first: after a refill, the map empties out as users come.
        let later = t0 + Duration::from_secs(120);
        assert!(limiter.check_at("new", later).is_ok());
        assert!(limiter.tracked() <= 2, "{}", limiter.tracked());
    }
}
