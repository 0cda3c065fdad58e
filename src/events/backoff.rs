//! How long an event waits after a failed attempt (docs/contract.md section 9): the first retry 1 s
//! after the failure, each wait twice the one before, never more than 5 minutes, and a
//! `Retry-After` lengthens a wait but never shortens it. No jitter: every wait must stay
//! within twice the one before, and one deliverer per node, at a bounded concurrency, already
//! keeps a recovering app from a stampede. Owns the arithmetic only, on the service's one
//! policy ([`Backoff`]).

use std::time::Duration;

use crate::retry::Backoff;

/// The wait after the first failure (the contract allows up to 2 s).
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between two attempts, but for a longer `Retry-After`.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// The wait after an event's `failures`-th failed attempt in a row (the first is 1), given
/// the `Retry-After` of the answer, if any.
pub fn retry_wait(failures: u32, retry_after: Option<Duration>) -> Duration {
    let backoff = Backoff::new(FIRST_RETRY, MAX_WAIT)
        .exact()
        .delay(failures.max(1));
    retry_after.map_or(backoff, |asked| asked.max(backoff))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn waits_double_from_one_second_up_to_five_minutes() {
        let waits: Vec<u64> = (1..=12).map(|n| retry_wait(n, None).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(retry_wait(u32::MAX, None), MAX_WAIT, "no overflow");
        assert_eq!(retry_wait(0, None), FIRST_RETRY, "a first failure at least");
    }

    #[test]
    fn retry_after_lengthens_a_wait_and_never_shortens_it() {
        assert_eq!(retry_wait(1, Some(2 * S)), 2 * S);
        assert_eq!(retry_wait(5, Some(2 * S)), 16 * S);
        assert_eq!(retry_wait(12, Some(3600 * S)), 3600 * S);
        assert_eq!(retry_wait(1, Some(Duration::ZERO)), S);
    }

    /// The attempts of an event failing over and over, on tokio's paused clock: the first
    /// retry comes at most 2 s after the failure, each gap is at most twice the one before and
    /// at most 5 minutes, but for a longer `Retry-After`, which is always honoured.
    #[tokio::test(start_paused = true)]
    async fn attempts_keep_the_contracts_bounds_on_a_paused_clock() {
        let asked = |failures: u32| (failures == 4).then_some(90 * S);
        let mut attempts = vec![tokio::time::Instant::now()];
        for failures in 1..=14 {
            tokio::time::sleep(retry_wait(failures, asked(failures))).await;
            attempts.push(tokio::time::Instant::now());
        }
        let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps[0] <= 2 * S, "{gaps:?}");
        for (i, pair) in gaps.windows(2).enumerate() {
            // The gap after failure i + 2; only a Retry-After may make it longer.
            if asked(i as u32 + 2).is_none() {
                assert!(pair[1] <= pair[0] * 2, "gap {} of {gaps:?}", i + 1);
            }
        }
        for (i, gap) in gaps.iter().enumerate() {
            match asked(i as u32 + 1) {
                Some(retry_after) => assert!(*gap >= retry_after, "{gaps:?}"),
                None => assert!(*gap <= MAX_WAIT, "{gaps:?}"),
            }
        }
        assert_eq!(gaps.last(), Some(&MAX_WAIT));
    }
}
