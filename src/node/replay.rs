//! Nonces of authenticated messages seen recently, so that a message captured on its way (a
//! forwarded admin call read by whoever the database named, a notice read by any `LISTEN`er)
//! is acted on once at most. A message is only considered inside its time window, so a nonce
//! needs remembering only until its message's window has closed; nothing older is kept.
//! Only messages whose MAC checked are recorded, so nobody without the key can fill it.

use std::{collections::HashMap, sync::Mutex};

/// How often, at most, expired nonces are swept (milliseconds).
const SWEEP_EVERY_MS: i64 = 1_000;

/// Nonces with the time (ms since the Unix epoch) after which their message is refused anyway.
#[derive(Debug, Default)]
pub struct SeenNonces {
    inner: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    until: HashMap<Vec<u8>, i64>,
    next_sweep_ms: i64,
}

impl SeenNonces {
    /// Records `nonce`, whose message is valid until `valid_until_ms`; `false` when it was
    /// already recorded (a replay).
    pub fn first_use(&self, nonce: &[u8], valid_until_ms: i64, now_ms: i64) -> bool {
        let mut seen = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if now_ms >= seen.next_sweep_ms {
            seen.until.retain(|_, until| *until >= now_ms);
            seen.next_sweep_ms = now_ms + SWEEP_EVERY_MS;
        }
        if seen.until.contains_key(nonce) {
            return false;
        }
        seen.until.insert(nonce.to_vec(), valid_until_ms);
        true
    }

    /// How many nonces are remembered (for tests).
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .until
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_counts_once_and_is_forgotten_after_its_window() {
        let seen = SeenNonces::default();
        assert!(seen.first_use(b"a", 30_000, 0));
        assert!(!seen.first_use(b"a", 30_000, 10));
        assert!(seen.first_use(b"b", 60_000, 20));
        // Past a's window (its message would be refused as stale by then), a is swept.
        assert!(seen.first_use(b"c", 90_000, 40_000));
        assert_eq!(seen.remembered(), 2);
    }
}
