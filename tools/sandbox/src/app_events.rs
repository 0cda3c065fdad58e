//! The reference receiver of events to the app (docs/contract.md section 9, docs/app-events.md: Events to the
//! app): the app's side of `APP_EVENTS_URL`, an HTTP server that checks each event as an app
//! should, keeps the accepted ones in memory (bounded) and shows them.
//!
//! `POST /events` takes one event: with a signing secret it must carry a valid Standard
//! Webhooks signature (`401` otherwise); its body must be a JSON object of exactly the six keys
//! (`400` otherwise); an event whose `webhook-id` was already accepted is answered `200` again
//! and not kept twice, as an app drops duplicates. `GET /events` lists the accepted events,
//! oldest first; `GET /events/attempts` every POST with its answer. Fault modes (answer `429`
//! with a `Retry-After`, or `500`) are set from Rust or, when started with sandbox controls,
//! over `POST /sandbox/control`; [`AppEventsReceiver::stop`] and
//! [`AppEventsReceiver::restart`] make it unreachable and bring it back on the same port.
//! Owns nothing of tokenwarden's: it checks the wire, as any app would.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use standardwebhooks::{
    HEADER_WEBHOOK_ID, HEADER_WEBHOOK_SIGNATURE, HEADER_WEBHOOK_TIMESTAMP, Webhook,
};
use tokio::net::TcpListener;

use super::RunningServer;

/// Largest event body read; an event is a few hundred bytes.
const MAX_BODY: usize = 64 * 1024;

/// The keys of an event's body, exactly these.
pub const EVENT_KEYS: [&str; 6] = [
    "type",
    "user_id",
    "occurred_at",
    "google_email",
    "reason",
    "authorization_expires_at",
];

/// Starting configuration of an [`AppEventsReceiver`].
#[derive(Clone)]
pub struct AppEventsReceiverConfig {
    /// When set (`whsec_<base64>`, or several comma-separated during a rotation), every event
    /// must carry a Standard Webhooks signature by one of them over its exact body.
    pub signing_secret: Option<String>,
    /// Most events (and, apart, most attempts) kept; the oldest leave first.
    pub capacity: usize,
    /// Serve `POST /sandbox/control` (fault modes, no authentication).
    pub sandbox_controls: bool,
}

impl Default for AppEventsReceiverConfig {
    fn default() -> Self {
        Self {
            signing_secret: None,
            capacity: 1000,
            sandbox_controls: false,
        }
    }
}

/// How the receiver answers events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum ReceiverMode {
    /// Checks and accepts events.
    #[default]
    Healthy,
    /// Answers every event `500`.
    Error500,
    /// Answers every event `429` with `Retry-After: <retry_after>` (seconds).
    TooManyRequests { retry_after: u64 },
}

/// One POST as the receiver got it.
#[derive(Clone, Debug, Serialize)]
pub struct ReceivedEvent {
    pub webhook_id: Option<String>,
    pub webhook_timestamp: Option<String>,
    pub webhook_signature: Option<String>,
    pub content_type: Option<String>,
    /// The body, when it was JSON.
    pub body: Option<Value>,
    /// The body's exact text, as signed (not listed by `GET /events`).
    #[serde(skip)]
    pub raw_body: String,
    /// The status answered.
    pub status: u16,
    pub received_at: DateTime<Utc>,
    /// Accepted before under the same `webhook-id`: answered 2xx, not kept again.
    pub duplicate: bool,
}

/// Handle on a running receiver; clones share the same server and events.
#[derive(Clone)]
pub struct AppEventsReceiver {
    inner: Arc<Inner>,
}

struct Inner {
    addr: SocketAddr,
    keys: Option<Vec<Webhook>>,
    capacity: usize,
    sandbox_controls: bool,
    /// A plain mutex: never held across an await.
    state: Mutex<Received>,
    server: tokio::sync::Mutex<Option<RunningServer>>,
}

#[derive(Default)]
struct Received {
    mode: ReceiverMode,
    events: VecDeque<ReceivedEvent>,
    attempts: VecDeque<ReceivedEvent>,
}

impl AppEventsReceiver {
    /// Checks the signing secrets and serves on `listener` in a spawned task.
    pub async fn start(
        config: AppEventsReceiverConfig,
        listener: TcpListener,
    ) -> anyhow::Result<Self> {
        let keys = config
            .signing_secret
            .as_deref()
            .map(parse_keys)
            .transpose()?;
        let inner = Arc::new(Inner {
            addr: listener.local_addr()?,
            keys,
            capacity: config.capacity.max(1),
            sandbox_controls: config.sandbox_controls,
            state: Mutex::new(Received::default()),
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

    /// Where events are POSTed: the value of `APP_EVENTS_URL`.
    pub fn events_url(&self) -> String {
        format!("{}/events", self.base_url())
    }

    /// Sets how events are answered from now on.
    pub fn set_mode(&self, mode: ReceiverMode) {
        lock(&self.inner.state).mode = mode;
    }

    /// The accepted events, oldest first, each once.
    pub fn events(&self) -> Vec<ReceivedEvent> {
        lock(&self.inner.state).events.iter().cloned().collect()
    }

    /// Every POST, oldest first, with its answer (refused ones and duplicates included).
    pub fn attempts(&self) -> Vec<ReceivedEvent> {
        lock(&self.inner.state).attempts.iter().cloned().collect()
    }

    /// Stops listening, so connections are refused; the events are kept.
    pub async fn stop(&self) {
        if let Some(running) = self.inner.server.lock().await.take() {
            running.stop().await;
        }
    }

    /// Listens again on the same address and port (stopping first if still running).
    pub async fn restart(&self) -> anyhow::Result<()> {
        let mut server = self.inner.server.lock().await;
        if let Some(running) = server.take() {
            running.stop().await;
        }
        let listener = TcpListener::bind(self.inner.addr).await?;
        *server = Some(RunningServer::spawn(listener, router(self.inner.clone())));
        Ok(())
    }
}

/// Parses `whsec_<base64>`, or several comma-separated; errors name the position only.
fn parse_keys(secrets: &str) -> anyhow::Result<Vec<Webhook>> {
    secrets
        .split(',')
        .map(str::trim)
        .enumerate()
        .map(|(i, secret)| {
            let position = i + 1;
            match secret.strip_prefix("whsec_") {
                Some(encoded) if !encoded.is_empty() => Webhook::new(secret).map_err(|_| {
                    anyhow::anyhow!("signing secret {position} is not valid base64 after whsec_")
                }),
                _ => anyhow::bail!("signing secret {position} must look like whsec_<base64>"),
            }
        })
        .collect()
}

fn router(inner: Arc<Inner>) -> Router {
    let mut router = Router::new()
        .route("/events", post(receive).get(list))
        .route("/events/attempts", get(list_attempts));
    if inner.sandbox_controls {
        router = router.route("/sandbox/control", post(control));
    }
    router
        .fallback(|| async { (StatusCode::NOT_FOUND, Json(json!({"error": "not_found"}))) })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(inner)
}

async fn receive(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut received = ReceivedEvent {
        webhook_id: header(HEADER_WEBHOOK_ID),
        webhook_timestamp: header(HEADER_WEBHOOK_TIMESTAMP),
        webhook_signature: header(HEADER_WEBHOOK_SIGNATURE),
        content_type: header(header::CONTENT_TYPE.as_str()),
        body: serde_json::from_slice(&body).ok(),
        raw_body: String::from_utf8_lossy(&body).into_owned(),
        status: 0,
        received_at: Utc::now(),
        duplicate: false,
    };
    let mode = lock(&inner.state).mode;
    let response = match mode {
        ReceiverMode::Error500 => refusal(StatusCode::INTERNAL_SERVER_ERROR, "fault mode"),
        ReceiverMode::TooManyRequests { retry_after } => {
            let mut response = refusal(StatusCode::TOO_MANY_REQUESTS, "fault mode");
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after.into());
            response
        }
        ReceiverMode::Healthy => inner.check(&headers, &body, &received),
    };
    received.status = response.status().as_u16();
    let mut state = lock(&inner.state);
    if response.status().is_success() {
        received.duplicate = state
            .events
            .iter()
            .any(|kept| kept.webhook_id == received.webhook_id);
        if !received.duplicate {
            tracing::info!(
                webhookId = received.webhook_id.as_deref().unwrap_or(""),
                event = %received.body.as_ref().map(serde_json::Value::to_string).unwrap_or_default(),
                "app events receiver: event accepted"
            );
            push_bounded(&mut state.events, received.clone(), inner.capacity);
        }
    }
    push_bounded(&mut state.attempts, received, inner.capacity);
    response
}

impl Inner {
    /// The answer to a healthy receiver's event: `401` for a missing or bad signature (when
    /// configured), `400` for a body that is not exactly an event, else `200`.
    fn check(&self, headers: &HeaderMap, body: &[u8], received: &ReceivedEvent) -> Response {
        if let Some(keys) = &self.keys
            && !keys.iter().any(|key| key.verify(body, headers).is_ok())
        {
            tracing::warn!("app events receiver refused an event: bad webhook signature");
            return refusal(StatusCode::UNAUTHORIZED, "invalid webhook signature");
        }
        if received.webhook_id.is_none() {
            return refusal(StatusCode::BAD_REQUEST, "webhook-id is missing");
        }
        if let Err(reason) = event_shape(received.body.as_ref()) {
            tracing::warn!(%reason, "app events receiver refused an event: not an event");
            return refusal(StatusCode::BAD_REQUEST, &reason);
        }
        (StatusCode::OK, Json(json!({"received": true}))).into_response()
    }
}

/// Whether `body` is an event: an object of exactly [`EVENT_KEYS`], `type` and `user_id`
/// strings, the two times RFC 3339 in UTC with a `Z` (the second one or `null`).
pub fn event_shape(body: Option<&Value>) -> Result<(), String> {
    let Some(object) = body.and_then(Value::as_object) else {
        return Err("the body is not a JSON object".into());
    };
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut expected = EVENT_KEYS;
    expected.sort_unstable();
    if keys != expected {
        return Err(format!(
            "the keys are {keys:?}, expected exactly {EVENT_KEYS:?}"
        ));
    }
    for key in ["type", "user_id"] {
        if !object[key].is_string() {
            return Err(format!("{key} is not a string"));
        }
    }
    let utc = |value: &Value| {
        value
            .as_str()
            .is_some_and(|s| s.ends_with('Z') && DateTime::parse_from_rfc3339(s).is_ok())
    };
    if !utc(&object["occurred_at"]) {
        return Err("occurred_at is not RFC 3339 in UTC with a Z".into());
    }
    let expires = &object["authorization_expires_at"];
    if !expires.is_null() && !utc(expires) {
        return Err("authorization_expires_at is not null or RFC 3339 in UTC with a Z".into());
    }
    Ok(())
}

async fn list(State(inner): State<Arc<Inner>>) -> Json<Vec<ReceivedEvent>> {
    Json(lock(&inner.state).events.iter().cloned().collect())
}

async fn list_attempts(State(inner): State<Arc<Inner>>) -> Json<Vec<ReceivedEvent>> {
    Json(lock(&inner.state).attempts.iter().cloned().collect())
}

/// `POST /sandbox/control` with `{"mode": "healthy"}`, `{"mode": "error500"}` or
/// `{"mode": "too_many_requests", "retry_after": 2}`.
async fn control(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    match serde_json::from_slice::<ReceiverMode>(&body) {
        Ok(mode) => {
            lock(&inner.state).mode = mode;
            (StatusCode::OK, Json(json!({"ok": true}))).into_response()
        }
        Err(e) => refusal(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

fn refusal(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

fn push_bounded(list: &mut VecDeque<ReceivedEvent>, item: ReceivedEvent, capacity: usize) {
    if list.len() >= capacity {
        list.pop_front();
    }
    list.push_back(item);
}

/// Command-line flags of `tokenwarden app-events-receiver`.
#[derive(clap::Args, Clone)]
pub struct AppEventsReceiverArgs {
    /// Address to listen on; events arrive on POST /events (APP_EVENTS_URL=http://<this>/events)
    #[arg(
        long,
        env = "APP_EVENTS_RECEIVER_LISTEN",
        default_value = "127.0.0.1:4200"
    )]
    pub listen: SocketAddr,
    /// Standard Webhooks secret (whsec_<base64>; several comma-separated during a rotation):
    /// every event must then carry a valid signature by one of them, or is refused with 401
    #[arg(long, env = "APP_EVENTS_SIGNING_SECRET", hide_env_values = true)]
    pub signing_secret: Option<String>,
    /// Most events kept in memory (and, apart, most attempts); the oldest leave first
    #[arg(long, env = "APP_EVENTS_RECEIVER_CAPACITY", default_value = "1000")]
    pub capacity: usize,
    /// Also serve POST /sandbox/control (fault modes, no authentication), for tests and demos
    #[arg(long, env = "APP_EVENTS_RECEIVER_SANDBOX_CONTROLS")]
    pub sandbox_controls: bool,
}

/// Runs the receiver alone until Ctrl-C.
pub async fn run(args: AppEventsReceiverArgs) -> anyhow::Result<()> {
    let signed = args.signing_secret.is_some();
    let config = AppEventsReceiverConfig {
        signing_secret: args.signing_secret,
        capacity: args.capacity,
        sandbox_controls: args.sandbox_controls,
    };
    let listener = TcpListener::bind(args.listen).await?;
    let receiver = AppEventsReceiver::start(config, listener).await?;
    tracing::info!(
        url = %receiver.events_url(),
        signed,
        sandbox_controls = args.sandbox_controls,
        "app events receiver listening (APP_EVENTS_URL); GET /events lists what arrived"
    );
    tokio::signal::ctrl_c().await?;
    tracing::info!("app events receiver stopping");
    receiver.stop().await;
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exactly_an_event_has_the_shape() {
        let event = json!({
            "type": "connection.connected", "user_id": "alice",
            "occurred_at": "2025-12-13T10:30:00Z", "google_email": null, "reason": null,
            "authorization_expires_at": null,
        });
        assert_eq!(event_shape(Some(&event)), Ok(()));
        let mut extra = event.clone();
        extra["event_id"] = json!("msg_1");
        assert!(event_shape(Some(&extra)).is_err());
        let mut offset = event.clone();
        offset["occurred_at"] = json!("2025-12-13T10:30:00+00:00");
        assert!(event_shape(Some(&offset)).is_err());
        assert!(event_shape(None).is_err());
    }

    #[test]
    fn control_modes_parse() {
        let parse = |s: &str| serde_json::from_str::<ReceiverMode>(s).unwrap();
        assert_eq!(parse(r#"{"mode":"healthy"}"#), ReceiverMode::Healthy);
        assert_eq!(parse(r#"{"mode":"error500"}"#), ReceiverMode::Error500);
        assert_eq!(
            parse(r#"{"mode":"too_many_requests","retry_after":2}"#),
            ReceiverMode::TooManyRequests { retry_after: 2 }
        );
    }
}
