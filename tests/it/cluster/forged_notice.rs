//! Issue 19, L4: any PostgreSQL role that can connect may `LISTEN` and `NOTIFY` on the
//! changes channel. A listener learns no user id from a node's notice, and a notice forged in
//! raw SQL (or a node's notice replayed) makes no node push; each node drops and counts it.
//! A node's own notice (here the operator's resync) still works.

use std::time::Duration;

use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, DbBackend, Statement, sqlx::postgres::PgListener};

use super::{Cluster, Settings, owner_of, wait_actor_total};
use crate::support::{ADMIN_TOKEN, eventually};

const CHANNEL: &str = "tokenwarden_changes";

impl Cluster {
    /// `tokenwarden_cluster_notices_dropped_total{reason}` on node `i`.
    async fn notices_dropped(&self, i: usize, reason: &str) -> f64 {
        let text = crate::support::metrics_text(&self.http, &self.nodes[i].url).await;
        let label = format!("reason=\"{reason}\"");
        text.lines()
            .filter(|l| l.starts_with("tokenwarden_cluster_notices_dropped_total{"))
            .filter(|l| l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    async fn raw_notify(&self, payload: &str) {
        self.sql
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_notify($1, $2)",
                [CHANNEL.into(), payload.into()],
            ))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_notices_are_dropped_and_counted() {
    let Some(cluster) = Cluster::start(Settings {
        nodes: 2,
        ..Settings::default()
    })
    .await
    else {
        return;
    };
    cluster.wait_even(Duration::from_secs(15)).await;
    let user = "notice-target";
    cluster.connect(user, 0, 0).await.unwrap();
    assert!(wait_actor_total(&cluster, 1, Duration::from_secs(5)).await);
    cluster
        .settle(&[user.to_string()], Duration::from_secs(10))
        .await;
    let owner = owner_of(&cluster, 0, user).await.expect("an owner");
    let other = 1 - owner;

    // A role that can only connect listens while the user reconnects through the node that
    // does not own it, so that node notifies the owner.
    let mut listener = PgListener::connect(&cluster.db.url).await.unwrap();
    listener.listen(CHANNEL).await.unwrap();
    cluster.connect(user, other, other).await.unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("a notice within 5 s")
        .unwrap();
    let captured = heard.payload().to_string();
    assert!(
        !captured.contains(user) && !captured.contains("user:"),
        "a listener read the user id: {captured}"
    );
    cluster
        .settle(&[user.to_string()], Duration::from_secs(10))
        .await;

    // The row moves on behind the nodes' backs; forged and replayed notices must not get it
    // pushed.
    cluster
        .sql
        .execute_unprepared(&format!(
            "UPDATE users SET token_version = token_version + 1, sync_state = 'pending' \
             WHERE user_id = '{user}'"
        ))
        .await
        .unwrap();
    let bumped = cluster.db_versions().await[user] as u64;
    let mut before = Vec::new();
    for i in 0..2 {
        before.push((
            cluster.notices_dropped(i, "unsealed").await,
            cluster.notices_dropped(i, "replayed").await,
        ));
    }
    cluster.raw_notify(&format!("user:{user}")).await;
    cluster.raw_notify("resync").await;
    cluster.raw_notify(&captured).await;
    let counted = eventually(Duration::from_secs(5), || async {
        for (i, (unsealed, replayed)) in before.iter().enumerate() {
            if cluster.notices_dropped(i, "unsealed").await < unsealed + 2.0
                || cluster.notices_dropped(i, "replayed").await < replayed + 1.0
            {
                return false;
            }
        }
        true
    })
    .await;
    assert!(
        counted,
        "every node counts two forged notices and one replay"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pushed = cluster.microservice.token_version(user).await.unwrap();
    assert!(
        pushed < Some(bumped),
        "a forged or replayed notice got version {bumped} pushed"
    );

    // The operator's resync, a node's own notice, still reaches the owner.
    let resync = cluster
        .http
        .post(format!("{}/admin/resync", cluster.nodes[other].url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resync.status(), StatusCode::ACCEPTED);
    let reached = eventually(Duration::from_secs(5), || async {
        cluster.microservice.token_version(user).await.unwrap() >= Some(bumped)
    })
    .await;
    assert!(reached, "the resync notice got version {bumped} pushed");
}
