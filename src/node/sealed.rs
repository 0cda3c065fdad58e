//! Cluster notices, sealed. Any PostgreSQL role that can connect can `LISTEN` on the changes
//! channel and `NOTIFY` on it, so a notice must prove it comes from a node, and should not tell
//! a mere listener whose row changed. Each notice is sealed with AES-256-GCM under a key
//! derived from `ADMIN_TOKEN` (HKDF-SHA256, a label of its own): the tag authenticates it and
//! the user id inside is hidden. It carries its time and is heard only within [`WINDOW_MS`] of
//! it, and only once (its nonce is remembered for the window), so a captured notice cannot be
//! replayed. Anything else on the channel is dropped and counted in
//! `tokenwarden_cluster_notices_dropped_total{reason}`.
//!
//! Why `ADMIN_TOKEN` and not `TOKEN_ENCRYPTION_KEY`: every node must derive the same key at
//! every moment. The encryption key's first entry differs between nodes in the middle of a
//! key rotation's rolling restart (`<new>,<old>` here, `<old>` there), exactly when shards
//! move and notices matter; the admin token is already the one secret that nodes must share
//! for forwarded admin calls and console sessions, and the encryption key stays a key for
//! tokens only.

use aes_gcm::{
    Aes256Gcm, Key, Nonce,
    aead::{Aead, KeyInit, Payload},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hkdf::Hkdf;
use prometheus_client::metrics::{counter::Counter, family::Family};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use super::replay::SeenNonces;
use crate::{
    metrics::{Metrics, NoticeDropLabels},
    store::{
        Store, StoreError,
        cluster::{REBALANCE, RESYNC, USER_PREFIX},
    },
};

/// How far a notice's time may be from the listener's clock, either way (milliseconds).
pub const WINDOW_MS: i64 = 30_000;
/// Names what the derived key is for.
const KDF_SALT: &[u8] = b"tokenwarden cluster notices";
/// Starts every sealed notice; names the format.
const PREFIX: &str = "tw1.";
/// Bound into every seal, so no other ciphertext under the key passes for a notice.
const AAD: &[u8] = b"tokenwarden cluster notice v1";
const NONCE_LEN: usize = 12;

/// What a notice tells every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The user's row changed at the front door: its owner reloads it and pushes.
    User(String),
    /// An operator's resync: every node queues its own users' pushes.
    Resync,
    /// Shards were handed over: every node renews (and claims) now.
    Rebalance,
}

impl Notice {
    fn body(&self) -> String {
        match self {
            Self::User(user_id) => format!("{USER_PREFIX}{user_id}"),
            Self::Resync => RESYNC.to_string(),
            Self::Rebalance => REBALANCE.to_string(),
        }
    }

    fn from_body(body: &str) -> Option<Self> {
        match body {
            REBALANCE => Some(Self::Rebalance),
            RESYNC => Some(Self::Resync),
            _ => body
                .strip_prefix(USER_PREFIX)
                .map(|id| Self::User(id.to_string())),
        }
    }
}

/// Why a notice was dropped; its label in the dropped counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    Unsealed,
    Stale,
    Replayed,
}

impl Dropped {
    fn reason(self) -> &'static str {
        match self {
            Self::Unsealed => "unsealed",
            Self::Stale => "stale",
            Self::Replayed => "replayed",
        }
    }
}

/// Seals the notices this node sends and opens the ones it hears.
pub struct Notices {
    cipher: Aes256Gcm,
    seen: SeenNonces,
    dropped: Family<NoticeDropLabels, Counter>,
}

impl std::fmt::Debug for Notices {
    /// Shows nothing of the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Notices")
    }
}

impl Notices {
    pub fn new(admin_token: &SecretString, metrics: &Metrics) -> Self {
        let kdf = Hkdf::<Sha256>::new(Some(KDF_SALT), admin_token.expose_secret().as_bytes());
        let mut key = [0u8; 32];
        kdf.expand(b"notice key v1", &mut key)
            .expect("a valid HKDF length");
        Self {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key)),
            seen: SeenNonces::default(),
            dropped: metrics.notices_dropped.clone(),
        }
    }

    /// Sends `notice` to every node (this one too).
    pub async fn send(&self, store: &Store, notice: &Notice) -> Result<(), StoreError> {
        store.notify(&self.seal(notice, now_ms())).await
    }

    /// What a listener hears in `payload`; `None` (counted) when it is not a node's notice of
    /// the last [`WINDOW_MS`] heard for the first time.
    pub fn open(&self, payload: &str) -> Option<Notice> {
        match self.open_at(payload, now_ms()) {
            Ok(notice) => Some(notice),
            Err(dropped) => {
                self.dropped
                    .get_or_create(&NoticeDropLabels {
                        reason: dropped.reason(),
                    })
                    .inc();
                tracing::warn!(
                    reason = dropped.reason(),
                    "cluster notice dropped: not a node's, or heard before"
                );
                None
            }
        }
    }

    fn seal(&self, notice: &Notice, now_ms: i64) -> String {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let plain = format!("{now_ms} {}", notice.body());
        let payload = Payload {
            msg: plain.as_bytes(),
            aad: AAD,
        };
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), payload)
            .expect("AES-GCM seals any notice-sized message");
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&sealed);
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
    }

    fn open_at(&self, payload: &str, now_ms: i64) -> Result<Notice, Dropped> {
        let raw = payload
            .strip_prefix(PREFIX)
            .and_then(|b64| URL_SAFE_NO_PAD.decode(b64).ok())
            .filter(|raw| raw.len() > NONCE_LEN)
            .ok_or(Dropped::Unsealed)?;
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let payload = Payload {
            msg: sealed,
            aad: AAD,
        };
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), payload)
            .map_err(|_| Dropped::Unsealed)?;
        let plain = String::from_utf8(plain).map_err(|_| Dropped::Unsealed)?;
        let (at, body) = plain.split_once(' ').ok_or(Dropped::Unsealed)?;
        let at: i64 = at.parse().map_err(|_| Dropped::Unsealed)?;
        let notice = Notice::from_body(body).ok_or(Dropped::Unsealed)?;
        if (now_ms - at).abs() > WINDOW_MS {
            return Err(Dropped::Stale);
        }
        if !self.seen.first_use(nonce, at + WINDOW_MS, now_ms) {
            return Err(Dropped::Replayed);
        }
        Ok(notice)
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notices(token: &str) -> (Notices, Metrics) {
        let metrics = Metrics::default();
        let notices = Notices::new(&SecretString::from(token.to_string()), &metrics);
        (notices, metrics)
    }

    const TOKEN: &str = "unit-test-admin-token-of-32-chars-or-more";

    #[test]
    fn a_sealed_notice_is_heard_once_within_its_window_and_hides_the_user() {
        let (n, _) = notices(TOKEN);
        for notice in [
            Notice::User("alice@example.com".into()),
            Notice::Resync,
            Notice::Rebalance,
        ] {
            let sealed = n.seal(&notice, 1_000_000);
            assert!(
                !sealed.contains("alice") && !sealed.contains("user:"),
                "{sealed}"
            );
            assert_eq!(n.open_at(&sealed, 1_000_000 + WINDOW_MS), Ok(notice));
            assert_eq!(n.open_at(&sealed, 1_000_001), Err(Dropped::Replayed));
        }
        let sealed = n.seal(&Notice::Resync, 1_000_000);
        assert_eq!(
            n.open_at(&sealed, 1_000_000 + WINDOW_MS + 1),
            Err(Dropped::Stale)
        );
    }

    #[test]
    fn anything_else_on_the_channel_is_dropped_and_counted() {
        let (n, metrics) = notices(TOKEN);
        let (other, _) = notices("another-admin-token-of-32-characters-x");
        let forged = other.seal(&Notice::User("alice".into()), now_ms());
        let mut tampered = n.seal(&Notice::Resync, now_ms()).into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        for payload in [
            "user:alice",
            "resync",
            "rebalance",
            "tw1.",
            "tw1.AAAA",
            &forged,
            &tampered,
        ] {
            assert_eq!(n.open(payload), None, "{payload}");
        }
        let text = metrics.render();
        assert!(
            text.contains("tokenwarden_cluster_notices_dropped_total{reason=\"unsealed\"} 7"),
            "{text}"
        );
    }
}
