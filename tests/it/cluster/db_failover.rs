//! The database fails over under refresh load (issue 23), as a managed or Patroni-run
//! PostgreSQL does: real servers (`pg_servers`), a primary and a synchronous streaming
//! standby, the two nodes reaching the primary through a proxy. The primary is stopped hard,
//! the standby promoted and the proxy moved to it, five times (each time a new standby is
//! copied from the new primary). Afterwards nobody needs a reconnect, every user was
//! refreshed after the last failover and the microservice holds the database's version, no
//! refresh token was used twice (rotation without grace), and every lease the new primary
//! shows belongs to a running node. Measured: from the primary's stop to the first refresh
//! committed on the new primary (docs/operations.md).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};

use super::{
    Cluster, SHARDS, Settings, figure, percentile,
    pg_servers::{MovableProxy, PgServer, pg_bin},
    user_ids, wait_actor_total,
};
use crate::support::eventually;

const USERS: usize = 40;
const FAILOVERS: usize = 5;

/// Refreshes committed on the server at `url` after `since` (read there directly, not
/// through the proxy).
async fn refreshed_since(url: &str, since: DateTime<Utc>) -> i64 {
    let Ok(db) = Database::connect(url).await else {
        return 0;
    };
    let count = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            format!(
                "SELECT count(*) AS n FROM users WHERE last_refresh_at > '{}'::timestamptz",
                since.to_rfc3339()
            ),
        ))
        .await
        .ok()
        .flatten()
        .and_then(|row| row.try_get::<i64>("", "n").ok())
        .unwrap_or(0);
    let _ = db.close().await;
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synchronous_standby_takes_over_under_refresh_load_and_nothing_is_lost() {
    let Some(bin) = pg_bin() else {
        return;
    };
    let mut primary = PgServer::primary(&bin).await;
    let mut standby = PgServer::standby(&bin, primary.port).await;
    primary.require_synchronous_standby().await;
    assert!(
        primary.wait_standby(true, Duration::from_secs(20)).await,
        "the standby streams synchronously:\n{}",
        standby.log_tail()
    );
    let proxy = MovableProxy::start(primary.port).await;
    // Tokens live 16 s and are refreshed 8 s before expiry: a refresh about every 200 ms
    // across the users, and 8 s of slack for a failover. Rotation without grace: a refresh
    // token used twice costs its user the grant and shows in Google's counts. No node dies
    // here, so the leases have the production TTL (10 s), not the tests' 3 s: a node whose
    // renewals fail for most of a 3-second lease during the failover drops Google's answers
    // that arrive after it (another node may own those users by then), which under rotation
    // costs the grant (docs/operations.md).
    let Some(cluster) = Cluster::start(Settings {
        nodes: 2,
        lease_ttl: Duration::from_secs(10),
        token_lifetime: Duration::from_secs(16),
        refresh_lead_secs: 8,
        rotation: true,
        database_url: Some(proxy.url()),
        ..Settings::default()
    })
    .await
    else {
        return;
    };
    cluster.wait_even(Duration::from_secs(15)).await;
    // One connect every 200 ms: the refreshes, every 8 s per user, come spread out, one about
    // every 200 ms, so the first refresh after a failover is due within moments of it (users
    // connected all at once would refresh in bursts 8 s apart, and the figure would measure
    // the gap between bursts).
    let users = user_ids("dbfo", USERS);
    for (i, user) in users.iter().enumerate() {
        cluster.connect(user, i % 2, i % 2).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(wait_actor_total(&cluster, USERS as i64, Duration::from_secs(10)).await);
    let refreshing = eventually(Duration::from_secs(15), || async {
        cluster.google.stats().refreshes >= 10
    })
    .await;
    assert!(
        refreshing,
        "refreshes under way: {:?}",
        cluster.google.stats()
    );

    let mut times = Vec::new();
    let mut last_stop = Utc::now();
    for attempt in 0..FAILOVERS {
        let stopped = Instant::now();
        primary.stop_hard();
        // Once `pg_ctl stop` returns the old primary is gone: a refresh saved after this was
        // committed on the new one.
        let dead_at = Utc::now();
        standby.promote();
        let promoted = stopped.elapsed();
        proxy.point_at(Some(standby.port));
        let first = eventually(Duration::from_secs(20), || async {
            refreshed_since(&standby.url, dead_at).await > 0
        })
        .await;
        assert!(
            first,
            "failover {attempt}: no refresh committed on the new primary within 20 s:\n{}",
            standby.log_tail()
        );
        let took = stopped.elapsed();
        figure(&format!(
            "db_failover_first_refresh_ms={} promoted_ms={} attempt={attempt} users={USERS}",
            took.as_millis(),
            promoted.as_millis()
        ));
        times.push(took.as_millis());
        last_stop = dead_at;

        // Every lease the new primary shows is a running node's, and every shard has one.
        let running = cluster.running_ids();
        let leases_ok = eventually(Duration::from_secs(10), || async {
            let owners = cluster.db_lease_owners().await;
            owners.keys().all(|o| running.contains(o)) && owners.values().sum::<i64>() == SHARDS
        })
        .await;
        assert!(
            leases_ok,
            "failover {attempt}: leases on the new primary {:?}",
            cluster.db_lease_owners().await
        );

        // The old primary is gone for good; a new synchronous standby is copied from the new
        // one before the next round.
        let new_standby = PgServer::standby(&bin, standby.port).await;
        primary = std::mem::replace(&mut standby, new_standby);
        primary.require_synchronous_standby().await;
        assert!(
            primary.wait_standby(true, Duration::from_secs(20)).await,
            "failover {attempt}: the new standby streams synchronously:\n{}",
            standby.log_tail()
        );
    }
    figure(&format!(
        "db_failover_first_refresh_p50_ms={} db_failover_first_refresh_max_ms={} tries={FAILOVERS}",
        percentile(&times, 50),
        times.iter().max().unwrap()
    ));

    // Every user refreshed after the last failover, by the new primary's account.
    let all_refreshed = eventually(Duration::from_secs(20), || async {
        let db = cluster.db_users().await;
        users.iter().all(|u| {
            db.get(u)
                .and_then(|r| r.last_refresh_at)
                .is_some_and(|at| at > last_stop)
        })
    })
    .await;
    if !all_refreshed {
        let db = cluster.db_users().await;
        let behind: Vec<_> = users
            .iter()
            .filter_map(|u| {
                let row = db.get(u)?;
                row.last_refresh_at
                    .is_none_or(|at| at <= last_stop)
                    .then_some((
                        u,
                        row.token_version,
                        row.needs_reconnect,
                        row.last_refresh_at,
                    ))
            })
            .collect();
        let mut their_lines = String::new();
        for node in &cluster.nodes {
            for line in cluster.node_log(&node.id).lines() {
                if behind.iter().any(|(u, ..)| line.contains(u.as_str())) {
                    their_lines.push_str(&format!("{}: {}\n", node.id, strip_ansi(line)));
                }
            }
        }
        panic!(
            "not refreshed after the last failover ({last_stop}): {behind:?}\n{:?}\n{}\n{their_lines}",
            cluster.google.stats(),
            warnings(&cluster)
        );
    }
    let ahead = cluster.pushed_ahead(&users).await;
    assert!(
        ahead.is_empty(),
        "the microservice held versions the database did not: {ahead:?}"
    );
    cluster.settle(&users, Duration::from_secs(30)).await;
    cluster.assert_nothing_lost(&users).await;
    let stats = cluster.google.stats();
    figure(&format!(
        "db_failover_run refreshes={} superseded_refresh_uses={} expired_before_refresh={}",
        stats.refreshes, stats.superseded_refresh_uses, stats.expired_before_refresh
    ));
}

/// The warnings and errors the nodes logged, each distinct message once with its count.
fn warnings(cluster: &Cluster) -> String {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for node in &cluster.nodes {
        for line in cluster.node_log(&node.id).lines() {
            let plain = strip_ansi(line);
            if plain.contains(" WARN ") || plain.contains(" ERROR ") {
                let message: String = plain
                    .split_once(' ')
                    .map_or("", |(_, m)| m)
                    .chars()
                    .take(220)
                    .collect();
                *counts.entry(format!("{}: {message}", node.id)).or_default() += 1;
            }
        }
    }
    counts
        .iter()
        .map(|(m, n)| format!("{n:>5} {m}\n"))
        .collect()
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `shard -> epoch` as the server at `url` holds them (read there directly).
async fn epochs(url: &str) -> std::collections::HashMap<i32, i64> {
    let db = Database::connect(url).await.unwrap();
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT shard, epoch FROM shard_leases",
        ))
        .await
        .unwrap();
    let _ = db.close().await;
    rows.iter()
        .map(|r| {
            (
                r.try_get::<i32>("", "shard").unwrap(),
                r.try_get::<i64>("", "epoch").unwrap(),
            )
        })
        .collect()
}

/// Asynchronous replication, and the standby cut off before the claims of a dead node's
/// shards: the new primary never saw them, so its epochs for those shards are lower than the
/// ones the survivors hold in memory, and the next claims there issue the same epoch numbers
/// again, possibly to the other survivor. Every write is fenced by the epoch and the owner's
/// process token (store_batch::the_fence_checks_the_owner_with_the_epoch shows the statement
/// refusing it), so afterwards every lease on the new primary is a running node's, every user
/// was refreshed after the failover, nobody needs a reconnect, and once the refreshes lost
/// with the old primary are made again the microservice holds the database's version.
/// Refresh tokens do not rotate here: a refresh lost in an asynchronous failover would
/// otherwise leave a superseded token behind (docs/operations.md, "What synchronous
/// replication buys").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asynchronous_failover_that_loses_claims_is_held_by_the_fence() {
    let Some(bin) = pg_bin() else {
        return;
    };
    let primary_server = PgServer::primary(&bin).await;
    // The standby streams through a proxy of its own, which the test cuts.
    let replication = MovableProxy::start(primary_server.port).await;
    let standby = PgServer::standby(&bin, replication.port).await;
    assert!(
        primary_server
            .wait_standby(false, Duration::from_secs(20))
            .await,
        "the standby streams:\n{}",
        standby.log_tail()
    );
    let mut primary = primary_server;
    let proxy = MovableProxy::start(primary.port).await;
    let Some(mut cluster) = Cluster::start(Settings {
        token_lifetime: Duration::from_secs(16),
        refresh_lead_secs: 8,
        database_url: Some(proxy.url()),
        ..Settings::default()
    })
    .await
    else {
        return;
    };
    cluster.wait_even(Duration::from_secs(15)).await;
    let users = user_ids("dbasync", 30);
    cluster.connect_all(&users, 8).await;
    assert!(wait_actor_total(&cluster, users.len() as i64, Duration::from_secs(10)).await);
    // Let the standby catch up with the connects, then cut it off.
    tokio::time::sleep(Duration::from_secs(1)).await;
    replication.point_at(None);
    let before_cut = epochs(&standby.url).await;

    // node-2 dies; the survivors claim its shards on the old primary only.
    let mut taken_over = Vec::new();
    for i in 0..2 {
        taken_over.push(cluster.actor_ids(i).await);
    }
    let victim_id = cluster.nodes[2].id.clone();
    let killed = Instant::now();
    cluster.kill(2).await;
    let moved = cluster
        .wait_shards_moved(
            0,
            &victim_id,
            killed,
            super::LEASE_TTL + Duration::from_secs(5),
        )
        .await;
    assert!(
        moved.is_some(),
        "{victim_id}'s shards claimed by the others"
    );
    let claimed_on_old = epochs(&primary.url).await;
    let lost: Vec<i32> = claimed_on_old
        .iter()
        .filter(|(shard, epoch)| before_cut.get(*shard).is_some_and(|e| *epoch > e))
        .map(|(shard, _)| *shard)
        .collect();
    assert!(!lost.is_empty(), "claims made after the cut");
    // The users each survivor took over with those claims.
    for (i, before) in taken_over.iter_mut().enumerate() {
        let now = cluster.actor_ids(i).await;
        *before = now.into_iter().filter(|u| !before.contains(u)).collect();
    }

    primary.stop_hard();
    let dead_at = Utc::now();
    standby.promote();
    proxy.point_at(Some(standby.port));
    // At once, each survivor is asked to refresh the users it took over: those it still
    // believes its own (until its next renewal there) are written with a fence the new
    // primary does not have, and must be refused.
    let asked = futures::future::join_all(taken_over.iter().enumerate().flat_map(|(i, ids)| {
        let cluster = &cluster;
        ids.iter().map(move |u| cluster.force_refresh(i, u))
    }))
    .await;
    // The claims are lost: the new primary has the epochs from before the cut.
    let on_new = epochs(&standby.url).await;
    let still_lost = lost
        .iter()
        .filter(|s| on_new.get(*s) < claimed_on_old.get(*s))
        .count();
    assert!(
        still_lost > 0,
        "the new primary lost the claims: {on_new:?}"
    );

    // Every lease on the new primary goes to a running node, and every shard has one.
    let running = cluster.running_ids();
    let leases_ok = eventually(Duration::from_secs(15), || async {
        let owners = cluster.db_lease_owners().await;
        owners.keys().all(|o| running.contains(o)) && owners.values().sum::<i64>() == SHARDS
    })
    .await;
    assert!(
        leases_ok,
        "leases on the new primary {:?}",
        cluster.db_lease_owners().await
    );
    let all_refreshed = eventually(Duration::from_secs(25), || async {
        let db = cluster.db_users().await;
        users.iter().all(|u| {
            db.get(u)
                .and_then(|r| r.last_refresh_at)
                .is_some_and(|at| at > dead_at)
        })
    })
    .await;
    assert!(
        all_refreshed,
        "every user refreshed after the failover\n{}",
        warnings(&cluster)
    );
    cluster.settle(&users, Duration::from_secs(40)).await;
    cluster.assert_nothing_lost(&users).await;
    let ahead = cluster.pushed_ahead(&users).await;
    assert!(
        ahead.is_empty(),
        "the microservice ahead of the database: {ahead:?}"
    );
    let mut fenced = 0.0;
    for i in 0..2 {
        fenced += cluster
            .metric(i, "tokenwarden_cluster_fenced_writes_total")
            .await
            .unwrap_or(0.0);
    }
    let statuses: std::collections::BTreeMap<u16, usize> =
        asked.iter().fold(Default::default(), |mut m, (status, _)| {
            *m.entry(status.as_u16()).or_default() += 1;
            m
        });
    figure(&format!(
        "db_async_failover lost_claims={still_lost} fenced_writes={fenced} \
         forced_refreshes={statuses:?}"
    ));
    drop(standby);
}
