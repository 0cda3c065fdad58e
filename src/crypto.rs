//! Token encryption at rest: AES-256-GCM with a random 96-bit nonce per value, the row's user
//! id and column bound in as associated data (so a ciphertext copied into another row or column
//! does not decrypt). Also the constant-time comparison of shared secrets. Owns no storage.
//!
//! Several keys can be configured for rotation: the first encrypts, every key decrypts. A
//! ciphertext names the key that made it (`v2:<key id>:<base64>`, the key id being the first 4
//! bytes of the key's SHA-256 in hex), so decryption picks its key directly; the older `v1:`
//! format names no key and is tried with each.

use aes_gcm::{
    Aes256Gcm, Key, Nonce,
    aead::{Aead, AeadCore, KeyInit, OsRng, Payload},
};
use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of ciphertexts written before key ids existed: the key must be found by trying.
const LEGACY_FORMAT: &str = "v1:";
/// Prefix of every ciphertext this version writes, followed by the key id and a colon.
const FORMAT: &str = "v2:";
/// Hex characters of a key id.
const KEY_ID_LEN: usize = 8;
/// Nonce plus authentication tag: the shortest sealed value.
const MIN_SEALED: usize = 12 + 16;

/// Why a stored value could not be decrypted. Never carries the value or a key.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("ciphertext is malformed")]
    Malformed,
    #[error("ciphertext does not decrypt with this key (wrong key, row or column)")]
    Undecryptable,
    #[error("ciphertext was made by key id {0}, which is not among the configured keys")]
    UnknownKey(String),
}

/// One AES-256-GCM key and its public id.
#[derive(Clone)]
struct KeyEntry {
    id: String,
    cipher: Aes256Gcm,
}

impl KeyEntry {
    fn new(key: &[u8; 32]) -> Self {
        Self {
            id: key_id(key),
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key)),
        }
    }

    fn open(&self, raw: &[u8], context: &str) -> Result<SecretString, CryptoError> {
        let (nonce, sealed) = raw.split_at(12);
        let payload = Payload {
            msg: sealed,
            aad: context.as_bytes(),
        };
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), payload)
            .map_err(|_| CryptoError::Undecryptable)?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| CryptoError::Undecryptable)
    }
}

/// The public id of a key: the first 4 bytes of its SHA-256, in hex. Safe to show and store:
/// it tells keys apart without saying anything usable about them.
pub fn key_id(key: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(key)[..KEY_ID_LEN / 2])
}

/// Encrypts and decrypts token columns.
#[derive(Clone)]
pub struct TokenCipher {
    /// The current key first (it encrypts), then the old ones (they only decrypt).
    keys: Vec<KeyEntry>,
}

impl std::fmt::Debug for TokenCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCipher(..)")
    }
}

impl TokenCipher {
    /// A cipher with one key.
    pub fn new(key: &[u8; 32]) -> Self {
        Self::with_old_keys(key, &[])
    }

    /// A cipher that encrypts with `current` and also decrypts what `old` keys made.
    pub fn with_old_keys(current: &[u8; 32], old: &[[u8; 32]]) -> Self {
        let mut keys = vec![KeyEntry::new(current)];
        for key in old {
            let entry = KeyEntry::new(key);
            if !keys.iter().any(|k| k.id == entry.id) {
                keys.push(entry);
            }
        }
        Self { keys }
    }

    /// The id of the key that encrypts.
    pub fn current_key_id(&self) -> &str {
        &self.keys[0].id
    }

    /// `v2:<key id>:` + base64(nonce || ciphertext+tag), bound to `context` (e.g.
    /// `google_access_token:<user id>`), with the current key.
    pub fn encrypt(&self, plaintext: &str, context: &str) -> String {
        let current = &self.keys[0];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: plaintext.as_bytes(),
            aad: context.as_bytes(),
        };
        // Encryption with a valid key and nonce cannot fail for inputs this small.
        let sealed = current
            .cipher
            .encrypt(&nonce, payload)
            .expect("AES-GCM encryption of a short value");
        let mut out = Vec::with_capacity(nonce.len() + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        format!("{FORMAT}{}:{}", current.id, STANDARD_NO_PAD.encode(out))
    }

    /// Opens a value written by any configured key, in either format.
    pub fn decrypt(&self, stored: &str, context: &str) -> Result<SecretString, CryptoError> {
        if let Some(rest) = stored.strip_prefix(FORMAT) {
            let (id, encoded) = rest.split_once(':').ok_or(CryptoError::Malformed)?;
            if id.len() != KEY_ID_LEN || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(CryptoError::Malformed);
            }
            let raw = sealed_bytes(encoded)?;
            let key = self
                .keys
                .iter()
                .find(|k| k.id == id)
                .ok_or_else(|| CryptoError::UnknownKey(id.to_string()))?;
            return key.open(&raw, context);
        }
        let encoded = stored
            .strip_prefix(LEGACY_FORMAT)
            .ok_or(CryptoError::Malformed)?;
        let raw = sealed_bytes(encoded)?;
        self.keys
            .iter()
            .find_map(|key| key.open(&raw, context).ok())
            .ok_or(CryptoError::Undecryptable)
    }

    /// True when `stored` is not yet in the current format under the current key, so a key
    /// rotation should rewrite it.
    pub fn needs_reencrypt(&self, stored: &str) -> bool {
        let current = format!("{FORMAT}{}:", self.keys[0].id);
        !stored.starts_with(&current)
    }
}

fn sealed_bytes(encoded: &str) -> Result<Vec<u8>, CryptoError> {
    let raw = STANDARD_NO_PAD
        .decode(encoded)
        .map_err(|_| CryptoError::Malformed)?;
    if raw.len() < MIN_SEALED {
        return Err(CryptoError::Malformed);
    }
    Ok(raw)
}

/// Compares a presented secret with the expected one in constant time. Both sides are hashed
/// first so that neither the content nor the length of the expected secret leaks through timing.
pub fn secrets_match(presented: &str, expected: &SecretString) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.expose_secret().as_bytes());
    a.ct_eq(&b).into()
}

/// A short, safe-to-log prefix of a token (`ya29.a0…`), for correlating without exposing it.
pub fn redacted(token: &str) -> String {
    let prefix: String = token.chars().take(6).collect();
    format!("{prefix}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_context_binding() {
        let cipher = TokenCipher::new(&[1u8; 32]);
        let sealed = cipher.encrypt("ya29.secret", "access:alice");
        assert!(!sealed.contains("ya29"));
        let opened = cipher.decrypt(&sealed, "access:alice").unwrap();
        assert_eq!(opened.expose_secret(), "ya29.secret");
        assert!(cipher.decrypt(&sealed, "access:bob").is_err());
        assert!(cipher.decrypt(&sealed, "refresh:alice").is_err());
        assert_ne!(sealed, cipher.encrypt("ya29.secret", "access:alice"));
    }

    #[test]
    fn wrong_key_and_garbage_are_errors_not_panics() {
        let sealed = TokenCipher::new(&[1u8; 32]).encrypt("x", "c");
        let other = TokenCipher::new(&[2u8; 32]);
        let err = other.decrypt(&sealed, "c").unwrap_err();
        assert!(matches!(err, CryptoError::UnknownKey(_)), "{err}");
        assert!(err.to_string().contains(&key_id(&[1u8; 32])));
        assert!(matches!(
            other.decrypt("v1:@@", "c"),
            Err(CryptoError::Malformed)
        ));
        assert!(matches!(
            other.decrypt("plain", "c"),
            Err(CryptoError::Malformed)
        ));
        assert!(matches!(
            other.decrypt("v1:AAAA", "c"),
            Err(CryptoError::Malformed)
        ));
    }

    /// A ciphertext as the first version wrote it: `v1:` and no key id.
    fn legacy(key: &[u8; 32], plaintext: &str, context: &str) -> String {
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key));
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: plaintext.as_bytes(),
            aad: context.as_bytes(),
        };
        let mut out = nonce.to_vec();
        out.extend(cipher.encrypt(&nonce, payload).unwrap());
        format!("v1:{}", STANDARD_NO_PAD.encode(out))
    }

    #[test]
    fn old_keys_decrypt_and_only_the_current_one_encrypts() {
        let (old, new) = ([1u8; 32], [2u8; 32]);
        let before = TokenCipher::new(&old).encrypt("ya29.old", "c");
        let v1 = legacy(&old, "ya29.legacy", "c");
        let rotated = TokenCipher::with_old_keys(&new, &[old]);
        assert_eq!(rotated.current_key_id(), key_id(&new));
        assert_eq!(
            rotated.decrypt(&before, "c").unwrap().expose_secret(),
            "ya29.old"
        );
        assert_eq!(
            rotated.decrypt(&v1, "c").unwrap().expose_secret(),
            "ya29.legacy"
        );
        let after = rotated.encrypt("ya29.new", "c");
        assert!(
            after.starts_with(&format!("v2:{}:", key_id(&new))),
            "{after}"
        );
        assert!(rotated.needs_reencrypt(&before));
        assert!(rotated.needs_reencrypt(&v1));
        assert!(!rotated.needs_reencrypt(&after));
        // Once the old key is dropped, what it made no longer opens; what the new one made does.
        let only_new = TokenCipher::new(&new);
        assert!(only_new.decrypt(&before, "c").is_err());
        assert!(only_new.decrypt(&v1, "c").is_err());
        assert_eq!(
            only_new.decrypt(&after, "c").unwrap().expose_secret(),
            "ya29.new"
        );
    }

    #[test]
    fn key_ids_are_short_hex_and_tampering_is_refused() {
        let id = key_id(&[1u8; 32]);
        assert_eq!(id.len(), 8);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, key_id(&[2u8; 32]));
        let cipher = TokenCipher::with_old_keys(&[1u8; 32], &[[2u8; 32]]);
        let sealed = cipher.encrypt("x", "c");
        // Pointing the id at the other configured key does not open it.
        let swapped = sealed.replace(&id, &key_id(&[2u8; 32]));
        assert!(matches!(
            cipher.decrypt(&swapped, "c"),
            Err(CryptoError::Undecryptable)
        ));
        for garbage in [
            "v2:",
            "v2:zz:AAAA",
            "v2:0123456:AAAA",
            "v2:01234567",
            "v2:01234567:@@",
        ] {
            assert!(
                matches!(cipher.decrypt(garbage, "c"), Err(CryptoError::Malformed)),
                "{garbage}"
            );
        }
    }

    #[test]
    fn secrets_compare() {
        let expected = SecretString::from("admin-token");
        assert!(secrets_match("admin-token", &expected));
        assert!(!secrets_match("admin-toke", &expected));
        assert!(!secrets_match("", &expected));
    }
}
