//! `NODE_ADVERTISE_URL` may carry `user:password@` (a proxy in front of a node): neither
//! `serve --help` nor `GET /admin/nodes` shows it (issue 19, Info).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::{
    process::{Served, client, free_port, sandboxes, tokenwarden},
    support::{ADMIN_TOKEN, Backend, ENCRYPTION_KEY, TestDatabase, postgres_available},
};

const PASSWORD: &str = "advertised-password-9f2c";

#[test]
fn help_never_shows_the_advertise_url() {
    let dir = tempfile::tempdir().unwrap();
    let output = tokenwarden(dir.path())
        .args(["serve", "--help"])
        .env(
            "NODE_ADVERTISE_URL",
            format!("https://ops:{PASSWORD}@node-a.internal:3000"),
        )
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{help}");
    assert!(help.contains("NODE_ADVERTISE_URL"), "{help}");
    assert!(
        !help.contains(PASSWORD) && !help.contains("node-a.internal"),
        "--help shows the advertise URL's value:\n{help}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_nodes_shows_the_advertise_url_without_its_userinfo() {
    if !postgres_available().await {
        return;
    }
    let (google, microservice) = sandboxes(Duration::from_secs(3600)).await;
    let db = TestDatabase::create(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().await;
    let advertised = format!("http://ops:{PASSWORD}@127.0.0.1:{port}");
    let served = Served::start(
        dir.path(),
        port,
        &db.url,
        ENCRYPTION_KEY,
        &google,
        &microservice,
        &[
            ("NODE_ID", "urls-node".to_string()),
            ("NODE_ADVERTISE_URL", advertised),
        ],
    )
    .await;
    let response = client()
        .get(format!("{}/admin/nodes", served.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let nodes = body["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1, "{body}");
    assert_eq!(
        nodes[0]["advertise_url"],
        format!("http://127.0.0.1:{port}"),
        "{body}"
    );
    assert!(!body.to_string().contains(PASSWORD), "{body}");
}
