//! SIGSTOP of one node past its lease (a frozen VM), under refresh load with rotating refresh
//! tokens and no grace: the others take its shards and refresh its users; on SIGCONT its
//! overdue timers must neither call Google nor push nor commit for the shards it lost (a
//! second use of a rotated refresh token would show at the sandbox and cost the user its
//! grant; a push of an older version would be refused with 409). It then rejoins and gets its
//! share back.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::{Cluster, LEASE_TTL, Settings, figure, pushed_by, user_ids, wait_actor_total};
use crate::support::eventually;

const USERS: usize = 60;

const LEASE_SKIPS: &str = "tokenwarden_cluster_lease_skips_total";
const FENCED_WRITES: &str = "tokenwarden_cluster_fenced_writes_total";
const SHARDS_OWNED: &str = "tokenwarden_cluster_shards_owned";

/// Waits (at most 10 s) for a moment when none of `node`'s actors is due within a second
/// either way, so the stop does not freeze a call to Google half-way (the rotated token it
/// was answered with would be lost with the frozen process, whatever the design).
async fn quiet_moment(cluster: &Cluster, node: usize) {
    let quiet = eventually(Duration::from_secs(10), || async {
        let Some((actors, _)) = cluster.actors(node).await else {
            return false;
        };
        let now = Utc::now();
        actors.iter().all(|a| {
            a["next_refresh_at"]
                .as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .is_none_or(|at| (at.with_timezone(&Utc) - now).num_milliseconds().abs() > 1000)
        })
    })
    .await;
    if !quiet {
        eprintln!("no quiet moment found: stopping anyway");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_past_its_lease_commits_and_pushes_nothing_for_lost_shards() {
    let Some(cluster) = Cluster::start(Settings {
        token_lifetime: Duration::from_secs(16),
        refresh_lead_secs: 8,
        rotation: true,
        ..Settings::default()
    })
    .await
    else {
        return;
    };
    cluster.wait_even(Duration::from_secs(15)).await;
    let users = user_ids("stop", USERS);
    cluster.connect_all(&users, 8).await;
    assert!(wait_actor_total(&cluster, USERS as i64, Duration::from_secs(10)).await);

    let victim = 1;
    let victim_id = cluster.nodes[victim].id.clone();
    for name in [LEASE_SKIPS, FENCED_WRITES, SHARDS_OWNED] {
        assert!(
            cluster.metric(victim, name).await.is_some(),
            "{victim_id} exports {name}"
        );
    }
    let metrics_text =
        crate::support::metrics_text(&cluster.http, &cluster.nodes[victim].url).await;
    assert!(
        metrics_text
            .lines()
            .any(|l| l.starts_with(SHARDS_OWNED) && l.contains(&format!("node=\"{victim_id}\""))),
        "metrics carry the node label"
    );
    let skips_before = cluster.metric(victim, LEASE_SKIPS).await.unwrap();
    let fenced_before = cluster.metric(victim, FENCED_WRITES).await.unwrap();
    let pushes_before = cluster
        .microservice
        .received()
        .iter()
        .filter(|r| pushed_by(r).as_deref() == Some(victim_id.as_str()))
        .count();
    assert!(
        pushes_before > 0,
        "pushes name their node (Basic userinfo of the microservice URL)"
    );

    quiet_moment(&cluster, victim).await;
    let victims = cluster.actor_ids(victim).await;
    assert!(!victims.is_empty(), "{victim_id} owns users");
    let versions = cluster.db_versions().await;
    let stopped = Instant::now();
    cluster.signal(victim, "STOP");
    let limit = LEASE_TTL + Duration::from_secs(5);
    let Some(failover) = cluster
        .wait_shards_moved(0, &victim_id, stopped, limit)
        .await
    else {
        cluster.signal(victim, "CONT");
        panic!("{victim_id}'s shards not taken over within {limit:?} of SIGSTOP");
    };
    figure(&format!("failover_sigstop_ms={}", failover.as_millis()));
    // The others refresh every user of the stopped node (each is due once in 8 s).
    let taken_over = eventually(Duration::from_secs(15), || async {
        let now = cluster.db_versions().await;
        victims.iter().all(|u| now.get(u) > versions.get(u))
    })
    .await;
    if !taken_over {
        cluster.signal(victim, "CONT");
        panic!("the others did not refresh {victim_id}'s users while it was stopped");
    }
    let stopped_for = stopped.elapsed();
    assert!(
        stopped_for > LEASE_TTL + Duration::from_secs(2),
        "stopped past the lease: {stopped_for:?}"
    );
    let resumed_at = Utc::now();
    cluster.signal(victim, "CONT");

    // It rejoins and gets its share back.
    let rejoined = cluster.wait_even(Duration::from_secs(20)).await;
    figure(&format!(
        "sigstop_rejoin_even_ms={} stopped_ms={}",
        rejoined.as_millis(),
        stopped_for.as_millis()
    ));
    let skips = cluster.metric(victim, LEASE_SKIPS).await.unwrap() - skips_before;
    let fenced = cluster.metric(victim, FENCED_WRITES).await.unwrap() - fenced_before;

    cluster.settle(&users, Duration::from_secs(20)).await;
    // Nothing it sent after the resume was refused as stale by the microservice.
    let after: Vec<_> = cluster
        .microservice
        .received()
        .into_iter()
        .filter(|r| pushed_by(r).as_deref() == Some(victim_id.as_str()))
        .filter(|r| r.received_at >= resumed_at)
        .collect();
    let refused: Vec<_> = after
        .iter()
        .filter(|r| r.status != 200)
        .map(|r| (r.user_id.clone(), r.token_version.clone(), r.status))
        .collect();
    assert!(
        refused.is_empty(),
        "{victim_id} pushed stale versions after SIGCONT: {refused:?}"
    );
    // No duplicate refresh (rotation with zero grace), no token lost, no push out of order.
    cluster.assert_nothing_lost(&users).await;
    let stats = cluster.google.stats();
    figure(&format!(
        "sigstop_run lease_skips={skips} fenced_writes={fenced} pushes_after_resume={} \
         refused_pushes_after_resume=0 superseded_refresh_uses={} refreshes={}",
        after.len(),
        stats.superseded_refresh_uses,
        stats.refreshes
    ));
}
