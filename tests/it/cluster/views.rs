//! What the nodes say: `/admin/nodes` (who owns how many shards, and whether the share is
//! even), `/admin/actors` (which node runs which user's actor), `/metrics`, and the waits
//! built on them.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use super::{Cluster, SHARDS};
use crate::support::{ADMIN_TOKEN, eventually};

/// A node as `/admin/nodes` shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct NodeInfo {
    pub node_id: String,
    pub advertise_url: String,
    pub started_at: String,
    pub last_seen: String,
    pub shards: i64,
    pub actors: i64,
}

impl Cluster {
    /// `GET path` on node `i` with the admin token; `None` when the node does not answer.
    async fn admin_get(&self, i: usize, path: &str) -> Option<(StatusCode, Value)> {
        let response = self
            .http
            .get(format!("{}{path}", self.nodes[i].url))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        let status = response.status();
        Some((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// `/admin/nodes` as node `i` answers it; `None` when it does not answer 200.
    pub async fn nodes_view(&self, i: usize) -> Option<Vec<NodeInfo>> {
        let (status, body) = self.admin_get(i, "/admin/nodes").await?;
        if status != StatusCode::OK {
            return None;
        }
        Some(serde_json::from_value(body["nodes"].clone()).expect("/admin/nodes shape"))
    }

    /// (node id, shards) per listed node, as node `i` sees them (a node id may show twice
    /// while a killed process's row has not expired yet).
    pub async fn shares(&self, i: usize) -> Option<Vec<(String, i64)>> {
        Some(
            self.nodes_view(i)
                .await?
                .into_iter()
                .map(|n| (n.node_id, n.shards))
                .collect(),
        )
    }

    /// Whether node `i` sees exactly `live` as the live nodes, owning every shard between
    /// them, each within one shard of an even share.
    pub async fn even(&self, i: usize, live: &[String]) -> bool {
        let Some(shares) = self.shares(i).await else {
            return false;
        };
        let mut listed: Vec<String> = shares.iter().map(|(id, _)| id.clone()).collect();
        listed.sort();
        listed == sorted(live)
            && shares.iter().map(|(_, s)| s).sum::<i64>() == SHARDS
            && shares
                .iter()
                .all(|(_, s)| within_one_of_even(*s, live.len()))
    }

    /// Waits until every running node sees the running nodes sharing the shards evenly;
    /// returns how long that took.
    pub async fn wait_even(&self, timeout: Duration) -> Duration {
        let started = Instant::now();
        let live = self.running_ids();
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].served.is_some())
            .collect();
        let even = eventually(timeout, || async {
            for &i in &running {
                if !self.even(i, &live).await {
                    return false;
                }
            }
            true
        })
        .await;
        if !even {
            let mut seen = Vec::new();
            for &i in &running {
                seen.push((i, self.shares(i).await));
            }
            panic!(
                "no even share among {live:?} within {timeout:?}: {seen:?}\nleases in the \
                 database: {:?}",
                self.db_lease_owners().await
            );
        }
        started.elapsed()
    }

    /// Polls node `observer`'s `/admin/nodes` every 100 ms until `gone` is not listed (or
    /// owns nothing) and the others own all 256 shards; returns how long that took, or `None`
    /// after `timeout`.
    pub async fn wait_shards_moved(
        &self,
        observer: usize,
        gone: &str,
        since: Instant,
        timeout: Duration,
    ) -> Option<Duration> {
        let deadline = since + timeout;
        loop {
            if let Some(shares) = self.shares(observer).await {
                let others: i64 = shares
                    .iter()
                    .filter(|(id, _)| id != gone)
                    .map(|(_, s)| s)
                    .sum();
                let left = shares.iter().all(|(id, s)| id != gone || *s == 0);
                if others == SHARDS && left {
                    return Some(since.elapsed());
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every actor node `i` lists (`/admin/actors`, all pages), and the `total` it reports.
    pub async fn actors(&self, i: usize) -> Option<(Vec<Value>, i64)> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..100 {
            let path = match &cursor {
                Some(c) => format!("/admin/actors?limit=1000&cursor={c}"),
                None => "/admin/actors?limit=1000".to_string(),
            };
            let (status, body) = self.admin_get(i, &path).await?;
            if status != StatusCode::OK {
                return None;
            }
            let total = body["total"].as_i64().expect("total");
            all.extend(body["actors"].as_array().cloned().unwrap_or_default());
            match body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => return Some((all, total)),
            }
        }
        panic!("/admin/actors on node {i} never ended its pages");
    }

    /// The user ids node `i` lists as its actors.
    pub async fn actor_ids(&self, i: usize) -> Vec<String> {
        self.actors(i)
            .await
            .expect("/admin/actors answers")
            .0
            .iter()
            .map(|a| a["user_id"].as_str().expect("user_id").to_string())
            .collect()
    }

    /// `GET /admin/actors/{user}` sent to node `i` (forwarded to the owner wherever it lands).
    pub async fn actor(&self, i: usize, user: &str) -> Option<(StatusCode, Value)> {
        self.admin_get(i, &format!("/admin/actors/{user}")).await
    }

    /// The sum of every sample of `name` on node `i`'s `/metrics` (all label sets), or
    /// `None` when the node does not export it.
    pub async fn metric(&self, i: usize, name: &str) -> Option<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.nodes[i].url))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        metric_sum(&text, name)
    }
}

fn sorted(ids: &[String]) -> Vec<String> {
    let mut ids = ids.to_vec();
    ids.sort();
    ids
}

/// Whether `shards` is within one shard of `SHARDS / nodes`.
pub fn within_one_of_even(shards: i64, nodes: usize) -> bool {
    let nodes = nodes as i64;
    (shards * nodes - SHARDS).abs() <= nodes
}

/// The sum of the samples named exactly `name` in a Prometheus text exposition.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let series = line.split_whitespace().next().unwrap_or_default();
        let sample = series.split('{').next().unwrap_or_default();
        if sample != name {
            continue;
        }
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *found.get_or_insert(0.0) += value;
    }
    found
}

/// Waits until every user has an actor on some node (the sum of the nodes' `total`s).
pub async fn wait_actor_total(cluster: &Cluster, expected: i64, timeout: Duration) -> bool {
    eventually(timeout, || async {
        let mut sum = 0;
        for i in 0..cluster.nodes.len() {
            if cluster.nodes[i].served.is_none() {
                continue;
            }
            match cluster.actors(i).await {
                Some((_, total)) => sum += total,
                None => return false,
            }
        }
        sum == expected
    })
    .await
}

/// The node (index) whose `/admin/actors` lists `user`, found by `GET /admin/actors/{user}`
/// on node `via` (its `node` field).
pub async fn owner_of(cluster: &Cluster, via: usize, user: &str) -> Option<usize> {
    let (status, body) = cluster.actor(via, user).await?;
    if status != StatusCode::OK {
        return None;
    }
    let node = body["node"].as_str()?;
    cluster.nodes.iter().position(|n| n.id == node)
}
