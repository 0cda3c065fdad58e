//! Whether the keys of `TOKEN_ENCRYPTION_KEY` open what is stored. A key dropped too early
//! (before `rotate-key` rewrote every row) would otherwise show only one user at a time, as
//! refreshes and pushes that fail and disconnects that cannot revoke.
//!
//! Start must stay fast at a million users, so start checks a sample: the first rows by user
//! id plus a few found by seeking to random ids (index seeks, not scans). When the sample
//! holds every row it is the whole check; otherwise a background task reads every row later,
//! a page at a time with pauses, and logs how many no key opens.

use std::time::Duration;

use rand::Rng;
use sea_orm::{
    ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Select, sea_query::ExprTrait,
};

use super::{
    RotationError, Store, StoreError,
    entity::user,
    users::{access_context, refresh_context},
};
use crate::{crypto::CryptoError, ids::UserId};

/// Rows checked from the start of the table.
const SAMPLE_FIRST: u64 = 100;
/// Rows found by seeking to a random user id, so a sample is not only the oldest ids.
const SAMPLE_RANDOM: usize = 5;
/// Characters of user ids (docs/api.md: User routes), from which random seek targets are drawn.
const ID_ALPHABET: &[u8] = b"-.0123456789@ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz";
/// How long the background audit waits before reading: the actors load first, from the same
/// database.
const AUDIT_DELAY: Duration = Duration::from_secs(30);
/// Pause between the audit's pages, so it stays a trickle beside refreshes (about a minute
/// for a million rows).
const AUDIT_PAUSE: Duration = Duration::from_millis(50);
/// Rows per audit page.
const AUDIT_PAGE: u64 = 1000;
/// User ids named in a log line about unreadable rows; the count says the rest.
const NAMED_USERS: usize = 5;

/// A user id and its sealed token columns (access, refresh).
type SealedRow = (UserId, Option<String>, Option<String>);

/// What a check of stored tokens found. Names users, never a value or a key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyAudit {
    /// Rows with at least one token column.
    pub checked: u64,
    /// Rows with a token column that no configured key opens.
    pub undecryptable: u64,
    /// The first few of those rows' user ids.
    pub examples: Vec<String>,
}

impl KeyAudit {
    fn add(&mut self, user_id: &str, opened: bool) {
        self.checked += 1;
        if !opened {
            self.undecryptable += 1;
            if self.examples.len() < NAMED_USERS {
                self.examples.push(user_id.to_string());
            }
        }
    }
}

impl Store {
    /// Checks at start that the configured keys open what is stored (see the module docs).
    ///
    /// Fails only when no sampled row opens: the key list is wrong as a whole and every
    /// refresh would fail. Some unreadable rows are logged as an error and the service starts
    /// anyway, because refusing would stop every user's refreshes for the sake of a few whose
    /// tokens cannot be used either way (they can still disconnect, or connect again).
    pub async fn check_keys(&self) -> Result<(), RotationError> {
        let mut rows = sealed_rows()
            .limit(SAMPLE_FIRST)
            .into_tuple::<SealedRow>()
            .all(&self.db)
            .await?;
        let whole_table = (rows.len() as u64) < SAMPLE_FIRST;
        if !whole_table {
            for _ in 0..SAMPLE_RANDOM {
                let target = random_user_id();
                let found = sealed_rows()
                    .filter(user::Column::UserId.gte(target))
                    .into_tuple::<SealedRow>()
                    .one(&self.db)
                    .await?;
                if let Some(row) = found
                    && !rows.iter().any(|r| r.0 == row.0)
                {
                    rows.push(row);
                }
            }
        }
        let mut sample = KeyAudit::default();
        let mut first_failure = None;
        for row in &rows {
            let opened = self.open_row(row);
            sample.add(&row.0, opened.is_ok());
            if let Err((column, cause)) = opened {
                first_failure.get_or_insert((row.0.clone(), column, cause));
            }
        }
        if let Some((user_id, column, cause)) = first_failure
            && sample.undecryptable == sample.checked
        {
            return Err(RotationError::UserUndecryptable {
                user_id,
                column,
                cause,
            });
        }
        if whole_table {
            log_audit(&sample);
            return Ok(());
        }
        if sample.undecryptable > 0 {
            tracing::error!(
                undecryptable = sample.undecryptable,
                sampled = sample.checked,
                users = ?sample.examples,
                "sampled stored tokens that no key of TOKEN_ENCRYPTION_KEY opens; a full count \
                 follows"
            );
        }
        let store = self.clone();
        // Not tied to the service's shutdown: it only reads, and a process that stops first
        // simply drops it.
        tokio::spawn(async move {
            tokio::time::sleep(AUDIT_DELAY).await;
            match store.audit_keys(AUDIT_PAUSE).await {
                Ok(audit) => log_audit(&audit),
                Err(e) => tracing::warn!(error = %e, "cannot finish the audit of stored tokens"),
            }
        });
        Ok(())
    }

    /// Reads every stored token, a page at a time with `pause` between pages, and counts the
    /// rows that no configured key opens.
    pub async fn audit_keys(&self, pause: Duration) -> Result<KeyAudit, StoreError> {
        let mut audit = KeyAudit::default();
        let mut after: Option<String> = None;
        loop {
            let mut query = sealed_rows().limit(AUDIT_PAGE);
            if let Some(after) = &after {
                query = query.filter(user::Column::UserId.gt(after.clone()));
            }
            let page = query.into_tuple::<SealedRow>().all(&self.db).await?;
            for row in &page {
                audit.add(&row.0, self.open_row(row).is_ok());
            }
            match page.last() {
                Some(last) if page.len() as u64 == AUDIT_PAGE => after = Some(last.0.to_string()),
                _ => return Ok(audit),
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Opens both token columns of a row; the first that fails, with why.
    fn open_row(&self, row: &SealedRow) -> Result<(), (&'static str, CryptoError)> {
        let (user_id, access, refresh) = row;
        if let Some(sealed) = access {
            self.cipher
                .decrypt(sealed, &access_context(user_id))
                .map_err(|e| ("google_access_token", e))?;
        }
        if let Some(sealed) = refresh {
            self.cipher
                .decrypt(sealed, &refresh_context(user_id))
                .map_err(|e| ("google_refresh_token", e))?;
        }
        Ok(())
    }
}

/// Rows with a token column, by user id: only the columns a check needs.
fn sealed_rows() -> Select<user::Entity> {
    user::Entity::find()
        .select_only()
        .columns([
            user::Column::UserId,
            user::Column::GoogleAccessToken,
            user::Column::GoogleRefreshToken,
        ])
        .filter(
            user::Column::GoogleAccessToken
                .is_not_null()
                .or(user::Column::GoogleRefreshToken.is_not_null()),
        )
        .order_by_asc(user::Column::UserId)
}

/// A short random id to seek from: where it lands among the real ids is random enough for a
/// sample, and the seek uses the primary key's index.
fn random_user_id() -> String {
    let mut rng = rand::thread_rng();
    (0..2)
        .map(|_| char::from(ID_ALPHABET[rng.gen_range(0..ID_ALPHABET.len())]))
        .collect()
}

fn log_audit(audit: &KeyAudit) {
    if audit.undecryptable == 0 {
        tracing::info!(
            checked = audit.checked,
            "every stored token decrypts with TOKEN_ENCRYPTION_KEY"
        );
    } else {
        tracing::error!(
            undecryptable = audit.undecryptable,
            checked = audit.checked,
            users = ?audit.examples,
            "stored tokens that no key of TOKEN_ENCRYPTION_KEY opens: these users cannot \
             refresh or sync until the key that wrote them is listed again, or they reconnect"
        );
    }
}
