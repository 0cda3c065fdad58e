//! Events to the app on a cluster (docs/contract.md section 8 and 9): the shard owner delivers a
//! user's events, wherever the change was written. A callback on a node that does not own the user
//! stores `connection.connected` there; the owner finds it at its next read (it polls every
//! second) and delivers it. When the owner dies with an event undelivered, the node that takes
//! the shard over delivers it, under the same `webhook-id`.

use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use tokenwarden_sandbox::{
    AppEventsReceiver, AppEventsReceiverConfig, ReceivedEvent, ReceiverMode, bind_loopback,
};

use super::{Cluster, LEASE_TTL, SHARDS, Settings, figure};
use crate::support::eventually;

/// The node through which every change in this test is made.
const VIA: usize = 0;

/// The node (index) holding a valid lease on `user`'s shard, by the database.
async fn lease_owner(cluster: &Cluster, user: &str) -> Option<usize> {
    let shard = migration::shard_of(user, SHARDS as u32);
    let rows = cluster
        .sql
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            format!(
                "SELECT owner_node FROM shard_leases \
                 WHERE shard = {shard} AND expires_at > now()"
            ),
        ))
        .await
        .unwrap();
    let owner: String = rows.first()?.try_get("", "owner_node").ok()?;
    cluster.nodes.iter().position(|n| n.id == owner)
}

/// A user id, `prefix-k`, whose shard a node other than [`VIA`] owns; with it, that owner.
async fn user_owned_elsewhere(cluster: &Cluster, prefix: &str) -> (String, usize) {
    for k in 0..50 {
        let user = format!("{prefix}-{k}");
        if let Some(owner) = lease_owner(cluster, &user).await
            && owner != VIA
        {
            return (user, owner);
        }
    }
    panic!("no user of 50 owned by a node other than {VIA}")
}

/// Events of `result` counted by node `i`'s `tokenwarden_app_events_total`, all types.
async fn counted(cluster: &Cluster, i: usize, result: &str) -> f64 {
    let Ok(response) = cluster
        .http
        .get(format!("{}/metrics", cluster.nodes[i].url))
        .send()
        .await
    else {
        return 0.0;
    };
    let label = format!("result=\"{result}\"");
    response
        .text()
        .await
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("tokenwarden_app_events_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn of_user(events: Vec<ReceivedEvent>, user: &str) -> Vec<ReceivedEvent> {
    events
        .into_iter()
        .filter(|e| e.body.as_ref().is_some_and(|b| b["user_id"] == user))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_delivers_a_connect_made_elsewhere_and_a_survivor_after_a_sigkill() {
    let receiver = AppEventsReceiver::start(
        AppEventsReceiverConfig::default(),
        bind_loopback().await.unwrap(),
    )
    .await
    .unwrap();
    let Some(mut cluster) = Cluster::start(Settings {
        app_events_url: Some(receiver.events_url()),
        ..Settings::default()
    })
    .await
    else {
        return;
    };
    cluster.wait_even(Duration::from_secs(15)).await;

    // A consent started and called back on a node that does not own the user.
    let (user, owner) = user_owned_elsewhere(&cluster, "evt-routed").await;
    cluster.connect(&user, VIA, VIA).await.unwrap();
    let called_back = Instant::now();
    let arrived = eventually(Duration::from_secs(10), || async {
        !of_user(receiver.events(), &user).is_empty()
    })
    .await;
    let took = called_back.elapsed();
    assert!(
        arrived,
        "{user}'s event delivered: {:?}",
        receiver.attempts()
    );
    let accepted = of_user(receiver.events(), &user);
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    assert_eq!(
        accepted[0].body.as_ref().unwrap()["type"],
        "connection.connected"
    );
    let attempts = of_user(receiver.attempts(), &user);
    // Delivered by the owner, and by it alone.
    let delivered: Vec<f64> = {
        let mut each = Vec::new();
        for i in 0..cluster.nodes.len() {
            each.push(counted(&cluster, i, "delivered").await);
        }
        each
    };
    assert_eq!(delivered[owner], 1.0, "by the owner {owner}: {delivered:?}");
    assert_eq!(delivered.iter().sum::<f64>(), 1.0, "{delivered:?}");
    figure(&format!(
        "app_event_routed_ms={} attempts={} owner={}",
        took.as_millis(),
        attempts.len(),
        cluster.nodes[owner].id
    ));

    // The app refuses; the owner of another user's shard dies with its event undelivered.
    receiver.set_mode(ReceiverMode::Error500);
    let (user, victim) = user_owned_elsewhere(&cluster, "evt-failover").await;
    cluster.connect(&user, VIA, VIA).await.unwrap();
    let tried = eventually(Duration::from_secs(10), || async {
        !of_user(receiver.attempts(), &user).is_empty()
    })
    .await;
    assert!(tried, "{user}'s event tried by its owner");
    let survivors: Vec<usize> = (0..cluster.nodes.len()).filter(|&i| i != victim).collect();
    let mut before = 0.0;
    for &i in &survivors {
        before += counted(&cluster, i, "delivered").await;
    }
    cluster.kill(victim).await;
    let killed = Instant::now();
    receiver.set_mode(ReceiverMode::Healthy);
    let limit = LEASE_TTL + Duration::from_secs(12);
    let arrived = eventually(limit, || async {
        !of_user(receiver.events(), &user).is_empty()
    })
    .await;
    let took = killed.elapsed();
    assert!(
        arrived,
        "{user}'s event delivered within {limit:?} of its owner's SIGKILL: {:?}",
        of_user(receiver.attempts(), &user)
    );
    let mut after = 0.0;
    for &i in &survivors {
        after += counted(&cluster, i, "delivered").await;
    }
    assert!(
        after > before,
        "a survivor delivered it: {before} -> {after}"
    );
    let attempts = of_user(receiver.attempts(), &user);
    let id = &attempts[0].webhook_id;
    assert!(id.is_some());
    assert!(
        attempts.iter().all(|a| &a.webhook_id == id),
        "one webhook-id before and after the failover: {attempts:?}"
    );
    assert_eq!(of_user(receiver.events(), &user).len(), 1);
    figure(&format!(
        "app_event_failover_ms={} ttl_s={} attempts={}",
        took.as_millis(),
        LEASE_TTL.as_secs(),
        attempts.len()
    ));
}
