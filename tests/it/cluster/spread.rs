//! 600 users connected through three nodes, each consent started on one node and its
//! callback landing on the next: every user is owned by exactly one node, the actors the nodes
//! list add up to the users, and shards and actors are evenly spread.

use std::{collections::HashMap, time::Duration};

use crate::support::eventually;

use super::{Cluster, SHARDS, Settings, figure, user_ids, wait_actor_total, within_one_of_even};

const USERS: usize = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_users_through_three_nodes_are_each_owned_once_and_evenly() {
    let Some(cluster) = Cluster::start(Settings::default()).await else {
        return;
    };
    cluster.wait_even(Duration::from_secs(15)).await;
    let users = user_ids("spread", USERS);
    let took = cluster.connect_all(&users, 16).await;
    figure(&format!(
        "connect_600_through_3_nodes_ms={} in_flight=16",
        took.as_millis()
    ));

    let all_listed = wait_actor_total(&cluster, USERS as i64, Duration::from_secs(10)).await;
    let mut owners: HashMap<String, Vec<String>> = HashMap::new();
    let mut totals = Vec::new();
    for i in 0..3 {
        let (actors, total) = cluster.actors(i).await.expect("/admin/actors answers");
        assert_eq!(
            actors.len() as i64,
            total,
            "node {i}: total counts its listed actors"
        );
        for actor in &actors {
            assert_eq!(
                actor["node"], cluster.nodes[i].id,
                "node {i} lists only its own actors: {actor}"
            );
            owners
                .entry(actor["user_id"].as_str().unwrap().to_string())
                .or_default()
                .push(cluster.nodes[i].id.clone());
        }
        totals.push(total);
    }
    assert!(
        all_listed,
        "the nodes' totals add up to {USERS}: {totals:?}"
    );
    assert_eq!(totals.iter().sum::<i64>(), USERS as i64, "{totals:?}");
    let twice: Vec<_> = owners.iter().filter(|(_, n)| n.len() > 1).collect();
    assert!(twice.is_empty(), "users owned by several nodes: {twice:?}");
    let missing: Vec<_> = users.iter().filter(|u| !owners.contains_key(*u)).collect();
    assert!(missing.is_empty(), "users owned by no node: {missing:?}");

    // The owner the database's leases name is the node that lists the user.
    let view = cluster.nodes_view(0).await.unwrap();
    assert_eq!(view.iter().map(|n| n.shards).sum::<i64>(), SHARDS);
    for node in &view {
        assert!(
            within_one_of_even(node.shards, 3),
            "{} owns {} shards: {view:?}",
            node.node_id,
            node.shards
        );
    }
    for (i, total) in totals.iter().enumerate() {
        assert!(
            (150..=250).contains(total),
            "node {i} runs {total} of {USERS} actors: {totals:?}"
        );
    }
    // `/admin/nodes` shows the same actor counts (they are reported at each renewal).
    let counted = eventually(Duration::from_secs(5), || async {
        let view = cluster.nodes_view(1).await.unwrap_or_default();
        view.iter().map(|n| n.actors).sum::<i64>() == USERS as i64
    })
    .await;
    assert!(
        counted,
        "/admin/nodes counts every actor: {:?}",
        cluster.nodes_view(1).await
    );
    figure(&format!(
        "spread_600 actors_per_node={totals:?} shards_per_node={:?}",
        view.iter().map(|n| n.shards).collect::<Vec<_>>()
    ));
    // Everyone pushed once, by someone.
    cluster.settle(&users, Duration::from_secs(20)).await;
}
