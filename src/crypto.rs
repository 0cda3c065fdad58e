//! Token encryption at rest: AES-256-GCM with a random 96-bit nonce per value, the row's user
//! id and column bound in as associated data (so a ciphertext copied into another row or column
//! does not decrypt). Also the constant-time comparison of shared secrets. Owns no storage.

use aes_gcm::{
    Aes256Gcm, Key, Nonce,
    aead::{Aead, AeadCore, KeyInit, OsRng, Payload},
};
use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of every ciphertext this version writes, so a later key rotation can tell formats apart.
const FORMAT: &str = "v1:";

/// Why a stored value could not be decrypted. Never carries the value itself.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("ciphertext is malformed")]
    Malformed,
    #[error("ciphertext does not decrypt with this key (wrong key, row or column)")]
    Undecryptable,
}

/// Encrypts and decrypts token columns.
#[derive(Clone)]
pub struct TokenCipher {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for TokenCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCipher(..)")
    }
}

impl TokenCipher {
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key)),
        }
    }

    /// `v1:` + base64(nonce || ciphertext+tag), bound to `context` (e.g. `google_access_token:<user id>`).
    pub fn encrypt(&self, plaintext: &str, context: &str) -> String {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: plaintext.as_bytes(),
            aad: context.as_bytes(),
        };
        // Encryption with a valid key and nonce cannot fail for inputs this small.
        let sealed = self
            .cipher
            .encrypt(&nonce, payload)
            .expect("AES-GCM encryption of a short value");
        let mut out = Vec::with_capacity(nonce.len() + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        format!("{FORMAT}{}", STANDARD_NO_PAD.encode(out))
    }

    pub fn decrypt(&self, stored: &str, context: &str) -> Result<SecretString, CryptoError> {
        let encoded = stored.strip_prefix(FORMAT).ok_or(CryptoError::Malformed)?;
        let raw = STANDARD_NO_PAD
            .decode(encoded)
            .map_err(|_| CryptoError::Malformed)?;
        if raw.len() < 12 + 16 {
            return Err(CryptoError::Malformed);
        }
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
        assert!(matches!(
            other.decrypt(&sealed, "c"),
            Err(CryptoError::Undecryptable)
        ));
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

    #[test]
    fn secrets_compare() {
        let expected = SecretString::from("admin-token");
        assert!(secrets_match("admin-token", &expected));
        assert!(!secrets_match("admin-toke", &expected));
        assert!(!secrets_match("", &expected));
    }
}
