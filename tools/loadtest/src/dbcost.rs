//! What a PostgreSQL run cost the database, per refresh: WAL bytes (`pg_current_wal_lsn()`),
//! WAL records and full-page images (`pg_stat_wal`), row updates, of which heap-only
//! (`pg_stat_user_tables`, this database's tables), committed transactions
//! (`pg_stat_database`, this database) and checkpoints (`pg_stat_bgwriter`), each read before
//! and after the sampled run. WAL, records, images and checkpoints are the whole server's:
//! another database's writes would count too. Row and transaction counts are this database's,
//! as PostgreSQL's statistics report them (each backend flushes its counts about once a
//! second, so a reading may miss the last second's).
//!
//! On a shared server the whole server's WAL is mostly other work: every `CREATE DATABASE` or
//! `DROP DATABASE` (a test suite makes many) forces a checkpoint, after which the next change
//! of every page logs the whole page. So, where the `pg_walinspect` extension can be created,
//! a sampler also reads the WAL records themselves every two seconds (before the segments are
//! recycled) and keeps those that touch this database's blocks: their bytes without full-page
//! images (what a refresh costs in steady state), and the full-page images' bytes apart. Commit
//! records name no block and are left out (one per batch). The sampler connects to
//! the server's `postgres` database: reading the WAL takes a while, and a snapshot held that
//! long in the run's own database would hold back the pruning of its pages, turning heap-only
//! updates into full ones. Its one
//! connection holds a temporary physical replication slot, so that a checkpoint (another
//! database's `CREATE DATABASE`) cannot remove segments not yet read; the slot goes with the
//! connection.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde::Serialize;
use tokenwarden::store::Store;

/// The counters, read at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reading {
    wal_lsn: i64,
    wal_records: i64,
    wal_fpi: i64,
    rows_updated: i64,
    rows_hot_updated: i64,
    rows_inserted: i64,
    commits: i64,
    checkpoints: i64,
}

/// The run's database figures (PostgreSQL runs only).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DatabaseCost {
    pub wal_bytes: u64,
    pub wal_records: u64,
    pub wal_full_page_images: u64,
    pub rows_updated: u64,
    pub rows_hot_updated: u64,
    pub rows_inserted: u64,
    pub transactions: u64,
    /// Checkpoints that began during the run: each makes the next write of every page log
    /// the whole page, so a run with one writes more WAL than one without.
    pub checkpoints: u64,
    pub wal_bytes_per_refresh: Option<f64>,
    pub wal_records_per_refresh: Option<f64>,
    /// `pg_walinspect`: this database's WAL records (those naming one of its blocks), their
    /// bytes without full-page images, and the images' bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub own: Option<OwnWal>,
    pub rows_updated_per_refresh: Option<f64>,
    pub transactions_per_refresh: Option<f64>,
}

const READING: &str = "SELECT \
    pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint AS wal_lsn, \
    (SELECT wal_records FROM pg_stat_wal)::bigint AS wal_records, \
    (SELECT wal_fpi FROM pg_stat_wal)::bigint AS wal_fpi, \
    (SELECT COALESCE(SUM(n_tup_upd), 0) FROM pg_stat_user_tables)::bigint AS rows_updated, \
    (SELECT COALESCE(SUM(n_tup_hot_upd), 0) FROM pg_stat_user_tables)::bigint AS rows_hot_updated, \
    (SELECT COALESCE(SUM(n_tup_ins), 0) FROM pg_stat_user_tables)::bigint AS rows_inserted, \
    (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database())::bigint AS commits, \
    (SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter)::bigint AS checkpoints";

/// Reads the counters. Statistics read inside a transaction stay as they were at its first
/// read; each reading is its own autocommit statement, so it sees the latest.
pub async fn read(store: &Store) -> anyhow::Result<Reading> {
    let row = store
        .connection()
        .query_one_raw(Statement::from_string(DbBackend::Postgres, READING))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no statistics row"))?;
    let get = |name: &str| row.try_get::<i64>("", name);
    Ok(Reading {
        wal_lsn: get("wal_lsn")?,
        wal_records: get("wal_records")?,
        wal_fpi: get("wal_fpi")?,
        rows_updated: get("rows_updated")?,
        rows_hot_updated: get("rows_hot_updated")?,
        rows_inserted: get("rows_inserted")?,
        commits: get("commits")?,
        checkpoints: get("checkpoints")?,
    })
}

impl DatabaseCost {
    /// The difference of two readings, and each per refresh.
    pub fn between(start: &Reading, end: &Reading, refreshes: f64) -> Self {
        let delta = |a: i64, b: i64| u64::try_from(b - a).unwrap_or(0);
        let per = |n: u64| (refreshes >= 1.0).then(|| n as f64 / refreshes);
        let wal_bytes = delta(start.wal_lsn, end.wal_lsn);
        let wal_records = delta(start.wal_records, end.wal_records);
        let rows_updated = delta(start.rows_updated, end.rows_updated);
        let transactions = delta(start.commits, end.commits);
        Self {
            wal_bytes,
            wal_records,
            wal_full_page_images: delta(start.wal_fpi, end.wal_fpi),
            rows_updated,
            rows_hot_updated: delta(start.rows_hot_updated, end.rows_hot_updated),
            rows_inserted: delta(start.rows_inserted, end.rows_inserted),
            transactions,
            checkpoints: delta(start.checkpoints, end.checkpoints),
            wal_bytes_per_refresh: per(wal_bytes),
            wal_records_per_refresh: per(wal_records),
            own: None,
            rows_updated_per_refresh: per(rows_updated),
            transactions_per_refresh: per(transactions),
        }
    }

    /// The report's rows.
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        let f = |v: Option<f64>, digits: usize| v.map_or("-".into(), |v| format!("{v:.digits$}"));
        vec![
            (
                "database per refresh: WAL B / WAL records (whole server)",
                format!(
                    "{} / {}  ({:.1} MiB, {} full-page images, {} checkpoints)",
                    f(self.wal_bytes_per_refresh, 0),
                    f(self.wal_records_per_refresh, 2),
                    self.wal_bytes as f64 / 1048576.0,
                    self.wal_full_page_images,
                    self.checkpoints
                ),
            ),
            (
                "this database's WAL per refresh: B w/o page images / records",
                match &self.own {
                    Some(own) => format!(
                        "{} / {}  (page images: {:.1} MiB more)",
                        f(own.bytes_per_refresh, 0),
                        f(own.records_per_refresh, 2),
                        own.fpi_bytes as f64 / 1048576.0
                    ),
                    None => "- (no pg_walinspect)".into(),
                },
            ),
            (
                "database per refresh: row updates / transactions",
                format!(
                    "{} / {}  ({} updates, {} heap-only, {} inserts, {} commits)",
                    f(self.rows_updated_per_refresh, 2),
                    f(self.transactions_per_refresh, 3),
                    self.rows_updated,
                    self.rows_hot_updated,
                    self.rows_inserted,
                    self.transactions
                ),
            ),
        ]
    }
}

/// This database's share of the WAL over the run, read record by record.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OwnWal {
    pub records: u64,
    /// Bytes of the records without their full-page images.
    pub bytes: u64,
    pub fpi_bytes: u64,
    pub records_per_refresh: Option<f64>,
    pub bytes_per_refresh: Option<f64>,
}

/// Reads this database's WAL records every two seconds while the run goes on.
pub struct WalSampler {
    totals: Arc<Mutex<OwnWal>>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// The WAL records between `$1` and the current position that name a block of database `$2`:
/// count, bytes without page images, page images' bytes, and the position read up to.
const OWN_WAL: &str = "SELECT count(r.*)::bigint AS records, \
    COALESCE(sum(record_length - fpi_length), 0)::bigint AS bytes, \
    COALESCE(sum(fpi_length), 0)::bigint AS fpi, max(e.at)::text AS upto \
    FROM (SELECT pg_current_wal_flush_lsn() AS at) e \
    LEFT JOIN pg_get_wal_records_info($1::pg_lsn, (SELECT pg_current_wal_flush_lsn())) r \
      ON r.block_ref LIKE '% rel %/' || $2::text || '/%'";

impl WalSampler {
    /// Starts sampling from now; `None` when `pg_walinspect` cannot be had.
    pub async fn start(store: &Store, url: &str) -> Option<Self> {
        let oid = store
            .connection()
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT oid::text AS oid FROM pg_database WHERE datname = current_database()",
            ))
            .await
            .ok()??
            .try_get::<String>("", "oid")
            .ok()?;
        let db = sea_orm::Database::connect(in_postgres_database(url))
            .await
            .ok()?;
        let create = "CREATE EXTENSION IF NOT EXISTS pg_walinspect";
        db.execute_unprepared(create).await.ok()?;
        let start = position(&db).await.ok()?;
        let totals = Arc::new(Mutex::new(OwnWal::default()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let into = totals.clone();
        let task = tokio::spawn(async move {
            let mut from = start;
            loop {
                let last = tokio::select! {
                    _ = &mut stopped => true,
                    () = tokio::time::sleep(Duration::from_secs(2)) => false,
                };
                if let Ok(upto) = add_since(&db, &from, &oid, &into).await {
                    from = upto;
                }
                if last {
                    break;
                }
            }
        });
        Some(Self { totals, stop, task })
    }

    /// Reads the last records and returns the totals.
    pub async fn finish(self, refreshes: f64) -> OwnWal {
        let _ = self.stop.send(());
        let _ = self.task.await;
        let mut own = self.totals.lock().expect("wal totals").clone();
        let per = |n: u64| (refreshes >= 1.0).then(|| n as f64 / refreshes);
        own.records_per_refresh = per(own.records);
        own.bytes_per_refresh = per(own.bytes);
        own
    }
}

/// `url` with its database replaced by `postgres` (query string kept).
fn in_postgres_database(url: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
    match query {
        Some(q) => format!("{server}/postgres?{q}"),
        None => format!("{server}/postgres"),
    }
}

async fn position(db: &DatabaseConnection) -> anyhow::Result<String> {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT pg_current_wal_flush_lsn()::text AS at",
        ))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no WAL position"))?;
    Ok(row.try_get("", "at")?)
}

/// Adds the records since `from` to `totals`; returns the position read up to.
async fn add_since(
    db: &DatabaseConnection,
    from: &str,
    oid: &str,
    totals: &Mutex<OwnWal>,
) -> anyhow::Result<String> {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            OWN_WAL,
            [from.into(), oid.into()],
        ))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no WAL records row"))?;
    let get = |name: &str| {
        row.try_get::<i64>("", name)
            .map(|v| u64::try_from(v).unwrap_or(0))
    };
    let mut t = totals.lock().expect("wal totals");
    t.records += get("records")?;
    t.bytes += get("bytes")?;
    t.fpi_bytes += get("fpi")?;
    Ok(row.try_get("", "upto")?)
}
