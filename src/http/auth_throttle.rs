//! The throttle on guessing the admin token (docs/contract.md section 4): a client address that has
//! sent [`MAX_FAILURES`] wrong admin tokens (bearer or console sign-in) within a minute is answered
//! `429` on every admin route and sign-in, right or wrong token, until that minute is over.
//! Answering a right token from a blocked address would let the guessing go on, one `429`
//! telling a wrong guess from a right one.
//!
//! Owns the failure counts and their bound; the extractors decide what is a failure. Counts
//! are kept per address in a fixed window that opens at the address's first failure. The map
//! is bounded: when it is full, windows that are over are dropped, and if that is not enough
//! it starts afresh (which only hands every address its allowance back). Runs on tokio's
//! clock, so tests pause time instead of waiting a minute.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

/// Wrong tokens allowed per address and window.
pub const MAX_FAILURES: u32 = 10;
/// How long a window lasts.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Most addresses tracked at once.
const MAX_TRACKED: usize = 100_000;

/// One address's failures in its current window.
#[derive(Clone, Copy)]
struct Window {
    opened: Instant,
    failures: u32,
}

impl Window {
    fn over(&self, now: Instant) -> bool {
        now >= self.opened + WINDOW
    }
}

/// The client address of a request: the connection's peer (`serve` puts it on every request).
/// Without one (a router driven in-process) every request counts as one unspecified address,
/// which throttles them together rather than not at all. Behind a proxy the peer is the
/// proxy: its clients share one allowance (docs/security.md, Security notes).
pub fn client_ip(extensions: &http::Extensions) -> IpAddr {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |info| {
            info.0.ip()
        })
}

/// Whole seconds to tell a blocked client to wait (at least one).
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// Failure counts by client address.
pub struct AuthThrottle {
    windows: Mutex<HashMap<IpAddr, Window>>,
    max_tracked: usize,
}

impl Default for AuthThrottle {
    fn default() -> Self {
        Self::with_bound(MAX_TRACKED)
    }
}

impl AuthThrottle {
    fn with_bound(max_tracked: usize) -> Self {
        Self {
            windows: Mutex::new(HashMap::new()),
            max_tracked: max_tracked.max(1),
        }
    }

    /// `Err(wait)` while `addr` has used up its failures: no token from it is even looked at
    /// until `wait` has passed.
    pub fn check(&self, addr: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        match windows.get(&addr) {
            Some(window) if window.failures >= MAX_FAILURES && !window.over(now) => {
                Err((window.opened + WINDOW).saturating_duration_since(now))
            }
            _ => Ok(()),
        }
    }

    /// Counts one wrong token from `addr`.
    pub fn failed(&self, addr: IpAddr) {
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if windows.len() >= self.max_tracked && !windows.contains_key(&addr) {
            windows.retain(|_, window| !window.over(now));
            if windows.len() >= self.max_tracked {
                windows.clear();
            }
        }
        let window = windows.entry(addr).or_insert(Window {
            opened: now,
            failures: 0,
        });
        if window.over(now) {
            *window = Window {
                opened: now,
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
    }

    /// Addresses tracked right now.
    pub fn tracked(&self) -> usize {
        self.windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn addr(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
    }

    #[tokio::test(start_paused = true)]
    async fn ten_failures_block_the_address_for_the_rest_of_the_minute() {
        let throttle = AuthThrottle::default();
        for _ in 0..MAX_FAILURES {
            assert!(throttle.check(addr(1)).is_ok());
            throttle.failed(addr(1));
        }
        let wait = throttle.check(addr(1)).unwrap_err();
        assert_eq!(wait, WINDOW);
        // Another address is not affected.
        assert!(throttle.check(addr(2)).is_ok());
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(throttle.check(addr(1)), Err(Duration::from_secs(1)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(throttle.check(addr(1)).is_ok());
        // A new window starts from zero.
        throttle.failed(addr(1));
        assert!(throttle.check(addr(1)).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_map_stays_bounded() {
        let throttle = AuthThrottle::with_bound(100);
        for i in 0..1000 {
            throttle.failed(addr(i));
            assert!(throttle.tracked() <= 100);
        }
        // A blocked address is kept while others' windows are over.
        tokio::time::advance(WINDOW).await;
        for _ in 0..MAX_FAILURES {
            throttle.failed(addr(5000));
        }
        throttle.failed(addr(6000));
        assert!(throttle.check(addr(5000)).is_err());
        assert!(throttle.tracked() <= 2, "{}", throttle.tracked());
    }
}
