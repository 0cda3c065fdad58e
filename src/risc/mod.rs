//! Google's security events (Cross-Account Protection, docs/contract.md section 10): the keys they
//! are signed with (`keys`), the check of a Security Event Token (`verify`), and what each event
//! type means here ([`classify`]): which user its subject names and whether the grant ends. The
//! route that receives them and carries out the action lives in `http::risc`; the record and
//! the matching queries in `store::risc`. Must not touch: actors, HTTP serving.

pub mod keys;
pub mod verify;

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::{
    store::{RiscSubject, Store},
    token_ids::{normalize_hash, prefix_hash},
};

/// How long a valid event's record is kept.
pub const KEEP: Duration = Duration::from_secs(30 * 24 * 3600);
/// Records deleted per statement when pruning, and the pause between rounds.
const PRUNE_BATCH: u64 = 1000;
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Most batches pruned in one round (the rest wait for the next round).
const PRUNE_ROUNDS: usize = 100;

const OAUTH: &str = "https://schemas.openid.net/secevent/oauth/event-type/";
const RISC: &str = "https://schemas.openid.net/secevent/risc/event-type/";

/// What an event asks of the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The grant ends: `needs_reconnect` with `security_event`.
    EndGrant,
    /// Recorded and logged; the tokens stay.
    Record,
}

/// One event of a SET, as the service reads it.
#[derive(Debug, Clone)]
pub struct Classified {
    /// A fixed short name, for metric labels and logs.
    pub kind: &'static str,
    pub action: Action,
    /// The user the subject names, if it names one in a form the service can match.
    pub subject: Option<RiscSubject>,
    /// What the event adds (`reason` of `account-disabled`, `state` of `verification`).
    pub detail: Option<String>,
}

/// Every `kind` [`classify`] gives, for the metric's fixed label set.
pub const KINDS: [&str; 8] = [
    "tokens_revoked",
    "token_revoked",
    "account_disabled",
    "sessions_revoked",
    "account_enabled",
    "account_credential_change_required",
    "verification",
    "other",
];

/// Reads one event (`uri` and its payload) of a verified SET.
pub fn classify(uri: &str, payload: &serde_json::Value) -> Classified {
    let (kind, action) = match (uri.strip_prefix(OAUTH), uri.strip_prefix(RISC)) {
        (Some("tokens-revoked"), _) => ("tokens_revoked", Action::EndGrant),
        (Some("token-revoked"), _) => ("token_revoked", Action::EndGrant),
        (_, Some("account-disabled")) => ("account_disabled", Action::EndGrant),
        (_, Some("sessions-revoked")) => ("sessions_revoked", Action::Record),
        (_, Some("account-enabled")) => ("account_enabled", Action::Record),
        (_, Some("account-credential-change-required")) => {
            ("account_credential_change_required", Action::Record)
        }
        (_, Some("verification")) => ("verification", Action::Record),
        _ => ("other", Action::Record),
    };
    let text = |key: &str| {
        payload
            .get(key)
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    Classified {
        kind,
        action,
        subject: payload.get("subject").and_then(subject),
        detail: text("reason").or_else(|| text("state")),
    }
}

/// The subject as the store matches it: an account by its `sub`, a refresh token by one of
/// its identifiers.
fn subject(subject: &serde_json::Value) -> Option<RiscSubject> {
    let text = |key: &str| subject.get(key).and_then(|v| v.as_str());
    match text("subject_type")? {
        "iss-sub" | "iss_sub" => text("sub").map(|sub| RiscSubject::Account(sub.to_string())),
        "oauth_token" => {
            if text("token_type").is_some_and(|t| t != "refresh_token") {
                return None;
            }
            let token = text("token")?;
            match text("token_identifier_alg")? {
                "prefix" => Some(RiscSubject::TokenPrefixHash(prefix_hash(token))),
                "hash_base64_sha512_sha512" => normalize_hash(token).map(RiscSubject::TokenHash),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Deletes records older than [`KEEP`] every minute until `stop`, in small batches.
pub async fn prune(store: Store, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
        let before = Utc::now() - chrono::Duration::from_std(KEEP).unwrap_or_default();
        for _ in 0..PRUNE_ROUNDS {
            match store.prune_risc_events(before, PRUNE_BATCH).await {
                Ok(deleted) if deleted == PRUNE_BATCH => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot prune old security event records");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn each_event_type_has_its_action_and_subject() {
        let account = json!({"subject": {"subject_type": "iss-sub", "iss": "x", "sub": "42"}});
        let ended = classify(&format!("{OAUTH}tokens-revoked"), &account);
        assert_eq!(
            (ended.kind, ended.action),
            ("tokens_revoked", Action::EndGrant)
        );
        assert!(matches!(ended.subject, Some(RiscSubject::Account(ref s)) if s == "42"));
        let disabled = json!({"subject": account["subject"], "reason": "hijacking"});
        let c = classify(&format!("{RISC}account-disabled"), &disabled);
        assert_eq!(c.action, Action::EndGrant);
        assert_eq!(c.detail.as_deref(), Some("hijacking"));
        for kept in [
            "sessions-revoked",
            "account-enabled",
            "account-credential-change-required",
            "verification",
        ] {
            assert_eq!(
                classify(&format!("{RISC}{kept}"), &account).action,
                Action::Record
            );
        }
        let token = json!({"subject": {"subject_type": "oauth_token", "token_type": "refresh_token",
            "token_identifier_alg": "prefix", "token": "1//0abcdefghijklm"}});
        let c = classify(&format!("{OAUTH}token-revoked"), &token);
        assert!(
            matches!(c.subject, Some(RiscSubject::TokenPrefixHash(ref h)) if *h == prefix_hash("1//0abcdefghijklm"))
        );
        assert_eq!(
            classify("https://example.com/other", &account).kind,
            "other"
        );
        assert!(KINDS.contains(&c.kind));
    }
}
