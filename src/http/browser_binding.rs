//! Binds a consent round-trip to the browser that started it (RFC 9700, section 4.7; docs/api.md:
//! The browser-binding cookie). Connect sets a cookie holding a random value and the state row
//! keeps only its hash; the callback must present that cookie. A consent link forwarded to someone
//! else then fails at the callback, because their browser never got the cookie.
//!
//! Owns the cookie's name, attributes and check. It never reads or writes the state row: the
//! caller stores [`Binding::hash`] and hands the stored hash back to
//! [`CookieScope::presented_matches`].
//!
//! Over https the cookie is a `__Host-` cookie (`Secure`, `Path=/`, no `Domain`): a browser
//! accepts such a cookie only from this very host, so a sibling subdomain (`evil.example.com`
//! setting `Domain=example.com`) cannot toss in a cookie of its own flow, which would
//! otherwise make a consent link the attacker started pass the check in the victim's browser.
//! Over plain http (local development) the prefix cannot be used, and the cookie keeps the
//! callback's path.

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine;
use cookie::{Cookie, SameSite};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use url::Url;

/// Characters of the state that name its cookie. A name per round-trip lets one browser run
/// two consents at once (two tabs) without the second cookie replacing the first.
const NAME_STATE_CHARS: usize = 16;

/// A fresh binding for one round-trip.
pub struct Binding {
    /// The `Set-Cookie` value for the connect response.
    pub set_cookie: HeaderValue,
    /// What the state row stores: SHA-256 of the cookie's value, hex.
    pub hash: String,
}

/// Where the cookie goes and how it is marked, from the redirect URI: it must reach the
/// callback, be `Secure` and `__Host-` when the callback is https, and otherwise (plain http)
/// go to the callback's path only.
#[derive(Clone, Debug)]
pub struct CookieScope {
    path: String,
    /// https: `Secure`, `__Host-` prefix and `Path=/` (the prefix requires all three).
    secure: bool,
}

impl CookieScope {
    pub fn for_callback(redirect_uri: &Url) -> Self {
        let secure = redirect_uri.scheme() == "https";
        Self {
            // `__Host-` requires `Path=/`; the cookie then also travels with other requests
            // to this host, which never read it.
            path: if secure {
                "/".to_string()
            } else {
                redirect_uri.path().to_string()
            },
            secure,
        }
    }

    /// The name of `state`'s cookie: the one connect sets and the callback reads.
    pub fn cookie_name(&self, state: &str) -> String {
        let key: String = state.chars().take(NAME_STATE_CHARS).collect();
        let prefix = if self.secure { "__Host-" } else { "" };
        format!("{prefix}tw_oauth_{key}")
    }

    /// Whether the request carries `state`'s cookie with the value whose hash is `expected`
    /// (compared in constant time). A state stored without a hash never matches. Only the
    /// name this scope sets counts: over https a cookie without the `__Host-` prefix may
    /// have come from a sibling subdomain.
    pub fn presented_matches(
        &self,
        headers: &HeaderMap,
        state: &str,
        expected: Option<&str>,
    ) -> bool {
        let Some(expected) = expected else {
            return false;
        };
        let name = self.cookie_name(state);
        let mut matched = false;
        for value in cookie_values(headers, &name) {
            // Every candidate is checked, so the time taken does not say which one matched.
            matched |= bool::from(digest_hex(&value).as_bytes().ct_eq(expected.as_bytes()));
        }
        matched
    }

    /// A new random value for `state`'s round-trip, living as long as the state.
    pub fn issue(&self, state: &str, lifetime: chrono::Duration) -> Binding {
        let mut raw = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut raw);
        let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let hash = digest_hex(&value);
        let cookie = self.cookie(state, value, lifetime.num_seconds());
        Binding {
            set_cookie: header_value(&cookie),
            hash,
        }
    }

    /// A `Set-Cookie` that removes `state`'s cookie once its round-trip is over.
    pub fn expire(&self, state: &str) -> HeaderValue {
        header_value(&self.cookie(state, String::new(), 0))
    }

    fn cookie(&self, state: &str, value: String, max_age_secs: i64) -> Cookie<'static> {
        Cookie::build((self.cookie_name(state), value))
            .http_only(true)
            .same_site(SameSite::Lax)
            .secure(self.secure)
            .path(self.path.clone())
            .max_age(cookie::time::Duration::seconds(max_age_secs))
            .build()
    }
}

fn cookie_values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| Cookie::split_parse(h.to_string()))
        .filter_map(Result::ok)
        .filter(|c| c.name() == name)
        .map(|c| c.value().to_string())
        .collect()
}

fn digest_hex(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

fn header_value(cookie: &Cookie<'_>) -> HeaderValue {
    // Names and values are base64url and the path comes from a parsed URL: always valid.
    HeaderValue::from_str(&cookie.to_string()).expect("a cookie of safe characters")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(uri: &str) -> CookieScope {
        CookieScope::for_callback(&Url::parse(uri).unwrap())
    }

    fn request_with(cookie: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_str(cookie).unwrap());
        headers
    }

    fn pair(set_cookie: &HeaderValue) -> String {
        let c = Cookie::parse(set_cookie.to_str().unwrap().to_string()).unwrap();
        format!("{}={}", c.name(), c.value())
    }

    #[test]
    fn cookie_carries_the_contracts_attributes() {
        let binding = scope("https://tw.example/api/integrations/google/callback")
            .issue("abcdefghijklmnopqrstuvwxyz", chrono::Duration::minutes(10));
        let text = binding.set_cookie.to_str().unwrap();
        assert!(
            text.starts_with("__Host-tw_oauth_abcdefghijklmnop="),
            "{text}"
        );
        for attribute in [
            "HttpOnly",
            "SameSite=Lax",
            "Secure",
            "Path=/;",
            "Max-Age=600",
        ] {
            assert!(
                format!("{text};").contains(attribute),
                "{attribute} missing in {text}"
            );
        }
        assert!(!text.contains("Domain"), "{text}");
        let plain = scope("http://localhost:3000/api/integrations/google/callback")
            .issue("abcdefghijklmnopqrstuvwxyz", chrono::Duration::minutes(10));
        let text = plain.set_cookie.to_str().unwrap();
        assert!(text.starts_with("tw_oauth_abcdefghijklmnop="), "{text}");
        assert!(
            text.contains("Path=/api/integrations/google/callback"),
            "{text}"
        );
        assert!(!text.contains("Secure"), "{text}");
    }

    #[test]
    fn over_https_only_the_host_prefixed_cookie_counts() {
        let scope = scope("https://tw.example/api/integrations/google/callback");
        let state = "AAAAAAAAAAAAAAAAxyz";
        let binding = scope.issue(state, chrono::Duration::minutes(10));
        let pair = pair(&binding.set_cookie);
        assert!(presented(
            &scope,
            &request_with(&pair),
            state,
            &binding.hash
        ));
        // The same value under the unprefixed name, as a sibling subdomain could set it.
        let tossed = pair.trim_start_matches("__Host-");
        assert!(!presented(
            &scope,
            &request_with(tossed),
            state,
            &binding.hash
        ));
    }

    fn presented(scope: &CookieScope, headers: &HeaderMap, state: &str, hash: &str) -> bool {
        scope.presented_matches(headers, state, Some(hash))
    }

    #[test]
    fn only_the_flows_own_cookie_matches() {
        let scope = scope("http://localhost:3000/api/integrations/google/callback");
        let lifetime = chrono::Duration::minutes(10);
        let (state_a, state_b) = ("AAAAAAAAAAAAAAAAxyz", "BBBBBBBBBBBBBBBBxyz");
        let a = scope.issue(state_a, lifetime);
        let b = scope.issue(state_b, lifetime);
        let both = request_with(&format!("{}; {}", pair(&a.set_cookie), pair(&b.set_cookie)));
        assert!(presented(&scope, &both, state_a, &a.hash));
        assert!(presented(&scope, &both, state_b, &b.hash));
        // B's cookie renamed as A's: the value is B's, so A's hash does not match.
        let b_value = pair(&b.set_cookie).split_once('=').unwrap().1.to_string();
        let forged = request_with(&format!("{}={b_value}", scope.cookie_name(state_a)));
        assert!(!presented(&scope, &forged, state_a, &a.hash));
        assert!(!presented(&scope, &HeaderMap::new(), state_a, &a.hash));
        assert!(!scope.presented_matches(&both, state_a, None));
        assert!(!a.hash.contains(&b_value) && a.hash.len() == 64);
    }

    #[test]
    fn expiring_cookie_has_zero_max_age() {
        for (uri, name) in [
            (
                "http://localhost:3000/api/integrations/google/callback",
                "tw_oauth_AAAAAAAAAAAAAAAA",
            ),
            (
                "https://tw.example/api/integrations/google/callback",
                "__Host-tw_oauth_AAAAAAAAAAAAAAAA",
            ),
        ] {
            let text = scope(uri)
                .expire("AAAAAAAAAAAAAAAA")
                .to_str()
                .unwrap()
                .to_string();
            assert!(text.starts_with(&format!("{name}=;")), "{text}");
            assert!(text.contains("Max-Age=0"), "{text}");
        }
    }
}
