//! Three nodes started at the same moment on an empty database all come up: the migrations
//! run once under an advisory lock, every node joins, and the shards end evenly shared.

use std::time::Duration;

use super::{Cluster, SHARDS, Settings, figure};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_started_at_once_on_an_empty_database_all_become_ready() {
    // `start` launches the three processes together and fails unless each answers
    // `/readyz` 200.
    let Some(cluster) = Cluster::start(Settings::default()).await else {
        return;
    };
    let ids = cluster.running_ids();
    for i in 0..3 {
        let view = cluster.nodes_view(i).await.expect("/admin/nodes answers");
        let mut listed: Vec<String> = view.iter().map(|n| n.node_id.clone()).collect();
        listed.sort();
        assert_eq!(listed, ids, "node {i} lists every node: {view:?}");
        assert_eq!(
            view.iter().map(|n| n.shards).sum::<i64>(),
            SHARDS,
            "node {i}: every shard owned: {view:?}"
        );
        for node in &view {
            let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).is_ok();
            assert!(at(&node.started_at) && at(&node.last_seen), "{node:?}");
            let n = cluster.nodes.iter().find(|n| n.id == node.node_id).unwrap();
            assert_eq!(node.advertise_url.trim_end_matches('/'), n.url);
            assert_eq!(node.actors, 0, "no users yet");
        }
    }
    let took = cluster.wait_even(Duration::from_secs(15)).await;
    figure(&format!("start_even_share_ms={}", took.as_millis()));
    let leases = cluster.db_lease_owners().await;
    assert_eq!(leases.values().sum::<i64>(), SHARDS, "{leases:?}");
    // One migration run: one shard count, one lease row per shard.
    assert_eq!(cluster.shard_settings().await, vec![SHARDS, SHARDS]);
}
