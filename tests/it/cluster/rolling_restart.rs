//! A rolling restart of all three nodes under refresh load (SIGTERM, start again under the
//! same `NODE_ID`, one node at a time), with rotating refresh tokens and no grace: no refresh
//! lost (no access token expires unrefreshed), no push lost (the microservice ends with the
//! database's version of everyone), no user refreshed twice for one due time (a duplicate
//! would use a rotated refresh token, which the sandbox counts and refuses).

use std::time::{Duration, Instant};

use super::{Cluster, Settings, figure, user_ids, wait_actor_total};
use crate::support::eventually;

const USERS: usize = 100;
/// Refresh lead of every node.
const LEAD: Duration = Duration::from_secs(10);
/// Each user is refreshed this often (tokens live `REFRESH_PERIOD + LEAD`).
const REFRESH_PERIOD: Duration = Duration::from_secs(10);
/// Each node's turn lasts at least this long, so the whole roll spans more than a refresh
/// period: every user comes due at least once while some node is stopping or starting.
const TURN: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_refresh_load_loses_and_duplicates_nothing() {
    let Some(mut cluster) = Cluster::start(Settings {
        token_lifetime: REFRESH_PERIOD + LEAD,
        refresh_lead_secs: LEAD.as_secs(),
        rotation: true,
        ..Settings::default()
    })
    .await
    else {
        return;
    };
    cluster.wait_even(Duration::from_secs(15)).await;
    let users = user_ids("roll", USERS);
    cluster.connect_all(&users, 16).await;
    assert!(wait_actor_total(&cluster, USERS as i64, Duration::from_secs(10)).await);
    // The roll starts once the first refreshes are under way.
    let refreshing = eventually(REFRESH_PERIOD + Duration::from_secs(5), || async {
        cluster.google.stats().refreshes > 0
    })
    .await;
    assert!(refreshing, "refreshes started");
    let refreshes_before = cluster.google.stats().refreshes;
    let rolling = Instant::now();
    for i in 0..cluster.nodes.len() {
        let id = cluster.nodes[i].id.clone();
        let signalled = Instant::now();
        cluster.terminate(i).await;
        let exited = signalled.elapsed();
        cluster.start_node(i).await;
        let ready = signalled.elapsed();
        let even = cluster.wait_even(Duration::from_secs(15)).await;
        assert!(
            wait_actor_total(&cluster, USERS as i64, Duration::from_secs(5)).await,
            "every user has one actor after {id} restarted"
        );
        figure(&format!(
            "rolling_restart node={id} exit_after_sigterm_ms={} ready_again_ms={} \
             even_again_ms={}",
            exited.as_millis(),
            ready.as_millis(),
            even.as_millis()
        ));
        tokio::time::sleep(TURN.saturating_sub(signalled.elapsed())).await;
    }
    let rolled_for = rolling.elapsed();
    assert!(rolled_for > REFRESH_PERIOD);
    let refreshed = cluster.google.stats().refreshes - refreshes_before;
    assert!(
        refreshed >= USERS as u64,
        "the restart ran under refresh load: {refreshed} refreshes in {rolled_for:?}"
    );
    let ahead = cluster.pushed_ahead(&users).await;
    assert!(
        ahead.is_empty(),
        "pushed versions the database did not hold: {ahead:?}"
    );
    cluster.settle(&users, Duration::from_secs(20)).await;
    cluster.assert_nothing_lost(&users).await;
    let stats = cluster.google.stats();
    figure(&format!(
        "rolling_restart_run users={USERS} lasted_ms={} refreshes_during={refreshed} \
         expired_before_refresh={} superseded_refresh_uses={}",
        rolled_for.as_millis(),
        stats.expired_before_refresh,
        stats.superseded_refresh_uses
    ));
}
