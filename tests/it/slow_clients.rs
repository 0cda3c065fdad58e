//! Client connections are bounded (docs/reliability.md, Security: Medium): a client that sends its
//! headers too slowly is cut off after `HTTP_HEADER_READ_TIMEOUT_SECS`, and at most
//! `HTTP_MAX_CONNECTIONS` connections are served at once. Raw TCP on loopback, so that the
//! test controls every byte and every connection.

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::support::{Options, TestApp};

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: tokenwarden.test\r\n\r\n";

/// Whether the server ends the connection within `wait`: end of stream, a reset, or any
/// answer (hyper may say why before closing).
async fn ended_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(wait, stream.read(&mut buf))
        .await
        .is_ok()
}

/// Whether `/healthz`'s answer arrives on `stream` within `wait`.
async fn answered_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let read_answer = async {
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
            if String::from_utf8_lossy(&seen).contains(r#"{"status":"ok"}"#) {
                return true;
            }
        }
    };
    tokio::time::timeout(wait, read_answer)
        .await
        .unwrap_or(false)
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_cut_off() {
    let t = TestApp::spawn_with(Options {
        header_read_timeout_secs: 2,
        ..Options::default()
    })
    .await;
    let addr = t.app().addr;

    // One header line a second: without a deadline this would go on for as long as the
    // client likes.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let mut cut = false;
    for i in 0..10 {
        if ended_within(&mut slow, Duration::from_secs(1)).await {
            cut = true;
            break;
        }
        // Once the server has closed, a write may fail; the next read tells.
        let _ = slow
            .write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
            .await;
    }
    let took = started.elapsed();
    assert!(cut, "still open after {took:?} of dribbled headers");
    assert!(took < Duration::from_secs(6), "cut off only after {took:?}");

    // A normal request is served as before.
    let response = t
        .http
        .get(format!("{}/healthz", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // Waiting for the next request is reading its headers: an idle keep-alive connection
    // goes after the same deadline.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(HEALTHZ).await.unwrap();
    assert!(answered_within(&mut idle, Duration::from_secs(5)).await);
    let idle_since = Instant::now();
    assert!(
        ended_within(&mut idle, Duration::from_secs(5)).await,
        "idle keep-alive connection still open"
    );
    assert!(idle_since.elapsed() >= Duration::from_millis(1500));
    t.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let t = TestApp::spawn_with(Options {
        max_connections: 2,
        ..Options::default()
    })
    .await;
    let addr = t.app().addr;
    // Two keep-alive connections, each served once and then held open, idle.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(HEALTHZ).await.unwrap();
        assert!(
            answered_within(&mut stream, Duration::from_secs(5)).await,
            "served under the cap"
        );
        held.push(stream);
    }
    // The kernel completes a third connection, but the service does not take it up.
    let mut third = TcpStream::connect(addr).await.unwrap();
    third.write_all(HEALTHZ).await.unwrap();
    assert!(
        !answered_within(&mut third, Duration::from_secs(1)).await,
        "a third connection was served while two were open"
    );
    // Closing one frees its slot; the waiting request is served then.
    drop(held.pop());
    assert!(
        answered_within(&mut third, Duration::from_secs(5)).await,
        "the waiting connection was served once a slot was free"
    );
    t.shutdown().await;
}
