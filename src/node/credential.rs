//! The credential of an admin call forwarded to a user's owner, and the proof on its answer
//! (docs/contract.md section 4: "the admin token itself never leaves the node").
//!
//! The forwarding node learns the owner's address from the database, which more people can
//! write than should hold the admin token. So the call carries no admin token: it carries an
//! HMAC-SHA256, under a key derived from `ADMIN_TOKEN` by HKDF-SHA256, over the method, the
//! route, the user id, the process token of the node it is meant for, the time and a random
//! nonce. The receiving node accepts it in place of the admin token for that one call: same
//! method, route and user, meant for this very process, within [`WINDOW_MS`] of its time, and
//! never twice (its nonce is remembered for the window). Its answer comes back with an HMAC,
//! under a second derived key, over the request's nonce, the status and the body; the
//! forwarding node relays only an answer that carries it. Whoever answers at a tampered address
//! therefore learns nothing it can use for another call, and cannot answer the operator.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use super::replay::SeenNonces;

/// How far a credential's time may be from the receiver's clock, either way (milliseconds).
/// Nodes' clocks must agree to well within this (NTP does).
pub const WINDOW_MS: i64 = 30_000;
/// Names what the derived keys are for, so no other use of the admin token yields them.
const KDF_SALT: &[u8] = b"tokenwarden forwarded admin calls";
/// The format of the credential and of the answer's proof.
const VERSION: &str = "v1";

type HmacSha256 = Hmac<Sha256>;

/// One forwarded call: what the credential is good for.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub method: &'a str,
    /// The route's template, e.g. `/admin/actors/{user_id}/refresh`.
    pub route: &'a str,
    pub user_id: &'a str,
}

/// Why a credential was refused. Says nothing about the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the forwarded credential is malformed")]
    Malformed,
    #[error("the forwarded credential is outside its time window")]
    Stale,
    #[error("the forwarded credential is not valid for this call")]
    Invalid,
    #[error("the forwarded credential was used already")]
    Replayed,
}

/// The keys derived from the admin token.
pub struct ForwardKeys {
    request: [u8; 32],
    answer: [u8; 32],
}

/// A signed call: the header value to send and the nonce its answer must name.
pub struct Signed {
    pub header: String,
    pub nonce: String,
}

impl ForwardKeys {
    pub fn from_admin_token(admin_token: &SecretString) -> Self {
        let kdf = Hkdf::<Sha256>::new(Some(KDF_SALT), admin_token.expose_secret().as_bytes());
        let (mut request, mut answer) = ([0u8; 32], [0u8; 32]);
        // Two keys, so that an answer's proof can never pass as a call's credential.
        kdf.expand(b"request v1", &mut request)
            .expect("a valid HKDF length");
        kdf.expand(b"answer v1", &mut answer)
            .expect("a valid HKDF length");
        Self { request, answer }
    }

    /// The credential of `call`, meant for the process whose token is `target`, made at `now_ms`.
    pub fn sign(&self, call: Call<'_>, target: &str, now_ms: i64) -> Signed {
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let mac = self.request_mac(call, target, now_ms, &nonce);
        Signed {
            header: format!("{VERSION} {now_ms} {nonce} {}", URL_SAFE_NO_PAD.encode(mac)),
            nonce,
        }
    }

    /// Checks `header` as the credential of `call` for this process (`me`) at `now_ms`;
    /// answers its nonce, which is then spent.
    pub fn verify(
        &self,
        header: &str,
        call: Call<'_>,
        me: &str,
        now_ms: i64,
        seen: &SeenNonces,
    ) -> Result<String, Refused> {
        let mut parts = header.split(' ');
        let (Some(VERSION), Some(at), Some(nonce), Some(mac), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(Refused::Malformed);
        };
        let at: i64 = at.parse().map_err(|_| Refused::Malformed)?;
        let mac = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| Refused::Malformed)?;
        if nonce.len() != 32 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Refused::Malformed);
        }
        if (now_ms - at).abs() > WINDOW_MS {
            return Err(Refused::Stale);
        }
        let mut expected = HmacSha256::new_from_slice(&self.request).expect("any key length");
        expected.update(&request_input(call, me, at, nonce));
        expected.verify_slice(&mac).map_err(|_| Refused::Invalid)?;
        if !seen.first_use(nonce.as_bytes(), at + WINDOW_MS, now_ms) {
            return Err(Refused::Replayed);
        }
        Ok(nonce.to_string())
    }

    /// The proof that goes with an answer to the call of `nonce`.
    pub fn sign_answer(&self, nonce: &str, status: u16, body: &[u8]) -> String {
        let mut mac = HmacSha256::new_from_slice(&self.answer).expect("any key length");
        mac.update(&answer_input(nonce, status, body));
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// Whether `proof` is the answer's proof for the call of `nonce`.
    pub fn verify_answer(&self, nonce: &str, status: u16, body: &[u8], proof: &str) -> bool {
        let Ok(proof) = URL_SAFE_NO_PAD.decode(proof) else {
            return false;
        };
        let mut mac = HmacSha256::new_from_slice(&self.answer).expect("any key length");
        mac.update(&answer_input(nonce, status, body));
        mac.verify_slice(&proof).is_ok()
    }

    fn request_mac(&self, call: Call<'_>, target: &str, at: i64, nonce: &str) -> Vec<u8> {
        let mut mac = HmacSha256::new_from_slice(&self.request).expect("any key length");
        mac.update(&request_input(call, target, at, nonce));
        mac.finalize().into_bytes().to_vec()
    }
}

/// The fields a call's MAC covers, each length-prefixed so no two calls share an input.
fn request_input(call: Call<'_>, target: &str, at: i64, nonce: &str) -> Vec<u8> {
    let at = at.to_string();
    framed(&[
        VERSION.as_bytes(),
        call.method.as_bytes(),
        call.route.as_bytes(),
        call.user_id.as_bytes(),
        target.as_bytes(),
        at.as_bytes(),
        nonce.as_bytes(),
    ])
}

fn answer_input(nonce: &str, status: u16, body: &[u8]) -> Vec<u8> {
    let status = status.to_string();
    framed(&[
        VERSION.as_bytes(),
        nonce.as_bytes(),
        status.as_bytes(),
        body,
    ])
}

fn framed(fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(fields.iter().map(|f| f.len() + 8).sum());
    for field in fields {
        out.extend_from_slice(&(field.len() as u64).to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "unit-test-admin-token-of-32-chars-or-more";
    const GET: Call<'static> = Call {
        method: "GET",
        route: "/admin/actors/{user_id}",
        user_id: "alice",
    };

    fn keys(token: &str) -> ForwardKeys {
        ForwardKeys::from_admin_token(&SecretString::from(token.to_string()))
    }

    #[test]
    fn a_credential_is_good_for_its_one_call_only() {
        let k = keys(TOKEN);
        let seen = SeenNonces::default();
        let signed = k.sign(GET, "owner-token", 1_000_000);
        assert!(!signed.header.contains(TOKEN));
        let other_calls = [
            Call {
                method: "POST",
                ..GET
            },
            Call {
                route: "/admin/actors/{user_id}/refresh",
                ..GET
            },
            Call {
                user_id: "bob",
                ..GET
            },
        ];
        for call in other_calls {
            let refused = k.verify(&signed.header, call, "owner-token", 1_000_000, &seen);
            assert_eq!(refused, Err(Refused::Invalid), "{call:?}");
        }
        let elsewhere = k.verify(&signed.header, GET, "another-process", 1_000_000, &seen);
        assert_eq!(elsewhere, Err(Refused::Invalid));
        let late = 1_000_000 + WINDOW_MS + 1;
        let stale = k.verify(&signed.header, GET, "owner-token", late, &seen);
        assert_eq!(stale, Err(Refused::Stale));
        let early = 1_000_000 - WINDOW_MS - 1;
        let ahead = k.verify(&signed.header, GET, "owner-token", early, &seen);
        assert_eq!(ahead, Err(Refused::Stale));
        let wrong_key = keys("another-admin-token-of-32-characters-x");
        let forged = wrong_key.verify(&signed.header, GET, "owner-token", 1_000_000, &seen);
        assert_eq!(forged, Err(Refused::Invalid));
        // The call it was made for: once.
        let nonce = k.verify(&signed.header, GET, "owner-token", 1_000_500, &seen);
        assert_eq!(nonce.as_deref(), Ok(signed.nonce.as_str()));
        let again = k.verify(&signed.header, GET, "owner-token", 1_000_600, &seen);
        assert_eq!(again, Err(Refused::Replayed));
        for junk in ["", "v1", "v1 x y z", "v2 1 2 3", "Bearer abc"] {
            let refused = k.verify(junk, GET, "owner-token", 1_000_000, &seen);
            assert_eq!(refused, Err(Refused::Malformed), "{junk}");
        }
    }

    #[test]
    fn an_answer_is_relayed_only_with_its_proof() {
        let k = keys(TOKEN);
        let proof = k.sign_answer("n1", 202, b"{\"refresh\":\"queued\"}");
        assert!(k.verify_answer("n1", 202, b"{\"refresh\":\"queued\"}", &proof));
        assert!(!k.verify_answer("n2", 202, b"{\"refresh\":\"queued\"}", &proof));
        assert!(!k.verify_answer("n1", 200, b"{\"refresh\":\"queued\"}", &proof));
        assert!(!k.verify_answer("n1", 202, b"{\"refresh\":\"other\"}", &proof));
        assert!(!k.verify_answer("n1", 202, b"{\"refresh\":\"queued\"}", "garbage!"));
        let wrong_key = keys("another-admin-token-of-32-characters-x");
        assert!(!wrong_key.verify_answer("n1", 202, b"{\"refresh\":\"queued\"}", &proof));
        // A call's credential is no answer's proof: the keys differ.
        let signed = k.sign(GET, "t", 0);
        let mac = signed.header.rsplit(' ').next().unwrap();
        assert!(!k.verify_answer(&signed.nonce, 202, b"", mac));
    }
}
