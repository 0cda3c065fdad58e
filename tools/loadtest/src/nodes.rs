//! The service under test: `--nodes` `tokenwarden serve` processes on one database, each with
//! its own port, node id and log, and the round-robin that spreads the tool's requests over
//! them. Per-node readings (`/metrics`, `/admin/actors`, `/proc`) are taken on every node; the
//! caller sums them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use base64::Engine;
use tokenwarden_sandbox::{ReferenceMicroservice, SandboxGoogle};

use crate::{
    CLIENT_ID, LOAD_TIMEOUT, LoadtestArgs, Progress, random_secret,
    sample::{self, Scrape},
};

/// How long the nodes get to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Log lines shown when a node exits before it is ready.
const LOG_TAIL: usize = 10;

/// One `serve` process.
pub struct Node {
    /// 1-based: `loadtest-node-<index>`, `service-<index>.log`.
    pub index: usize,
    /// Its `NODE_ID`, which its metrics and `/admin/nodes` carry.
    pub id: String,
    /// `http://127.0.0.1:<port>`, also its `NODE_ADVERTISE_URL`.
    pub url: String,
    /// Where its stdout and stderr go.
    log: PathBuf,
    /// Behind a mutex because `try_wait` needs `&mut` while readings share the set.
    child: Mutex<Child>,
}

impl Node {
    /// Its process id, for `/proc` readings.
    pub fn pid(&self) -> u32 {
        self.child.lock().expect("child").id()
    }

    /// The exit status, once it has exited.
    fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child.lock().expect("child").try_wait().ok().flatten()
    }

    /// The last lines of its log.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
    }
}

impl Drop for Node {
    /// A run that fails halfway leaves no process behind.
    fn drop(&mut self) {
        kill_if_running(self.child.get_mut().expect("child"));
    }
}

fn kill_if_running(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Hands out the nodes' URLs one after another. Cheap to clone into spawned tasks; every clone
/// shares the same turn.
#[derive(Clone)]
pub struct RoundRobin {
    urls: Arc<[String]>,
    turn: Arc<AtomicUsize>,
}

impl RoundRobin {
    /// The next node: its position and URL.
    pub fn next(&self) -> (usize, &str) {
        let i = self.turn.fetch_add(1, Ordering::Relaxed) % self.urls.len();
        (i, &self.urls[i])
    }

    /// The URL of the node after position `i`: a flow started on node `i` completes there, as
    /// behind a load balancer that sent the browser's second request elsewhere. With one node
    /// it is that node.
    pub fn after(&self, i: usize) -> &str {
        &self.urls[(i + 1) % self.urls.len()]
    }

    /// Node 1's URL, which `GOOGLE_CALENDAR_REDIRECT_URI` of every node points at.
    pub fn first(&self) -> &str {
        &self.urls[0]
    }
}

/// The running nodes.
pub struct Nodes {
    nodes: Vec<Node>,
    /// Spreads the requests that any node may answer.
    pub round_robin: RoundRobin,
    /// `ADMIN_TOKEN` of every node.
    admin_token: String,
    /// `AUTH_JWT_SECRET` of every node, to sign the simulated users' tokens.
    pub jwt_secret: String,
    http: reqwest::Client,
}

impl Nodes {
    /// Starts `--nodes` processes at once, all on `database_url` with the same settings but
    /// their node id, port and advertised URL.
    pub fn spawn(
        args: &LoadtestArgs,
        database_url: &str,
        key: &[u8; 32],
        google: &SandboxGoogle,
        microservice: &ReferenceMicroservice,
        workdir: &Path,
        app_events_url: Option<String>,
    ) -> anyhow::Result<Self> {
        // Every port is held until all are chosen, so no two nodes get the same one.
        let listeners = (0..args.nodes)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<Vec<_>, _>>()?;
        let ports = listeners
            .iter()
            .map(|l| Ok(l.local_addr()?.port()))
            .collect::<anyhow::Result<Vec<u16>>>()?;
        drop(listeners);
        let urls: Vec<String> = ports
            .iter()
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect();
        let admin_token = random_secret();
        let jwt_secret = random_secret();
        let bin = match &args.service_bin {
            Some(bin) => bin.clone(),
            None => std::env::current_exe()?.with_file_name("tokenwarden"),
        };
        let redirect_uri = format!("{}/api/integrations/google/callback", urls[0]);
        let mut nodes = Vec::with_capacity(urls.len());
        for (i, url) in urls.iter().enumerate() {
            let index = i + 1;
            let id = format!("loadtest-node-{index}");
            let log = workdir.join(format!("service-{index}.log"));
            let out = std::fs::File::create(&log)?;
            let mut command = Command::new(&bin);
            command
                .arg("serve")
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("LISTEN_ADDR", format!("127.0.0.1:{}", ports[i]))
                .env("NODE_ID", &id)
                .env("NODE_ADVERTISE_URL", url)
                .env("DATABASE_URL", database_url)
                .env("GOOGLE_CALENDAR_CLIENT_ID", CLIENT_ID)
                .env("GOOGLE_CALENDAR_CLIENT_SECRET", "unused-by-the-sandbox")
                .env("GOOGLE_CALENDAR_REDIRECT_URI", &redirect_uri)
                .env("GOOGLE_OAUTH_AUTH_URL", google.auth_url())
                .env("GOOGLE_OAUTH_TOKEN_URL", google.token_url())
                .env("GOOGLE_OAUTH_REVOKE_URL", google.revoke_url())
                .env("GOOGLE_USERINFO_URL", google.userinfo_url())
                .env("GOOGLE_CALENDAR_MICROSERVICE_URL", microservice.base_url())
                .env("REFRESH_LEAD_SECS", args.refresh_lead_secs.to_string())
                .env("REFRESH_JITTER_SECS", args.refresh_jitter_secs.to_string())
                .env("REFRESH_CONCURRENCY", args.refresh_concurrency.to_string())
                .env("SYNC_CONCURRENCY", args.sync_concurrency.to_string())
                .env(
                    "ACTOR_HIBERNATE_AFTER_SECS",
                    args.hibernate_after_secs.to_string(),
                )
                .env("FRONTEND_URL", "http://frontend.loadtest")
                .env("AUTH_JWT_SECRET", &jwt_secret)
                .env("ADMIN_TOKEN", &admin_token)
                .env(
                    "TOKEN_ENCRYPTION_KEY",
                    base64::engine::general_purpose::STANDARD.encode(key),
                )
                // Per-sync info lines at thousands a second would measure the logger, not us.
                .env("RUST_LOG", "warn")
                .stdout(Stdio::from(out.try_clone()?))
                .stderr(Stdio::from(out));
            if let Some(url) = &app_events_url {
                command.env("APP_EVENTS_URL", url);
            }
            if let Some(ttl) = args.lease_ttl_secs {
                command.env("CLUSTER_LEASE_TTL_SECS", ttl.to_string());
            }
            let child = command
                .spawn()
                .with_context(|| format!("cannot start service node {index}"))?;
            nodes.push(Node {
                index,
                id,
                url: url.clone(),
                log,
                child: Mutex::new(child),
            });
        }
        Ok(Self {
            nodes,
            round_robin: RoundRobin {
                urls: urls.into(),
                turn: Arc::new(AtomicUsize::new(0)),
            },
            admin_token,
            jwt_secret,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()?,
        })
    }

    /// The nodes, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter()
    }

    async fn get(&self, url: &str, path: &str) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .http
            .get(format!("{url}{path}"))
            .bearer_auth(&self.admin_token)
            .send()
            .await?)
    }

    /// Waits until every node's `/readyz` answers 200; fails at once, with the end of its log,
    /// if a node exits first.
    pub async fn wait_ready(&self, progress: &Progress) -> anyhow::Result<()> {
        progress.stage("service loading users", LOAD_TIMEOUT.as_secs());
        let started = Instant::now();
        let mut waiting: Vec<&Node> = self.nodes.iter().collect();
        while started.elapsed() < LOAD_TIMEOUT {
            let mut still = Vec::with_capacity(waiting.len());
            for node in waiting {
                if let Some(status) = node.exited() {
                    anyhow::bail!(
                        "service node {} exited ({status}) before it was ready:\n{}",
                        node.index,
                        node.log_tail()
                    );
                }
                if !matches!(self.get(&node.url, "/readyz").await, Ok(r) if r.status() == 200) {
                    still.push(node);
                }
            }
            if still.is_empty() {
                return Ok(());
            }
            waiting = still;
            progress.set(started.elapsed().as_secs(), None);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("the service did not become ready within {LOAD_TIMEOUT:?}")
    }

    /// One `/metrics` scrape per node, in node order.
    pub async fn scrape_each(&self) -> anyhow::Result<Vec<Scrape>> {
        let mut scrapes = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let text = async { anyhow::Ok(self.get(&node.url, "/metrics").await?.text().await?) }
                .await
                .with_context(|| format!("scraping service node {}", node.index))?;
            scrapes.push(sample::parse_metrics(&text));
        }
        Ok(scrapes)
    }

    /// Each node's live actors (`total` of its `/admin/actors`, which lists that node's own),
    /// in node order; 0 for a node that did not answer.
    pub async fn actors_each(&self) -> Vec<u64> {
        let mut totals = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let total = async {
                let body: serde_json::Value = self
                    .get(&node.url, "/admin/actors?limit=1")
                    .await?
                    .json()
                    .await?;
                anyhow::Ok(body["total"].as_u64().unwrap_or(0))
            };
            totals.push(total.await.unwrap_or(0));
        }
        totals
    }

    /// Each node's CPU time so far, in node order (`None` once it is gone).
    pub fn cpu_each(&self) -> Vec<Option<f64>> {
        self.nodes
            .iter()
            .map(|n| sample::cpu_secs(n.pid()))
            .collect()
    }

    /// Each node's RSS in KiB, in node order (0 once it is gone).
    pub fn rss_each(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| sample::rss_kib(n.pid()).unwrap_or(0))
            .collect()
    }

    /// Shards owned by node id, from `/admin/nodes` of the next node in turn; `None` when the
    /// service has no such route (a build without clustering).
    pub async fn shards(&self) -> Option<BTreeMap<String, u64>> {
        let (_, url) = self.round_robin.next();
        let answer = self.get(url, "/admin/nodes").await.ok()?;
        if !answer.status().is_success() {
            return None;
        }
        let body: serde_json::Value = answer.json().await.ok()?;
        Some(
            body["nodes"]
                .as_array()?
                .iter()
                .filter_map(|n| Some((n["node_id"].as_str()?.to_string(), n["shards"].as_u64()?)))
                .collect(),
        )
    }

    /// SIGTERM to every node at once (so none spends the end taking over the others' users),
    /// then up to 20 s for them to exit, then SIGKILL.
    pub async fn stop(&self) {
        for node in &self.nodes {
            let _ = Command::new("kill")
                .args(["-TERM", &node.pid().to_string()])
                .status();
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline && self.nodes.iter().any(|n| n.exited().is_none()) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for node in &self.nodes {
            kill_if_running(&mut node.child.lock().expect("child"));
        }
    }

    /// Prints the nodes' error lines (at most 20 per node): a load test must not hide them.
    pub fn report_errors(&self) {
        for node in &self.nodes {
            let log = std::fs::read_to_string(&node.log).unwrap_or_default();
            let source = if self.nodes.len() == 1 {
                "service".to_string()
            } else {
                format!("service-{}", node.index)
            };
            for line in log.lines().filter(|l| l.contains("ERROR")).take(20) {
                eprintln!("{source}: {line}");
            }
        }
    }
}
