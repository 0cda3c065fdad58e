//! Key rotation: rewrites every stored ciphertext (the `users` token columns and the PKCE
//! verifiers of pending consents) under the current key, so that old keys can then be
//! dropped from `TOKEN_ENCRYPTION_KEY`. Rows are read a page at a time and each is updated only
//! if it has not changed since it was read: `token_version` for users (a refresh that lands
//! meanwhile wins, and the row is read again), the ciphertext itself for consents.

use sea_orm::{
    ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    sea_query::{Expr, ExprTrait},
};
use secrecy::ExposeSecret;

use super::{
    Store, StoreError,
    entity::{oauth_state, user},
    states::verifier_context,
    users::{access_context, refresh_context},
};
use crate::ids::UserId;

/// Rows read per page.
const PAGE: u64 = 1000;
/// Times a user row is read again after a concurrent change, before giving up on it.
const ROW_ATTEMPTS: usize = 5;

/// What a rotation did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RotationReport {
    /// `users` rows whose tokens were rewritten under the current key.
    pub users_rewritten: u64,
    /// `users` rows with tokens that were already under the current key.
    pub users_current: u64,
    /// `oauth_states` rows whose PKCE verifier was rewritten.
    pub states_rewritten: u64,
    /// `oauth_states` rows already under the current key, or consumed meanwhile.
    pub states_current: u64,
}

/// Why a rotation stopped. Names rows and columns, never a value or a key.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error(
        "the {column} of user {user_id} does not decrypt with any key of TOKEN_ENCRYPTION_KEY \
         ({cause}); list the key that wrote it after the new one"
    )]
    UserUndecryptable {
        user_id: UserId,
        column: &'static str,
        cause: crate::crypto::CryptoError,
    },
    #[error(
        "the PKCE verifier of a pending consent does not decrypt with any key of \
         TOKEN_ENCRYPTION_KEY ({cause}); list the key that wrote it after the new one"
    )]
    StateUndecryptable { cause: crate::crypto::CryptoError },
    #[error("user {0} kept changing during the rotation; run rotate-key again")]
    Contended(UserId),
}

impl From<StoreError> for RotationError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Db(e) => Self::Db(e),
            other => Self::Db(sea_orm::DbErr::Custom(other.to_string())),
        }
    }
}

impl Store {
    /// Rewrites every stored ciphertext that is not under the current key yet.
    pub async fn rotate_keys(&self) -> Result<RotationReport, RotationError> {
        let mut report = RotationReport::default();
        self.rotate_users(&mut report).await?;
        self.rotate_states(&mut report).await?;
        Ok(report)
    }

    async fn rotate_users(&self, report: &mut RotationReport) -> Result<(), RotationError> {
        let mut after: Option<UserId> = None;
        loop {
            let mut query = user::Entity::find()
                .filter(
                    user::Column::GoogleAccessToken
                        .is_not_null()
                        .or(user::Column::GoogleRefreshToken.is_not_null()),
                )
                .order_by_asc(user::Column::UserId)
                .limit(PAGE);
            if let Some(after) = &after {
                query = query.filter(user::Column::UserId.gt(after.clone()));
            }
            let page = query.all(&self.db).await?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = Some(last.user_id.clone());
            let full = page.len() as u64 == PAGE;
            for row in page {
                if self.rotate_user(row).await? {
                    report.users_rewritten += 1;
                } else {
                    report.users_current += 1;
                }
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Rewrites one user's token columns; false if they were already current.
    async fn rotate_user(&self, mut row: user::Model) -> Result<bool, RotationError> {
        for _ in 0..ROW_ATTEMPTS {
            let access = self.reseal(
                &row.user_id,
                "google_access_token",
                row.google_access_token.as_deref(),
                &access_context(&row.user_id),
            )?;
            let refresh = self.reseal(
                &row.user_id,
                "google_refresh_token",
                row.google_refresh_token.as_deref(),
                &refresh_context(&row.user_id),
            )?;
            if access.is_none() && refresh.is_none() {
                return Ok(false);
            }
            // The version is not bumped: the tokens are the same, only their sealing changed,
            // so there is nothing new to push and a refresh that read this version may still
            // save its answer over this write.
            let mut update = user::Entity::update_many();
            if let Some(access) = access {
                update = update.col_expr(user::Column::GoogleAccessToken, Expr::value(access));
            }
            if let Some(refresh) = refresh {
                update = update.col_expr(user::Column::GoogleRefreshToken, Expr::value(refresh));
            }
            let result = update
                .filter(user::Column::UserId.eq(row.user_id.as_str()))
                .filter(user::Column::TokenVersion.eq(row.token_version))
                .exec(&self.db)
                .await?;
            if result.rows_affected == 1 {
                return Ok(true);
            }
            // A refresh, reconnect or disconnect got there first: start over from the new row.
            match self.user(&row.user_id).await? {
                Some(fresh) => row = fresh,
                None => return Ok(false),
            }
        }
        Err(RotationError::Contended(row.user_id))
    }

    /// The value sealed again under the current key, or `None` if it already is (or is unset).
    fn reseal(
        &self,
        user_id: &str,
        column: &'static str,
        stored: Option<&str>,
        context: &str,
    ) -> Result<Option<String>, RotationError> {
        let Some(stored) = stored.filter(|s| self.cipher.needs_reencrypt(s)) else {
            return Ok(None);
        };
        let plain = self.cipher.decrypt(stored, context).map_err(|cause| {
            RotationError::UserUndecryptable {
                user_id: user_id.into(),
                column,
                cause,
            }
        })?;
        Ok(Some(self.cipher.encrypt(plain.expose_secret(), context)))
    }

    async fn rotate_states(&self, report: &mut RotationReport) -> Result<(), RotationError> {
        let mut after: Option<String> = None;
        loop {
            let mut query = oauth_state::Entity::find()
                .order_by_asc(oauth_state::Column::State)
                .limit(PAGE);
            if let Some(after) = &after {
                query = query.filter(oauth_state::Column::State.gt(after.clone()));
            }
            let page = query.all(&self.db).await?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = Some(last.state.clone());
            let full = page.len() as u64 == PAGE;
            for row in page {
                if !self.cipher.needs_reencrypt(&row.pkce_verifier) {
                    report.states_current += 1;
                    continue;
                }
                let context = verifier_context(&row.state);
                let plain = self
                    .cipher
                    .decrypt(&row.pkce_verifier, &context)
                    .map_err(|cause| RotationError::StateUndecryptable { cause })?;
                let sealed = self.cipher.encrypt(plain.expose_secret(), &context);
                // Conditional on the old ciphertext: a state consumed meanwhile is gone, and
                // nothing else ever rewrites one.
                let result = oauth_state::Entity::update_many()
                    .col_expr(oauth_state::Column::PkceVerifier, Expr::value(sealed))
                    .filter(oauth_state::Column::State.eq(row.state.as_str()))
                    .filter(oauth_state::Column::PkceVerifier.eq(row.pkce_verifier.as_str()))
                    .exec(&self.db)
                    .await?;
                if result.rows_affected == 1 {
                    report.states_rewritten += 1;
                } else {
                    report.states_current += 1;
                }
            }
            if !full {
                return Ok(());
            }
        }
    }
}
