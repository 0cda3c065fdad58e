//! Micro-batching of the queries every refresh makes: row reads by user id, the save of a
//! refreshed token and the record of a microservice acknowledgement. Callers still await one
//! answer for one user; underneath, whatever queued up while the previous batch ran goes to
//! the database as one statement (reads) or one transaction (writes). At a few refreshes a
//! second a batch holds one request and nothing waits; at thousands a second one commit
//! carries hundreds of rows, which is what lets the service go past the database's
//! single-row update ceiling. Writes go through one writer so that SQLite writers never queue
//! on each other's lock (its busy handler sleeps in whole milliseconds). This module owns the
//! batch SQL; the meaning of each write stays in `users`.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    future::Future,
    sync::Arc,
};

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryFilter,
    Statement, TransactionTrait, Value,
};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::{
    ids::{TokenVersion, UserId},
    token_ids::RefreshTokenIds,
};

use super::{
    StoreError,
    cluster::Fence,
    entity::user::{self, SyncState},
};

/// Most requests one batch carries (SQLite allows 32,766 bound values per statement).
const MAX_BATCH: usize = 256;

type Job<Req, Resp> = (Req, oneshot::Sender<Resp>);

/// Queues requests and runs them in batches, at most `parallel` batches at a time.
pub(super) struct Batcher<Req, Resp> {
    tx: mpsc::UnboundedSender<Job<Req, Resp>>,
}

impl<Req, Resp> Clone for Batcher<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<Req, Resp> fmt::Debug for Batcher<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Batcher")
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Starts the batching task; it ends when the last handle is dropped. `run` answers a
    /// batch with one response per request, in order.
    pub fn spawn<F, Fut>(parallel: usize, run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Resp>> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job<Req, Resp>>();
        let run = Arc::new(run);
        let slots = Arc::new(Semaphore::new(parallel.max(1)));
        tokio::spawn(async move {
            // Waiting for a free slot before taking requests is what makes batches form:
            // while every slot is busy, requests pile up in the channel.
            while let Ok(slot) = slots.clone().acquire_owned().await {
                let Some(first) = rx.recv().await else { break };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                let run = run.clone();
                tokio::spawn(async move {
                    let (requests, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                    let responses = run(requests).await;
                    for (reply, response) in replies.into_iter().zip(responses) {
                        let _ = reply.send(response);
                    }
                    drop(slot);
                });
            }
        });
        Self { tx }
    }

    /// Queues one request and waits for its answer; `None` if the batch was lost.
    pub async fn call(&self, request: Req) -> Option<Resp> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((request, reply)).ok()?;
        answer.await.ok()
    }
}

/// The error every request of a failed batch gets (`DbErr` cannot be cloned).
pub(super) fn batch_error(e: &DbErr) -> StoreError {
    StoreError::Db(DbErr::Custom(e.to_string()))
}

/// The error of a request whose batch never answered (the store is shutting down).
pub(super) fn lost() -> StoreError {
    StoreError::Db(DbErr::Custom("batched query dropped".into()))
}

/// Reads the rows of `user_ids` in one query; one answer per id, in order.
pub(super) async fn read_rows(
    db: &DatabaseConnection,
    user_ids: Vec<UserId>,
) -> Vec<Result<Option<user::Model>, StoreError>> {
    let found = user::Entity::find()
        .filter(user::Column::UserId.is_in(user_ids.iter().cloned()))
        .all(db)
        .await;
    match found {
        Ok(rows) => {
            let by_id: HashMap<UserId, user::Model> =
                rows.into_iter().map(|r| (r.user_id.clone(), r)).collect();
            // `get`, not `remove`: the same user may be asked for twice in one batch.
            user_ids
                .iter()
                .map(|id| Ok(by_id.get(id).cloned()))
                .collect()
        }
        Err(e) => user_ids.iter().map(|_| Err(batch_error(&e))).collect(),
    }
}

/// A refresh's answer, sealed, to be saved if the row is still at `expected_version`.
pub(super) struct RefreshedRow {
    pub user_id: UserId,
    pub expected_version: TokenVersion,
    pub access: String,
    pub rotated_refresh: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub scope: Option<String>,
    /// The grant's end as Google's answer named it; `None` keeps the stored one.
    pub authorization_end: Option<DateTime<Utc>>,
    /// The identifiers of the refresh token held after this refresh; `None` keeps them.
    pub token_ids: Option<RefreshTokenIds>,
    pub now: DateTime<Utc>,
    /// The writer's lease of the user's shard (a cluster's fence); `None` on a single node.
    pub fence: Option<Fence>,
}

/// A write the batched writer knows.
pub(super) enum Write {
    Refreshed(RefreshedRow),
    /// The microservice acknowledged `version`.
    Synced {
        user_id: UserId,
        version: TokenVersion,
        now: DateTime<Utc>,
        fence: Option<Fence>,
    },
}

/// Runs a batch of writes in one transaction; each answer says whether its row was written.
pub(super) async fn write_rows(
    db: &DatabaseConnection,
    writes: Vec<Write>,
) -> Vec<Result<bool, StoreError>> {
    match try_write_rows(db, &writes).await {
        Ok(done) => done.into_iter().map(Ok).collect(),
        Err(e) => writes.iter().map(|_| Err(batch_error(&e))).collect(),
    }
}

async fn try_write_rows(db: &DatabaseConnection, writes: &[Write]) -> Result<Vec<bool>, DbErr> {
    let backend = db.get_database_backend();
    let refreshed: Vec<&RefreshedRow> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Refreshed(row) => Some(row),
            Write::Synced { .. } => None,
        })
        .collect();
    let synced: Vec<Ack> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Synced {
                user_id,
                version,
                now,
                fence,
            } => Some((user_id.as_str(), *version, *now, fence.as_ref())),
            Write::Refreshed(_) => None,
        })
        .collect();
    let mut saved: HashSet<UserId> = HashSet::new();
    if backend == DbBackend::Postgres {
        // One statement, so one round trip and one commit, and no transaction held open
        // while the client is busy (a server waiting for the client inside the batch's
        // transaction was what bounded refreshes on PostgreSQL).
        let statement = match (refreshed.is_empty(), synced.is_empty()) {
            (false, false) => combined_statement(&refreshed, &synced),
            (false, true) => save_refreshed_statement(backend, &refreshed),
            (true, false) => mark_synced_statement(backend, &synced),
            (true, true) => return Ok(Vec::new()),
        };
        for row in db.query_all_raw(statement).await? {
            saved.insert(row.try_get("", "user_id")?);
        }
        return Ok(answers(writes, &saved));
    }
    // SQLite: one transaction, so the batch costs one commit.
    let txn = db.begin().await?;
    if !refreshed.is_empty() {
        for row in txn
            .query_all_raw(save_refreshed_statement(backend, &refreshed))
            .await?
        {
            saved.insert(row.try_get("", "user_id")?);
        }
    }
    if !synced.is_empty() {
        txn.execute_raw(mark_synced_statement(backend, &synced))
            .await?;
    }
    txn.commit().await?;
    Ok(answers(writes, &saved))
}

/// One answer per write: whether a refresh was saved. Stale acknowledgements change nothing,
/// by design; there is nothing to report for them.
fn answers(writes: &[Write], saved: &HashSet<UserId>) -> Vec<bool> {
    writes
        .iter()
        .map(|w| match w {
            Write::Refreshed(row) => saved.contains(&row.user_id),
            Write::Synced { .. } => true,
        })
        .collect()
}

/// Placeholders and casts differ: PostgreSQL numbers its parameters and needs the types of
/// a VALUES list; SQLite takes `?` and would mangle a timestamp cast (NUMERIC affinity).
struct Params {
    backend: DbBackend,
    values: Vec<Value>,
}

impl Params {
    fn new(backend: DbBackend) -> Self {
        Self {
            backend,
            values: Vec::new(),
        }
    }

    fn push(&mut self, value: impl Into<Value>, pg_type: &str) -> String {
        self.values.push(value.into());
        match self.backend {
            DbBackend::Postgres => format!("CAST(${} AS {pg_type})", self.values.len()),
            _ => "?".to_string(),
        }
    }

    fn statement(self, sql: String) -> Statement {
        Statement::from_sql_and_values(self.backend, sql, self.values)
    }
}

/// The VALUES rows of refreshes to save, as `v(uid, expected, access, rotated, expiry, scope,
/// auth_end, prefix_hash, token_hash, now, epoch, owner)`.
fn refreshed_values(params: &mut Params, rows: &[&RefreshedRow]) -> String {
    let tuples: Vec<String> = rows
        .iter()
        .map(|r| {
            let fields = [
                params.push(r.user_id.clone(), "TEXT"),
                params.push(r.expected_version, "BIGINT"),
                params.push(r.access.clone(), "TEXT"),
                params.push(r.rotated_refresh.clone(), "TEXT"),
                params.push(r.expires_at, "TIMESTAMPTZ"),
                params.push(r.scope.clone(), "TEXT"),
                params.push(r.authorization_end, "TIMESTAMPTZ"),
                params.push(r.token_ids.as_ref().map(|i| i.prefix_hash.clone()), "TEXT"),
                params.push(r.token_ids.as_ref().map(|i| i.hash.clone()), "TEXT"),
                params.push(r.now, "TIMESTAMPTZ"),
                params.push(r.fence.as_ref().map(|f| f.epoch), "BIGINT"),
                params.push(owner_of(r.fence.as_ref()), "TEXT"),
            ];
            format!("({})", fields.join(", "))
        })
        .collect();
    format!(
        "v(uid, expected, access, rotated, expiry, scope, auth_end, prefix_hash, token_hash, now, \
         epoch, owner) AS (VALUES {})",
        tuples.join(", ")
    )
}

/// The conditional update of the refreshes in `v`: each row gets its new token only if its
/// version is still the one the refresh read (and, on a cluster, the writer still holds its
/// shard's lease), exactly as the single-row save did.
fn refreshed_update() -> String {
    format!(
        "UPDATE users SET \
           google_access_token = v.access, \
           google_refresh_token = COALESCE(v.rotated, users.google_refresh_token), \
           google_token_expiry = v.expiry, \
           last_refresh_at = v.now, \
           refresh_count = users.refresh_count + 1, \
           google_scope = COALESCE(v.scope, users.google_scope), \
           authorization_expires_at = COALESCE(v.auth_end, users.authorization_expires_at), \
           refresh_token_prefix_hash = COALESCE(v.prefix_hash, users.refresh_token_prefix_hash), \
           refresh_token_hash = COALESCE(v.token_hash, users.refresh_token_hash), \
           token_version = v.expected + 1, \
           sync_state = '{pending}', \
           sync_attempts = 0, \
           sync_last_error = NULL, \
           updated_at = v.now \
         FROM v \
         WHERE users.user_id = v.uid \
           AND users.token_version = v.expected \
           AND users.google_calendar_connected = TRUE \
           AND {fence} \
         RETURNING users.user_id AS user_id",
        pending = SyncState::Pending,
        fence = fenced("v"),
    )
}

/// One conditional update of many rows (see [`refreshed_update`]).
fn save_refreshed_statement(backend: DbBackend, rows: &[&RefreshedRow]) -> Statement {
    let mut params = Params::new(backend);
    let values = refreshed_values(&mut params, rows);
    params.statement(format!("WITH {values} {}", refreshed_update()))
}

/// An acknowledgement: user, version, when, and the writer's fence.
type Ack<'a> = (&'a str, TokenVersion, DateTime<Utc>, Option<&'a Fence>);

/// The owner's process token of a fence, as a bound value.
fn owner_of(fence: Option<&Fence>) -> Option<String> {
    fence.map(|f| f.owner_token.to_string())
}

/// The fence of every refresh-path write (docs/contract.md section 8): a row is written only while
/// the writer's lease (columns `epoch` and `owner` of `alias`) is still its shard's, epoch and
/// owner's process token both, checked in the same statement. The token is what tells two
/// owners apart if a database failover lost a claim and the same epoch was issued again.
/// Without an epoch (a single node) there is nothing to check.
fn fenced(alias: &str) -> String {
    format!(
        "({alias}.epoch IS NULL OR EXISTS (SELECT 1 FROM shard_leases l \
         WHERE l.shard = users.shard AND l.epoch = {alias}.epoch \
         AND l.owner_token = {alias}.owner))"
    )
}

/// The VALUES rows of acknowledgements, as `alias(uid, ver, now, epoch, owner)`.
fn acks_values(params: &mut Params, alias: &str, acks: &[Ack]) -> String {
    let tuples: Vec<String> = acks
        .iter()
        .map(|(user_id, version, now, fence)| {
            let fields = [
                params.push(user_id.to_string(), "TEXT"),
                params.push(*version, "BIGINT"),
                params.push(*now, "TIMESTAMPTZ"),
                params.push(fence.map(|f| f.epoch), "BIGINT"),
                params.push(owner_of(*fence), "TEXT"),
            ];
            format!("({})", fields.join(", "))
        })
        .collect();
    format!(
        "{alias}(uid, ver, now, epoch, owner) AS (VALUES {})",
        tuples.join(", ")
    )
}

/// The acknowledgements in `alias` that apply: the user's row is still at that version and,
/// on a cluster, the writer still holds its shard (the fence joins `users` for the shard).
fn acks_that_apply(alias: &str) -> String {
    format!(
        "SELECT {alias}.uid, {alias}.ver, {alias}.now FROM {alias} \
         JOIN users ON users.user_id = {alias}.uid \
         WHERE users.token_version = {alias}.ver AND {fence}",
        fence = fenced(alias),
    )
}

/// Records many acknowledgements in `sync_acks`, a narrow row per user, so that an
/// acknowledgement never rewrites the wide `users` row that holds the tokens (issue 24).
/// SQLite: one upsert. PostgreSQL: see [`pg_acks`].
fn mark_synced_statement(backend: DbBackend, acks: &[Ack]) -> Statement {
    let mut params = Params::new(backend);
    if backend == DbBackend::Postgres {
        let values = acks_values(&mut params, "a", acks);
        return params.statement(format!(
            "WITH {values}, {} SELECT NULL::text AS user_id WHERE FALSE",
            pg_acks("a", "")
        ));
    }
    let values = acks_values(&mut params, "v", acks);
    params.statement(format!(
        "WITH {values} INSERT INTO sync_acks (user_id, synced_version, synced_at) {} \
         ON CONFLICT (user_id) DO UPDATE SET synced_version = excluded.synced_version, \
         synced_at = excluded.synced_at",
        acks_that_apply("v")
    ))
}

/// PostgreSQL's acknowledgements of `alias` (less those `exclude` leaves out), as CTEs: a
/// plain update of the rows that exist, and an insert of those that do not yet. An upsert
/// would lock each existing row first, a WAL record of its own per acknowledgement.
fn pg_acks(alias: &str, exclude: &str) -> String {
    format!(
        "ok AS (SELECT DISTINCT ON (uid) * FROM ({} {exclude}) o), \
         up AS (UPDATE sync_acks SET synced_version = ok.ver, synced_at = ok.now FROM ok \
           WHERE sync_acks.user_id = ok.uid RETURNING sync_acks.user_id), \
         ins AS (INSERT INTO sync_acks (user_id, synced_version, synced_at) \
           SELECT uid, ver, now FROM ok WHERE uid NOT IN (SELECT user_id FROM up) \
           ON CONFLICT (user_id) DO UPDATE SET synced_version = EXCLUDED.synced_version, \
           synced_at = EXCLUDED.synced_at)",
        acks_that_apply(alias)
    )
}

/// PostgreSQL: the refreshes and the acknowledgements of one batch in one statement. An
/// acknowledgement of a user whose refresh is in the same batch is left out: run after it, as
/// before, it would name a version the row has just left, and a statement must not update one
/// row twice.
fn combined_statement(rows: &[&RefreshedRow], acks: &[Ack]) -> Statement {
    let mut params = Params::new(DbBackend::Postgres);
    let refreshed = refreshed_values(&mut params, rows);
    let acked = acks_values(&mut params, "a", acks);
    params.statement(format!(
        "WITH {refreshed}, r AS ({}), {acked}, {} SELECT user_id FROM r",
        refreshed_update(),
        pg_acks("a", "AND a.uid NOT IN (SELECT uid FROM v)"),
    ))
}
