//! The stall mode: a push the sender gave up on (its timeout) is held by the microservice and
//! lands late, where its `Token-Version` makes it harmless; and the controls that hold and
//! release pushes over HTTP.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokenwarden_sandbox::FaultMode;

use super::{Push, access_token, connect, send};
use crate::{client, microservice, tokens_body};

/// Waits (bounded) until `done` holds.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test]
async fn a_stalled_push_lands_late_and_is_refused_by_version() {
    let ms = microservice().await;
    ms.set_mode(FaultMode::StallThenApply);
    // The sender gives up on version 1 (its timeout), but the push is still on its way.
    let gave_up = Push {
        timeout: Some(Duration::from_millis(300)),
        ..Push::version(1)
    };
    let error = send(&ms, Method::POST, "u", Some(&tokens_body("late")), &gave_up)
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    assert_eq!(ms.stalled(), 1);

    // Newer pushes get through once the mode is healthy; the old one stays held.
    ms.set_mode(FaultMode::Healthy);
    assert_eq!(
        connect(&ms, "u", "newer", &Push::version(2)).await.0,
        StatusCode::OK
    );
    assert_eq!(ms.stalled(), 1);

    ms.release_stalled();
    eventually("the late push is answered", || {
        ms.received().iter().any(|r| r.status == 409)
    })
    .await;
    assert_eq!(ms.stalled(), 0);
    assert_eq!(access_token(&ms, "u").await.as_deref(), Some("newer"));
    assert_eq!(ms.token_version("u").await.unwrap(), Some(2));
    let late = &ms.received()[1];
    assert_eq!(
        (
            late.token_version.as_deref(),
            late.status,
            late.injected_fault
        ),
        (Some("1"), 409, false)
    );
}

#[tokio::test]
async fn a_released_push_is_applied_and_the_controls_work_over_http() {
    let ms = microservice().await;
    let control = format!("{}/sandbox/control", ms.base_url());
    let view: Value = client()
        .post(&control)
        .json(&json!({"mode": "stall_then_apply"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        view,
        json!({"mode": "stall_then_apply", "error_rate": 0.0, "latency_ms": 0, "stalled": 0})
    );
    let pending = tokio::spawn({
        let ms = ms.clone();
        async move { connect(&ms, "u", "held", &Push::version(1)).await }
    });
    eventually("the push is held", || ms.stalled() == 1).await;
    let view: Value = client()
        .post(&control)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["stalled"], 1);
    assert_eq!(access_token(&ms, "u").await, None);

    let released = client()
        .post(&control)
        .json(&json!({"release": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(released.status(), StatusCode::OK);
    let answer = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.0, StatusCode::OK);
    assert_eq!(access_token(&ms, "u").await.as_deref(), Some("held"));

    // The mode stays: the next push is held again, until a stop lets it through.
    let pending = tokio::spawn({
        let ms = ms.clone();
        async move {
            send(
                &ms,
                Method::DELETE,
                "u",
                None,
                &Push {
                    timeout: Some(Duration::from_secs(10)),
                    ..Push::version(2)
                },
            )
            .await
        }
    });
    eventually("the delete is held", || ms.stalled() == 1).await;
    let started = std::time::Instant::now();
    ms.stop().await;
    assert!(started.elapsed() < Duration::from_secs(3));
    let _ = tokio::time::timeout(Duration::from_secs(5), pending).await;
    eventually("the held delete is applied", || {
        ms.received().iter().any(|r| r.method == "DELETE")
    })
    .await;
    assert_eq!(ms.received().last().map(|r| r.status), Some(200));
    assert_eq!(access_token(&ms, "u").await, None);
    assert_eq!(ms.token_version("u").await.unwrap(), Some(2));
}
