//! The console's session and its defences against cross-site requests. Owns the cookie's
//! name, attributes and signature, the CSRF tokens of the forms, and the origin check.
//!
//! The cookie holds a random session id and its expiry, signed (the `cookie` crate's signed
//! jar, HMAC-SHA256) with a key derived from `ADMIN_TOKEN` by HKDF-SHA512 under a fixed label,
//! so any node with the same configuration can check it and changing the admin token ends
//! every session. The session is live only while the database holds it (`store::
//! console_sessions`, checked by the caller), so signing out ends it on every node. A form's
//! CSRF token is an HMAC of the session id under a second derived key, so it is worth nothing
//! without the cookie it belongs to.
//!
//! Nothing handed out before sign-in comes from the admin token (docs/contract.md section 4): the
//! sign-in form's anti-forgery value is random and kept in a cookie of its own (double submit), so
//! a page fetched without the token gives nobody a value to test guesses against.

use axum::http::{HeaderMap, HeaderValue, header};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Duration, Utc};
use cookie::{Cookie, CookieJar, Key, SameSite};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Sha256, Sha512};
use subtle::ConstantTimeEq;
use url::Url;

/// The session cookie's name.
pub const COOKIE: &str = "tw_console";
/// Where the cookie is sent: the console's pages and forms, nothing else.
pub const COOKIE_PATH: &str = "/console";
/// How long a session lasts: a working day, then the operator signs in again.
pub const LIFETIME: Duration = Duration::hours(8);
/// The sign-in form's anti-forgery cookie.
pub const SIGN_IN_COOKIE: &str = "tw_console_sign_in";
/// How long a sign-in form may be left open before it is submitted.
const SIGN_IN_FORM_LIFETIME: Duration = Duration::hours(1);
/// HKDF's salt: names what the derived keys are for, so no other use of the admin token
/// can produce them.
const KDF_SALT: &[u8] = b"tokenwarden operator console";

type HmacSha256 = Hmac<Sha256>;

/// A signed-in operator's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Random, base64url: what the CSRF tokens are bound to.
    pub id: String,
    pub expires_at: DateTime<Utc>,
}

/// The keys derived from the admin token.
pub struct Keys {
    /// Signs the session cookie.
    cookie: Key,
    /// Makes the CSRF tokens.
    csrf: [u8; 32],
}

impl Keys {
    pub fn from_admin_token(admin_token: &SecretString) -> Self {
        let kdf = Hkdf::<Sha512>::new(Some(KDF_SALT), admin_token.expose_secret().as_bytes());
        let mut cookie = [0u8; 64];
        let mut csrf = [0u8; 32];
        // Both lengths are far below HKDF-SHA512's limit of 255 * 64 bytes.
        kdf.expand(b"session cookie", &mut cookie)
            .expect("a valid HKDF length");
        kdf.expand(b"csrf token", &mut csrf)
            .expect("a valid HKDF length");
        Self {
            cookie: Key::from(&cookie),
            csrf,
        }
    }

    /// A new session from `now`, and the `Set-Cookie` that carries it.
    pub fn issue(&self, now: DateTime<Utc>, secure: bool) -> (Session, HeaderValue) {
        let mut raw = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut raw);
        // Whole seconds, as the cookie carries it.
        let expires_at = DateTime::from_timestamp((now + LIFETIME).timestamp(), 0).unwrap_or(now);
        let session = Session {
            id: URL_SAFE_NO_PAD.encode(raw),
            expires_at,
        };
        let payload = format!("{}.{}", session.id, session.expires_at.timestamp());
        let mut jar = CookieJar::new();
        jar.signed_mut(&self.cookie).add(attributes(
            Cookie::new(COOKIE, payload),
            LIFETIME,
            secure,
        ));
        let signed = jar.get(COOKIE).expect("just added").clone();
        (session, header_value(&signed))
    }

    /// The session the request's cookie holds, if one is signed with this key and unexpired.
    pub fn session(&self, headers: &HeaderMap, now: DateTime<Utc>) -> Option<Session> {
        let jar = CookieJar::new();
        let verifier = jar.signed(&self.cookie);
        presented(headers, COOKIE)
            .into_iter()
            .filter_map(|cookie| verifier.verify(cookie))
            .filter_map(|cookie| parse_payload(cookie.value()))
            .find(|session| session.expires_at > now)
    }

    /// The CSRF token of `session`'s forms.
    pub fn csrf_token(&self, session: &Session) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(&["session", &session.id]).finalize().into_bytes())
    }

    /// Whether `presented` is `session`'s CSRF token (compared in constant time).
    pub fn csrf_matches(&self, session: &Session, presented: &str) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(presented.trim()) else {
            return false;
        };
        self.mac(&["session", &session.id])
            .verify_slice(&tag)
            .is_ok()
    }

    /// HMAC-SHA256 over the parts, each length-prefixed so no two lists give the same input.
    fn mac(&self, parts: &[&str]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.csrf).expect("HMAC takes any key length");
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac
    }
}

/// A `Set-Cookie` that ends the session in this browser.
pub fn clear_cookie(secure: bool) -> HeaderValue {
    header_value(&attributes(
        Cookie::new(COOKIE, ""),
        Duration::zero(),
        secure,
    ))
}

/// Whether the request carries a console cookie at all (valid or not).
pub fn has_cookie(headers: &HeaderMap) -> bool {
    !presented(headers, COOKIE).is_empty()
}

/// A new sign-in form's anti-forgery value: 32 random bytes, for the form's hidden field, and
/// the `Set-Cookie` that keeps the same value in the browser for an hour.
pub fn sign_in_token(secure: bool) -> (String, HeaderValue) {
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    let token = URL_SAFE_NO_PAD.encode(raw);
    let cookie = attributes(
        Cookie::new(SIGN_IN_COOKIE, token.clone()),
        SIGN_IN_FORM_LIFETIME,
        secure,
    );
    (token, header_value(&cookie))
}

/// Whether `presented` (the form's field) is the value of the request's sign-in cookie,
/// compared in constant time.
pub fn sign_in_token_matches(headers: &HeaderMap, presented: &str) -> bool {
    let presented = presented.trim();
    !presented.is_empty()
        && presented_values(headers, SIGN_IN_COOKIE)
            .iter()
            .any(|value| bool::from(value.as_bytes().ct_eq(presented.as_bytes())))
}

/// A `Set-Cookie` that drops the sign-in form's cookie once it has served.
pub fn clear_sign_in_cookie(secure: bool) -> HeaderValue {
    header_value(&attributes(
        Cookie::new(SIGN_IN_COOKIE, ""),
        Duration::zero(),
        secure,
    ))
}

/// Whether the request's `Host` is one this console answers under: an IP address, `localhost`,
/// or a host name of the service's own configured URLs (`allowed`). Any other name reaching
/// this port is a DNS rebinding (a page of another site whose name now points here), which
/// must not get to talk to the console as if it were same-origin. No `Host` (HTTP/1.0) is no
/// browser.
pub fn host_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Some(name) = host
        .to_str()
        .ok()
        .and_then(|h| Url::parse(&format!("http://{h}")).ok())
        .and_then(|url| url.host().map(|host| host.to_owned()))
    else {
        return false;
    };
    match name {
        url::Host::Ipv4(_) | url::Host::Ipv6(_) => true,
        url::Host::Domain(name) => {
            name.eq_ignore_ascii_case("localhost")
                || allowed.iter().any(|a| a.eq_ignore_ascii_case(&name))
        }
    }
}

/// Why a state-changing request looks cross-site, if it does: a `Sec-Fetch-Site` other than
/// `same-origin`, or an `Origin` that is neither the
/// service's public origin (`GOOGLE_CALENDAR_REDIRECT_URI`'s) nor the one of the `Host` the
/// request was sent to. Clients that send neither header are no browser, so they cannot be
/// made to post on an operator's behalf; the CSRF token still applies to them.
pub fn cross_site(headers: &HeaderMap, public: &Url) -> Option<&'static str> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    // Not even `none` (a navigation the user typed or bookmarked): the console's own forms
    // post `same-origin`, and no typed navigation is a POST.
    if let Some(site) = text("sec-fetch-site")
        && site != "same-origin"
    {
        return Some("Sec-Fetch-Site is not same-origin");
    }
    let origin = text(header::ORIGIN.as_str())?;
    let Ok(origin) = Url::parse(origin) else {
        return Some("Origin is not a URL");
    };
    let origin = origin.origin();
    if !origin.is_tuple() {
        return Some("Origin is opaque");
    }
    if origin == public.origin() {
        return None;
    }
    let scheme = match &origin {
        url::Origin::Tuple(scheme, _, _) => scheme.clone(),
        url::Origin::Opaque(_) => unreachable!("checked above"),
    };
    let host_origin = text(header::HOST.as_str())
        .and_then(|host| Url::parse(&format!("{scheme}://{host}")).ok())
        .map(|url| url.origin());
    if host_origin.is_some_and(|host| host == origin) {
        None
    } else {
        Some("Origin is another site")
    }
}

fn attributes(cookie: Cookie<'static>, max_age: Duration, secure: bool) -> Cookie<'static> {
    let mut cookie = cookie;
    cookie.set_http_only(true);
    cookie.set_same_site(SameSite::Strict);
    cookie.set_secure(secure);
    cookie.set_path(COOKIE_PATH);
    let max_age = cookie::time::Duration::seconds(max_age.num_seconds());
    cookie.set_max_age(max_age);
    // `Expires` too, for clients that predate `Max-Age`; a removal's lies in the past.
    let now = cookie::time::OffsetDateTime::now_utc();
    cookie.set_expires(if max_age.is_positive() {
        now + max_age
    } else {
        now - cookie::time::Duration::days(365)
    });
    cookie
}

fn presented(headers: &HeaderMap, name: &str) -> Vec<Cookie<'static>> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| Cookie::split_parse(h.to_string()))
        .filter_map(Result::ok)
        .filter(|c| c.name() == name)
        .map(Cookie::into_owned)
        .collect()
}

fn presented_values(headers: &HeaderMap, name: &str) -> Vec<String> {
    presented(headers, name)
        .into_iter()
        .map(|c| c.value().to_string())
        .collect()
}

fn parse_payload(payload: &str) -> Option<Session> {
    let (id, expires) = payload.split_once('.')?;
    let expires_at = DateTime::from_timestamp(expires.parse().ok()?, 0)?;
    (!id.is_empty()).then(|| Session {
        id: id.to_string(),
        expires_at,
    })
}

fn header_value(cookie: &Cookie<'_>) -> HeaderValue {
    // Base64 and digits only, with fixed attributes: always a valid header value.
    HeaderValue::from_str(&cookie.to_string()).expect("a cookie of safe characters")
}

/// A signed session cookie (`name=value`) for `admin_token` that expires at `expires_at`:
/// lets tests present an expired session or one made under another admin token.
#[cfg(feature = "test-util")]
pub fn forge_cookie(admin_token: &str, expires_at: DateTime<Utc>) -> String {
    let keys = Keys::from_admin_token(&SecretString::from(admin_token.to_string()));
    let (_, set_cookie) = keys.issue(expires_at - LIFETIME, false);
    let set_cookie = set_cookie.to_str().expect("ascii").to_string();
    let cookie = Cookie::parse(set_cookie).expect("a cookie");
    format!("{}={}", cookie.name(), cookie.value())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(token: &str) -> Keys {
        Keys::from_admin_token(&SecretString::from(token.to_string()))
    }

    fn request_with(set_cookie: &HeaderValue) -> HeaderMap {
        let cookie = Cookie::parse(set_cookie.to_str().unwrap().to_string()).unwrap();
        let mut headers = HeaderMap::new();
        let pair = format!("other=1; {}={}", cookie.name(), cookie.value());
        headers.insert(header::COOKIE, HeaderValue::from_str(&pair).unwrap());
        headers
    }

    #[test]
    fn the_cookie_carries_its_attributes() {
        let (_, set_cookie) = keys("t").issue(Utc::now(), true);
        let text = set_cookie.to_str().unwrap();
        for attribute in [
            "tw_console=",
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
            "Path=/console",
            "Max-Age=28800",
            "Expires=",
        ] {
            assert!(text.contains(attribute), "{attribute} missing in {text}");
        }
        let (_, plain) = keys("t").issue(Utc::now(), false);
        assert!(!plain.to_str().unwrap().contains("Secure"));
        assert!(clear_cookie(false).to_str().unwrap().contains("Max-Age=0"));
    }

    #[test]
    fn a_session_holds_until_it_expires_and_only_under_its_admin_token() {
        let now = Utc::now();
        let (session, set_cookie) = keys("t").issue(now, false);
        let headers = request_with(&set_cookie);
        assert_eq!(keys("t").session(&headers, now), Some(session.clone()));
        let later = session.expires_at;
        assert_eq!(keys("t").session(&headers, later), None, "expired");
        assert_eq!(keys("other").session(&headers, now), None, "token changed");
    }

    #[test]
    fn a_tampered_cookie_is_refused() {
        let now = Utc::now();
        let (_, set_cookie) = keys("t").issue(now, false);
        let cookie = Cookie::parse(set_cookie.to_str().unwrap().to_string()).unwrap();
        // Push the expiry a year out, keeping the signature: it no longer verifies.
        let value = cookie.value();
        let (signed_part, expiry) = value.rsplit_once('.').unwrap();
        let forged = format!(
            "{signed_part}.{}",
            expiry.parse::<i64>().unwrap() + 31_536_000
        );
        let mut headers = HeaderMap::new();
        let pair = format!("{COOKIE}={forged}");
        headers.insert(header::COOKIE, HeaderValue::from_str(&pair).unwrap());
        assert_eq!(keys("t").session(&headers, now), None);
    }

    #[test]
    fn csrf_tokens_belong_to_their_session() {
        let k = keys("t");
        let (a, _) = k.issue(Utc::now(), false);
        let (b, _) = k.issue(Utc::now(), false);
        let token = k.csrf_token(&a);
        assert!(k.csrf_matches(&a, &token));
        assert!(!k.csrf_matches(&b, &token));
        assert!(!k.csrf_matches(&a, ""));
        assert!(!keys("other").csrf_matches(&a, &token));
    }

    #[test]
    fn the_sign_in_token_is_random_and_must_match_its_cookie() {
        let (a, set_a) = sign_in_token(false);
        let (b, _) = sign_in_token(false);
        assert_ne!(a, b);
        // 32 random bytes: nothing of the admin token in it.
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 32);
        let text = set_a.to_str().unwrap();
        for attribute in [
            "tw_console_sign_in=",
            "HttpOnly",
            "SameSite=Strict",
            "Path=/console",
            "Max-Age=3600",
        ] {
            assert!(text.contains(attribute), "{attribute} missing in {text}");
        }
        let cookie = Cookie::parse(text.to_string()).unwrap();
        let mut headers = HeaderMap::new();
        let pair = format!("{}={}", cookie.name(), cookie.value());
        headers.insert(header::COOKIE, HeaderValue::from_str(&pair).unwrap());
        assert!(sign_in_token_matches(&headers, &a));
        assert!(!sign_in_token_matches(&headers, &b));
        assert!(!sign_in_token_matches(&headers, ""));
        assert!(!sign_in_token_matches(&HeaderMap::new(), &a));
    }

    #[test]
    fn only_configured_host_names_and_addresses_reach_the_console() {
        let allowed = vec!["tw.example".to_string()];
        let check = |host: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
            host_allowed(&headers, &allowed)
        };
        for good in [
            "127.0.0.1:3000",
            "[::1]:3000",
            "localhost:3000",
            "tw.example",
            "TW.example:443",
            "10.1.2.3",
        ] {
            assert!(check(good), "{good}");
        }
        for bad in ["evil.example:3000", "tw.example.evil.example", "a b"] {
            assert!(!check(bad), "{bad}");
        }
        assert!(host_allowed(&HeaderMap::new(), &allowed));
    }

    #[test]
    fn only_same_origin_posts_pass() {
        let public = Url::parse("https://tw.example/api/integrations/google/callback").unwrap();
        let check = |pairs: &[(&str, &str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.insert(
                    header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            cross_site(&headers, &public)
        };
        assert_eq!(check(&[]), None, "not a browser");
        assert_eq!(check(&[("origin", "https://tw.example")]), None);
        assert_eq!(
            check(&[
                ("origin", "http://127.0.0.1:3000"),
                ("host", "127.0.0.1:3000")
            ]),
            None
        );
        assert_eq!(check(&[("sec-fetch-site", "same-origin")]), None);
        assert!(check(&[("origin", "https://evil.example")]).is_some());
        assert!(check(&[("origin", "null")]).is_some());
        assert!(
            check(&[("origin", "http://tw.example")]).is_some(),
            "scheme"
        );
        assert!(check(&[("sec-fetch-site", "cross-site")]).is_some());
        assert!(check(&[("sec-fetch-site", "same-site")]).is_some());
        assert!(
            check(&[("sec-fetch-site", "none")]).is_some(),
            "docs/api.md: only same-origin"
        );
        assert!(
            check(&[
                ("origin", "http://evil.example"),
                ("host", "127.0.0.1:3000")
            ])
            .is_some()
        );
    }
}
