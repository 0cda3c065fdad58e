//! Issue 19, L1: a node forwards an admin call to the address the database gives for the
//! user's owner, and anyone who can `UPDATE cluster_nodes` can point that address elsewhere.
//! A rogue listener put there receives neither the admin token nor anything it can use for
//! another call, the operator does not get its answer, and the owner's next heartbeat puts
//! the address back.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use reqwest::{Method, StatusCode};
use sea_orm::ConnectionTrait;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use super::{Cluster, LEASE_TTL, Settings, owner_of, wait_actor_total};
use crate::support::{ADMIN_TOKEN, eventually};

/// What the rogue answers: what a real owner would say, naming itself.
const ROGUE_ANSWER: &str = r#"{"user_id":"rogue-target","refresh":"queued","node":"rogue-node"}"#;

/// A plain TCP listener on loopback that keeps every request it reads and answers each with
/// `202` and [`ROGUE_ANSWER`].
struct Rogue {
    url: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Rogue {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let kept = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    kept.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&request).into_owned());
                    let answer = format!(
                        "HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{ROGUE_ANSWER}",
                        ROGUE_ANSWER.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self { url, seen }
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// The value of `name` in a raw HTTP request.
fn header(request: &str, name: &str) -> Option<String> {
    request.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_string())
    })
}

impl Cluster {
    async fn advertise_url_of(&self, node_id: &str) -> String {
        let row = self
            .sql
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                format!("SELECT advertise_url FROM cluster_nodes WHERE node_id = '{node_id}'"),
            ))
            .await
            .unwrap()
            .expect("the node's row");
        row.try_get("", "advertise_url").unwrap()
    }

    async fn set_advertise_url(&self, node_id: &str, url: &str) {
        self.sql
            .execute_unprepared(&format!(
                "UPDATE cluster_nodes SET advertise_url = '{url}' WHERE node_id = '{node_id}'"
            ))
            .await
            .unwrap();
    }

    /// `method path` on node `i` carrying `credential` as a forwarded call's, no admin token.
    async fn replay(&self, i: usize, method: Method, path: &str, credential: &str) -> StatusCode {
        self.http
            .request(method, format!("{}{path}", self.nodes[i].url))
            .header("tokenwarden-forwarded", credential)
            .send()
            .await
            .unwrap()
            .status()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_advertise_url_gets_no_admin_token_and_no_say() {
    let Some(cluster) = Cluster::start(Settings {
        nodes: 2,
        ..Settings::default()
    })
    .await
    else {
        return;
    };
    cluster.wait_even(Duration::from_secs(15)).await;
    let user = "rogue-target";
    cluster.connect(user, 0, 0).await.unwrap();
    assert!(wait_actor_total(&cluster, 1, Duration::from_secs(5)).await);
    let owner = owner_of(&cluster, 0, user).await.expect("an owner");
    let (other, owner_id) = (1 - owner, cluster.nodes[owner].id.clone());
    let original = cluster.advertise_url_of(&owner_id).await;
    let rogue = Rogue::start().await;

    // The heartbeat puts the address back within a renewal period (1 s here), so it is
    // pointed at the rogue right before each try.
    let mut answered = None;
    for _ in 0..20 {
        cluster.set_advertise_url(&owner_id, &rogue.url).await;
        let answer = cluster.force_refresh(other, user).await;
        if !rogue.requests().is_empty() {
            answered = Some(answer);
            break;
        }
    }
    let (status, body) = answered.expect("a forwarded call reached the rogue");
    let seen = rogue.requests().remove(0);
    assert!(
        !seen.contains(ADMIN_TOKEN) && header(&seen, "authorization").is_none(),
        "the rogue received the admin token:\n{seen}"
    );
    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "the operator got the rogue's answer: {body}"
    );
    assert_eq!(body["error"], "bad_gateway", "{body}");
    assert!(!body.to_string().contains("rogue-node"), "{body}");

    // What the rogue holds is good for no other call: not another method or route, not
    // another user, not another node.
    let credential = header(&seen, "tokenwarden-forwarded").expect("a forwarded credential");
    let refresh = format!("/admin/actors/{user}/refresh");
    let replays = [
        (owner, Method::GET, format!("/admin/actors/{user}")),
        (
            owner,
            Method::POST,
            "/admin/actors/someone-else/refresh".into(),
        ),
        (other, Method::POST, refresh.clone()),
    ];
    for (node, method, path) in replays {
        let status = cluster
            .replay(node, method.clone(), &path, &credential)
            .await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} on node {node} with the captured credential"
        );
    }

    // The owner's heartbeat restores its address, and forwarding works again.
    let restored = eventually(LEASE_TTL, || async {
        cluster.advertise_url_of(&owner_id).await == original
    })
    .await;
    assert!(
        restored,
        "the advertise URL is still {}",
        cluster.advertise_url_of(&owner_id).await
    );
    let (status, body) = cluster.force_refresh(other, user).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["node"], owner_id, "{body}");
}
