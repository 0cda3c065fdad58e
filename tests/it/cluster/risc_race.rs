//! One security event from Google delivered to two nodes at the same moment (docs/contract.md
//! section 10): a transmitter retries and a load balancer spreads, so the same SET (same `jti`) can
//! reach two nodes at once. Both answer `202`; the `jti` is recorded once (the insert that wins
//! acts), so the grant ends once: one `grant_ended` and one `duplicate` in the two nodes' metrics,
//! one row in `risc_events`, one DELETE at the microservice.

use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::Value;
use tokenwarden_sandbox::{GrantSelector, RiscEvent, SetOptions, SetSigning};

use super::{Cluster, Settings, figure, user_ids};
use crate::support::{JWT_SECRET, eventually, jwt_for};

/// Rounds, one user each: several races, each on a fresh `jti`.
const USERS: usize = 5;

impl Cluster {
    /// The sum over the running nodes of `tokenwarden_risc_events_total` with `outcome`.
    async fn risc_outcomes(&self, outcome: &str) -> f64 {
        let label = format!("outcome=\"{outcome}\"");
        let mut sum = 0.0;
        for node in self.nodes.iter().filter(|n| n.served.is_some()) {
            let text = crate::support::metrics_text(&self.http, &node.url).await;
            sum += text
                .lines()
                .filter(|l| l.starts_with("tokenwarden_risc_events_total{") && l.contains(&label))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
        }
        sum
    }

    /// The `sub` of the Google account `user` connected, from the sandbox's grant.
    async fn sub_of(&self, user: &str) -> String {
        let status: Value = self
            .http
            .get(format!(
                "{}/api/integrations/google/status",
                self.nodes[0].url
            ))
            .bearer_auth(jwt_for(user, JWT_SECRET, 600))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let email = status["google_email"].as_str().expect("connected").into();
        self.google.grant(&GrantSelector::Email(email)).unwrap().sub
    }

    /// POSTs `set` to node `i`'s receiver; the status.
    async fn post_set(&self, i: usize, set: &str) -> u16 {
        self.http
            .post(format!(
                "{}/api/integrations/google/risc",
                self.nodes[i].url
            ))
            .header("content-type", "application/secevent+jwt")
            .body(set.to_owned())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// The rows of `risc_events` with `jti`.
    async fn risc_rows(&self, jti: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) AS n FROM risc_events WHERE jti = '{jti}'");
        let row = self
            .sql
            .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
            .await
            .unwrap()
            .unwrap();
        row.try_get("", "n").unwrap()
    }

    /// DELETEs the microservice received for `user`.
    fn deletes_of(&self, user: &str) -> usize {
        self.microservice
            .received()
            .iter()
            .filter(|r| r.method == "DELETE" && r.user_id == user)
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_set_posted_to_two_nodes_at_once_ends_the_grant_once() {
    let Some(cluster) = Cluster::start(Settings {
        nodes: 2,
        ..Settings::default()
    })
    .await
    else {
        return;
    };
    cluster.wait_even(Duration::from_secs(15)).await;
    let users = user_ids("risc-race", USERS);
    cluster.connect_all(&users, 2).await;
    let copied = eventually(Duration::from_secs(10), || async {
        cluster.microservice.stored_count().await.unwrap() == USERS as u64
    })
    .await;
    assert!(copied, "every user's copy reached the microservice");
    // Each node fetches the key set once first, so the races below are between the two
    // inserts of the `jti`, not between two key fetches.
    for i in 0..2 {
        let warm = cluster
            .google
            .send_risc_event(
                RiscEvent::Verification { state: None },
                SetOptions {
                    url: Some(format!(
                        "{}/api/integrations/google/risc",
                        cluster.nodes[i].url
                    )),
                    ..SetOptions::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(warm.status, Some(202), "{warm:?}");
    }

    let mut slowest = Duration::ZERO;
    for user in &users {
        let event = RiscEvent::TokensRevoked {
            sub: cluster.sub_of(user).await,
        };
        let claims = cluster
            .google
            .risc_set_claims(&event, &SetOptions::default());
        let jti = claims["jti"].as_str().unwrap().to_owned();
        let set = cluster
            .google
            .sign_risc_set(&claims, SetSigning::Current)
            .await
            .unwrap();
        let sent = Instant::now();
        let (a, b) = tokio::join!(cluster.post_set(0, &set), cluster.post_set(1, &set));
        assert_eq!((a, b), (202, 202), "{user}: both nodes take the SET");
        let deleted = eventually(Duration::from_secs(2), || async {
            cluster.deletes_of(user) >= 1
        })
        .await;
        slowest = slowest.max(sent.elapsed());
        assert!(
            deleted,
            "{user}: the microservice got the DELETE within 2 s"
        );
        assert_eq!(cluster.risc_rows(&jti).await, 1, "{user}: one record");
    }
    // Both nodes' counts settle once every action is over (the duplicate's is immediate,
    // the winner's after the DELETE).
    let settled = eventually(Duration::from_secs(5), || async {
        cluster.risc_outcomes("grant_ended").await == USERS as f64
            && cluster.risc_outcomes("duplicate").await == USERS as f64
    })
    .await;
    let (ended, duplicates) = (
        cluster.risc_outcomes("grant_ended").await,
        cluster.risc_outcomes("duplicate").await,
    );
    assert!(
        settled,
        "one grant_ended and one duplicate per SET: {ended} ended, {duplicates} duplicates"
    );
    // Nothing more arrives later: one DELETE per user, every grant ended for the event.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let users_now = cluster.db_users().await;
    for user in &users {
        assert_eq!(cluster.deletes_of(user), 1, "{user}: one DELETE");
        let row = &users_now[user];
        assert!(row.needs_reconnect, "{user}: needs a reconnect");
        assert!(row.refresh_token.is_none(), "{user}: tokens cleared");
    }
    figure(&format!(
        "risc_race_sets={USERS} slowest_delete_ms={}",
        slowest.as_millis()
    ));
}
