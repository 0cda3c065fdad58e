//! Events to the app under load (issue 20, docs/contract.md section 9): the app's side of
//! `APP_EVENTS_URL` in this process, and the backlog measurement.
//!
//! `--app-events` sets `APP_EVENTS_URL` on every node to [`Receiver`], up from the start: the
//! refresh path writes no event, so a run with and without it measures what the outbox costs
//! refreshes (the deliverer's polls). `--app-events-backlog K` also stores K events for each
//! seeded user before the service starts, straight into the outbox as the service's own writes
//! do ([`Store::insert_app_event`]), and keeps the receiver down (connections refused) through
//! the sampled run; then it comes up and the delivery is timed until every event arrived.
//!
//! The receiver counts what an app would check: each `webhook-id` once (a repeat is a
//! duplicate, answered 200), and per user the events in the order they were stored: the k-th
//! event of a user is `connection.connected` for even k and `connection.disconnected` for odd
//! k, and its `occurred_at` is the base time plus k seconds, so a swap shows.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, http::StatusCode};
use chrono::{DateTime, Utc};
use sea_orm::TransactionTrait;
use serde::Serialize;
use tokenwarden::store::{AppEvent, AppEventType, Store};

use crate::{nodes::Nodes, report::Report, user_id};

/// Users whose events are stored per transaction.
const SEED_USERS_PER_TXN: u64 = 1000;

/// What the backlog run measured (`app_events` in the JSON report).
#[derive(Debug, Clone, Serialize, Default)]
pub struct AppEventsFigures {
    pub users_with_events: u64,
    pub events_stored: u64,
    /// Storing them, straight into the database (not the service's work).
    pub store_secs: f64,
    /// From the service's start to the receiver coming up.
    pub down_secs: f64,
    /// Failed attempts while the app was down (the service's metrics).
    pub failed_attempts_while_down: f64,
    /// Highest and last RSS of the service while the app was down.
    pub rss_peak_down_kib: u64,
    pub rss_end_of_down_kib: u64,
    /// Service CPU over the down period (after loading).
    pub cpu_secs_down: f64,
    /// Events accepted, each `webhook-id` once.
    pub delivered: u64,
    pub duplicates: u64,
    /// Events that arrived before an earlier event of their user.
    pub out_of_order: u64,
    /// Stored but never accepted.
    pub lost: u64,
    /// Undelivered rows left in the outbox at the end.
    pub pending_at_end: u64,
    /// From the receiver coming up to the last event accepted.
    pub drain_secs: f64,
    pub delivery_per_sec_avg: f64,
    pub delivery_per_sec_peak_10s: f64,
    /// Events accepted, each second after the receiver came up.
    pub delivered_each_second: Vec<u64>,
}

#[derive(Default)]
struct Tally {
    seen: HashSet<String>,
    /// Per user: events accepted so far and the last one's `occurred_at`.
    users: HashMap<String, (u64, i64)>,
    accepted: u64,
    duplicates: u64,
    out_of_order: u64,
}

/// The app: accepts every event and tallies it.
pub struct Receiver {
    port: u16,
    tally: Arc<Mutex<Tally>>,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Receiver {
    /// A receiver on a port free now, not listening yet. The port is below the kernel's
    /// ephemeral range, so no outgoing connection takes it while nothing listens.
    pub async fn reserve() -> anyhow::Result<Self> {
        use rand::Rng;
        for _ in 0..200 {
            let port = rand::thread_rng().gen_range(20_000..32_000);
            if tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(Self {
                    port,
                    tally: Arc::default(),
                    server: Mutex::new(None),
                });
            }
        }
        anyhow::bail!("no free loopback port for the app events receiver")
    }

    /// `APP_EVENTS_URL` of the nodes.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/events", self.port)
    }

    /// Starts listening.
    pub async fn up(&self) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await?;
        let app = Router::new()
            .route("/events", axum::routing::post(receive))
            .with_state(self.tally.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        *self.server.lock().expect("server") = Some(server);
        Ok(())
    }

    fn accepted(&self) -> u64 {
        self.tally.lock().expect("tally").accepted
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(server) = self.server.get_mut().expect("server").take() {
            server.abort();
        }
    }
}

async fn receive(
    State(tally): State<Arc<Mutex<Tally>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let Some(id) = headers.get("webhook-id").and_then(|v| v.to_str().ok()) else {
        return StatusCode::BAD_REQUEST;
    };
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let occurred = event["occurred_at"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or(i64::MIN, |t| t.timestamp());
    let user = event["user_id"].as_str().unwrap_or_default().to_string();
    let mut tally = tally.lock().expect("tally");
    if !tally.seen.insert(id.to_string()) {
        tally.duplicates += 1;
        return StatusCode::OK;
    }
    let (count, last) = tally.users.entry(user).or_insert((0, i64::MIN));
    let in_order = event["type"] == kind(*count).as_str() && occurred > *last;
    (*count, *last) = (*count + 1, occurred);
    if !in_order {
        tally.out_of_order += 1;
    }
    tally.accepted += 1;
    StatusCode::OK
}

/// The type of a user's k-th stored event.
fn kind(k: u64) -> AppEventType {
    if k.is_multiple_of(2) {
        AppEventType::Connected
    } else {
        AppEventType::Disconnected
    }
}

/// Stores `per_user` events for each of the first `users` seeded users, in the outbox the
/// service reads (events on in `store`); returns the seconds it took.
pub async fn seed(store: &Store, users: u64, per_user: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let base = Utc::now() - chrono::Duration::seconds(per_user as i64);
    let mut first = 0;
    while first < users {
        let txn = store.connection().begin().await?;
        for i in first..(first + SEED_USERS_PER_TXN).min(users) {
            let user = user_id(i);
            for k in 0..per_user {
                let at = base + chrono::Duration::seconds(k as i64);
                let mut event = AppEvent::new(kind(k), &user, at);
                event.google_email = Some(format!("{user}@loadtest.example"));
                anyhow::ensure!(
                    store.insert_app_event(&txn, &event, Utc::now()).await?,
                    "events are off in the load test's store"
                );
            }
        }
        txn.commit().await?;
        first += SEED_USERS_PER_TXN;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// After a backlog run's sampled phase: the down figures, then the receiver up and the
/// delivery timed until every stored event arrived or `timeout` passed.
pub async fn drain(
    receiver: &Receiver,
    nodes: &Nodes,
    store: &Store,
    figures: &mut AppEventsFigures,
    report: &Report,
    timeout: Duration,
) -> anyhow::Result<()> {
    figures.rss_end_of_down_kib = nodes.rss_each().iter().sum();
    figures.rss_peak_down_kib = report
        .samples
        .iter()
        .map(|s| (s.rss_mib * 1024.0) as u64)
        .chain([figures.rss_end_of_down_kib, report.rss_after_load_kib])
        .max()
        .unwrap_or(0);
    figures.cpu_secs_down = report.service_cpu_secs;
    let scrape = crate::sample::Scrape::sum(&nodes.scrape_each().await?);
    figures.failed_attempts_while_down = scrape.app_events_failed;
    receiver.up().await?;
    let up = Instant::now();
    let (mut seen, mut drained_at) = (0, Duration::ZERO);
    let busy = &mut figures.delivered_each_second;
    loop {
        let (now, t) = (receiver.accepted(), up.elapsed());
        let second = t.as_secs() as usize;
        if busy.len() <= second {
            busy.resize(second + 1, 0);
        }
        if now > seen {
            busy[second] += now - seen;
            (seen, drained_at) = (now, t);
        }
        if seen >= figures.events_stored || t >= timeout {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    figures.drain_secs = drained_at.as_secs_f64().max(0.001);
    {
        let tally = receiver.tally.lock().expect("tally");
        figures.delivered = tally.accepted;
        figures.duplicates = tally.duplicates;
        figures.out_of_order = tally.out_of_order;
    }
    figures.lost = figures.events_stored.saturating_sub(figures.delivered);
    figures.delivery_per_sec_avg = figures.delivered as f64 / figures.drain_secs;
    let busy = &figures.delivered_each_second;
    figures.delivery_per_sec_peak_10s = busy
        .windows(10.min(busy.len()).max(1))
        .map(|w| w.iter().sum::<u64>() as f64 / w.len() as f64)
        .fold(0.0, f64::max);
    figures.pending_at_end = store.pending_app_events(None).await?;
    Ok(())
}
