//! Graceful stop: after SIGTERM a node releases its leases and tells the others, which claim
//! its shards at once: owned elsewhere within 2 s, not after the TTL. Five stops, for the
//! failover figures of docs/cluster.md.

use std::time::{Duration, Instant};

use super::{Cluster, LEASE_TTL, Settings, figure, percentile, user_ids, wait_actor_total};

const USERS: usize = 30;
/// The longest a graceful hand-over may take.
const LIMIT: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_the_shards_over_within_two_seconds() {
    let Some(mut cluster) = Cluster::start(Settings::default()).await else {
        return;
    };
    cluster.wait_even(Duration::from_secs(15)).await;
    cluster.connect_all(&user_ids("term", USERS), 8).await;
    assert!(wait_actor_total(&cluster, USERS as i64, Duration::from_secs(10)).await);
    let mut times = Vec::new();
    for attempt in 0..5 {
        let victim = (attempt + 1) % 3;
        let observer = (victim + 1) % 3;
        let victim_id = cluster.nodes[victim].id.clone();
        let signalled = Instant::now();
        cluster.signal(victim, "TERM");
        // Observed until the TTL has long passed, so a slow hand-over is measured too.
        let moved = cluster
            .wait_shards_moved(observer, &victim_id, signalled, LEASE_TTL * 3)
            .await;
        let status = cluster.wait_exit(victim, Duration::from_secs(15)).await;
        assert!(status.success(), "exit 0 after SIGTERM: {status:?}");
        let Some(took) = moved else {
            panic!(
                "stop {attempt}: {victim_id}'s shards still not owned elsewhere after {:?}",
                LEASE_TTL * 3
            );
        };
        figure(&format!(
            "failover_sigterm_ms={} attempt={attempt}",
            took.as_millis()
        ));
        assert!(
            took <= LIMIT,
            "stop {attempt}: {victim_id}'s shards owned elsewhere after {took:?}, not within \
             {LIMIT:?}"
        );
        times.push(took.as_millis());
        assert!(
            wait_actor_total(&cluster, USERS as i64, Duration::from_secs(5)).await,
            "the others run every actor"
        );
        cluster.start_node(victim).await;
        cluster.wait_even(Duration::from_secs(15)).await;
    }
    figure(&format!(
        "failover_sigterm_p50_ms={} failover_sigterm_max_ms={} tries=5",
        percentile(&times, 50),
        times.iter().max().unwrap()
    ));
}
