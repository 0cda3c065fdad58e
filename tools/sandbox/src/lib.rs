//! Stand-ins for the outside services tokenwarden talks to: Google's OAuth endpoints
//! ([`google`]), the chat-agent microservice that receives the tokens ([`microservice`]) and
//! the app that receives events about users' connections ([`app_events`]).
//!
//! Both are real HTTP servers on loopback, not mocks behind a trait, so the demo, the
//! integration tests and the load tests exercise tokenwarden's actual HTTP clients, timeouts
//! and retries. Each can be started in-process on a caller-supplied listener (tests bind port 0
//! with [`bind_loopback`]) or run alone as a subcommand, and each has fault controls reachable
//! both from Rust and over HTTP (`POST /sandbox/control`) for out-of-process drivers.
//!
//! This crate is tooling: the service (`tokenwarden`) never depends on it; its tests, the demo
//! and the load test do. The crate root owns only the plumbing the two servers share:
//! spawning a server task and stopping it within a bounded time, comparing a bearer token,
//! and continuing the caller's trace.

pub mod app_events;
pub mod google;
pub mod microservice;

pub use app_events::{
    AppEventsReceiver, AppEventsReceiverArgs, AppEventsReceiverConfig, ReceivedEvent, ReceiverMode,
};

pub use google::{
    GrantSelector, GrantView, RefreshMode, RiscEvent, RiscStream, RiscView, SandboxControls,
    SandboxGoogle, SandboxGoogleArgs, SandboxGoogleConfig, SandboxStats, SeededGrant, SentSet,
    ServiceAccountKeyFile, SetOptions, SetSigning, TokenIdentifierAlg,
};
pub use microservice::{
    FaultMode, MicroserviceArgs, MicroserviceConfig, ReceivedRequest, ReferenceMicroservice,
    StoredTokens,
};

use std::time::Duration;

use opentelemetry::trace::TraceContextExt;
use opentelemetry_http::HeaderExtractor;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Longest a fault-injected "hang" keeps a request open, so no test can wait forever.
const MAX_HANG: Duration = Duration::from_secs(120);

/// How long a stop waits for open connections to finish before cutting them off.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Binds a listener on `127.0.0.1` with a port chosen by the OS, for tests and the demo.
pub async fn bind_loopback() -> std::io::Result<TcpListener> {
    TcpListener::bind(("127.0.0.1", 0)).await
}

/// A router being served on its own task, with the means to stop it.
struct RunningServer {
    /// Fires axum's graceful shutdown: stop accepting, close idle keep-alive connections.
    shutdown: oneshot::Sender<()>,
    /// The serving task; it ends once every open connection has closed.
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// Serves `router` on `listener` in a spawned task.
    fn spawn(listener: TcpListener, router: axum::Router) -> Self {
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    // A dropped sender means the handle is gone: stop serving too.
                    let _ = signal.await;
                })
                .await
        });
        Self { shutdown, task }
    }

    /// Stops listening and waits (bounded) for open connections; the port is free afterwards.
    ///
    /// Callers release their hanging handlers first, so the wait is normally short; the abort
    /// is only the backstop for a request stuck in injected latency.
    async fn stop(self) {
        let _ = self.shutdown.send(());
        let mut task = self.task;
        if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
    }
}

/// Waits until `deadline` or until `keep_waiting` turns false, re-checking on every change
/// announced through `changes`; bounded by the deadline whatever the controls do.
async fn wait_while(
    changes: &tokio::sync::watch::Sender<()>,
    deadline: tokio::time::Instant,
    keep_waiting: impl Fn() -> bool,
) {
    let mut rx = changes.subscribe();
    while keep_waiting() {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}

/// The first characters of a secret, enough to correlate log lines without leaking it.
fn token_prefix(token: &str) -> &str {
    let end = token.char_indices().nth(8).map_or(token.len(), |(i, _)| i);
    &token[..end]
}

/// Compares a presented bearer token with the expected one in constant time, over hashes, so
/// neither the content nor the length of the expected one leaks through timing.
pub fn secrets_match(presented: &str, expected: &SecretString) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.expose_secret().as_bytes());
    a.ct_eq(&b).into()
}

/// Makes `span` continue the caller's trace if the headers carry a `traceparent` (the
/// propagator is whatever the process installed; without one, nothing happens).
fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    let parent =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_match_only_the_same_secret() {
        let expected = SecretString::from("ms-secret");
        assert!(secrets_match("ms-secret", &expected));
        for wrong in ["ms-secreT", "ms-secret ", "", "ms-secre"] {
            assert!(!secrets_match(wrong, &expected), "{wrong}");
        }
    }
}
