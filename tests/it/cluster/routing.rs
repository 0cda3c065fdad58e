//! A callback, a disconnect and a forced refresh landing on a node that does not own the user
//! take effect at the owner within a second: the owner's actor has the new tokens (and the
//! microservice gets them), stops, or refreshes. `GET /admin/actors/{id}` answers with the
//! owner's view from any node.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::StatusCode;

use super::{Cluster, Settings, figure, owner_of, pushed_by, wait_actor_total};
use crate::support::eventually;

/// How soon a change made on another node must show at the owner.
const WITHIN: Duration = Duration::from_secs(1);

/// The owner of `user`, checked from every node: each answers `GET /admin/actors/{user}` with
/// the same `node`, and that node's own list holds the user.
async fn owner(cluster: &Cluster, user: &str) -> usize {
    let owner = owner_of(cluster, 0, user).await.expect("an owner");
    for via in 0..cluster.nodes.len() {
        assert_eq!(
            owner_of(cluster, via, user).await,
            Some(owner),
            "node {via} names the same owner of {user}"
        );
    }
    assert!(cluster.actor_ids(owner).await.contains(&user.to_string()));
    owner
}

fn expiry(actor: &serde_json::Value) -> Option<DateTime<Utc>> {
    Some(
        DateTime::parse_from_rfc3339(actor["token_expiry"].as_str()?)
            .ok()?
            .with_timezone(&Utc),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_disconnect_and_forced_refresh_on_a_non_owner_reach_the_owner_within_a_second() {
    let Some(cluster) = Cluster::start(Settings::default()).await else {
        return;
    };
    cluster.wait_even(Duration::from_secs(15)).await;
    let users: Vec<String> = ["route-callback", "route-disconnect", "route-refresh"]
        .map(String::from)
        .to_vec();
    for user in &users {
        cluster.connect(user, 0, 0).await.unwrap();
    }
    assert!(wait_actor_total(&cluster, 3, Duration::from_secs(5)).await);
    cluster.settle(&users, Duration::from_secs(10)).await;

    // A second consent, started and called back on a node that is not the owner: tokens
    // issued now live two hours, so the owner's actor shows whether it has them.
    let user = "route-callback";
    let owner_node = owner(&cluster, user).await;
    let other = (owner_node + 1) % 3;
    cluster.google.set_token_lifetime(Duration::from_secs(7200));
    cluster.connect(user, other, other).await.unwrap();
    let called_back = Instant::now();
    let reached = eventually(WITHIN, || async {
        let actor = cluster.actor(owner_node, user).await;
        let new_tokens = actor.is_some_and(|(status, body)| {
            status == StatusCode::OK
                && expiry(&body).is_some_and(|at| at > Utc::now() + chrono::Duration::minutes(90))
        });
        new_tokens && cluster.lagging_users(&[user.to_string()]).await.is_empty()
    })
    .await;
    let took = called_back.elapsed();
    assert!(
        reached,
        "a callback on node {other} reached owner node {owner_node} within {WITHIN:?}: actor \
         {:?}",
        cluster.actor(owner_node, user).await
    );
    let pusher = cluster
        .microservice
        .received()
        .iter()
        .rev()
        .find(|r| r.user_id == user && r.status == 200)
        .and_then(pushed_by);
    figure(&format!(
        "routing_callback_ms={} pushed_by={pusher:?} owner={}",
        took.as_millis(),
        cluster.nodes[owner_node].id
    ));

    // A forced refresh sent to a non-owner.
    let user = "route-refresh";
    let owner_node = owner(&cluster, user).await;
    let other = (owner_node + 2) % 3;
    let (_, before) = cluster.actor(owner_node, user).await.unwrap();
    let count_before = before["refresh_count"].as_i64().unwrap();
    let version_before = cluster.db_versions().await[user];
    let sent = Instant::now();
    let (status, body) = cluster.force_refresh(other, user).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        body["node"], cluster.nodes[owner_node].id,
        "the answer names the owner: {body}"
    );
    let reached = eventually(WITHIN, || async {
        let refreshed = cluster
            .actor(owner_node, user)
            .await
            .is_some_and(|(_, a)| a["refresh_count"].as_i64() > Some(count_before));
        refreshed
            && cluster.db_versions().await[user] > version_before
            && cluster.lagging_users(&[user.to_string()]).await.is_empty()
    })
    .await;
    let took = sent.elapsed();
    assert!(
        reached,
        "a forced refresh on node {other} ran at owner node {owner_node} within {WITHIN:?}: {:?}",
        cluster.actor(owner_node, user).await
    );
    figure(&format!("routing_forced_refresh_ms={}", took.as_millis()));

    // A disconnect sent to a non-owner.
    let user = "route-disconnect";
    let owner_node = owner(&cluster, user).await;
    let other = (owner_node + 1) % 3;
    let sent = Instant::now();
    assert_eq!(cluster.disconnect(other, user).await, StatusCode::OK);
    let reached = eventually(WITHIN, || async {
        let stopped = cluster
            .actor(owner_node, user)
            .await
            .is_some_and(|(status, _)| status == StatusCode::NOT_FOUND);
        stopped && cluster.microservice.stored(user).await.unwrap().is_none()
    })
    .await;
    let took = sent.elapsed();
    assert!(
        reached,
        "a disconnect on node {other} stopped the actor at owner node {owner_node} within \
         {WITHIN:?}: {:?}",
        cluster.actor(owner_node, user).await
    );
    assert!(
        !cluster
            .actor_ids(owner_node)
            .await
            .contains(&user.to_string())
    );
    figure(&format!("routing_disconnect_ms={}", took.as_millis()));

    assert!(wait_actor_total(&cluster, 2, Duration::from_secs(2)).await);
    cluster.assert_pushes_in_order();
}
