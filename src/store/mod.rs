//! Storage: the sea-orm connection, the entities and every query the service runs. Token
//! values cross this boundary only as `SecretString`; on disk they are always ciphertext
//! (this module encrypts on write and decrypts on read). It knows nothing of HTTP, actors or
//! Google.

mod app_events;
mod batch;
#[cfg(feature = "test-util")]
mod bulk;
pub mod cluster;
mod connect;
mod console;
mod console_sessions;
pub mod entity;
mod exclusive;
mod grants;
mod key_check;
mod nodelay;
mod pooler;
mod risc;
mod rotation;
mod states;
mod sync_state;
mod users;
mod views;

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr, EntityTrait, QueryFilter,
    QuerySelect, TransactionTrait,
    sea_query::{Expr, ExprTrait},
};

use crate::{
    crypto::{CryptoError, TokenCipher},
    ids::UserId,
};

pub use app_events::{APP_EVENT_MAX_AGE, AppEvent, AppEventType, AppEvents, StoredAppEvent};
#[cfg(feature = "test-util")]
pub use bulk::{AuditRow, BulkUser};
pub use cluster::{LeaseGrant, LeaseRequest, NodeIdentity, NodeRow};
pub use console::{SyncBacklog, UserListing};
pub use entity::user::{ReconnectReason, SyncState};
pub use exclusive::{SqliteHold, hold_sqlite_file};
pub use key_check::KeyAudit;
pub use nodelay::database_sockets_without_delay;
pub use risc::RiscSubject;
pub use rotation::{RotationError, RotationReport};
pub use states::TakenState;
pub use users::{
    Expected, NewTokens, RefreshAnswer, RefreshCredentials, StoredTokens, SyncSnapshot, TokenChange,
};
pub use views::{ActorStart, ConnectionStatus, SyncInfo};

/// Connections to a SQLite database (see `Store::connect`). One: statements queue in memory
/// instead of meeting at SQLite's lock, whose busy handler sleeps in whole milliseconds, and
/// with no reader holding an older snapshot every WAL checkpoint completes, so the WAL stays
/// short. Against two connections it costs less CPU per refresh and per connect, and keeps
/// refreshes far less late at saturation (benches/HISTORY.md). The cost: a long statement (a
/// console page's table scan, a resync of every user) delays the others by its length.
const SQLITE_CONNECTIONS: u32 = 1;

/// Longest a readiness read may take before the database counts as not answering.
pub const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// What can go wrong in storage.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    #[error("stored token cannot be read: {0}")]
    Crypto(#[from] CryptoError),
    #[error("Google sent no refresh token and none is stored")]
    NoRefreshToken,
    #[error("the row kept changing under concurrent writers")]
    Contended,
    #[error("the database is held by another process ({0}); stop it first")]
    Held(String),
    /// `DATABASE_URL` loses prepared statements between transactions (see `pooler`).
    #[error("{0}")]
    Pooler(String),
}

/// Handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
    cipher: TokenCipher,
    /// Shards fixed at the first migration (docs/contract.md section 8).
    shard_count: u32,
    /// Row reads by user id, batched (see `batch`).
    reads: batch::Batcher<UserId, Result<Option<entity::user::Model>, StoreError>>,
    /// The hot writes of a refresh, batched into one transaction at a time.
    writes: batch::Batcher<batch::Write, Result<bool, StoreError>>,
    /// Whether events to the app are stored, and their deliverer's wake-up call.
    app_events: AppEvents,
}

impl Store {
    /// Connects (creating a SQLite file if needed) and applies pending migrations.
    pub async fn connect(url: &str, cipher: TokenCipher) -> Result<Self, StoreError> {
        Self::connect_with_session(url, url, cipher).await
    }

    /// [`Store::connect`] with the migration lock taken over `session_url`
    /// (`DATABASE_SESSION_URL`), which reaches PostgreSQL without a transaction pooler; the
    /// pooled `url` is checked to keep prepared statements first.
    pub async fn connect_with_session(
        url: &str,
        session_url: &str,
        cipher: TokenCipher,
    ) -> Result<Self, StoreError> {
        let mut options = ConnectOptions::new(url.to_string());
        options
            .sqlx_logging(false)
            .connect_timeout(Duration::from_secs(10))
            .acquire_timeout(Duration::from_secs(10));
        if url.starts_with("sqlite:") {
            // WAL with synchronous=NORMAL: a commit is durable across a crash of this process
            // (the WAL is in the OS's hands at once) and costs no fsync; a power loss may lose
            // the last commits. The busy timeout makes other processes' writers (the CLI's
            // rotate-key) wait for the lock instead of failing with "database is locked".
            options.max_connections(SQLITE_CONNECTIONS);
            options.map_sqlx_sqlite_opts(|o| {
                o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
            });
        } else {
            let url = url.to_string();
            options
                .max_connections(32)
                .map_sqlx_postgres_pool_opts(move |pool| nodelay::on_connect(pool, &url));
        }
        let db = Database::connect(options).await?;
        if db.get_database_backend() == sea_orm::DbBackend::Postgres {
            pooler::check_prepared_statements(&db)
                .await
                .map_err(StoreError::Pooler)?;
        }
        migrate(session_url, &db).await?;
        let shard_count = read_shard_count(&db).await?;
        Ok(Self::batched(db, cipher, shard_count))
    }

    fn batched(db: DatabaseConnection, cipher: TokenCipher, shard_count: u32) -> Self {
        // SQLite serves one reader per connection and the pool is small; PostgreSQL can take
        // two read batches at once.
        let read_parallel = match db.get_database_backend() {
            sea_orm::DbBackend::Postgres => 2,
            _ => 1,
        };
        let reader = db.clone();
        let reads = batch::Batcher::spawn(read_parallel, move |ids| {
            let db = reader.clone();
            async move { batch::read_rows(&db, ids).await }
        });
        let writer = db.clone();
        let writes = batch::Batcher::spawn(1, move |rows| {
            let db = writer.clone();
            async move { batch::write_rows(&db, rows).await }
        });
        Self {
            db,
            cipher,
            shard_count,
            reads,
            writes,
            app_events: AppEvents::default(),
        }
    }

    /// Applies pending migrations to the database at `url` and returns.
    pub async fn migrate_only(url: &str) -> Result<(), StoreError> {
        let db = Database::connect(url).await?;
        migrate(url, &db).await
    }

    /// True when the database can serve the service's work within [`PING_TIMEOUT`]: the write
    /// lock of `users` (taken by an update of no row, then rolled back) and a real read of it.
    /// `SELECT 1` would not do: SQLite answers it without touching the file, and in WAL mode
    /// reads go on while another process holds the write lock that every token save needs.
    /// The write comes first: SQLite refuses at once, without its busy wait, a transaction
    /// that read and then wants to write while a writer holds the lock, so a read first made
    /// the ping fail whenever a batch of refreshes was being saved (`/readyz` said 503 to
    /// about a third of probes under load); locking first waits its turn like any writer.
    pub async fn ping(&self) -> bool {
        let probe = async {
            let txn = self.db.begin().await?;
            entity::user::Entity::update_many()
                .col_expr(
                    entity::user::Column::UpdatedAt,
                    Expr::col(entity::user::Column::UpdatedAt),
                )
                .filter(Expr::val(1).eq(0))
                .exec(&txn)
                .await?;
            entity::user::Entity::find()
                .select_only()
                .column(entity::user::Column::UserId)
                .limit(1)
                .into_tuple::<String>()
                .one(&txn)
                .await?;
            txn.rollback().await
        };
        matches!(tokio::time::timeout(PING_TIMEOUT, probe).await, Ok(Ok(())))
    }

    /// The raw connection, for tests and tools that inspect rows.
    #[cfg(feature = "test-util")]
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }
}

/// Any constant shared by every node of one deployment: the advisory lock migrations run under.
const MIGRATION_LOCK: i64 = 0x746f_6b65_6e77;

/// Applies pending migrations. On PostgreSQL they run under a session advisory lock on one
/// dedicated connection to `session_url`, so that nodes started together on an empty database
/// migrate once and the others wait, then find nothing left to do. A session lock through a
/// transaction pooler would be taken on one server connection and left there.
async fn migrate(session_url: &str, db: &DatabaseConnection) -> Result<(), StoreError> {
    if db.get_database_backend() != sea_orm::DbBackend::Postgres {
        Migrator::up(db, None).await?;
        return Ok(());
    }
    let mut options = ConnectOptions::new(session_url.to_string());
    options
        .sqlx_logging(false)
        .max_connections(1)
        .min_connections(1);
    let one = Database::connect(options).await?;
    one.execute_unprepared(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
        .await?;
    let result = Migrator::up(&one, None).await;
    let _ = one
        .execute_unprepared(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
        .await;
    let _ = one.close().await;
    Ok(result?)
}

async fn read_shard_count(db: &DatabaseConnection) -> Result<u32, StoreError> {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT shard_count FROM cluster_settings WHERE id = 1",
        ))
        .await?;
    let count: i32 = match row {
        Some(row) => row.try_get("", "shard_count")?,
        None => migration::SHARD_COUNT as i32,
    };
    Ok(Ord::max(u32::try_from(count).unwrap_or(1), 1))
}
