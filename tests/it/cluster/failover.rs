//! SIGKILL of one node of three under refresh load: its leases lapse after the TTL and the
//! others claim its shards at their next renewal; its users' tokens, living longer than TTL +
//! lead, are refreshed by the new owners before they expire; the microservice ends with the
//! database's version of every user and never held a newer one.

use std::time::{Duration, Instant};

use chrono::Utc;

use super::{Cluster, LEASE_TTL, SHARDS, Settings, figure, percentile, user_ids, wait_actor_total};
use crate::support::eventually;

const USERS: usize = 60;

/// Tokens live 16 s and are refreshed 8 s before expiry: longer than TTL (3 s) + lead, so a
/// failover within the TTL and a renewal leaves every token time to be refreshed.
fn refresh_load() -> Settings {
    Settings {
        token_lifetime: Duration::from_secs(16),
        refresh_lead_secs: 8,
        ..Settings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_hands_the_shards_over_within_the_ttl_and_loses_no_refresh() {
    let Some(mut cluster) = Cluster::start(refresh_load()).await else {
        return;
    };
    cluster.wait_even(Duration::from_secs(15)).await;
    let users = user_ids("kill", USERS);
    cluster.connect_all(&users, 8).await;
    assert!(wait_actor_total(&cluster, USERS as i64, Duration::from_secs(10)).await);
    // Refreshes under way: the first round comes 8 s after the connects.
    let refreshing = eventually(Duration::from_secs(15), || async {
        cluster.google.stats().refreshes >= 5
    })
    .await;
    assert!(
        refreshing,
        "refreshes started: {:?}",
        cluster.google.stats()
    );

    let victim = 1;
    let victim_id = cluster.nodes[victim].id.clone();
    let victims = cluster.actor_ids(victim).await;
    assert!(!victims.is_empty(), "{victim_id} owns users");
    let killed_at = Utc::now();
    let killed = Instant::now();
    cluster.kill(victim).await;
    let limit = LEASE_TTL + Duration::from_secs(5);
    let moved = cluster
        .wait_shards_moved(0, &victim_id, killed, limit)
        .await;
    let Some(failover) = moved else {
        panic!(
            "{victim_id}'s shards not owned by the others within {limit:?}: {:?}, leases {:?}",
            cluster.nodes_view(0).await,
            cluster.db_lease_owners().await
        );
    };
    figure(&format!(
        "failover_sigkill_ms={} ttl_s={} users={USERS}",
        failover.as_millis(),
        LEASE_TTL.as_secs()
    ));
    let leases = cluster.db_lease_owners().await;
    assert!(!leases.contains_key(&victim_id), "{leases:?}");
    assert_eq!(leases.values().sum::<i64>(), SHARDS, "{leases:?}");

    // The survivors run every user, and refresh the dead node's users when they are due.
    assert!(
        wait_actor_total(&cluster, USERS as i64, Duration::from_secs(5)).await,
        "the survivors run every actor"
    );
    let ahead = std::sync::Mutex::new(Vec::new());
    let refreshed_by_others = eventually(Duration::from_secs(20), || async {
        let found = cluster.pushed_ahead(&users).await;
        ahead.lock().unwrap().extend(found);
        let db = cluster.db_users().await;
        victims.iter().all(|u| {
            db.get(u)
                .and_then(|r| r.last_refresh_at)
                .is_some_and(|at| at > killed_at)
        })
    })
    .await;
    assert!(
        refreshed_by_others,
        "every user of {victim_id} refreshed after the kill"
    );
    let ahead = ahead.into_inner().unwrap();
    assert!(
        ahead.is_empty(),
        "the microservice held versions the database did not: {ahead:?}"
    );
    let stats = cluster.google.stats();
    assert_eq!(
        stats.expired_before_refresh, 0,
        "no access token expired unrefreshed: {stats:?}"
    );
    let took = cluster.wait_even(Duration::from_secs(10)).await;
    figure(&format!("even_share_after_sigkill_ms={}", took.as_millis()));

    cluster.settle(&users, Duration::from_secs(20)).await;
    cluster.assert_nothing_lost(&users).await;
    figure(&format!(
        "sigkill_run refreshes={} expired_before_refresh={} superseded_refresh_uses={}",
        stats.refreshes, stats.expired_before_refresh, stats.superseded_refresh_uses
    ));
}

/// The failover time after SIGKILL over five kills (a node killed, restarted under the same
/// `NODE_ID`, the share even again, the next one killed), for docs/cluster.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_failover_times_over_five_kills() {
    let Some(mut cluster) = Cluster::start(Settings::default()).await else {
        return;
    };
    cluster.connect_all(&user_ids("fk", 30), 8).await;
    cluster.wait_even(Duration::from_secs(15)).await;
    let mut times = Vec::new();
    for attempt in 0..5 {
        let victim = attempt % 3;
        let observer = (victim + 1) % 3;
        let victim_id = cluster.nodes[victim].id.clone();
        let killed = Instant::now();
        cluster.kill(victim).await;
        let limit = LEASE_TTL + Duration::from_secs(5);
        let moved = cluster
            .wait_shards_moved(observer, &victim_id, killed, limit)
            .await;
        let failover = moved.unwrap_or_else(|| {
            panic!("kill {attempt}: {victim_id}'s shards not moved within {limit:?}")
        });
        figure(&format!(
            "failover_sigkill_ms={} attempt={attempt}",
            failover.as_millis()
        ));
        times.push(failover.as_millis());
        assert!(wait_actor_total(&cluster, 30, Duration::from_secs(5)).await);
        cluster.start_node(victim).await;
        cluster.wait_even(Duration::from_secs(15)).await;
    }
    figure(&format!(
        "failover_sigkill_p50_ms={} failover_sigkill_max_ms={} tries=5",
        percentile(&times, 50),
        times.iter().max().unwrap()
    ));
}
