//! The end of a time-limited grant, as Google's token answers announce it (docs/contract.md section
//! 9).
//!
//! A user may grant access for a limited time ("time-based access"): the code exchange's answer
//! and the refresh answers then carry `refresh_token_expires_in` (seconds), which the IETF draft
//! on refresh token expiration names `authorization_expires_in`. Both are read, as JSON numbers
//! or strings of digits, and the earlier end wins. A malformed value is ignored rather than
//! failing the whole answer: the tokens in it are good, and the grant's end will be enforced by
//! Google anyway (the refresh then fails with `invalid_grant`).

use chrono::{DateTime, Utc};
use oauth2::ExtraTokenFields;
use serde::{Deserialize, Deserializer, Serialize};

/// The fields of a token answer beyond RFC 6749's that say when the grant ends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct GrantEndFields {
    /// Google's name, seconds from the answer.
    #[serde(default, deserialize_with = "lenient_seconds")]
    pub refresh_token_expires_in: Option<u64>,
    /// The IETF draft's name, seconds from the answer.
    #[serde(default, deserialize_with = "lenient_seconds")]
    pub authorization_expires_in: Option<u64>,
}

impl ExtraTokenFields for GrantEndFields {}

impl GrantEndFields {
    /// When the grant ends for an answer received at `now`: the earlier of the two ends,
    /// `None` when the answer names neither. An end beyond the calendar's range (a broken or
    /// hostile value of hundreds of millennia) is no end at all rather than a panic.
    pub fn ends_at(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let seconds = match (self.refresh_token_expires_in, self.authorization_expires_in) {
            (Some(a), Some(b)) => a.min(b),
            (Some(s), None) | (None, Some(s)) => s,
            (None, None) => return None,
        };
        let seconds = i64::try_from(seconds).ok()?;
        chrono::TimeDelta::try_seconds(seconds).and_then(|d| now.checked_add_signed(d))
    }
}

/// Seconds as a JSON number or a string of digits (some servers quote numbers); anything else
/// (negative, fractional, empty, not a number, too large) is treated as absent.
fn lenient_seconds<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    Ok(match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(value: serde_json::Value) -> GrantEndFields {
        serde_json::from_value(value).unwrap()
    }

    fn now() -> DateTime<Utc> {
        "2026-03-01T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn reads_numbers_and_strings_of_digits() {
        let f = fields(json!({"refresh_token_expires_in": 3600}));
        assert_eq!(f.refresh_token_expires_in, Some(3600));
        let f = fields(json!({"authorization_expires_in": "86400"}));
        assert_eq!(f.authorization_expires_in, Some(86400));
        assert_eq!(fields(json!({})), GrantEndFields::default());
    }

    #[test]
    fn malformed_values_count_as_absent() {
        for bad in [
            json!(-5),
            json!(1.5),
            json!(""),
            json!("12s"),
            json!(" 12"),
            json!("-3"),
            json!(null),
            json!(true),
            json!([1]),
            json!("99999999999999999999999"),
        ] {
            let f =
                fields(json!({"refresh_token_expires_in": bad, "authorization_expires_in": bad}));
            assert_eq!(f, GrantEndFields::default(), "{bad}");
        }
    }

    #[test]
    fn the_earlier_end_wins() {
        let f = fields(json!({"refresh_token_expires_in": 600, "authorization_expires_in": 60}));
        assert_eq!(
            f.ends_at(now()),
            Some(now() + chrono::Duration::seconds(60))
        );
        let f = fields(json!({"refresh_token_expires_in": "30", "authorization_expires_in": 60}));
        assert_eq!(
            f.ends_at(now()),
            Some(now() + chrono::Duration::seconds(30))
        );
        let f = fields(json!({"authorization_expires_in": 0}));
        assert_eq!(f.ends_at(now()), Some(now()));
        assert_eq!(GrantEndFields::default().ends_at(now()), None);
    }

    #[test]
    fn an_end_past_the_calendar_is_no_end() {
        let f = fields(json!({"refresh_token_expires_in": u64::MAX}));
        assert_eq!(f.ends_at(now()), None);
        let f = fields(json!({"refresh_token_expires_in": i64::MAX as u64 / 1000}));
        assert_eq!(f.ends_at(now()), None);
    }
}
