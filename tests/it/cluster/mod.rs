//! Several `tokenwarden serve` processes on one PostgreSQL database (issue 9, docs/contract.md
//! section 8), as an operator runs them: real child processes on loopback, the in-process sandbox
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
//!
//! Layout: this file starts and stops the nodes ([`Cluster`], [`Settings`], [`Node`]);
//! `views` reads what the nodes say, `users` drives users through them, `audit` reads what
//! the database and the microservice hold, `figures` records measurements. The other files
//! are the scenarios.

mod audit;
mod figures;
mod users;
mod views;

mod app_events;
mod db_failover;
mod failover;
mod forged_notice;
mod graceful_stop;
mod node_urls;
pub mod pg_servers;
mod risc_race;
mod rogue_owner;
mod rolling_restart;
mod routing;
mod sigstop;
mod spread;
mod start_together;

use std::{
    process::ExitStatus,
    time::{Duration, Instant},
};

use base64::Engine;
use reqwest::Client;
use sea_orm::{Database, DatabaseConnection};
use tokenwarden::crypto::TokenCipher;
use tokenwarden_sandbox::{
    MicroserviceConfig, ReferenceMicroservice, SandboxGoogle, SandboxGoogleConfig, bind_loopback,
};

pub use self::{
    audit::pushed_by,
    figures::{figure, percentile},
    users::user_ids,
    views::{owner_of, wait_actor_total, within_one_of_even},
};
use crate::{
    process::{Served, free_port},
    support::{
        Backend, CLIENT_ID, CLIENT_SECRET, ENCRYPTION_KEY, TestDatabase, postgres_available,
    },
};

/// Shards of a cluster (fixed at the first migration).
pub const SHARDS: i64 = 256;
/// `CLUSTER_LEASE_TTL_SECS` of every test node.
pub const LEASE_TTL: Duration = Duration::from_secs(3);

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
    /// `APP_EVENTS_URL` of every node (events to the app are off when `None`).
    pub app_events_url: Option<String>,
    /// A database the test runs itself (real PostgreSQL servers behind a proxy) instead of
    /// a fresh one on `TEST_DATABASE_URL`; the nodes' `DATABASE_URL` and the test's own reads.
    pub database_url: Option<String>,
    /// `CLUSTER_LEASE_TTL_SECS` of every node ([`LEASE_TTL`] unless a test needs the
    /// production default).
    pub lease_ttl: Duration,
    /// The nodes reach the database through a pooler on this loopback port
    /// (`DATABASE_URL`), and directly for what needs a session (`DATABASE_SESSION_URL`).
    pub pooled_port: Option<u16>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            nodes: 3,
            token_lifetime: Duration::from_secs(3600),
            refresh_lead_secs: 300,
            rotation: false,
            app_events_url: None,
            database_url: None,
            lease_ttl: LEASE_TTL,
            pooled_port: None,
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
        let db = match &settings.database_url {
            Some(url) => TestDatabase::existing(url),
            None => TestDatabase::create(Backend::Postgres).await,
        };
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
        let mut env = vec![
            ("LISTEN_ADDR", format!("127.0.0.1:{}", node.port)),
            ("NODE_ID", node.id.clone()),
            ("NODE_ADVERTISE_URL", node.url.clone()),
            (
                "CLUSTER_LEASE_TTL_SECS",
                self.settings.lease_ttl.as_secs().to_string(),
            ),
            (
                "GOOGLE_CALENDAR_REDIRECT_URI",
                format!("{}/api/integrations/google/callback", first.url),
            ),
            ("GOOGLE_CALENDAR_MICROSERVICE_URL", microservice),
            (
                "REFRESH_LEAD_SECS",
                self.settings.refresh_lead_secs.to_string(),
            ),
        ];
        if let Some(url) = &self.settings.app_events_url {
            env.push(("APP_EVENTS_URL", url.clone()));
        }
        if self.settings.pooled_port.is_some() {
            env.push(("DATABASE_URL", self.node_database_url()));
            env.push(("DATABASE_SESSION_URL", self.db.url.clone()));
        }
        env
    }

    /// The nodes' `DATABASE_URL`: the database's, or the pooler's in front of it.
    pub fn node_database_url(&self) -> String {
        let Some(port) = self.settings.pooled_port else {
            return self.db.url.clone();
        };
        let mut url = url::Url::parse(&self.db.url).unwrap();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(port)).unwrap();
        url.to_string()
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

fn port_of(env: &[(&str, String)]) -> u16 {
    env.iter()
        .find(|(k, _)| *k == "LISTEN_ADDR")
        .and_then(|(_, v)| v.rsplit(':').next()?.parse().ok())
        .expect("LISTEN_ADDR")
}
