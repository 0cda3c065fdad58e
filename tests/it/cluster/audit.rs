//! What the database and the microservice hold, read behind the nodes' backs: user rows with
//! tokens decrypted, leases, versions, the users whose microservice copy lags or runs ahead,
//! and the end-of-test checks that nothing was lost and pushes never went back.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use base64::Engine;
use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use secrecy::ExposeSecret;

use super::Cluster;
use crate::support::eventually;

/// What the database holds for one user, tokens decrypted.
#[derive(Debug, Clone)]
pub struct DbUser {
    pub token_version: i64,
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
    pub connected: bool,
    pub needs_reconnect: bool,
    pub last_refresh_at: Option<DateTime<Utc>>,
}

impl Cluster {
    /// Every row `sql` returns, on the test's own connection.
    async fn query(&self, sql: &str) -> Vec<sea_orm::QueryResult> {
        self.sql
            .query_all_raw(Statement::from_string(DbBackend::Postgres, sql))
            .await
            .unwrap()
    }

    /// Every user row, tokens decrypted.
    pub async fn db_users(&self) -> HashMap<String, DbUser> {
        let rows = self
            .query(
                "SELECT user_id, token_version, google_access_token, google_refresh_token, \
                 google_calendar_connected, needs_reconnect, last_refresh_at FROM users",
            )
            .await;
        let open = |sealed: Option<String>, context: String| {
            sealed.map(|s| {
                self.cipher
                    .decrypt(&s, &context)
                    .expect("token decrypts")
                    .expose_secret()
                    .to_string()
            })
        };
        rows.into_iter()
            .map(|row| {
                let user: String = row.try_get("", "user_id").unwrap();
                let db_user = DbUser {
                    token_version: row.try_get("", "token_version").unwrap(),
                    access_token: open(
                        row.try_get("", "google_access_token").unwrap(),
                        format!("google_access_token:{user}"),
                    ),
                    refresh_token: open(
                        row.try_get("", "google_refresh_token").unwrap(),
                        format!("google_refresh_token:{user}"),
                    ),
                    connected: row.try_get("", "google_calendar_connected").unwrap(),
                    needs_reconnect: row.try_get("", "needs_reconnect").unwrap(),
                    last_refresh_at: row.try_get("", "last_refresh_at").unwrap(),
                };
                (user, db_user)
            })
            .collect()
    }

    /// `cluster_settings.shard_count` of every row, and the number of lease rows, as one
    /// list: `[shard_count, ..., lease rows]`.
    pub async fn shard_settings(&self) -> Vec<i64> {
        let mut out: Vec<i64> = self
            .query("SELECT shard_count::bigint AS n FROM cluster_settings")
            .await
            .into_iter()
            .map(|row| row.try_get("", "n").unwrap())
            .collect();
        let rows = self.query("SELECT count(*) AS n FROM shard_leases").await;
        out.push(rows[0].try_get("", "n").unwrap());
        out
    }

    /// Unexpired leases per owner, by the database's clock.
    pub async fn db_lease_owners(&self) -> BTreeMap<String, i64> {
        self.query(
            "SELECT owner_node, count(*) AS n FROM shard_leases \
             WHERE owner_node IS NOT NULL AND expires_at > now() GROUP BY owner_node",
        )
        .await
        .into_iter()
        .map(|row| {
            (
                row.try_get::<String>("", "owner_node").unwrap(),
                row.try_get::<i64>("", "n").unwrap(),
            )
        })
        .collect()
    }

    /// Users whose microservice copy is not the database's: another access token, or another
    /// version than the database's `token_version` (a disconnected user must have neither
    /// tokens there nor an older version).
    pub async fn lagging_users(&self, users: &[String]) -> Vec<String> {
        let db = self.db_users().await;
        let mut out = Vec::new();
        for user in users {
            let held = self.microservice.stored(user).await.unwrap();
            let version = self.microservice.token_version(user).await.unwrap();
            let row = db.get(user);
            let ok = match row {
                Some(row) if row.connected => {
                    held.map(|h| h.access_token) == row.access_token
                        && version == u64::try_from(row.token_version).ok()
                }
                Some(row) => held.is_none() && version == u64::try_from(row.token_version).ok(),
                None => held.is_none(),
            };
            if !ok {
                out.push(user.clone());
            }
        }
        out
    }

    /// Users the microservice holds a newer version of than the database: a push of tokens
    /// the database does not hold (the microservice is read first; the database's version only
    /// grows, so this is never a race).
    pub async fn pushed_ahead(&self, users: &[String]) -> Vec<String> {
        let mut held = HashMap::new();
        for user in users {
            held.insert(user, self.microservice.token_version(user).await.unwrap());
        }
        let db = self.db_users().await;
        users
            .iter()
            .filter(|u| {
                let db_version = db.get(*u).map_or(0, |r| r.token_version);
                held[u].is_some_and(|v| i64::try_from(v).unwrap_or(i64::MAX) > db_version)
            })
            .cloned()
            .collect()
    }

    /// The database's `token_version` of each user.
    pub async fn db_versions(&self) -> HashMap<String, i64> {
        self.db_users()
            .await
            .into_iter()
            .map(|(u, row)| (u, row.token_version))
            .collect()
    }

    /// Ends the refresh churn (tokens issued from now on live an hour) and waits until the
    /// microservice holds the database's version and access token for every user; returns how
    /// long that took.
    pub async fn settle(&self, users: &[String], timeout: Duration) -> Duration {
        self.google.set_token_lifetime(Duration::from_secs(3600));
        let started = Instant::now();
        let soon = || Utc::now() + chrono::Duration::minutes(10);
        let settled = eventually(timeout, || async {
            if !self.lagging_users(users).await.is_empty() {
                return false;
            }
            // No refresh due soon: every user holds an hour-long token, so the copy compared
            // is the last one.
            let db = self.db_users().await;
            users.iter().all(|u| {
                db.get(u).is_some_and(|row| {
                    !row.connected
                        || row.access_token.as_deref().is_some_and(|a| {
                            self.google
                                .access_token_expires_at(a)
                                .is_some_and(|at| at > soon())
                        })
                })
            })
        })
        .await;
        let lagging = self.lagging_users(users).await;
        assert!(
            settled,
            "the microservice never caught up with the database within {timeout:?}: {} users \
             lag (first: {:?})",
            lagging.len(),
            lagging.iter().take(10).collect::<Vec<_>>()
        );
        started.elapsed()
    }

    /// Nothing lost: every user connected, not flagged for reconnection, with a refresh
    /// token and an access token Google still honours; Google saw no duplicate refresh and no
    /// access token expire unrefreshed; the pushes the microservice accepted never went back.
    pub async fn assert_nothing_lost(&self, users: &[String]) {
        let db = self.db_users().await;
        let mut lost = Vec::new();
        for user in users {
            let usable = db.get(user).is_some_and(|row| {
                row.connected
                    && !row.needs_reconnect
                    && row
                        .refresh_token
                        .as_deref()
                        .is_some_and(|t| self.google.is_refresh_token_valid(t))
                    && row
                        .access_token
                        .as_deref()
                        .is_some_and(|t| self.google.is_access_token_valid(t))
            });
            if !usable {
                lost.push((user.clone(), db.get(user).map(|r| r.needs_reconnect)));
            }
        }
        assert!(
            lost.is_empty(),
            "{} users lost their tokens (user, needs_reconnect): {:?}",
            lost.len(),
            lost.iter().take(10).collect::<Vec<_>>()
        );
        let stats = self.google.stats();
        assert_eq!(
            stats.superseded_refresh_uses, 0,
            "duplicate refreshes: {stats:?}"
        );
        assert_eq!(stats.stale_refresh_uses, 0, "{stats:?}");
        assert_eq!(
            stats.expired_before_refresh, 0,
            "access tokens expired unrefreshed: {stats:?}"
        );
        self.assert_pushes_in_order();
    }

    /// Per user, the `Token-Version`s of the pushes the microservice accepted only go up.
    pub fn assert_pushes_in_order(&self) {
        let mut last: HashMap<String, u64> = HashMap::new();
        for request in self.microservice.received() {
            if request.status != 200 {
                continue;
            }
            let Some(version) = request
                .token_version
                .as_deref()
                .and_then(|v| v.parse().ok())
            else {
                continue;
            };
            if let Some(before) = last.insert(request.user_id.clone(), version) {
                assert!(
                    version > before,
                    "{} was pushed version {version} after {before}",
                    request.user_id
                );
            }
        }
    }
}

/// Which node pushed a request: the userinfo of its microservice URL, sent as Basic auth.
pub fn pushed_by(request: &tokenwarden_sandbox::ReceivedRequest) -> Option<String> {
    let encoded = request.authorization.as_deref()?.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(text.split(':').next()?.to_string())
}
