//! docs/contract.md section 5a's binding of a signed push to its request: a Standard Webhooks
//! signature covers the body only, not the URL, the method or the `Token-Version` header, so a
//! signed body names its `user_id` and `token_version` and this check refuses one that disagrees
//! with the request. Without it a push captured on the wire verifies just as well when replayed
//! against another user's URL (that user gets the victim's tokens), with a huge `Token-Version`
//! (the victim is pinned and every later real push gets `409`), or as a DELETE of anyone.
//!
//! Runs only on pushes whose signature already verified; the reasons it gives name what
//! disagrees, never a value from the body (which holds tokens).

use axum::http::{HeaderMap, Method};
use serde_json::{Map, Value};

use super::{REQUIRED_FIELDS, verify::parse_token_version};

/// The keys binding a signed body to its request; a signed DELETE's body is exactly these.
const BINDING_KEYS: [&str; 2] = ["user_id", "token_version"];

/// Checks that `body`, signed and sent with `method` to `user_id`'s URL with `headers`, names
/// that user and the `Token-Version` header, and fits its method: a DELETE's body is exactly
/// the two binding keys, a POST's carries the seed's four fields as well.
pub(super) fn check(
    method: &Method,
    user_id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), &'static str> {
    let Ok(fields) = serde_json::from_slice::<Map<String, Value>>(body) else {
        return Err("the signed body is not a JSON object naming user_id and token_version");
    };
    match fields.get("user_id") {
        None => return Err("the signed body lacks user_id"),
        Some(signed) if signed.as_str() != Some(user_id) => {
            return Err("the signed user_id is not the URL's user");
        }
        Some(_) => {}
    }
    let Some(signed) = fields.get("token_version") else {
        return Err("the signed body lacks token_version");
    };
    let Some(signed) = signed.as_i64() else {
        return Err("the signed token_version is not an integer");
    };
    match parse_token_version(headers) {
        Ok(Some(header)) if header == signed => {}
        Ok(None) => return Err("a signed push must carry Token-Version"),
        _ => return Err("the signed token_version is not the Token-Version header"),
    }
    if *method == Method::DELETE {
        if fields.len() != BINDING_KEYS.len() {
            return Err("a signed DELETE's body must be exactly user_id and token_version");
        }
    } else if REQUIRED_FIELDS.iter().any(|key| !fields.contains_key(*key)) {
        return Err(
            "a signed connect body must carry access_token, refresh_token, token_expiry and scope",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use serde_json::json;

    use super::*;

    fn version(v: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("token-version", HeaderValue::from_str(v).unwrap());
        headers
    }

    fn post(user: &str, headers: &HeaderMap, body: &Value) -> Result<(), &'static str> {
        check(
            &Method::POST,
            user,
            headers,
            &serde_json::to_vec(body).unwrap(),
        )
    }

    fn delete(user: &str, headers: &HeaderMap, body: &Value) -> Result<(), &'static str> {
        check(
            &Method::DELETE,
            user,
            headers,
            &serde_json::to_vec(body).unwrap(),
        )
    }

    fn connect_body(user: &str, version: Value) -> Value {
        json!({
            "access_token": "a", "refresh_token": "r", "token_expiry": "2025-12-13T10:30:00Z",
            "scope": "s", "user_id": user, "token_version": version,
        })
    }

    #[test]
    fn a_body_naming_the_request_fits() {
        assert_eq!(
            post("alice", &version("7"), &connect_body("alice", json!(7))),
            Ok(())
        );
        let deletion = json!({"user_id": "alice", "token_version": 8});
        assert_eq!(delete("alice", &version("8"), &deletion), Ok(()));
    }

    #[test]
    fn another_user_another_version_or_another_method_is_refused() {
        let alices = connect_body("alice", json!(7));
        let refused = [
            post("mallory", &version("7"), &alices),
            post("alice", &version("9223372036854775807"), &alices),
            post("alice", &HeaderMap::new(), &alices),
            post("alice", &version("abc"), &alices),
            post("alice", &version("7"), &connect_body("alice", json!("7"))),
            post("alice", &version("7"), &connect_body("alice", json!(7.5))),
            post("alice", &version("7"), &connect_body("alice", json!(null))),
            // The seed's body, unbound.
            post(
                "alice",
                &version("7"),
                &json!({"access_token": "a", "refresh_token": "r",
                        "token_expiry": "2025-12-13T10:30:00Z", "scope": "s"}),
            ),
            // A DELETE's body posted as a connect.
            post(
                "alice",
                &version("7"),
                &json!({"user_id": "alice", "token_version": 7}),
            ),
            // A connect's body sent as a DELETE.
            delete("alice", &version("7"), &alices),
            delete(
                "mallory",
                &version("8"),
                &json!({"user_id": "alice", "token_version": 8}),
            ),
            delete("alice", &version("8"), &json!({"user_id": "alice"})),
            check(&Method::DELETE, "alice", &version("8"), b""),
            check(&Method::POST, "alice", &version("7"), b"[1]"),
        ];
        for (i, answer) in refused.iter().enumerate() {
            assert!(answer.is_err(), "case {i} was accepted");
        }
    }

    #[test]
    fn a_connect_body_missing_a_seed_field_does_not_fit() {
        for field in REQUIRED_FIELDS {
            let mut body = connect_body("alice", json!(7));
            body.as_object_mut().unwrap().remove(field);
            assert!(post("alice", &version("7"), &body).is_err(), "{field}");
        }
    }
}
