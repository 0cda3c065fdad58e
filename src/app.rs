//! Wires the service together: store, Google client, sync dispatcher, supervisor, the
//! deliverer of events to the app and front door. `main` and the tests build the service the
//! same way, through [`App::spawn`] with a listener of their choosing (port 0 in tests).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::time::{Instant, timeout_at};

use anyhow::Context;
use tokio::{net::TcpListener, sync::Semaphore, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    actors::{ActorContext, Supervisor},
    cluster::Ownership,
    config::Config,
    events,
    google::GoogleClient,
    history::History,
    http::{self, AppState},
    metrics::Metrics,
    node::{Joining, Membership, Node, NodeParts, Notices},
    store::{NodeIdentity, SqliteHold, Store, hold_sqlite_file},
    sync::SyncDispatcher,
};

/// How often expired OAuth states are purged.
const STATE_PURGE_EVERY: Duration = Duration::from_secs(60);
/// Longest a graceful shutdown waits for in-flight requests, refreshes and pushes.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Beyond the microservice timeout, how long the shutdown waits for a push to be recorded.
const PUSH_RECORD_MARGIN: Duration = Duration::from_millis(500);

/// A running service.
pub struct App {
    /// Where the front door listens.
    pub addr: SocketAddr,
    pub store: Store,
    pub supervisor: Supervisor,
    pub sync: SyncDispatcher,
    pub metrics: Arc<Metrics>,
    /// Stops the front door and the housekeeping tasks.
    shutdown: CancellationToken,
    /// Stops the sync dispatcher; cancelled last, once in-flight pushes had their chance.
    stop_sync: CancellationToken,
    /// The refresh permits of the actors: all of them free means no refresh is in flight.
    refresh_permits: Arc<Semaphore>,
    refresh_concurrency: usize,
    /// How long a push in flight can still take (the microservice timeout plus a margin).
    push_drain: Duration,
    server: JoinHandle<std::io::Result<()>>,
    /// This process in its cluster (a cluster of one on SQLite).
    pub node: Node,
    /// The lease loop of a cluster node, stopped and its leases released last.
    membership: Membership,
    /// The deliverer of events to the app (when `APP_EVENTS_URL` is set); stops with the
    /// front door, and is awaited before the leases go.
    events: Option<JoinHandle<()>>,
    /// The OS lock of a SQLite file, held while serving it.
    _sqlite_hold: Option<SqliteHold>,
}

impl App {
    /// Connects to the database (migrating it), starts the actors, joins the cluster and
    /// serves on `listener`, in that order.
    pub async fn spawn(config: Config, listener: TcpListener) -> anyhow::Result<Self> {
        warn_on_plain_http(&config);
        let config = Arc::new(config);
        let (store, sqlite_hold) = open_store(&config).await?;
        let (identity, ownership) = this_node(&config, &store);
        let metrics = Arc::new(Metrics::for_node(&identity.node_id));
        let notices = Arc::new(Notices::new(&config.admin_token, &metrics));
        let history = Arc::new(History::default());
        let shutdown = CancellationToken::new();
        let stop_sync = CancellationToken::new();
        let google = GoogleClient::new(&config.google)?;
        let sync = SyncDispatcher::spawn(
            store.clone(),
            &config.microservice,
            metrics.clone(),
            history.clone(),
            ownership.clone(),
            stop_sync.clone(),
        )?;
        let refresh_permits = Arc::new(Semaphore::new(config.refresh.concurrency));
        let shared = Shared {
            config: config.clone(),
            store: store.clone(),
            ownership: ownership.clone(),
            google,
            sync: sync.clone(),
            metrics: metrics.clone(),
            history,
        };
        let ctx = Arc::new(shared.actor_context(refresh_permits.clone()));
        let supervisor = Supervisor::start(ctx).await?;
        let node = Node::new(NodeParts {
            ownership,
            identity,
            store: store.clone(),
            supervisor: supervisor.clone(),
            sync: sync.clone(),
            admin_token: config.admin_token.clone(),
            notices,
        })?;
        let membership = node
            .join(Joining {
                database_url: config.database_session_url.clone(),
                lease_ttl: config.cluster.lease_ttl,
                metrics: metrics.clone(),
                stop_listening: stop_sync.clone(),
                microservice: config.microservice.url.is_some(),
            })
            .await;
        tokio::spawn(purge_states(store.clone(), shutdown.clone()));
        tokio::spawn(crate::risc::prune(store.clone(), shutdown.clone()));
        let events = match &config.app_events {
            Some(app_events) => Some(events::spawn(
                app_events,
                store.clone(),
                node.ownership.clone(),
                metrics.clone(),
                shutdown.clone(),
            )?),
            None => None,
        };
        let state = shared.front_door(supervisor.clone(), node.clone())?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(http::serve(
            listener,
            http::router(state),
            config.http,
            shutdown.clone(),
        ));
        tracing::info!(%addr, "tokenwarden listening");
        Ok(Self {
            addr,
            store,
            supervisor,
            sync,
            metrics,
            shutdown,
            stop_sync,
            refresh_permits,
            refresh_concurrency: config.refresh.concurrency,
            push_drain: config.microservice.timeout + PUSH_RECORD_MARGIN,
            server,
            node,
            membership,
            events,
            _sqlite_hold: sqlite_hold,
        })
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Resolves when the server stops (it only stops on [`App::shutdown`] or an I/O error).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        (&mut self.server).await??;
        Ok(())
    }

    /// Graceful shutdown within [`SHUTDOWN_GRACE`]; see [`App::shutdown_within`].
    pub async fn shutdown(self) {
        self.shutdown_within(SHUTDOWN_GRACE).await;
    }

    /// Stops taking requests and lets the work in flight finish, all within `grace`:
    /// 1. the front door closes and finishes the requests it had;
    /// 2. the actors stop, so no new refresh starts;
    /// 3. refreshes in flight finish (each holds a refresh permit until its answer is saved
    ///    and its push queued);
    /// 4. pushes in flight, and those the last refreshes queued, get as long as a microservice
    ///    call can take to be delivered and recorded;
    /// 5. the deliverer of events to the app, stopped with the front door, ends its attempts
    ///    in flight;
    /// 6. a cluster node releases its shard leases (the other nodes claim them at once);
    /// 7. the sync dispatcher stops.
    ///
    /// Whatever is still unfinished then stays `pending` in the database and is pushed at the
    /// next start: a shutdown delays work, it never loses it.
    pub async fn shutdown_within(self, grace: Duration) {
        let started = Instant::now();
        let deadline = started + grace;
        self.shutdown.cancel();
        let mut server = self.server;
        if timeout_at(deadline, &mut server).await.is_err() {
            server.abort();
        }
        let _ = timeout_at(deadline, self.supervisor.stop()).await;
        let all = u32::try_from(self.refresh_concurrency).unwrap_or(u32::MAX);
        let refreshes_done = matches!(
            timeout_at(deadline, self.refresh_permits.acquire_many(all)).await,
            Ok(Ok(_))
        );
        // Any refresh still waiting for a permit now ends as "shutting down" at once.
        self.refresh_permits.close();
        let drain_until = deadline.min(Instant::now() + self.push_drain);
        let mut pushes_done = false;
        let ownership = &self.node.ownership;
        // A cluster node waits for its own users' pushes only.
        let mine = ownership.is_cluster().then(|| ownership.held_shards());
        loop {
            if matches!(self.store.unfinished_syncs(None, 1, false, mine.as_deref()).await, Ok(left) if left.is_empty())
            {
                pushes_done = true;
                break;
            }
            if Instant::now() >= drain_until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(mut events) = self.events
            && timeout_at(deadline, &mut events).await.is_err()
        {
            // Its attempts in flight are sent again at the next start (at least once).
            events.abort();
        }
        self.membership.leave(&self.node).await;
        self.stop_sync.cancel();
        tracing::info!(
            elapsedMs = started.elapsed().as_millis() as u64,
            refreshesDone = refreshes_done,
            pushesDone = pushes_done,
            "stopped; unfinished pushes resume at the next start"
        );
    }

    /// A handle that stops the front door when cancelled; [`App::shutdown`] does the rest.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// What the actors and the front door are built from.
struct Shared {
    config: Arc<Config>,
    store: Store,
    ownership: Arc<Ownership>,
    google: GoogleClient,
    sync: SyncDispatcher,
    metrics: Arc<Metrics>,
    history: Arc<History>,
}

impl Shared {
    /// What every user actor shares; refreshes in flight hold one of `permits` each.
    fn actor_context(&self, permits: Arc<Semaphore>) -> ActorContext {
        let config = &self.config;
        ActorContext {
            store: self.store.clone(),
            ownership: self.ownership.clone(),
            google: self.google.clone(),
            sync: self.sync.clone(),
            metrics: self.metrics.clone(),
            history: self.history.clone(),
            refresh: config.refresh.clone(),
            // The warning is an event to the app: nothing to warn without one.
            warning: config
                .app_events
                .is_some()
                .then_some(config.authorization_expiry_warning),
            permits,
            refreshing: Default::default(),
            backlog: Default::default(),
        }
    }

    /// What every handler of the front door reaches.
    fn front_door(self, supervisor: Supervisor, node: Node) -> anyhow::Result<AppState> {
        let risc_keys =
            crate::risc::keys::RiscKeys::new(self.config.risc.configuration_url.clone())?;
        Ok(AppState {
            config: self.config,
            store: self.store,
            google: self.google,
            supervisor,
            sync: self.sync,
            metrics: self.metrics,
            history: self.history,
            connect_limiter: Arc::new(http::RateLimiter::for_connect()),
            auth_throttle: Arc::new(http::AuthThrottle::default()),
            risc_keys: Arc::new(risc_keys),
            readiness: Default::default(),
            node,
        })
    }
}

/// Opens (and migrates) the database, holding a SQLite file against a second process, and
/// checks that the stored tokens can be read with the configured keys.
async fn open_store(config: &Config) -> anyhow::Result<(Store, Option<SqliteHold>)> {
    let sqlite_hold = hold_sqlite_file(&config.database_url)?;
    let store = Store::connect_with_session(
        &config.database_url,
        &config.database_session_url,
        config.token_cipher(),
    )
    .await
    .context("cannot open the database (DATABASE_URL)")?
    .with_app_events(config.app_events.is_some());
    store
        .check_keys()
        .await
        .context("stored tokens cannot be read")?;
    Ok((store, sqlite_hold))
}

/// This process's identity in the cluster and the shards it may act for: PostgreSQL always
/// runs as a cluster (of one, alone), holding nothing until its leases say; SQLite is a
/// single node that holds everyone.
fn this_node(config: &Config, store: &Store) -> (NodeIdentity, Arc<Ownership>) {
    let identity = NodeIdentity {
        node_id: config.cluster.node_id.clone(),
        process_token: hex::encode(rand::random::<[u8; 16]>()),
        advertise_url: config.cluster.advertise_url.to_string(),
        started_at: chrono::Utc::now(),
    };
    let ownership = Arc::new(if store.is_postgres() {
        Ownership::cluster(
            identity.node_id.clone(),
            &identity.process_token,
            store.shard_count(),
        )
    } else {
        Ownership::single(identity.node_id.clone())
    });
    (identity, ownership)
}

async fn purge_states(store: Store, shutdown: CancellationToken) {
    // The first purge one period after start, not at once: a start is busy enough, and on
    // SQLite a purge that meets another process's write lock holds the one connection (and
    // every request behind it) for the busy timeout.
    let mut every = tokio::time::interval_at(
        tokio::time::Instant::now() + STATE_PURGE_EVERY,
        STATE_PURGE_EVERY,
    );
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {
                if let Err(e) = store.purge_expired_states(chrono::Utc::now()).await {
                    tracing::warn!(error = %e, "cannot purge expired OAuth states");
                }
            }
        }
    }
}

/// Tokens travel in these requests: plain HTTP is only acceptable on loopback.
fn warn_on_plain_http(config: &Config) {
    let mut urls = vec![("GOOGLE_CALENDAR_REDIRECT_URI", &config.google.redirect_uri)];
    if let Some(url) = &config.microservice.url {
        urls.push(("GOOGLE_CALENDAR_MICROSERVICE_URL", url.url()));
    }
    for (var, url) in urls {
        let loopback = match url.host() {
            Some(url::Host::Domain(d)) => d == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        if url.scheme() == "http" && !loopback {
            tracing::warn!(
                variable = var,
                "plain http to a non-loopback host: tokens would travel unencrypted, use https"
            );
        }
    }
}
