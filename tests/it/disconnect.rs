//! Disconnect: revoked at Google, cleared here, actor stopped, deleted at the microservice.

use std::time::Duration;

use reqwest::StatusCode;

use crate::{
    on_both_backends,
    support::{Backend, TestApp, eventually, log_lines_with},
};

async fn disconnect_clears_everything(backend: Backend) {
    let t = TestApp::on(backend).await;
    t.connect("nina").await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            t.microservice.stored("nina").await.unwrap().is_some()
        })
        .await
    );
    let stored = t.microservice.stored("nina").await.unwrap().unwrap();
    assert!(t.actor("nina").await.is_some());

    let (status, body) = t.disconnect("nina").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["success"], true);
    assert_eq!(body["message"], "Google Calendar disconnected successfully");

    assert!(
        t.google.revoked_tokens().contains(&stored.refresh_token),
        "revoked at Google"
    );
    assert!(!t.google.is_refresh_token_valid(&stored.refresh_token));
    let status = t.status("nina").await;
    assert_eq!(status["connected"], false);
    assert!(t.stored_access_token("nina").await.is_none());
    assert!(
        eventually(Duration::from_secs(3), || async {
            t.actor("nina").await.is_none()
        })
        .await,
        "actor gone"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            t.microservice.stored("nina").await.unwrap().is_none()
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            !log_lines_with(&["Tokens deleted from microservice successfully", "nina"]).is_empty()
        })
        .await
    );
    assert_eq!(
        log_lines_with(&["Deleting Google Calendar tokens from microservice", "nina"]).len(),
        1
    );

    let (status, body) = t.disconnect("nina").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string() && body["message"].is_string());
    t.shutdown().await;
}
on_both_backends!(disconnect_clears_everything);

#[tokio::test]
async fn microservice_404_on_delete_counts_as_done() {
    let t = TestApp::spawn().await;
    t.connect("omar").await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            t.status("omar").await["sync"]["state"] == "synced"
        })
        .await
    );
    // The microservice forgot the user on its own.
    let url = format!("{}/api/google-tokens/omar", t.microservice.base_url());
    assert_eq!(
        t.http.delete(url).send().await.unwrap().status(),
        StatusCode::OK
    );

    assert_eq!(t.disconnect("omar").await.0, StatusCode::OK);
    let done = eventually(Duration::from_secs(5), || async {
        let row = t.app().store.user("omar").await.unwrap().unwrap();
        row.sync_state == "synced" && row.synced_version == row.token_version
    })
    .await;
    assert!(done, "404 on DELETE is success");
    let deletes: Vec<_> = t
        .microservice
        .received()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .collect();
    assert_eq!(deletes.last().unwrap().status, 404);
    t.shutdown().await;
}
