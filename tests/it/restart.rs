//! Stop and start on the same database: actors come back with their schedules, and syncs the
//! microservice never acknowledged are delivered.

use std::time::Duration;

use crate::{
    on_both_backends,
    support::{Backend, TestApp, eventually},
};

async fn actors_and_unfinished_syncs_come_back(backend: Backend) {
    let mut t = TestApp::on(backend).await;
    for user in ["u1", "u2", "u3"] {
        t.connect(user).await;
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            t.microservice.stored_count().await.unwrap() == 3
        })
        .await
    );
    // u4 connects while the microservice is down: its sync stays unfinished across the restart.
    t.microservice.stop().await;
    t.connect("u4").await;
    let before: Vec<_> = {
        let mut v = Vec::new();
        for user in ["u1", "u2", "u3", "u4"] {
            v.push(t.actor(user).await.unwrap()["next_refresh_at"].clone());
        }
        v
    };
    t.restart().await;
    t.microservice.restart().await.unwrap();

    let ready = eventually(Duration::from_secs(5), || async {
        t.http
            .get(format!("{}/readyz", t.url))
            .send()
            .await
            .unwrap()
            .status()
            == 200
    })
    .await;
    assert!(ready);
    let (_, list) = t.admin(reqwest::Method::GET, "/admin/actors").await;
    assert_eq!(list["total"], 4);
    for (user, was) in ["u1", "u2", "u3", "u4"].iter().zip(before) {
        let actor = t.actor(user).await.expect("actor back");
        // Far from its refresh, the actor hibernates; either way it is there, scheduled.
        assert!(
            ["active", "hibernating"].contains(&actor["status"].as_str().unwrap()),
            "{actor}"
        );
        assert!(actor["next_refresh_at"].is_string());
        // Same expiry, same lead: the schedule is the one from before (jitter is 0 in tests).
        assert_eq!(actor["next_refresh_at"], was);
    }
    let resumed = eventually(Duration::from_secs(10), || async {
        t.microservice.stored("u4").await.unwrap().is_some()
    })
    .await;
    assert!(resumed, "unfinished sync delivered after restart");
    assert_eq!(
        t.microservice
            .stored("u4")
            .await
            .unwrap()
            .unwrap()
            .access_token,
        t.stored_access_token("u4").await.unwrap()
    );
    t.shutdown().await;
}
on_both_backends!(actors_and_unfinished_syncs_come_back);

#[tokio::test]
async fn users_skipped_without_a_microservice_are_pushed_once_one_is_configured() {
    let mut t = TestApp::spawn_with(crate::support::Options {
        with_microservice: false,
        ..Default::default()
    })
    .await;
    t.connect("v1").await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            t.status("v1").await["sync"]["state"] == "skipped"
        })
        .await
    );
    t.options.with_microservice = true;
    t.restart().await;
    let pushed = eventually(Duration::from_secs(5), || async {
        t.microservice.stored("v1").await.unwrap().is_some()
    })
    .await;
    assert!(pushed);
    t.shutdown().await;
}
