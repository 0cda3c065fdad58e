//! Many concurrent versioned pushes through the microservice's HTTP routes, so that they queue
//! and are applied many to a transaction (group commit): shuffled, out of order, with deletes
//! and repeated versions, for a few users at once. Every answer must be one that applying the
//! pushes one by one could have given, and each user must end on its highest version. On the
//! in-memory SQLite the tests use and, when reachable, on PostgreSQL.

use std::collections::{BTreeMap, HashMap};

use rand::seq::SliceRandom;
use reqwest::{Client, StatusCode};
use sea_orm::{ConnectionTrait, Database};
use tokenwarden_sandbox::{MicroserviceConfig, ReferenceMicroservice};

use super::{client, microservice, microservice_with, tokens_body};

const USERS: usize = 6;
/// Versions per user and round; the last of each round is an upsert.
const VERSIONS: u64 = 42;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Upsert,
    Delete,
}

/// What the microservice answered to one push.
#[derive(Debug)]
enum Outcome {
    Applied,
    NothingToDelete,
    Stale { held: u64 },
}

/// Version `v` of a user: a DELETE every fifth version, an upsert of `v{v}` otherwise.
fn kind(version: u64) -> Kind {
    if version.is_multiple_of(5) {
        Kind::Delete
    } else {
        Kind::Upsert
    }
}

async fn push(
    client: &Client,
    ms: &ReferenceMicroservice,
    user: &str,
    version: u64,
) -> (String, u64, Outcome) {
    let request = match kind(version) {
        Kind::Upsert => client
            .post(format!(
                "{}/api/users/{user}/google-calendar/connect",
                ms.base_url()
            ))
            .json(&tokens_body(&format!("v{version}"))),
        Kind::Delete => client.delete(format!("{}/api/google-tokens/{user}", ms.base_url())),
    };
    let response = request
        .header("Token-Version", version.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap();
    let outcome = match status {
        StatusCode::OK => Outcome::Applied,
        StatusCode::NOT_FOUND if kind(version) == Kind::Delete => Outcome::NothingToDelete,
        StatusCode::CONFLICT => {
            let message = body["message"].as_str().unwrap();
            let prefix = format!("Stale Token-Version {version}: version ");
            let held = message
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(" is already held for this user"))
                .unwrap_or_else(|| panic!("{message}"));
            Outcome::Stale {
                held: held.parse().unwrap(),
            }
        }
        other => panic!("{user} v{version}: {other} {body}"),
    };
    (user.to_owned(), version, outcome)
}

/// Sends the round's versions of every user at once, in random order, a third of them twice.
async fn push_all_at_once(ms: &ReferenceMicroservice, round: u64) -> Vec<(String, u64, Outcome)> {
    let mut pushes: Vec<(String, u64)> = Vec::new();
    for user in 0..USERS {
        for version in round * VERSIONS + 1..=(round + 1) * VERSIONS {
            pushes.push((format!("grouped-{user}"), version));
            if version.is_multiple_of(3) {
                pushes.push((format!("grouped-{user}"), version));
            }
        }
    }
    pushes.shuffle(&mut rand::thread_rng());
    let client = client();
    let mut running = tokio::task::JoinSet::new();
    for (user, version) in pushes {
        let (client, ms) = (client.clone(), ms.clone());
        running.spawn(async move { push(&client, &ms, &user, version).await });
    }
    running.join_all().await
}

/// Checks that the answers fit one sequential history per user and that each user ends on
/// its highest version.
async fn check(ms: &ReferenceMicroservice, round: u64, answers: Vec<(String, u64, Outcome)>) {
    let newest = (round + 1) * VERSIONS;
    let mut by_user: HashMap<String, Vec<(u64, Outcome)>> = HashMap::new();
    for (user, version, outcome) in answers {
        by_user.entry(user).or_default().push((version, outcome));
    }
    assert_eq!(by_user.len(), USERS);
    for (user, answers) in by_user {
        // Accepted pushes claim strictly newer versions, so in version order they are the
        // order in which they were applied.
        let mut accepted: BTreeMap<u64, &Outcome> = BTreeMap::new();
        for (version, outcome) in &answers {
            if !matches!(outcome, Outcome::Stale { .. }) {
                let again = accepted.insert(*version, outcome);
                assert!(again.is_none(), "{user}: version {version} applied twice");
            }
        }
        // What the previous round left: its newest version, an upsert.
        let mut had_tokens = round > 0;
        for (version, outcome) in &accepted {
            match (kind(*version), outcome) {
                (Kind::Upsert, Outcome::Applied) => had_tokens = true,
                (Kind::Delete, Outcome::Applied) => {
                    assert!(
                        had_tokens,
                        "{user}: v{version} deleted tokens that were gone"
                    );
                    had_tokens = false;
                }
                (Kind::Delete, Outcome::NothingToDelete) => {
                    assert!(!had_tokens, "{user}: v{version} missed the tokens there");
                }
                other => panic!("{user}: v{version}: {other:?}"),
            }
        }
        for (version, outcome) in &answers {
            if let Outcome::Stale { held } = outcome {
                assert!(held >= version, "{user}: v{version} refused by v{held}");
                assert!(
                    accepted.contains_key(held),
                    "{user}: v{version} refused by v{held}, which was never applied"
                );
            }
        }
        assert!(
            accepted.contains_key(&newest),
            "{user}: the newest version was refused"
        );
        assert_eq!(ms.token_version(&user).await.unwrap(), Some(newest));
        let stored = ms.stored(&user).await.unwrap().map(|t| t.access_token);
        assert_eq!(stored, Some(format!("v{newest}")), "{user}");
        // Late pushes are refused with the version held, a DELETE's as an upsert's.
        for late in [newest - 5, newest - 2, newest] {
            let (_, _, outcome) = push(&client(), ms, &user, late).await;
            assert!(
                matches!(outcome, Outcome::Stale { held } if held == newest),
                "{user}: late v{late}: {outcome:?}"
            );
        }
    }
}

async fn concurrent_pushes_fit_a_sequential_history(ms: &ReferenceMicroservice) {
    // More than one round, so later rounds start from what earlier batches left.
    for round in 0..2 {
        let answers = push_all_at_once(ms, round).await;
        check(ms, round, answers).await;
    }
}

#[tokio::test]
async fn grouped_pushes_fit_a_sequential_history_in_memory() {
    let ms = microservice().await;
    concurrent_pushes_fit_a_sequential_history(&ms).await;
}

/// PostgreSQL as the service's tests find it (`TEST_DATABASE_URL`, else the local server); a
/// database of the test's own, dropped at the end. Skipped when unreachable, except under
/// `CI=true`, where both backends must be proven.
#[tokio::test]
async fn grouped_pushes_fit_a_sequential_history_on_postgres() {
    let admin = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let Ok(server) = Database::connect(admin.as_str()).await else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "{admin} is down"
        );
        eprintln!("SKIPPED: PostgreSQL at {admin} is unreachable (set TEST_DATABASE_URL)");
        return;
    };
    let name = format!(
        "ms_group_commit_{}_{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    );
    server
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&name);
    let ms = microservice_with(MicroserviceConfig {
        database_url: url.to_string(),
        sandbox_controls: true,
        ..Default::default()
    })
    .await;
    concurrent_pushes_fit_a_sequential_history(&ms).await;
    ms.stop().await;
    drop(ms);
    server
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .unwrap();
}
