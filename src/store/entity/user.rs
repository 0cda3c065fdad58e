//! A row of `users`: one person's Google Calendar connection and its sync state.

use sea_orm::entity::prelude::*;

use crate::ids::{Shard, TokenVersion, UserId};

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: UserId,
    /// Ciphertext (see `crypto`), never the token.
    pub google_access_token: Option<String>,
    /// Ciphertext (see `crypto`), never the token.
    pub google_refresh_token: Option<String>,
    pub google_token_expiry: Option<DateTimeUtc>,
    pub google_calendar_connected: bool,
    pub google_calendar_id: String,
    pub google_email: Option<String>,
    pub google_scope: Option<String>,
    pub needs_reconnect: bool,
    /// Why `needs_reconnect` is set; `None` while connected.
    pub reconnect_reason: Option<ReconnectReason>,
    /// When a time-limited grant ends; `None` for ongoing access.
    pub authorization_expires_at: Option<DateTimeUtc>,
    /// Whether the app was told that this grant nears its end (once per grant).
    pub authorization_warned: bool,
    /// The Google account's id (userinfo's `sub`): what account security events name.
    pub google_sub: Option<String>,
    /// SHA-256 (hex) of the current refresh token's first 16 characters.
    pub refresh_token_prefix_hash: Option<String>,
    /// Base64 (standard, no padding) of SHA-512 over the raw SHA-512 digest of the current
    /// refresh token, as Google's `hash_base64_sha512_sha512` names it.
    pub refresh_token_hash: Option<String>,
    /// Bumped by every token change; guards writes against lost updates.
    pub token_version: TokenVersion,
    /// What happened last to the current version's push, but for its acknowledgement, which
    /// lives in `sync_acks` (a narrow write; the user is in sync while that row's version
    /// equals `token_version`): so this stays `pending` after a push is acknowledged.
    pub sync_state: SyncState,
    pub sync_attempts: i32,
    pub sync_last_error: Option<String>,
    /// The `token_version` last recorded here as pushed (a skipped push, or rows from before
    /// `sync_acks`); acknowledgements are in `sync_acks`.
    pub synced_version: TokenVersion,
    pub synced_at: Option<DateTimeUtc>,
    pub last_refresh_at: Option<DateTimeUtc>,
    pub refresh_count: i64,
    /// The user's shard (`migration::shard_of`): which node's lease covers it.
    pub shard: Shard,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

/// Where the microservice's copy of a user stands, stored as the string of each variant (the
/// column is a `VARCHAR(16)` that defaults to `none`); status and admin show the same strings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum SyncState {
    /// Never changed since the row was made (the column's default).
    #[default]
    #[sea_orm(string_value = "none")]
    None,
    /// A change is waiting to be pushed (or is being pushed).
    #[sea_orm(string_value = "pending")]
    Pending,
    /// The microservice acknowledged the current version.
    #[sea_orm(string_value = "synced")]
    Synced,
    /// The last push failed; it is retried.
    #[sea_orm(string_value = "failed")]
    Failed,
    /// No microservice is configured; pushed once one is.
    #[sea_orm(string_value = "skipped")]
    Skipped,
}

impl SyncState {
    /// The stored string, as status and admin show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Pending => "pending",
            Self::Synced => "synced",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

impl std::fmt::Display for SyncState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compares with the stored string, as `http::Method` compares with `"GET"`.
impl PartialEq<&str> for SyncState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl serde::Serialize for SyncState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Why a user must reconnect (docs/contract.md section 9), stored with `needs_reconnect` as the
/// string status and admin show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(32))")]
pub enum ReconnectReason {
    /// Google answered `invalid_grant` or `admin_policy_enforced`.
    #[sea_orm(string_value = "revoked")]
    Revoked,
    /// A time-limited grant reached its end.
    #[sea_orm(string_value = "authorization_expired")]
    AuthorizationExpired,
    /// Google's Cross-Account Protection said so (docs/contract.md section 10).
    #[sea_orm(string_value = "security_event")]
    SecurityEvent,
}

impl ReconnectReason {
    pub const ALL: [Self; 3] = [
        Self::Revoked,
        Self::AuthorizationExpired,
        Self::SecurityEvent,
    ];

    /// The reason a stored or sent string names.
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == value)
    }

    /// The stored string, as status, admin and events show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::AuthorizationExpired => "authorization_expired",
            Self::SecurityEvent => "security_event",
        }
    }
}

impl serde::Serialize for ReconnectReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

#[cfg(test)]
mod tests {
    use sea_orm::{ActiveEnum, Iterable};

    use super::{ReconnectReason, SyncState};

    #[test]
    fn shown_strings_are_the_stored_ones() {
        let shown: Vec<&str> = SyncState::iter().map(SyncState::as_str).collect();
        assert_eq!(shown, ["none", "pending", "synced", "failed", "skipped"]);
        for state in SyncState::iter() {
            assert_eq!(state.to_value(), state.as_str());
            assert_eq!(
                SyncState::try_from_value(&state.as_str().to_string()),
                Ok(state)
            );
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
        let reasons: Vec<&str> = ReconnectReason::iter()
            .map(ReconnectReason::as_str)
            .collect();
        assert_eq!(
            reasons,
            ["revoked", "authorization_expired", "security_event"]
        );
        for reason in ReconnectReason::iter() {
            assert_eq!(reason.to_value(), reason.as_str());
        }
    }
}
