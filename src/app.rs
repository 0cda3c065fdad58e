//! Wires the service together: store, Google client, sync dispatcher, supervisor and front
//! door. `main` and the tests build the service the same way, through [`App::spawn`] with a
//! listener of their choosing (port 0 in tests).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::{net::TcpListener, sync::Semaphore, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    actors::{ActorContext, Supervisor, UserScope},
    config::Config,
    crypto::TokenCipher,
    google::GoogleClient,
    http::{self, AppState},
    metrics::Metrics,
    store::Store,
    sync::SyncDispatcher,
};

/// Rows read per page when resuming syncs.
const RESUME_PAGE: u64 = 1000;
/// How often expired OAuth states are purged.
const STATE_PURGE_EVERY: Duration = Duration::from_secs(60);

/// A running service.
pub struct App {
    /// Where the front door listens.
    pub addr: SocketAddr,
    pub store: Store,
    pub supervisor: Supervisor,
    pub sync: SyncDispatcher,
    pub metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
}

impl App {
    /// Connects to the database (migrating it), starts the actors and serves on `listener`.
    pub async fn spawn(config: Config, listener: TcpListener) -> anyhow::Result<Self> {
        warn_on_plain_http(&config);
        let config = Arc::new(config);
        let store = Store::connect(
            &config.database_url,
            TokenCipher::new(&config.encryption_key),
        )
        .await
        .context("cannot open the database (DATABASE_URL)")?;
        let metrics = Arc::new(Metrics::default());
        let shutdown = CancellationToken::new();
        let google = GoogleClient::new(&config.google)?;
        let sync = SyncDispatcher::spawn(
            store.clone(),
            &config.microservice,
            metrics.clone(),
            shutdown.clone(),
        )?;
        let ctx = Arc::new(ActorContext {
            store: store.clone(),
            google: google.clone(),
            sync: sync.clone(),
            metrics: metrics.clone(),
            refresh: config.refresh.clone(),
            permits: Arc::new(Semaphore::new(config.refresh.concurrency)),
        });
        let supervisor = Supervisor::start(ctx, UserScope::All).await?;
        // Queued before the front door opens, so a change made through it is never
        // followed by a second, redundant push from the resume.
        resume_syncs(&store, &sync, config.microservice.url.is_some()).await;
        tokio::spawn(purge_states(store.clone(), shutdown.clone()));
        let state = AppState {
            config: config.clone(),
            store: store.clone(),
            google,
            supervisor: supervisor.clone(),
            sync: sync.clone(),
            metrics: metrics.clone(),
        };
        let addr = listener.local_addr()?;
        let router = http::router(state);
        let stop = shutdown.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        });
        tracing::info!(%addr, "tokenwarden listening");
        Ok(Self {
            addr,
            store,
            supervisor,
            sync,
            metrics,
            shutdown,
            server,
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

    /// Stops taking requests, stops every actor and the sync dispatcher, and waits for the
    /// server to finish the requests it had.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.supervisor.stop().await;
        let _ = self.server.await;
    }

    /// A handle that stops the app when cancelled (for signal handlers).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Queues a sync for every user whose last change the microservice has not acknowledged.
/// `include_skipped` also catches up users connected while no microservice was configured.
pub async fn resume_unfinished_syncs(
    store: &Store,
    sync: &SyncDispatcher,
    include_skipped: bool,
) -> anyhow::Result<usize> {
    let mut after: Option<String> = None;
    let mut queued = 0;
    loop {
        let page = store
            .unfinished_syncs(after.as_deref(), RESUME_PAGE, include_skipped)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.clone());
        queued += page.len();
        for user_id in &page {
            sync.changed(user_id);
        }
        if (page.len() as u64) < RESUME_PAGE {
            break;
        }
    }
    Ok(queued)
}

async fn resume_syncs(store: &Store, sync: &SyncDispatcher, include_skipped: bool) {
    for attempt in 1..=30u32 {
        match resume_unfinished_syncs(store, sync, include_skipped).await {
            Ok(0) => return,
            Ok(n) => {
                tracing::info!(users = n, "resuming unfinished syncs");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, "cannot list unfinished syncs, retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

async fn purge_states(store: Store, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(STATE_PURGE_EVERY);
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
    let mut urls = vec![(
        "GOOGLE_CALENDAR_REDIRECT_URI",
        config.google.redirect_uri.to_string(),
    )];
    if let Some(url) = &config.microservice.url {
        urls.push(("GOOGLE_CALENDAR_MICROSERVICE_URL", url.clone()));
    }
    for (var, raw) in urls {
        let Ok(url) = url::Url::parse(&raw) else {
            continue;
        };
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
