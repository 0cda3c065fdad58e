//! The microservice's storage: SEED.md's `google_calendar_tokens` table, exactly as the seed
//! shows it, and beside it `google_calendar_token_versions`, the newest `Token-Version` seen
//! per user (a DELETE's included, as a tombstone), so a stale push can be refused.
//!
//! Raw SQL valid on SQLite and PostgreSQL. A versioned push compares and writes in one
//! transaction: a conditional upsert on the version row and then the token write, so pushes of
//! one user apply in version order or not at all. Versioned pushes go through
//! `group_commit`, which applies whatever queued together; unversioned ones are written here
//! directly.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDateTime, SecondsFormat};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr, Statement,
    TransactionTrait, Value,
};

use super::{
    ConnectBody, StoredTokens,
    group_commit::{GroupCommit, Push, Tokens, Write},
};

/// The table of SEED.md, created at start when missing; the DDL is valid on both backends.
const CREATE_TOKENS: &str = "CREATE TABLE IF NOT EXISTS google_calendar_tokens (
  user_id VARCHAR(50) PRIMARY KEY,
  access_token TEXT NOT NULL,
  refresh_token TEXT NOT NULL,
  token_expiry TIMESTAMP NOT NULL,
  scope TEXT NOT NULL,
  created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
  updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
)";

/// The newest version seen per user. A table of its own so the seed's table keeps exactly its
/// columns, and so a DELETE can leave its version behind (`deleted`) when the tokens go.
const CREATE_VERSIONS: &str = "CREATE TABLE IF NOT EXISTS google_calendar_token_versions (
  user_id VARCHAR(50) PRIMARY KEY,
  version BIGINT NOT NULL,
  deleted BOOLEAN NOT NULL DEFAULT FALSE,
  updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
)";

const UPSERT_TOKENS: &str = "INSERT INTO google_calendar_tokens \
    (user_id, access_token, refresh_token, token_expiry, scope, created_at, updated_at) \
    VALUES ($1, $2, $3, $4, $5, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP) \
    ON CONFLICT (user_id) DO UPDATE SET access_token = excluded.access_token, \
    refresh_token = excluded.refresh_token, token_expiry = excluded.token_expiry, \
    scope = excluded.scope, updated_at = CURRENT_TIMESTAMP";

const DELETE_TOKENS: &str = "DELETE FROM google_calendar_tokens WHERE user_id = $1";

/// What became of a push.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Applied {
    /// Written (for a DELETE: the tokens were there and are gone).
    Done,
    /// A DELETE of a user without tokens; its version, if any, is recorded all the same.
    NothingToDelete,
    /// Refused: the user is already at version `held`, which is `pushed` or newer.
    Stale { pushed: i64, held: i64 },
}

/// Both tables, behind one connection pool.
pub(super) struct Store {
    db: DatabaseConnection,
    /// The queue of versioned pushes, applied in batches on the same pool.
    pushes: GroupCommit,
    /// For an in-memory database, a connection outside the pool that keeps it alive: the pool
    /// may close and reopen its own (sqlx does, after a failed or cancelled statement), and an
    /// in-memory SQLite vanishes with its last connection.
    _keeper: Option<sea_orm::sqlx::SqliteConnection>,
}

impl Store {
    pub(super) async fn connect(url: &str) -> anyhow::Result<Self> {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        // One named in-memory database shared by every connection of this process that names
        // it (and by nothing else): the keeper and the pool's.
        let url = if in_memory {
            let name: u64 = rand::random();
            format!("sqlite:file:reference-microservice-{name:016x}?mode=memory&cache=shared")
        } else {
            url.to_owned()
        };
        let keeper = if in_memory {
            use sea_orm::sqlx::Connection as _;
            Some(sea_orm::sqlx::SqliteConnection::connect(&url).await?)
        } else {
            None
        };
        let mut options = ConnectOptions::new(url.as_str());
        options.sqlx_logging(false);
        if in_memory {
            // One connection: SQLite's shared cache locks by table, and the pushes are applied
            // one group at a time anyway.
            options.max_connections(1).min_connections(1);
        }
        let db = Database::connect(options).await?;
        db.execute_unprepared(CREATE_TOKENS).await?;
        db.execute_unprepared(CREATE_VERSIONS).await?;
        let pushes = GroupCommit::spawn(db.clone());
        Ok(Self {
            db,
            pushes,
            _keeper: keeper,
        })
    }

    /// A statement for this connection's backend; `sql` numbers its parameters `$1`, `$2`...,
    /// which SQLite accepts as well as PostgreSQL.
    fn statement(&self, sql: &str, values: impl IntoIterator<Item = Value>) -> Statement {
        Statement::from_sql_and_values(self.db.get_database_backend(), sql, values)
    }

    /// Stores the user's tokens; with a version, only if it is newer than the one held.
    pub(super) async fn upsert(
        &self,
        user_id: &str,
        body: &ConnectBody,
        version: Option<i64>,
    ) -> Result<Applied, DbErr> {
        let Some(version) = version else {
            let values = [
                user_id.into(),
                body.access_token.as_str().into(),
                body.refresh_token.as_str().into(),
                body.expiry.into(),
                body.scope.as_str().into(),
            ];
            self.db
                .execute_raw(self.statement(UPSERT_TOKENS, values))
                .await?;
            return Ok(Applied::Done);
        };
        let tokens = Tokens {
            access_token: body.access_token.clone(),
            refresh_token: body.refresh_token.clone(),
            expiry: body.expiry,
            scope: body.scope.clone(),
        };
        self.pushes
            .push(Push {
                user_id: user_id.to_owned(),
                version,
                write: Write::Upsert(tokens),
            })
            .await
    }

    /// Deletes the user's tokens; with a version, only if it is newer than the one held, and
    /// the version stays behind as a tombstone even when there were no tokens.
    pub(super) async fn delete(
        &self,
        user_id: &str,
        version: Option<i64>,
    ) -> Result<Applied, DbErr> {
        let deleted = |rows: u64| {
            if rows > 0 {
                Applied::Done
            } else {
                Applied::NothingToDelete
            }
        };
        let Some(version) = version else {
            let result = self
                .db
                .execute_raw(self.statement(DELETE_TOKENS, [user_id.into()]))
                .await?;
            return Ok(deleted(result.rows_affected()));
        };
        self.pushes
            .push(Push {
                user_id: user_id.to_owned(),
                version,
                write: Write::Delete,
            })
            .await
    }

    pub(super) async fn get(&self, user_id: &str) -> Result<Option<StoredTokens>, DbErr> {
        let sql = "SELECT access_token, refresh_token, token_expiry, scope, updated_at \
            FROM google_calendar_tokens WHERE user_id = $1";
        let Some(row) = self
            .db
            .query_one_raw(self.statement(sql, [user_id.into()]))
            .await?
        else {
            return Ok(None);
        };
        let timestamp = |col: &str| -> Result<String, DbErr> {
            let at: NaiveDateTime = row.try_get("", col)?;
            Ok(at.and_utc().to_rfc3339_opts(SecondsFormat::AutoSi, true))
        };
        Ok(Some(StoredTokens {
            access_token: row.try_get("", "access_token")?,
            refresh_token: row.try_get("", "refresh_token")?,
            token_expiry: timestamp("token_expiry")?,
            scope: row.try_get("", "scope")?,
            updated_at: timestamp("updated_at")?,
        }))
    }

    /// The newest version recorded for the user (a DELETE's included).
    pub(super) async fn version(&self, user_id: &str) -> Result<Option<i64>, DbErr> {
        let sql = "SELECT version FROM google_calendar_token_versions WHERE user_id = $1";
        self.db
            .query_one_raw(self.statement(sql, [user_id.into()]))
            .await?
            .map(|row| row.try_get("", "version"))
            .transpose()
    }

    pub(super) async fn seed(&self, rows: &[(String, StoredTokens)]) -> Result<(), DbErr> {
        let txn = self.db.begin().await?;
        for (user_id, tokens) in rows {
            let expiry = DateTime::parse_from_rfc3339(&tokens.token_expiry)
                .map(|t| t.naive_utc())
                .map_err(|e| DbErr::Custom(format!("token_expiry: {e}")))?;
            let sql = "INSERT INTO google_calendar_tokens \
                (user_id, access_token, refresh_token, token_expiry, scope, created_at, updated_at) \
                VALUES ($1, $2, $3, $4, $5, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP) \
                ON CONFLICT (user_id) DO NOTHING";
            let values = [
                user_id.as_str().into(),
                tokens.access_token.as_str().into(),
                tokens.refresh_token.as_str().into(),
                expiry.into(),
                tokens.scope.as_str().into(),
            ];
            txn.execute_raw(self.statement(sql, values)).await?;
        }
        txn.commit().await
    }

    pub(super) async fn access_tokens(&self) -> Result<HashMap<String, String>, DbErr> {
        let sql = "SELECT user_id, access_token FROM google_calendar_tokens";
        let rows = self.db.query_all_raw(self.statement(sql, [])).await?;
        rows.into_iter()
            .map(|r| Ok((r.try_get("", "user_id")?, r.try_get("", "access_token")?)))
            .collect()
    }

    pub(super) async fn count(&self) -> Result<u64, DbErr> {
        let sql = "SELECT COUNT(*) AS n FROM google_calendar_tokens";
        let row = self.db.query_one_raw(self.statement(sql, [])).await?;
        let n: i64 = row.map(|r| r.try_get("", "n")).transpose()?.unwrap_or(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
