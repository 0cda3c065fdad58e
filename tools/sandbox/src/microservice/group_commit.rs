//! Group commit of versioned pushes. A push carrying `Token-Version` is a compare-and-write:
//! claim the version on `google_calendar_token_versions` unless the user already holds it or
//! a newer one, then write or delete the tokens. Run one push per transaction, that is four
//! or five statements, each a round trip through the database driver; under load the
//! handoffs, not the database, bound the push rate. So pushes queue here and one task applies
//! whatever queued while the previous transaction ran, in one transaction with a constant
//! number of multi-row statements. This module owns that queue and the batch SQL (valid on
//! SQLite and PostgreSQL); the tables and the unversioned writes stay in `store`. The queue
//! follows the service's `Batcher` (src/store/batch.rs) but runs one batch at a time: a
//! user's pushes must apply in arrival order.

use std::collections::{HashMap, HashSet};

use chrono::NaiveDateTime;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait, Value,
};
use tokio::sync::{mpsc, oneshot};

use super::store::Applied;

/// Most pushes one transaction carries: 256 token rows of 5 values stay far below SQLite's
/// 32,766 bound values per statement, and a batch's reply latency stays small.
const MAX_BATCH: usize = 256;

/// The tokens of a versioned upsert, owned: the push outlives the request that queued it.
pub(super) struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    pub expiry: NaiveDateTime,
    pub scope: String,
}

pub(super) enum Write {
    Upsert(Tokens),
    Delete,
}

/// One versioned push as queued.
pub(super) struct Push {
    pub user_id: String,
    pub version: i64,
    pub write: Write,
}

type Answer = Result<Applied, DbErr>;
type Job = (Push, oneshot::Sender<Answer>);

/// The queue of versioned pushes; the applying task ends when this is dropped.
pub(super) struct GroupCommit {
    tx: mpsc::UnboundedSender<Job>,
}

impl GroupCommit {
    pub(super) fn spawn(db: DatabaseConnection) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        tokio::spawn(async move {
            // Taking what queued only once the previous batch is answered is what makes
            // batches form: while a transaction runs, pushes pile up in the channel.
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                let (pushes, replies): (Vec<Push>, Vec<_>) = batch.into_iter().unzip();
                let answers = apply(&db, &pushes).await;
                for (reply, answer) in replies.into_iter().zip(answers) {
                    // The caller may be gone (its client hung up); the push stands all the same.
                    let _ = reply.send(answer);
                }
            }
        });
        Self { tx }
    }

    /// Queues one push and waits for what became of it.
    pub(super) async fn push(&self, push: Push) -> Answer {
        let (reply, answer) = oneshot::channel();
        self.tx.send((push, reply)).map_err(|_| lost())?;
        answer.await.map_err(|_| lost())?
    }
}

fn lost() -> DbErr {
    DbErr::Custom("versioned push dropped: the store is shutting down".into())
}

/// Applies a batch in one transaction; one answer per push, in order. A failed batch is
/// rolled back whole and every push of it gets the error (`DbErr` cannot be cloned).
async fn apply(db: &DatabaseConnection, pushes: &[Push]) -> Vec<Answer> {
    let mut answers: Vec<Option<Applied>> = pushes.iter().map(|_| None).collect();
    if let Err(e) = apply_in_transaction(db, pushes, &mut answers).await {
        let message = e.to_string();
        return pushes
            .iter()
            .map(|_| Err(DbErr::Custom(message.clone())))
            .collect();
    }
    answers
        .into_iter()
        .map(|a| a.ok_or_else(|| DbErr::Custom("versioned push left unanswered".into())))
        .collect()
}

async fn apply_in_transaction(
    db: &DatabaseConnection,
    pushes: &[Push],
    answers: &mut [Option<Applied>],
) -> Result<(), DbErr> {
    // On SQLite the write lock is taken at `BEGIN`, waiting its turn through the busy timeout
    // (a pooled file): a deferred transaction that read first could not upgrade while another
    // writer commits, and would fail with "database is locked" instead of waiting.
    let txn = db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        })
        .await?;
    for round in rounds(pushes) {
        if let Err(e) = apply_round(&txn, pushes, &round, answers).await {
            let _ = txn.rollback().await;
            return Err(e);
        }
    }
    txn.commit().await
}

/// Splits a batch into rounds in which each user appears at most once, a user's n-th push in
/// the n-th round, so that applying the rounds in order equals applying the pushes one by
/// one in arrival order. PostgreSQL refuses an `ON CONFLICT DO UPDATE` that touches one row
/// twice, and a second push must compare against what the first wrote. Within a round the
/// pushes are sorted by user: concurrent writers on PostgreSQL then lock rows in one order
/// and cannot deadlock.
fn rounds(pushes: &[Push]) -> Vec<Vec<usize>> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (i, push) in pushes.iter().enumerate() {
        let nth = seen.entry(push.user_id.as_str()).or_insert(0);
        if rounds.len() <= *nth {
            rounds.push(Vec::new());
        }
        rounds[*nth].push(i);
        *nth += 1;
    }
    for round in &mut rounds {
        round.sort_by(|a, b| pushes[*a].user_id.cmp(&pushes[*b].user_id));
    }
    rounds
}

/// One round: claim every version in one statement, write the claimed upserts in one, delete
/// the claimed deletes in one, and read the held versions of the refused pushes in one.
async fn apply_round(
    txn: &DatabaseTransaction,
    pushes: &[Push],
    round: &[usize],
    answers: &mut [Option<Applied>],
) -> Result<(), DbErr> {
    let backend = txn.get_database_backend();
    let claimed = claim(txn, backend, pushes, round).await?;
    let (won, refused): (Vec<usize>, Vec<usize>) = round
        .iter()
        .copied()
        .partition(|i| claimed.contains(pushes[*i].user_id.as_str()));
    let (upserts, deletes): (Vec<usize>, Vec<usize>) = won
        .into_iter()
        .partition(|i| matches!(pushes[*i].write, Write::Upsert(_)));

    upsert_tokens(txn, backend, pushes, &upserts).await?;
    for i in upserts {
        answers[i] = Some(Applied::Done);
    }

    let had_tokens = delete_tokens(txn, backend, pushes, &deletes).await?;
    for i in deletes {
        answers[i] = Some(if had_tokens.contains(&pushes[i].user_id) {
            Applied::Done
        } else {
            Applied::NothingToDelete
        });
    }

    let held = held_versions(txn, backend, pushes, &refused).await?;
    for i in refused {
        let push = &pushes[i];
        let held = *held.get(&push.user_id).ok_or_else(|| {
            DbErr::Custom(format!(
                "no version row for {} after a refusal",
                push.user_id
            ))
        })?;
        answers[i] = Some(Applied::Stale {
            pushed: push.version,
            held,
        });
    }
    Ok(())
}

/// Records each push's version unless its user already holds that version or a newer one
/// (a DELETE's version included: it is left as a tombstone); the users whose push claimed.
async fn claim(
    txn: &DatabaseTransaction,
    backend: DbBackend,
    pushes: &[Push],
    round: &[usize],
) -> Result<HashSet<String>, DbErr> {
    let sql = format!(
        "INSERT INTO google_calendar_token_versions (user_id, version, deleted, updated_at) \
         VALUES {} \
         ON CONFLICT (user_id) DO UPDATE SET version = excluded.version, \
         deleted = excluded.deleted, updated_at = CURRENT_TIMESTAMP \
         WHERE google_calendar_token_versions.version < excluded.version \
         RETURNING user_id",
        rows(round.len(), 3, ", CURRENT_TIMESTAMP"),
    );
    let values = round.iter().flat_map(|i| {
        let push = &pushes[*i];
        let deleted = matches!(push.write, Write::Delete);
        [
            Value::from(push.user_id.as_str()),
            push.version.into(),
            deleted.into(),
        ]
    });
    let statement = Statement::from_sql_and_values(backend, sql, values);
    txn.query_all_raw(statement)
        .await?
        .iter()
        .map(|row| row.try_get("", "user_id"))
        .collect()
}

async fn upsert_tokens(
    txn: &DatabaseTransaction,
    backend: DbBackend,
    pushes: &[Push],
    upserts: &[usize],
) -> Result<(), DbErr> {
    if upserts.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO google_calendar_tokens \
         (user_id, access_token, refresh_token, token_expiry, scope, created_at, updated_at) \
         VALUES {} \
         ON CONFLICT (user_id) DO UPDATE SET access_token = excluded.access_token, \
         refresh_token = excluded.refresh_token, token_expiry = excluded.token_expiry, \
         scope = excluded.scope, updated_at = CURRENT_TIMESTAMP",
        rows(upserts.len(), 5, ", CURRENT_TIMESTAMP, CURRENT_TIMESTAMP"),
    );
    let mut values = Vec::with_capacity(upserts.len() * 5);
    for i in upserts {
        let push = &pushes[*i];
        if let Write::Upsert(tokens) = &push.write {
            values.extend([
                Value::from(push.user_id.as_str()),
                tokens.access_token.as_str().into(),
                tokens.refresh_token.as_str().into(),
                tokens.expiry.into(),
                tokens.scope.as_str().into(),
            ]);
        }
    }
    txn.execute_raw(Statement::from_sql_and_values(backend, sql, values))
        .await?;
    Ok(())
}

/// Deletes the tokens of `deletes`' users; the users that had tokens.
async fn delete_tokens(
    txn: &DatabaseTransaction,
    backend: DbBackend,
    pushes: &[Push],
    deletes: &[usize],
) -> Result<HashSet<String>, DbErr> {
    if deletes.is_empty() {
        return Ok(HashSet::new());
    }
    let sql = |users: &str| {
        format!("DELETE FROM google_calendar_tokens WHERE user_id IN ({users}) RETURNING user_id")
    };
    query_users(txn, backend, sql, pushes, deletes)
        .await?
        .iter()
        .map(|row| row.try_get("", "user_id"))
        .collect()
}

/// The version each refused push's user holds (read in the same transaction, so it is the
/// version that refused it).
async fn held_versions(
    txn: &DatabaseTransaction,
    backend: DbBackend,
    pushes: &[Push],
    refused: &[usize],
) -> Result<HashMap<String, i64>, DbErr> {
    if refused.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = |users: &str| {
        format!(
            "SELECT user_id, version FROM google_calendar_token_versions WHERE user_id IN ({users})"
        )
    };
    query_users(txn, backend, sql, pushes, refused)
        .await?
        .iter()
        .map(|row| Ok((row.try_get("", "user_id")?, row.try_get("", "version")?)))
        .collect()
}

/// Runs the statement `sql` makes of a parameter list, bound to the user ids of the
/// `picked` pushes.
async fn query_users(
    txn: &DatabaseTransaction,
    backend: DbBackend,
    sql: impl FnOnce(&str) -> String,
    pushes: &[Push],
    picked: &[usize],
) -> Result<Vec<sea_orm::QueryResult>, DbErr> {
    let values = picked
        .iter()
        .map(|i| Value::from(pushes[*i].user_id.as_str()));
    let statement = Statement::from_sql_and_values(backend, sql(&params(1, picked.len())), values);
    txn.query_all_raw(statement).await
}

/// `($1, $2, $3<tail>), ($4, $5, $6<tail>), ...`: `count` rows of `columns` parameters each,
/// numbered `$n` (which SQLite accepts as well as PostgreSQL), each row ending with `tail`.
fn rows(count: usize, columns: usize, tail: &str) -> String {
    (0..count)
        .map(|row| format!("({}{tail})", params(row * columns + 1, columns)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `$first, $first+1, ...`, `count` of them.
fn params(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(user_id: &str, version: i64) -> Push {
        Push {
            user_id: user_id.to_owned(),
            version,
            write: Write::Delete,
        }
    }

    #[test]
    fn a_users_nth_push_goes_in_the_nth_round_and_rounds_are_sorted_by_user() {
        let pushes = [
            push("b", 1),
            push("a", 7),
            push("b", 3),
            push("c", 1),
            push("b", 2),
        ];
        assert_eq!(rounds(&pushes), [vec![1, 0, 3], vec![2], vec![4]]);
    }

    #[test]
    fn placeholders_are_numbered_across_rows() {
        assert_eq!(rows(2, 2, ", X"), "($1, $2, X), ($3, $4, X)");
        assert_eq!(params(3, 2), "$3, $4");
    }
}
