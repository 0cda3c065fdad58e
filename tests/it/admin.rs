//! Operator routes: the actor registry with paging, resync, health, readiness and metrics.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};

use crate::on_both_backends;
use crate::support::{Backend, TestApp, eventually};

#[tokio::test]
async fn actors_are_listed_in_pages_ordered_by_user_id() {
    let t = TestApp::spawn().await;
    for user in ["w3", "w1", "w5", "w2", "w4"] {
        t.connect(user).await;
    }
    let (status, page) = t.admin(Method::GET, "/admin/actors?limit=2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["total"], 5);
    let ids = |page: &serde_json::Value| -> Vec<String> {
        page["actors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["user_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&page), ["w1", "w2"]);
    let cursor = page["next_cursor"].as_str().unwrap().to_string();
    let (_, page) = t
        .admin(
            Method::GET,
            &format!("/admin/actors?limit=2&cursor={cursor}"),
        )
        .await;
    assert_eq!(ids(&page), ["w3", "w4"]);
    let cursor = page["next_cursor"].as_str().unwrap().to_string();
    let (_, page) = t
        .admin(
            Method::GET,
            &format!("/admin/actors?limit=2&cursor={cursor}"),
        )
        .await;
    assert_eq!(ids(&page), ["w5"]);
    assert!(page["next_cursor"].is_null());

    let actor = &page["actors"][0];
    for field in [
        "status",
        "token_expiry",
        "next_refresh_at",
        "last_refresh_at",
        "refresh_count",
        "restarts",
        "sync",
    ] {
        assert!(actor.get(field).is_some(), "{field} in {actor}");
    }
    for field in ["state", "synced_at", "attempts", "last_error"] {
        assert!(actor["sync"].get(field).is_some(), "sync.{field}");
    }
    let (status, _) = t.admin(Method::GET, "/admin/actors/nobody").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    t.shutdown().await;
}

#[tokio::test]
async fn resync_pushes_every_connected_user_again() {
    let t = TestApp::spawn().await;
    for user in ["x1", "x2"] {
        t.connect(user).await;
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            t.microservice.stored_count().await.unwrap() == 2
        })
        .await
    );
    let posts_before = t.microservice.received().len();
    let (status, body) = t.admin(Method::POST, "/admin/resync").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["queued"], 2);
    let pushed = eventually(Duration::from_secs(5), || async {
        t.microservice.received().len() >= posts_before + 2
    })
    .await;
    assert!(pushed);
    t.shutdown().await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let t = TestApp::spawn().await;
    assert_eq!(
        t.http
            .get(format!("{}/healthz", t.url))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let ready = eventually(Duration::from_secs(5), || async {
        t.http
            .get(format!("{}/readyz", t.url))
            .send()
            .await
            .unwrap()
            .status()
            == StatusCode::OK
    })
    .await;
    assert!(ready);
    t.connect("yara").await;
    t.admin(Method::POST, "/admin/actors/yara/refresh").await;
    let counted = eventually(Duration::from_secs(5), || async {
        let text = t.metrics().await;
        text.contains(
            "tokenwarden_refreshes_total{node=\"test-node\",reason=\"forced\",result=\"ok\"} 1",
        )
    })
    .await;
    assert!(counted);
    // The connect's push runs beside the refresh; its counter appears once it is recorded.
    let pushed = eventually(Duration::from_secs(5), || async {
        t.metrics().await.contains("tokenwarden_syncs_total")
    })
    .await;
    assert!(pushed, "the connect's push is counted");
    let text = t.metrics().await;
    for name in [
        "tokenwarden_actors",
        "tokenwarden_syncs_total",
        "tokenwarden_http_request_duration_seconds_bucket",
        "tokenwarden_refresh_lateness_seconds",
    ] {
        assert!(text.contains(name), "{name} in metrics");
    }
    assert!(!text.contains("yara"), "no user ids in metrics");
    // Every sample line is `name{labels} value` with a numeric value.
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        assert!(value.parse::<f64>().is_ok(), "numeric value in {line}");
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "metric name {name}"
        );
    }
    assert!(text.trim_end().ends_with("# EOF"));
    t.shutdown().await;
}

/// `/readyz` answers from one shared database check (docs/reliability.md, Security: Low 3): probes do
/// not each take a database connection and a write lock, so a flood of them cannot starve
/// the refreshes' writes; a locked database is still reported within about two seconds.
async fn readiness_probes_share_one_database_check(backend: Backend) {
    use sea_orm::{ConnectionTrait, Database, TransactionTrait};
    let t = TestApp::on(backend).await;
    t.connect("rita").await;
    let readyz = || async {
        t.http
            .get(format!("{}/readyz", t.url))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    assert!(eventually(Duration::from_secs(5), || async { readyz().await == 200 }).await);

    let locker = Database::connect(t.db.url.as_str()).await.unwrap();
    let txn = locker.begin().await.unwrap();
    let lock = match backend {
        Backend::Sqlite => "UPDATE users SET updated_at = updated_at WHERE 1 = 0",
        Backend::Postgres => "LOCK TABLE users IN ACCESS EXCLUSIVE MODE",
    };
    txn.execute_unprepared(lock).await.unwrap();
    let locked_at = Instant::now();
    let seen = eventually(Duration::from_secs(3), || async { readyz().await == 503 }).await;
    assert!(seen, "the locked database is reported");
    assert!(locked_at.elapsed() < Duration::from_millis(2500));
    // Each check of a locked database waits out the ping timeout (1 s); ten probes that each
    // ran one would take ten seconds.
    let started = Instant::now();
    for _ in 0..10 {
        assert_eq!(readyz().await, 503);
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "ten probes took {took:?}: each waited on the database"
    );
    txn.rollback().await.unwrap();
    let ready = eventually(Duration::from_secs(5), || async { readyz().await == 200 }).await;
    assert!(ready, "ready again once the lock is gone");
    t.shutdown().await;
}
on_both_backends!(readiness_probes_share_one_database_check);

/// A write lock held briefly, as every batch of refreshes holds it, is waited out rather
/// than reported: on SQLite the ping used to read first and was then refused the lock at
/// once, so `/readyz` said 503 to about a third of probes under load.
async fn readiness_waits_out_a_brief_write_lock(backend: Backend) {
    use sea_orm::{ConnectionTrait, Database, TransactionTrait};
    let t = TestApp::on(backend).await;
    t.connect("rosa").await;
    let loaded = eventually(Duration::from_secs(5), || async {
        t.app().supervisor.is_loaded()
    })
    .await;
    assert!(loaded);
    let locker = Database::connect(t.db.url.as_str()).await.unwrap();
    let txn = locker.begin().await.unwrap();
    let lock = match backend {
        Backend::Sqlite => "UPDATE users SET updated_at = updated_at WHERE 1 = 0",
        Backend::Postgres => "LOCK TABLE users IN ACCESS EXCLUSIVE MODE",
    };
    txn.execute_unprepared(lock).await.unwrap();
    // No probe ran yet, so this one runs the database check while the lock is held.
    let probe = tokio::spawn(
        t.http
            .get(format!("{}/readyz", t.url))
            .timeout(Duration::from_secs(5))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    txn.rollback().await.unwrap();
    let status = probe.await.unwrap().unwrap().status();
    assert_eq!(
        status,
        StatusCode::OK,
        "a brief write lock made the service unready"
    );
    t.shutdown().await;
}
on_both_backends!(readiness_waits_out_a_brief_write_lock);
