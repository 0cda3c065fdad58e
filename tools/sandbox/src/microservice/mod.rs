//! The reference microservice: the chat-agent side of SEED.md's token contract, an HTTP server
//! that stores what tokenwarden pushes in its own `google_calendar_tokens` table.
//!
//! It owns that table (SQLite or PostgreSQL through sea-orm raw SQL), the exact success and
//! error bodies of the contract, a record of every `/api` request it received (so tests can
//! check order, headers and payloads), and fault modes that make it fail, hang, flap, stall or
//! slow down on purpose. It can stop listening and come back on the same port with its data
//! intact, to stand for an outage.
//!
//! It also keeps docs/contract.md section 5a: a push carrying `Token-Version: n` is refused with
//! `409` when the user is already at `n` or newer (a DELETE's version counts, kept as a tombstone),
//! and when started with a signing secret every push must carry a valid Standard Webhooks signature
//! over a body naming the URL's user and the `Token-Version`, so a captured push cannot be
//! replayed for another user, with another version, or as a DELETE.
//!
//! Beyond the contract it has two test routes, served only when started with sandbox controls
//! (`--sandbox-controls`; tests, the demo and the load test turn them on): the fault controls
//! (`POST /sandbox/control`, unauthenticated) and `GET /api/users/{user_id}/google-calendar`,
//! which shows the stored tokens in plaintext. Without them, a copy deployed as a real
//! microservice offers nothing but the contract, and its bearer check is constant time.
//!
//! # Layout
//! - this file: configuration, the handle and what its routes share;
//! - `routes`: the router, the `/api` guard and handlers, errors;
//! - `cli`: `tokenwarden microservice`, the command line;
//! - `store`: the seed's table and the version table beside it, compare-and-write;
//! - `group_commit`: versioned pushes queued and applied many to a transaction;
//! - `verify`: the `Token-Version` header and the signature check;
//! - `binding`: a signed body bound to its request's user, version and method;
//! - `faults`: fault modes, latency and `POST /sandbox/control`.

mod binding;
mod cli;
mod faults;
mod group_commit;
mod routes;
mod store;
mod verify;

pub use cli::{MicroserviceArgs, run};
pub use faults::FaultMode;
pub use verify::TOKEN_VERSION_HEADER;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::http::{HeaderMap, header};
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::Serialize;
use tokio::{net::TcpListener, sync::watch};

use super::RunningServer;
use faults::Faults;
use routes::{ApiError, ConnectBody, REQUIRED_FIELDS, router};
use store::Store;
use verify::SigningKeys;

/// Starting configuration of a [`ReferenceMicroservice`].
#[derive(Clone)]
pub struct MicroserviceConfig {
    /// When set, every `/api` call must carry `Authorization: Bearer <this>`.
    pub bearer_token: Option<String>,
    /// When set (`whsec_<base64>`, or several comma-separated during a rotation), every push
    /// must carry a Standard Webhooks signature by one of them over its exact body, and that
    /// body must name the URL's user and the `Token-Version` (docs/contract.md section 5a).
    pub signing_secret: Option<String>,
    /// Where the table lives: `sqlite::memory:`, `sqlite://file?mode=rwc` or `postgres://...`.
    pub database_url: String,
    /// Keep every `/api` request for [`ReferenceMicroservice::received`]; load tests turn it off.
    pub record_requests: bool,
    /// Serve the test routes (fault controls, plaintext token read); off by default, so a
    /// deployed copy cannot be switched into failing or made to show tokens.
    pub sandbox_controls: bool,
}

impl Default for MicroserviceConfig {
    fn default() -> Self {
        Self {
            bearer_token: None,
            signing_secret: None,
            database_url: "sqlite::memory:".to_owned(),
            record_requests: true,
            sandbox_controls: false,
        }
    }
}

/// One `/api` request as the microservice received it.
#[derive(Clone, Debug, Serialize)]
pub struct ReceivedRequest {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Request path, without the query.
    pub path: String,
    /// The `{user_id}` of the route.
    pub user_id: String,
    /// The body, when it was JSON.
    pub body: Option<serde_json::Value>,
    /// The `Authorization` header, verbatim.
    pub authorization: Option<String>,
    /// The W3C `traceparent` header, verbatim.
    pub traceparent: Option<String>,
    /// The `Token-Version` header, verbatim.
    pub token_version: Option<String>,
    /// The `webhook-id` header, verbatim.
    pub webhook_id: Option<String>,
    /// The `webhook-timestamp` header, verbatim.
    pub webhook_timestamp: Option<String>,
    /// The `webhook-signature` header, verbatim.
    pub webhook_signature: Option<String>,
    /// The status answered.
    pub status: u16,
    /// When the request arrived (before any injected latency).
    pub received_at: DateTime<Utc>,
    /// Whether the answer was a fault-mode failure rather than the real handler's.
    pub injected_fault: bool,
}

/// What the table holds for one user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoredTokens {
    /// The access token last pushed.
    pub access_token: String,
    /// The refresh token last pushed.
    pub refresh_token: String,
    /// The expiry last pushed, RFC 3339 in UTC with a `Z`.
    pub token_expiry: String,
    /// The scope last pushed.
    pub scope: String,
    /// When the row was last written, RFC 3339 in UTC with a `Z`.
    pub updated_at: String,
}

/// Handle on a running reference microservice; clones share the same server and store.
#[derive(Clone)]
pub struct ReferenceMicroservice {
    inner: Arc<Inner>,
}

/// What the handlers and the handle share.
struct Inner {
    /// Where the server listens, kept so a restart comes back on the same port.
    addr: SocketAddr,
    /// The bearer token `/api` calls must present, if configured.
    bearer_token: Option<SecretString>,
    /// The secrets pushes must be signed with, if configured.
    signing: Option<SigningKeys>,
    /// Whether the test routes are served (see [`MicroserviceConfig::sandbox_controls`]).
    sandbox_controls: bool,
    store: Store,
    /// Fault mode and latency. A plain mutex: never held across an await.
    faults: Mutex<Faults>,
    /// Counts calls under `FlakyEveryOther`; reset when a mode is set.
    flaky_calls: AtomicU64,
    /// Counts releases of stalled calls; a stalled call goes on once it changes.
    releases: AtomicU64,
    /// Calls held by `StallThenApply` right now, so tests can wait for a push to arrive.
    stalled: AtomicUsize,
    /// The request log, when recording is on.
    received: Option<Mutex<Vec<ReceivedRequest>>>,
    /// Announces fault changes and stops, so hanging requests re-check their condition.
    changes: watch::Sender<()>,
    /// Set while a stop is in progress; releases hanging requests.
    stopping: AtomicBool,
    /// The serving task while listening. An async mutex so stop and restart run one at a time.
    server: tokio::sync::Mutex<Option<RunningServer>>,
}

impl ReferenceMicroservice {
    /// Checks the signing secrets, connects the database, creates the tables if missing and
    /// serves on `listener` in a spawned task.
    pub async fn start(config: MicroserviceConfig, listener: TcpListener) -> anyhow::Result<Self> {
        let signing = config
            .signing_secret
            .as_deref()
            .map(SigningKeys::parse)
            .transpose()?;
        let store = Store::connect(&config.database_url).await?;
        let inner = Arc::new(Inner {
            addr: listener.local_addr()?,
            bearer_token: config.bearer_token.map(SecretString::from),
            signing,
            sandbox_controls: config.sandbox_controls,
            store,
            faults: Mutex::new(Faults {
                mode: FaultMode::Healthy,
                latency: Duration::ZERO,
            }),
            flaky_calls: AtomicU64::new(0),
            releases: AtomicU64::new(0),
            stalled: AtomicUsize::new(0),
            received: config.record_requests.then(|| Mutex::new(Vec::new())),
            changes: watch::Sender::new(()),
            stopping: AtomicBool::new(false),
            server: tokio::sync::Mutex::new(None),
        });
        let server = RunningServer::spawn(listener, router(inner.clone()));
        *inner.server.lock().await = Some(server);
        Ok(Self { inner })
    }

    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// Sets how `/api` calls misbehave from now on.
    pub fn set_mode(&self, mode: FaultMode) {
        self.inner.set_mode(mode);
    }

    /// Sets the delay added before every `/api` answer.
    pub fn set_latency(&self, d: Duration) {
        lock(&self.inner.faults).latency = d;
        self.inner.changes.send_replace(());
    }

    /// Lets the calls held by [`FaultMode::StallThenApply`] go on and be applied; the mode
    /// stays, so later calls are held again.
    pub fn release_stalled(&self) {
        self.inner.release_stalled();
    }

    /// How many calls [`FaultMode::StallThenApply`] holds right now.
    pub fn stalled(&self) -> usize {
        self.inner.stalled.load(Ordering::SeqCst)
    }

    /// Every `/api` request received so far, oldest first (empty when recording is off).
    pub fn received(&self) -> Vec<ReceivedRequest> {
        self.inner
            .received
            .as_ref()
            .map(|r| lock(r).clone())
            .unwrap_or_default()
    }

    /// What the table holds for `user_id`.
    pub async fn stored(&self, user_id: &str) -> anyhow::Result<Option<StoredTokens>> {
        Ok(self.inner.store.get(user_id).await?)
    }

    /// The newest `Token-Version` accepted for `user_id` (a DELETE's included), if any.
    pub async fn token_version(&self, user_id: &str) -> anyhow::Result<Option<u64>> {
        let version = self.inner.store.version(user_id).await?;
        Ok(version.and_then(|v| u64::try_from(v).ok()))
    }

    /// How many users the table holds tokens for.
    pub async fn stored_count(&self) -> anyhow::Result<u64> {
        Ok(self.inner.store.count().await?)
    }

    /// Stores tokens for many users at once, as if each had been pushed (load-test seeding).
    pub async fn seed(&self, rows: &[(String, StoredTokens)]) -> anyhow::Result<()> {
        Ok(self.inner.store.seed(rows).await?)
    }

    /// Every stored user's access token, for end-of-run consistency checks.
    pub async fn access_tokens(&self) -> anyhow::Result<HashMap<String, String>> {
        Ok(self.inner.store.access_tokens().await?)
    }

    /// Stops listening, so connections are refused; the store is kept for [`Self::restart`].
    pub async fn stop(&self) {
        let mut server = self.inner.server.lock().await;
        self.inner.stop_server(&mut server).await;
    }

    /// Listens again on the same address and port (stopping first if still running).
    pub async fn restart(&self) -> anyhow::Result<()> {
        let mut server = self.inner.server.lock().await;
        self.inner.stop_server(&mut server).await;
        let listener = TcpListener::bind(self.inner.addr).await?;
        *server = Some(RunningServer::spawn(listener, router(self.inner.clone())));
        Ok(())
    }
}

impl Inner {
    async fn stop_server(&self, server: &mut Option<RunningServer>) {
        let Some(running) = server.take() else {
            return;
        };
        self.stopping.store(true, Ordering::SeqCst);
        self.changes.send_replace(());
        running.stop().await;
        self.stopping.store(false, Ordering::SeqCst);
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.bearer_token else {
            return true;
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Constant time, so response timing does not reveal how much of a guess was right.
        presented.is_some_and(|presented| crate::secrets_match(presented, expected))
    }

    fn record(&self, request: ReceivedRequest) {
        if let Some(received) = &self.received {
            lock(received).push(request);
        }
    }
}

/// Locks a mutex, carrying on past poisoning: the data stays usable for the tests reading it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
