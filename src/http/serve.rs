//! Serving the router on a listener: HTTP/1 connections with a deadline on reading request
//! headers, a cap on open connections, and a graceful shutdown that lets the requests in
//! flight finish. axum's own `serve` sets neither limit: a client dribbling one header line a
//! second kept its connection for as long as it liked (docs/reliability.md, Security: Medium).

use std::{sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo, http::Request};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::HttpServerConfig;

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops accepting and
/// resolves once every open connection has finished its request in flight (idle
/// connections close at once).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpServerConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // A permit per open connection, taken before accepting: at the cap, new clients wait in
    // the listen backlog instead of costing a task and buffers each.
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http1 = hyper::server::conn::http1::Builder::new();
    // The header deadline needs a timer; it also bounds how long a keep-alive connection may
    // sit idle, since waiting for the next request is reading its headers.
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        // The peer's address rides on each request as axum's `ConnectInfo`, for the handlers
        // that log where a request came from (the console's actions).
        let service = router
            .clone()
            .map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
        let connection =
            http1.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // Errors end one client's connection (a reset, a malformed request, headers too
            // slow) and are that client's business.
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A failed accept: a client that gave up is nothing; anything else (such as running out of
/// file descriptors) is logged and waited out, as hyper's old server did.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %error, "cannot accept a connection, retrying in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
