//! The identifiers Google's security events use for a refresh token (docs/contract.md section 10),
//! computed from the token when it is stored so the token itself never has to be matched: the
//! SHA-256 of its first 16 characters (Google's `prefix` alg names the prefix; only its hash is
//! kept) and `hash_base64_sha512_sha512`. A leaf: no I/O, no other module.

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD},
};
use sha2::{Digest, Sha256, Sha512};

/// Characters of a token that Google's `prefix` identifier carries.
pub const PREFIX_CHARS: usize = 16;

/// What is stored with a refresh token to match security events about it.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshTokenIds {
    /// SHA-256 (hex) of the first [`PREFIX_CHARS`] characters.
    pub prefix_hash: String,
    /// Base64 (standard alphabet, no padding) of SHA-512 over the raw SHA-512 digest.
    pub hash: String,
}

impl std::fmt::Debug for RefreshTokenIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshTokenIds(..)")
    }
}

impl RefreshTokenIds {
    pub fn of(token: &str) -> Self {
        let prefix: String = token.chars().take(PREFIX_CHARS).collect();
        let inner = Sha512::digest(token.as_bytes());
        Self {
            prefix_hash: prefix_hash(&prefix),
            hash: STANDARD_NO_PAD.encode(Sha512::digest(inner)),
        }
    }
}

/// The stored form of a `prefix` identifier: SHA-256 (hex) of the prefix.
pub fn prefix_hash(prefix: &str) -> String {
    hex::encode(Sha256::digest(prefix.as_bytes()))
}

/// A `hash_base64_sha512_sha512` identifier in the stored form, from standard or URL-safe
/// base64, with or without padding; `None` unless it decodes to 64 bytes.
pub fn normalize_hash(identifier: &str) -> Option<String> {
    let identifier = identifier.trim();
    let raw = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(identifier).ok())?;
    (raw.len() == 64).then(|| STANDARD_NO_PAD.encode(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_alphabet_of_the_double_hash_names_the_same_token() {
        let token = "1//0gAbCdEfGhIjKlMnOpQrStUvWxYz-_0123456789";
        let ids = RefreshTokenIds::of(token);
        let raw = Sha512::digest(Sha512::digest(token.as_bytes()));
        for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
            assert_eq!(normalize_hash(&engine.encode(raw)), Some(ids.hash.clone()));
        }
        assert_eq!(ids.prefix_hash, prefix_hash("1//0gAbCdEfGhIjK"));
        assert_eq!(normalize_hash("not base64!"), None);
        assert_eq!(normalize_hash(&STANDARD.encode([0u8; 32])), None);
        assert_ne!(RefreshTokenIds::of("another"), ids);
        assert!(!format!("{ids:?}").contains(&ids.hash));
    }
}
