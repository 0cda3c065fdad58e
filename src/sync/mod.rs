//! Pushes every token change to the microservice (docs/microservice.md: The microservice contract).
//!
//! The [`SyncDispatcher`] keeps one lane per user with at most one call in flight: a change
//! that arrives meanwhile only marks the lane dirty, and the next call sends the newest state:
//! the one the latest change carried (a refresh hands over the tokens it just saved, which
//! saves a read per refresh), or the row as read at send time when any change came without
//! its state. Versions only grow, so a carried state at or below a version already sent is
//! dropped for a read. So calls for one user never overlap, the last call always carries the
//! newest state, and intermediate states are skipped rather than replayed. The
//! durable `sync_state` column (written by `store`) lets a restart find unfinished pushes
//! (`resume`). Failures retry with the service's one backoff policy ([`Backoff`]). This module
//! never blocks its callers and never touches actors.
//!
//! - here: the dispatcher and its lanes;
//! - `delivery`: one call for one user, from reading the state to recording the outcome;
//! - `client`: the microservice's HTTP client, HTTP only;
//! - `resume`: queues the pushes a restart or a resync must finish.

mod client;
mod delivery;
mod resume;

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use opentelemetry::Context;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

pub use crate::signing::{Signer, message_id};
use crate::{
    config::MicroserviceConfig,
    history::History,
    ids::{TokenVersion, UserId},
    metrics::Metrics,
    retry::Backoff,
    store::{Store, SyncSnapshot},
};
pub use client::{Delivery, MicroserviceClient};
use delivery::{Call, Deliverer, Finished};
pub use resume::{resume_at_start, resume_unfinished_syncs};

/// How long a closed lane's last sent version is kept. A notice is sent right after its
/// write, so one overtaken by a newer change arrives within moments; a minute covers any
/// scheduling delay with a wide margin, and the entries are small enough that a minute of
/// changes at full speed fits in memory comfortably.
const RECENT_WINDOW: Duration = Duration::from_secs(60);

/// Calls in progress per microservice permit: the others read their row or record their
/// outcome meanwhile. Beyond that a lane waits in the ready queue rather than as a call parked
/// at the semaphore: a call fixes the state it sends when it starts, so while the microservice
/// is behind, a parked call would send a state already superseded, and its acknowledgement
/// would name a version the row has left. A queued lane takes its newest state when it starts.
const CALLS_PER_PERMIT: usize = 2;

enum Command {
    /// The user changed, to the state given if known; the context is the trace of whatever
    /// changed it.
    Changed(UserId, Context, Option<SyncSnapshot>),
    Finished {
        user_id: UserId,
        finished: Finished,
    },
    RetryDue {
        user_id: UserId,
        generation: u64,
    },
}

#[derive(Default)]
struct Lane {
    /// Trace of the latest change, so its push shows up in the same trace.
    cx: Context,
    in_flight: bool,
    /// A change arrived while a call was in flight.
    dirty: bool,
    failures: u32,
    /// When the oldest change not yet in a call was queued.
    pending_since: Option<Instant>,
    /// When the oldest change the call in flight carries was queued.
    in_flight_since: Option<Instant>,
    /// Bumped whenever a call starts, so a retry timer from before it is ignored.
    generation: u64,
    /// The state the latest change carried, to send without reading the row.
    known: Option<SyncSnapshot>,
    /// A change came without its state: the next call reads the row.
    must_read: bool,
    /// The highest version a call has sent; a carried state not above it is stale.
    sent: TokenVersion,
    /// Waiting in the ready queue for a call slot.
    queued: bool,
}

/// Cheap handle that queues "this user changed" notices.
#[derive(Clone)]
pub struct SyncDispatcher {
    tx: mpsc::UnboundedSender<Command>,
}

impl SyncDispatcher {
    /// Starts the dispatcher task.
    pub fn spawn(
        store: Store,
        config: &MicroserviceConfig,
        metrics: Arc<Metrics>,
        history: Arc<History>,
        ownership: Arc<crate::cluster::Ownership>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = Worker {
            lanes: HashMap::new(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            deliverer: Deliverer {
                client: MicroserviceClient::new(config)?,
                store,
                metrics,
                history,
                permits: Arc::new(Semaphore::new(config.concurrency)),
                ownership,
            },
            backoff: Backoff::new(config.retry_base, config.retry_max),
            calls: 0,
            max_calls: config.concurrency.saturating_mul(CALLS_PER_PERMIT),
            ready: VecDeque::new(),
            tx: tx.downgrade(),
        };
        tokio::spawn(worker.run(rx, shutdown));
        Ok(Self { tx })
    }

    /// The user's tokens changed (or were cleared): make the microservice catch up.
    pub fn changed(&self, user_id: &str) {
        self.notify(user_id, None);
    }

    /// The user's tokens changed to `state`, which the caller has just saved.
    pub fn changed_to(&self, user_id: &str, state: SyncSnapshot) {
        self.notify(user_id, Some(state));
    }

    fn notify(&self, user_id: &str, state: Option<SyncSnapshot>) {
        // The worker only stops when every handle is gone, so a send cannot fail while we
        // hold one; ignoring the result is safe.
        let cx = crate::telemetry::current_context();
        let _ = self.tx.send(Command::Changed(user_id.into(), cx, state));
    }
}

struct Worker {
    lanes: HashMap<UserId, Lane>,
    /// The version last sent for users whose lane closed within [`RECENT_WINDOW`], and when
    /// it closed: a notice that lost the race against a newer change and arrives after the
    /// lane closed must still not push its older state.
    recent: HashMap<UserId, (TokenVersion, Instant)>,
    recent_order: VecDeque<(Instant, UserId)>,
    deliverer: Deliverer,
    /// Delays between the attempts of a failing lane.
    backoff: Backoff,
    /// Calls started and not finished, at most `max_calls`.
    calls: usize,
    max_calls: usize,
    /// Lanes with work waiting for a call slot, oldest first.
    ready: VecDeque<UserId>,
    /// Weak, so that the worker stops once every `SyncDispatcher` handle is dropped.
    tx: mpsc::WeakUnboundedSender<Command>,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>, shutdown: CancellationToken) {
        loop {
            let command = tokio::select! {
                _ = shutdown.cancelled() => break,
                command = rx.recv() => match command {
                    Some(command) => command,
                    None => break,
                },
            };
            match command {
                Command::Changed(user_id, cx, state) => self.on_changed(user_id, cx, state),
                Command::Finished { user_id, finished } => self.on_finished(user_id, finished),
                Command::RetryDue {
                    user_id,
                    generation,
                } => self.on_retry_due(user_id, generation),
            }
            let depth = self.lanes.len() as i64;
            self.deliverer.metrics.sync_queue_depth.set(depth);
        }
        // Unfinished work stays `pending` in the database and resumes at the next start.
        self.deliverer.permits.close();
    }

    fn on_changed(&mut self, user_id: UserId, cx: Context, state: Option<SyncSnapshot>) {
        self.forget_old_lanes();
        let sent = self
            .recent
            .get(&user_id)
            .map_or(TokenVersion::NONE, |(version, _)| *version);
        let lane = self.lanes.entry(user_id.clone()).or_insert_with(|| Lane {
            sent,
            ..Lane::default()
        });
        lane.cx = cx;
        match state {
            // Notices can arrive out of order (two writers race to send them), so a state is
            // only kept if it is the newest seen, and never once a change came without one.
            Some(state) if !lane.must_read => {
                if lane
                    .known
                    .as_ref()
                    .is_none_or(|k| k.version() < state.version())
                {
                    lane.known = Some(state);
                }
            }
            Some(_) => {}
            None => {
                lane.must_read = true;
                lane.known = None;
            }
        }
        lane.pending_since.get_or_insert_with(Instant::now);
        if lane.in_flight {
            lane.dirty = true;
        } else if lane.queued {
            // Starts with this state when its turn comes.
        } else {
            // Also cuts a pending backoff short: a new change is worth trying at once.
            self.start(user_id);
        }
    }

    fn on_finished(&mut self, user_id: UserId, finished: Finished) {
        let delivered = finished.done();
        self.calls = self.calls.saturating_sub(1);
        self.start_ready();
        let Some(lane) = self.lanes.get_mut(&user_id) else {
            return;
        };
        lane.in_flight = false;
        if let Some(version) = finished.sent() {
            lane.sent = lane.sent.max(version);
        }
        if delivered && let Some(since) = lane.in_flight_since.take() {
            let lag = since.elapsed().as_secs_f64();
            self.deliverer.metrics.sync_lag.observe(lag);
        }
        if lane.dirty {
            self.start(user_id);
        } else if delivered {
            if let Some(lane) = self.lanes.remove(&user_id) {
                let now = Instant::now();
                self.recent.insert(user_id.clone(), (lane.sent, now));
                self.recent_order.push_back((now, user_id));
            }
        } else {
            lane.failures += 1;
            let delay = self.backoff.delay(lane.failures);
            let generation = lane.generation;
            let tx = self.tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Some(tx) = tx.upgrade() {
                    let _ = tx.send(Command::RetryDue {
                        user_id,
                        generation,
                    });
                }
            });
        }
    }

    fn forget_old_lanes(&mut self) {
        while let Some((closed, _)) = self.recent_order.front() {
            if closed.elapsed() < RECENT_WINDOW {
                break;
            }
            let (closed, user_id) = self.recent_order.pop_front().expect("peeked");
            // Only if it did not close again since.
            if self
                .recent
                .get(&user_id)
                .is_some_and(|(_, at)| *at == closed)
            {
                self.recent.remove(&user_id);
            }
        }
    }

    fn on_retry_due(&mut self, user_id: UserId, generation: u64) {
        let due = self
            .lanes
            .get(&user_id)
            .is_some_and(|lane| !lane.in_flight && lane.generation == generation);
        if due {
            self.start(user_id);
        }
    }

    /// Starts the lanes waiting for a call slot, oldest first, while slots are free.
    fn start_ready(&mut self) {
        while self.calls < self.max_calls {
            let Some(user_id) = self.ready.pop_front() else {
                return;
            };
            match self.lanes.get_mut(&user_id) {
                Some(lane) if lane.queued => {
                    lane.queued = false;
                    self.start(user_id);
                }
                _ => {}
            }
        }
    }

    /// Starts a call for the lane now, or queues it while every call slot is taken.
    fn start(&mut self, user_id: UserId) {
        let lane = self.lanes.entry(user_id.clone()).or_default();
        if self.calls >= self.max_calls {
            if !lane.queued {
                lane.queued = true;
                self.ready.push_back(user_id);
            }
            return;
        }
        self.calls += 1;
        lane.in_flight = true;
        lane.dirty = false;
        // A retry keeps the age of the change it still carries.
        if let Some(since) = lane.pending_since.take() {
            lane.in_flight_since = Some(lane.in_flight_since.map_or(since, |s| s.min(since)));
        }
        lane.generation += 1;
        // A retry, or a state not newer than one already sent, reads the row instead.
        let known = lane
            .known
            .take()
            .filter(|k| !lane.must_read && k.version() > lane.sent);
        lane.must_read = false;
        let cx = lane.cx.clone();
        let attempt = lane.failures + 1;
        let deliverer = self.deliverer.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let call = Call {
                user_id: user_id.clone(),
                known,
                cx,
                attempt,
            };
            let finished = deliverer.deliver(call).await;
            if let Some(tx) = tx.upgrade() {
                let _ = tx.send(Command::Finished { user_id, finished });
            }
        });
    }
}
