//! Stand-ins for the two outside services tokenwarden talks to: Google's OAuth endpoints
//! ([`google`]) and the chat-agent microservice that receives the tokens ([`microservice`]).
//!
//! Both are real HTTP servers on loopback, not mocks behind a trait, so the demo, the
//! integration tests and the load tests exercise tokenwarden's actual HTTP clients, timeouts
//! and retries. Each can be started in-process on a caller-supplied listener (tests bind port 0
//! with [`bind_loopback`]) or run alone as a subcommand, and each has fault controls reachable
//! both from Rust and over HTTP (`POST /sandbox/control`) for out-of-process drivers.
//!
//! This module owns only the plumbing the two servers share: spawning a server task and
//! stopping it within a bounded time.

pub mod google;
pub mod microservice;

pub use google::{
    RefreshMode, SandboxControls, SandboxGoogle, SandboxGoogleArgs, SandboxGoogleConfig,
    SandboxStats, SeededGrant,
};
pub use microservice::{
    FaultMode, MicroserviceArgs, MicroserviceConfig, ReceivedRequest, ReferenceMicroservice,
    StoredTokens,
};

use std::time::Duration;

use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

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
