//! A bound on how often one kind of warning is written: at most once per period, each
//! warning saying how many were kept quiet since. For what outsiders or outages can repeat at
//! will (a failing app endpoint, forged security events): the metrics count every one, the
//! log gets a line per period, not a line per request. A leaf: tokio's clock, nothing else.

use std::{
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

/// When the last warning went out, and how many were kept quiet since.
pub struct LogLimit {
    every: Duration,
    last: Mutex<Option<Instant>>,
    quiet: AtomicU64,
}

impl LogLimit {
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            last: Mutex::new(None),
            quiet: AtomicU64::new(0),
        }
    }

    /// `Some(warnings kept quiet before this one)` when this one is to be written.
    pub fn warn_now(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if last.is_some_and(|at| now < at + self.every) {
            self.quiet.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.quiet.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_warning_per_period_counting_the_quiet_ones() {
        let limit = LogLimit::new(Duration::from_secs(10));
        assert_eq!(limit.warn_now(), Some(0));
        assert_eq!(limit.warn_now(), None);
        assert_eq!(limit.warn_now(), None);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(limit.warn_now(), Some(2));
        assert_eq!(limit.warn_now(), None);
    }
}
