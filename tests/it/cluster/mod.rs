//! Several `tokenwarden serve` processes on one PostgreSQL database (issue 9, CONTRACT section
//! 8), as an operator runs them: real child processes on loopback, the in-process sandbox
//! Google provider and reference microservice, a fresh database per test, and signals sent by
//! `kill`. [`Cluster`] starts the nodes and reads what they say (`/admin/nodes`,
//! `/admin/actors`, `/metrics`) and what the database and the microservice hold.
//!
//! Every node gets a microservice URL carrying its id as userinfo, so each push arrives with
//! `Authorization: Basic base64(<node id>:x)` (the reference microservice ignores it without a
//! bearer token): the tests can tell which node sent what.
//!
//! The tests run one at a time (`.config/nextest.toml`, group `cluster`): three nodes with
//! 3-second leases on two cores would otherwise test the machine, not the design. Each prints
//! its measurements on `cluster-figure ...` lines, also appended to
//! `target/tmp/cluster-figures.log`.

mod failover;
mod graceful_stop;
mod rolling_restart;
mod routing;
mod sigstop;
mod spread;
mod start_together;

use std::{
    collections::{BTreeMap, HashMap},
    io::Write,
    process::ExitStatus,
    time::{Duration, Instant},
};

use base64::Engine;
use chrono::{DateTime, Utc};
use futures::{StreamExt, stream};
use reqwest::{Client, StatusCode};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::Value;
use tokenwarden::crypto::TokenCipher;
use tokenwarden_sandbox::{
    MicroserviceConfig, ReferenceMicroservice, SandboxGoogle, SandboxGoogleConfig, bind_loopback,
};

use crate::{
    process::{Served, free_port},
    support::{
        ADMIN_TOKEN, Backend, CLIENT_ID, CLIENT_SECRET, ENCRYPTION_KEY, JWT_SECRET, TestDatabase,
        eventually, jwt_for, location, postgres_available,
    },
};

/// Shards of a cluster (fixed at the first migration).
pub const SHARDS: i64 = 256;
/// `CLUSTER_LEASE_TTL_SECS` of every test node.
pub const LEASE_TTL: Duration = Duration::from_secs(3);
/// Where a consent ends when it succeeded.
const CONNECTED: &str = "http://frontend.test/dashboard/integrations?google=connected";

/// Knobs of a test cluster.
#[derive(Clone, Debug)]
pub struct Settings {
    pub nodes: usize,
    /// Lifetime of every access token the sandbox issues.
    pub token_lifetime: Duration,
    /// `REFRESH_LEAD_SECS` of every node.
    pub refresh_lead_secs: u64,
    /// Refresh tokens rotate on every refresh with no grace: any second use of a refresh
    /// token (a duplicate refresh for one due time) shows in `superseded_refresh_uses` and
    /// costs the user its grant.
    pub rotation: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            nodes: 3,
            token_lifetime: Duration::from_secs(3600),
            refresh_lead_secs: 300,
            rotation: false,
        }
    }
}

/// One node: its fixed id and port (a restart keeps both), and its process while it runs.
pub struct Node {
    pub id: String,
    pub port: u16,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    served: Option<Served>,
}

/// A node as `/admin/nodes` shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct NodeInfo {
    pub node_id: String,
    pub advertise_url: String,
    pub started_at: String,
    pub last_seen: String,
    pub shards: i64,
    pub actors: i64,
}

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

/// N `serve` processes on one fresh PostgreSQL database, the sandbox Google provider and the
/// reference microservice they share.
pub struct Cluster {
    pub google: SandboxGoogle,
    pub microservice: ReferenceMicroservice,
    pub db: TestDatabase,
    pub nodes: Vec<Node>,
    /// No cookie store: each consent carries its own browser-binding cookie by hand.
    pub http: Client,
    pub settings: Settings,
    /// The test's own connection to the cluster's database.
    sql: DatabaseConnection,
    cipher: TokenCipher,
    /// Processes that exited (stopped or killed), kept for their logs.
    retired: Vec<(String, Served)>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `settings.nodes` nodes at the same moment and waits until each answers
    /// `/readyz` 200; `None` (the test is skipped, as every PostgreSQL test is) without a
    /// PostgreSQL server.
    pub async fn start(settings: Settings) -> Option<Self> {
        if !postgres_available().await {
            eprintln!("SKIPPED: the cluster tests need PostgreSQL");
            return None;
        }
        let google = SandboxGoogle::start(
            SandboxGoogleConfig {
                client_id: Some(CLIENT_ID.into()),
                client_secret: Some(CLIENT_SECRET.into()),
                token_lifetime: settings.token_lifetime,
                ..Default::default()
            },
            bind_loopback().await.unwrap(),
        )
        .await
        .unwrap();
        if settings.rotation {
            google.set_rotation(true, Duration::ZERO);
        }
        let microservice = ReferenceMicroservice::start(
            MicroserviceConfig {
                sandbox_controls: true,
                ..Default::default()
            },
            bind_loopback().await.unwrap(),
        )
        .await
        .unwrap();
        let db = TestDatabase::create(Backend::Postgres).await;
        let sql = Database::connect(db.url.as_str()).await.unwrap();
        let key: [u8; 32] = base64::engine::general_purpose::STANDARD
            .decode(ENCRYPTION_KEY)
            .unwrap()
            .try_into()
            .unwrap();
        let mut nodes = Vec::new();
        for i in 0..settings.nodes {
            let mut port = free_port().await;
            while nodes.iter().any(|n: &Node| n.port == port) {
                port = free_port().await;
            }
            nodes.push(Node {
                id: format!("node-{i}"),
                port,
                url: format!("http://127.0.0.1:{port}"),
                served: None,
            });
        }
        let mut cluster = Self {
            google,
            microservice,
            db,
            nodes,
            http: Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            settings,
            sql,
            cipher: TokenCipher::new(&key),
            retired: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        let started = Instant::now();
        let envs: Vec<_> = (0..cluster.nodes.len()).map(|i| cluster.env(i)).collect();
        let all = futures::future::join_all(envs.iter().map(|env| {
            Served::start(
                cluster.dir.path(),
                port_of(env),
                &cluster.db.url,
                ENCRYPTION_KEY,
                &cluster.google,
                &cluster.microservice,
                env,
            )
        }))
        .await;
        for (node, served) in cluster.nodes.iter_mut().zip(all) {
            node.served = Some(served);
        }
        figure(&format!(
            "start_all_ready_ms={} nodes={}",
            started.elapsed().as_millis(),
            cluster.nodes.len()
        ));
        Some(cluster)
    }

    /// The environment of node `i` on top of what [`Served::start`] sets: its identity, the
    /// short lease, the one redirect URI every node shares (node 0's), and its own userinfo in
    /// the microservice URL.
    fn env(&self, i: usize) -> Vec<(&'static str, String)> {
        let node = &self.nodes[i];
        let first = &self.nodes[0];
        let microservice =
            self.microservice
                .base_url()
                .replacen("://", &format!("://{}:x@", node.id), 1);
        vec![
            ("LISTEN_ADDR", format!("127.0.0.1:{}", node.port)),
            ("NODE_ID", node.id.clone()),
            ("NODE_ADVERTISE_URL", node.url.clone()),
            ("CLUSTER_LEASE_TTL_SECS", LEASE_TTL.as_secs().to_string()),
            (
                "GOOGLE_CALENDAR_REDIRECT_URI",
                format!("{}/api/integrations/google/callback", first.url),
            ),
            ("GOOGLE_CALENDAR_MICROSERVICE_URL", microservice),
            (
                "REFRESH_LEAD_SECS",
                self.settings.refresh_lead_secs.to_string(),
            ),
        ]
    }

    /// Starts node `i` again (same id, same port) and waits for `/readyz` 200.
    pub async fn start_node(&mut self, i: usize) {
        assert!(self.nodes[i].served.is_none(), "node {i} is running");
        let env = self.env(i);
        let served = Served::start(
            self.dir.path(),
            self.nodes[i].port,
            &self.db.url,
            ENCRYPTION_KEY,
            &self.google,
            &self.microservice,
            &env,
        )
        .await;
        self.nodes[i].served = Some(served);
    }

    /// Sends `signal` (`KILL`, `TERM`, `STOP`, `CONT`) to node `i`'s process.
    pub fn signal(&self, i: usize, signal: &str) {
        self.nodes[i]
            .served
            .as_ref()
            .expect("node running")
            .signal(signal);
    }

    /// Waits (bounded) for node `i` to exit after a signal and keeps its log.
    pub async fn wait_exit(&mut self, i: usize, timeout: Duration) -> ExitStatus {
        let mut served = self.nodes[i].served.take().expect("node running");
        let status = served.wait_exit(timeout).await;
        let id = self.nodes[i].id.clone();
        let output = served.output();
        self.retired.push((id, served));
        status.unwrap_or_else(|| panic!("node {i} did not exit within {timeout:?}:\n{output}"))
    }

    /// SIGKILL, then wait for the exit.
    pub async fn kill(&mut self, i: usize) {
        self.signal(i, "KILL");
        let status = self.wait_exit(i, Duration::from_secs(5)).await;
        assert!(!status.success());
    }

    /// SIGTERM, then wait for a clean exit (the service's grace is 10 s).
    pub async fn terminate(&mut self, i: usize) -> ExitStatus {
        self.signal(i, "TERM");
        let status = self.wait_exit(i, Duration::from_secs(15)).await;
        assert!(
            status.success(),
            "node {i} exits 0 after SIGTERM: {status:?}\n{}",
            self.retired.last().unwrap().1.output()
        );
        status
    }

    /// The ids of the nodes whose process runs.
    pub fn running_ids(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.served.is_some())
            .map(|n| n.id.clone())
            .collect()
    }

    async fn admin_get(&self, i: usize, path: &str) -> Option<(StatusCode, Value)> {
        let response = self
            .http
            .get(format!("{}{path}", self.nodes[i].url))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        let status = response.status();
        Some((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// `/admin/nodes` as node `i` answers it; `None` when it does not answer 200.
    pub async fn nodes_view(&self, i: usize) -> Option<Vec<NodeInfo>> {
        let (status, body) = self.admin_get(i, "/admin/nodes").await?;
        if status != StatusCode::OK {
            return None;
        }
        Some(serde_json::from_value(body["nodes"].clone()).expect("/admin/nodes shape"))
    }

    /// (node id, shards) per listed node, as node `i` sees them (a node id may show twice
    /// while a killed process's row has not expired yet).
    pub async fn shares(&self, i: usize) -> Option<Vec<(String, i64)>> {
        Some(
            self.nodes_view(i)
                .await?
                .into_iter()
                .map(|n| (n.node_id, n.shards))
                .collect(),
        )
    }

    /// Whether node `i` sees exactly `live` as the live nodes, owning every shard between
    /// them, each within one shard of an even share.
    pub async fn even(&self, i: usize, live: &[String]) -> bool {
        let Some(shares) = self.shares(i).await else {
            return false;
        };
        let mut listed: Vec<String> = shares.iter().map(|(id, _)| id.clone()).collect();
        listed.sort();
        listed == sorted(live)
            && shares.iter().map(|(_, s)| s).sum::<i64>() == SHARDS
            && shares
                .iter()
                .all(|(_, s)| within_one_of_even(*s, live.len()))
    }

    /// Waits until every running node sees the running nodes sharing the shards evenly;
    /// returns how long that took.
    pub async fn wait_even(&self, timeout: Duration) -> Duration {
        let started = Instant::now();
        let live = self.running_ids();
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].served.is_some())
            .collect();
        let even = eventually(timeout, || async {
            for &i in &running {
                if !self.even(i, &live).await {
                    return false;
                }
            }
            true
        })
        .await;
        if !even {
            let mut seen = Vec::new();
            for &i in &running {
                seen.push((i, self.shares(i).await));
            }
            panic!(
                "no even share among {live:?} within {timeout:?}: {seen:?}\nleases in the \
                 database: {:?}",
                self.db_lease_owners().await
            );
        }
        started.elapsed()
    }

    /// Polls node `observer`'s `/admin/nodes` every 100 ms until `gone` is not listed (or
    /// owns nothing) and the others own all 256 shards; returns how long that took, or `None`
    /// after `timeout`.
    pub async fn wait_shards_moved(
        &self,
        observer: usize,
        gone: &str,
        since: Instant,
        timeout: Duration,
    ) -> Option<Duration> {
        let deadline = since + timeout;
        loop {
            if let Some(shares) = self.shares(observer).await {
                let others: i64 = shares
                    .iter()
                    .filter(|(id, _)| id != gone)
                    .map(|(_, s)| s)
                    .sum();
                let left = shares.iter().all(|(id, s)| id != gone || *s == 0);
                if others == SHARDS && left {
                    return Some(since.elapsed());
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every actor node `i` lists (`/admin/actors`, all pages), and the `total` it reports.
    pub async fn actors(&self, i: usize) -> Option<(Vec<Value>, i64)> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..100 {
            let path = match &cursor {
                Some(c) => format!("/admin/actors?limit=1000&cursor={c}"),
                None => "/admin/actors?limit=1000".to_string(),
            };
            let (status, body) = self.admin_get(i, &path).await?;
            if status != StatusCode::OK {
                return None;
            }
            let total = body["total"].as_i64().expect("total");
            all.extend(body["actors"].as_array().cloned().unwrap_or_default());
            match body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => return Some((all, total)),
            }
        }
        panic!("/admin/actors on node {i} never ended its pages");
    }

    /// The user ids node `i` lists as its actors.
    pub async fn actor_ids(&self, i: usize) -> Vec<String> {
        self.actors(i)
            .await
            .expect("/admin/actors answers")
            .0
            .iter()
            .map(|a| a["user_id"].as_str().expect("user_id").to_string())
            .collect()
    }

    /// `GET /admin/actors/{user}` sent to node `i` (forwarded to the owner wherever it lands).
    pub async fn actor(&self, i: usize, user: &str) -> Option<(StatusCode, Value)> {
        self.admin_get(i, &format!("/admin/actors/{user}")).await
    }

    /// The sum of every sample of `name` on node `i`'s `/metrics` (all label sets), or
    /// `None` when the node does not export it.
    pub async fn metric(&self, i: usize, name: &str) -> Option<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.nodes[i].url))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        metric_sum(&text, name)
    }

    /// A full consent as `user`: connect on node `start`, the sandbox's consent, and the
    /// callback delivered to node `callback` (the shared redirect URI names node 0; the port
    /// is rewritten, as a load balancer would send it anywhere), carrying the browser-binding
    /// cookie the connect set.
    pub async fn connect(&self, user: &str, start: usize, callback: usize) -> Result<(), String> {
        let response = self
            .http
            .post(format!(
                "{}/api/integrations/google/connect",
                self.nodes[start].url
            ))
            .bearer_auth(jwt_for(user, JWT_SECRET, 600))
            .send()
            .await
            .map_err(|e| format!("{user}: connect: {e}"))?;
        if response.status() != StatusCode::OK {
            return Err(format!("{user}: connect answered {}", response.status()));
        }
        let cookies: Vec<String> = response
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_string))
            .filter(|c| c.starts_with("tw_oauth"))
            .collect();
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        let auth_url = body["auth_url"].as_str().ok_or("no auth_url")?;
        let consent = self
            .http
            .get(auth_url)
            .send()
            .await
            .map_err(|e| format!("{user}: consent: {e}"))?;
        if consent.status() != StatusCode::FOUND {
            return Err(format!("{user}: consent answered {}", consent.status()));
        }
        let mut target = url::Url::parse(&location(&consent)).map_err(|e| e.to_string())?;
        target.set_port(Some(self.nodes[callback].port)).unwrap();
        let mut request = self.http.get(target.as_str());
        if !cookies.is_empty() {
            request = request.header(reqwest::header::COOKIE, cookies.join("; "));
        }
        let answer = request
            .send()
            .await
            .map_err(|e| format!("{user}: callback: {e}"))?;
        if answer.status() != StatusCode::FOUND || location(&answer) != CONNECTED {
            return Err(format!(
                "{user}: callback on node {callback} answered {} to {:?}",
                answer.status(),
                answer.headers().get(reqwest::header::LOCATION)
            ));
        }
        Ok(())
    }

    /// Connects every user, `in_flight` at a time; user `k` starts on node `k % n` and its
    /// callback lands on node `(k + 1) % n`. Panics with every failure.
    pub async fn connect_all(&self, users: &[String], in_flight: usize) -> Duration {
        let started = Instant::now();
        let n = self.nodes.len();
        let failures: Vec<String> = stream::iter(users.iter().enumerate())
            .map(|(k, user)| async move { self.connect(user, k % n, (k + 1) % n).await })
            .buffer_unordered(in_flight)
            .filter_map(|r| async move { r.err() })
            .collect()
            .await;
        assert!(failures.is_empty(), "connects failed: {failures:?}");
        started.elapsed()
    }

    /// `DELETE /api/integrations/google` as `user`, sent to node `i`.
    pub async fn disconnect(&self, i: usize, user: &str) -> StatusCode {
        self.http
            .delete(format!("{}/api/integrations/google", self.nodes[i].url))
            .bearer_auth(jwt_for(user, JWT_SECRET, 600))
            .send()
            .await
            .unwrap()
            .status()
    }

    /// `POST /admin/actors/{user}/refresh`, sent to node `i`.
    pub async fn force_refresh(&self, i: usize, user: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}/admin/actors/{user}/refresh", self.nodes[i].url))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

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

    /// Every log line of node `id` (its current process and the ones that exited).
    pub fn node_log(&self, id: &str) -> String {
        let mut out = String::new();
        for (retired, served) in &self.retired {
            if retired == id {
                out.push_str(&served.output());
            }
        }
        if let Some(served) = self
            .nodes
            .iter()
            .find(|n| n.id == id)
            .and_then(|n| n.served.as_ref())
        {
            out.push_str(&served.output());
        }
        out
    }
}

impl Drop for Cluster {
    /// A failing test shows the end of every node's log.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for node in &self.nodes {
            let log = self.node_log(&node.id);
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(80)..].join("\n");
            eprintln!("===== last lines of {} =====\n{tail}", node.id);
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

fn port_of(env: &[(&str, String)]) -> u16 {
    env.iter()
        .find(|(k, _)| *k == "LISTEN_ADDR")
        .and_then(|(_, v)| v.rsplit(':').next()?.parse().ok())
        .expect("LISTEN_ADDR")
}

fn sorted(ids: &[String]) -> Vec<String> {
    let mut ids = ids.to_vec();
    ids.sort();
    ids
}

/// Whether `shards` is within one shard of `SHARDS / nodes`.
pub fn within_one_of_even(shards: i64, nodes: usize) -> bool {
    let nodes = nodes as i64;
    (shards * nodes - SHARDS).abs() <= nodes
}

/// The sum of the samples named exactly `name` in a Prometheus text exposition.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let series = line.split_whitespace().next().unwrap_or_default();
        let sample = series.split('{').next().unwrap_or_default();
        if sample != name {
            continue;
        }
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *found.get_or_insert(0.0) += value;
    }
    found
}

/// Prints a measurement on one `cluster-figure` line (for docs/cluster.md) and appends it to
/// `target/tmp/cluster-figures.log`.
pub fn figure(line: &str) {
    let line = format!("cluster-figure {line}");
    eprintln!("{line}");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cluster-figures.log");
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(file, "{} {line}", Utc::now().to_rfc3339());
    }
}

/// `count` user ids with `prefix`.
pub fn user_ids(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|k| format!("{prefix}-{k:03}")).collect()
}

/// Waits until every user has an actor on some node (the sum of the nodes' `total`s).
pub async fn wait_actor_total(cluster: &Cluster, expected: i64, timeout: Duration) -> bool {
    eventually(timeout, || async {
        let mut sum = 0;
        for i in 0..cluster.nodes.len() {
            if cluster.nodes[i].served.is_none() {
                continue;
            }
            match cluster.actors(i).await {
                Some((_, total)) => sum += total,
                None => return false,
            }
        }
        sum == expected
    })
    .await
}

/// The node (index) whose `/admin/actors` lists `user`, found by `GET /admin/actors/{user}`
/// on node `via` (its `node` field).
pub async fn owner_of(cluster: &Cluster, via: usize, user: &str) -> Option<usize> {
    let (status, body) = cluster.actor(via, user).await?;
    if status != StatusCode::OK {
        return None;
    }
    let node = body["node"].as_str()?;
    cluster.nodes.iter().position(|n| n.id == node)
}

/// Percentile `p` (0 to 100) of `values`, nearest rank.
pub fn percentile(values: &[u128], p: usize) -> u128 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}
