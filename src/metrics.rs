//! The Prometheus registry of one running service: counters, gauges and histograms that the
//! actors, the sync dispatcher and the HTTP layer update. Labels never carry user ids or
//! secrets, so `/metrics` is safe to expose without a token. Labels a client could choose
//! (the HTTP method and path) only ever take values from fixed sets, so no request can add
//! series of its own. Every family is keyed by a label struct deriving `EncodeLabelSet`; the
//! other label values are `&'static str`, so only constants of the code can become one.

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::google::FailureReason;

/// The method label of an HTTP request: the standard methods, and `other` for any method a
/// client invents (each new value would be a new series kept forever).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum HttpMethod {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
    Other,
}

impl HttpMethod {
    /// The method as it appears in labels and span fields.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Connect => "CONNECT",
            Self::Options => "OPTIONS",
            Self::Trace => "TRACE",
            Self::Patch => "PATCH",
            Self::Other => "other",
        }
    }
}

impl From<&http::Method> for HttpMethod {
    fn from(method: &http::Method) -> Self {
        match *method {
            http::Method::GET => Self::Get,
            http::Method::HEAD => Self::Head,
            http::Method::POST => Self::Post,
            http::Method::PUT => Self::Put,
            http::Method::DELETE => Self::Delete,
            http::Method::CONNECT => Self::Connect,
            http::Method::OPTIONS => Self::Options,
            http::Method::TRACE => Self::Trace,
            http::Method::PATCH => Self::Patch,
            _ => Self::Other,
        }
    }
}

impl EncodeLabelValue for HttpMethod {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.as_str())
    }
}

/// Labels of a refresh attempt.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefreshLabels {
    /// `scheduled`, `forced` or `retry`.
    pub reason: &'static str,
    /// `ok`, `transient`, `revoked`, `rejected` or `superseded`.
    pub result: &'static str,
}

/// Labels of a failed refresh at Google.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GoogleFailureLabels {
    /// A [`FailureReason`]'s label, never text from Google's answer.
    pub reason: &'static str,
}

/// Labels of the actors-by-status gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// An actor status (docs/api.md: Admin routes).
    pub status: &'static str,
}

/// Labels of a microservice call.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    /// `connect` or `delete`.
    pub op: &'static str,
    /// `ok`, `failed` or `skipped`.
    pub result: &'static str,
}

/// Labels of a valid security event from Google.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RiscLabels {
    /// One of `risc::KINDS`.
    pub r#type: &'static str,
    /// `grant_ended`, `recorded`, `no_grant`, `no_user`, `duplicate` or `failed`.
    pub outcome: &'static str,
}

/// Labels of a refused security event: RFC 8935's `err`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RiscRefusedLabels {
    pub err: &'static str,
}

/// Labels of a cluster notice dropped unheard.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NoticeDropLabels {
    /// One of [`NOTICE_DROP_REASONS`].
    pub reason: &'static str,
}

/// Why a cluster notice is dropped: not sealed under the cluster's key (`unsealed`), sealed
/// outside its time window (`stale`), or heard already (`replayed`).
pub const NOTICE_DROP_REASONS: [&str; 3] = ["unsealed", "stale", "replayed"];

/// Labels of an event to the app that reached an end or failed an attempt.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppEventLabels {
    /// The event's type (`connection.connected`, ...), or `other` for a type this version
    /// does not know (written by a newer one).
    pub r#type: &'static str,
    /// `delivered`, `failed` (one attempt) or `dropped` (72 hours undelivered).
    pub result: &'static str,
}

/// Labels of one HTTP duration series. `route` is a route template of the router or
/// `unmatched`, never a raw path.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: HttpMethod,
    pub route: String,
    pub status: u16,
}

fn lateness_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn lifetime_histogram() -> Histogram {
    // 1 s .. ~2.3 h
    Histogram::new(exponential_buckets(1.0, 2.0, 14))
}

fn duration_histogram() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric of the service.
pub struct Metrics {
    registry: Registry,
    /// Refresh attempts by `reason` (`scheduled`, `forced`, `retry`) and `result` (`ok`,
    /// `transient`, `revoked`, `rejected`, `superseded`).
    pub refreshes: Family<RefreshLabels, Counter>,
    /// Refreshes Google answered with a failure (or never answered), by `reason` (docs/contract.md
    /// section 9: which reasons are the user's and which are ours or Google's).
    pub google_refresh_failures: Family<GoogleFailureLabels, Counter>,
    /// User actors alive by `status`.
    pub actors_by_status: Family<StatusLabels, Gauge>,
    /// Microservice calls by `op` (`connect`, `delete`) and `result` (`ok`, `failed`, `skipped`).
    pub syncs: Family<SyncLabels, Counter>,
    /// Seconds between a refresh's scheduled time and its completion (new token saved).
    pub refresh_lateness: Histogram,
    /// Seconds from a change being queued (saved) to the microservice acknowledging it.
    pub sync_lag: Histogram,
    /// Seconds the access token still had to live when refreshed.
    pub remaining_lifetime: Histogram,
    /// HTTP request durations by `method`, `route` and `status`.
    pub http_duration: Family<HttpLabels, Histogram, fn() -> Histogram>,
    /// User actors alive.
    pub actors: Gauge,
    /// User actors restarted after a failure.
    pub actor_restarts: Counter,
    /// Users whose latest change is not yet acknowledged by the microservice.
    pub sync_queue_depth: Gauge,
    /// Shard leases this node holds (a cluster node; 0 on a single node).
    pub shards_owned: Gauge,
    /// Refresh-path writes the database refused because the shard's epoch had moved.
    pub fenced_writes: Counter,
    /// Refreshes and pushes not started, or answers dropped, because the lease was not valid
    /// by this node's own clock (or the user belongs to another node).
    pub lease_skips: Counter,
    /// Cluster notices dropped unheard, by `reason` (one of [`NOTICE_DROP_REASONS`]).
    pub notices_dropped: Family<NoticeDropLabels, Counter>,
    /// Valid security events from Google, by type and outcome.
    pub risc_events: Family<RiscLabels, Counter>,
    /// Refused security events, by RFC 8935 error code.
    pub risc_refused: Family<RiscRefusedLabels, Counter>,
    /// Events to the app by `type` and `result` (`delivered`, `failed`, `dropped`).
    pub app_events: Family<AppEventLabels, Counter>,
    /// Events to the app of this node's users not delivered yet.
    pub app_events_pending: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::with_registry(Registry::with_prefix("tokenwarden"))
    }
}

impl Metrics {
    /// The metrics of node `node_id`: every series carries it as the `node` label.
    pub fn for_node(node_id: &str) -> Self {
        let labels = [(
            std::borrow::Cow::Borrowed("node"),
            std::borrow::Cow::Owned(node_id.to_string()),
        )];
        Self::with_registry(Registry::with_prefix_and_labels(
            "tokenwarden",
            labels.into_iter(),
        ))
    }

    fn with_registry(mut registry: Registry) -> Self {
        let refreshes = Family::<RefreshLabels, Counter>::default();
        let actors_by_status = Family::<StatusLabels, Gauge>::default();
        for status in ["active", "refreshing", "retrying", "needs_reconnect"] {
            let _ = actors_by_status.get_or_create(&StatusLabels { status });
        }
        let google_refresh_failures = Family::<GoogleFailureLabels, Counter>::default();
        for reason in FailureReason::ALL {
            let reason = reason.as_str();
            let _ = google_refresh_failures.get_or_create(&GoogleFailureLabels { reason });
        }
        let syncs = Family::<SyncLabels, Counter>::default();
        let refresh_lateness = lateness_histogram();
        let remaining_lifetime = lifetime_histogram();
        let sync_lag = lateness_histogram();
        let http_duration: Family<HttpLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(duration_histogram);
        let actors = Gauge::default();
        let actor_restarts = Counter::default();
        let sync_queue_depth = Gauge::default();
        registry.register(
            "refreshes",
            "Token refresh attempts by result",
            refreshes.clone(),
        );
        registry.register(
            "google_refresh_failures",
            "Refreshes that failed at Google, by reason",
            google_refresh_failures.clone(),
        );
        registry.register(
            "syncs",
            "Microservice calls by operation and result",
            syncs.clone(),
        );
        registry.register(
            "refresh_lateness_seconds",
            "Completion of a scheduled refresh minus its scheduled time",
            refresh_lateness.clone(),
        );
        registry.register(
            "sync_lag_seconds",
            "From a saved token change to the microservice's acknowledgement",
            sync_lag.clone(),
        );
        registry.register(
            "refresh_remaining_lifetime_seconds",
            "Access token lifetime left when it was refreshed",
            remaining_lifetime.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request durations by route",
            http_duration.clone(),
        );
        registry.register("actors", "User token actors alive", actors.clone());
        registry.register(
            "actors_by_status",
            "User token actors alive by status",
            actors_by_status.clone(),
        );
        registry.register(
            "actor_restarts",
            "User token actors restarted after a failure",
            actor_restarts.clone(),
        );
        registry.register(
            "sync_queue_depth",
            "Users with a change not yet acknowledged by the microservice",
            sync_queue_depth.clone(),
        );
        let shards_owned = Gauge::default();
        let fenced_writes = Counter::default();
        let lease_skips = Counter::default();
        registry.register(
            "cluster_shards_owned",
            "Shard leases this node holds",
            shards_owned.clone(),
        );
        registry.register(
            "cluster_fenced_writes",
            "Refresh-path writes refused by the database because the shard has a new owner",
            fenced_writes.clone(),
        );
        registry.register(
            "cluster_lease_skips",
            "Refreshes and pushes not started, or answers dropped, for want of a valid lease",
            lease_skips.clone(),
        );
        let risc_events = Family::<RiscLabels, Counter>::default();
        let risc_refused = Family::<RiscRefusedLabels, Counter>::default();
        registry.register(
            "risc_events",
            "Valid security events from Google by type and outcome",
            risc_events.clone(),
        );
        registry.register(
            "risc_refused",
            "Security events refused, by RFC 8935 error code",
            risc_refused.clone(),
        );
        let notices_dropped = Family::<NoticeDropLabels, Counter>::default();
        // Every reason shows from the start, at 0, so an alert can watch it.
        for reason in NOTICE_DROP_REASONS {
            let _ = notices_dropped.get_or_create(&NoticeDropLabels { reason });
        }
        registry.register(
            "cluster_notices_dropped",
            "Cluster notices dropped unheard: not sealed with the cluster's key, stale or replayed",
            notices_dropped.clone(),
        );
        let app_events = Family::<AppEventLabels, Counter>::default();
        let app_events_pending = Gauge::default();
        registry.register(
            "app_events",
            "Events to the app by type and result (an attempt failed, delivered, or dropped)",
            app_events.clone(),
        );
        registry.register(
            "app_events_pending",
            "Events to the app of this node's users not delivered yet",
            app_events_pending.clone(),
        );
        Self {
            registry,
            app_events,
            app_events_pending,
            shards_owned,
            fenced_writes,
            lease_skips,
            notices_dropped,
            risc_events,
            risc_refused,
            refreshes,
            google_refresh_failures,
            actors_by_status,
            syncs,
            refresh_lateness,
            remaining_lifetime,
            sync_lag,
            http_duration,
            actors,
            actor_restarts,
            sync_queue_depth,
        }
    }
}

impl Metrics {
    /// Counts a refresh attempt that ended.
    pub fn refresh(&self, reason: &'static str, result: &'static str) {
        self.refreshes
            .get_or_create(&RefreshLabels { reason, result })
            .inc();
    }

    /// Counts a valid security event.
    pub fn risc_event(&self, labels: RiscLabels) {
        self.risc_events.get_or_create(&labels).inc();
    }

    /// Counts a refused security event (`err` is one of RFC 8935's codes, a fixed set).
    pub fn risc_refused(&self, err: &'static str) {
        self.risc_refused
            .get_or_create(&RiscRefusedLabels { err })
            .inc();
    }

    /// Counts a refresh that failed at Google.
    pub fn google_refresh_failure(&self, reason: FailureReason) {
        let reason = reason.as_str();
        self.google_refresh_failures
            .get_or_create(&GoogleFailureLabels { reason })
            .inc();
    }

    /// Moves `delta` actors into (or, negative, out of) `status`.
    pub fn actor_status(&self, status: &'static str, delta: i64) {
        self.actors_by_status
            .get_or_create(&StatusLabels { status })
            .inc_by(delta);
    }

    /// Counts a microservice call that ended.
    pub fn sync(&self, op: &'static str, result: &'static str) {
        self.syncs.get_or_create(&SyncLabels { op, result }).inc();
    }

    /// Counts an event to the app: `result` is `delivered`, `failed` or `dropped`.
    pub fn app_event(&self, r#type: &'static str, result: &'static str) {
        self.app_events
            .get_or_create(&AppEventLabels { r#type, result })
            .inc();
    }

    /// The registry in Prometheus/OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
