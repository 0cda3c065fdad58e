//! Users driven through the nodes, as the frontend and an operator would: the consent flow
//! (connect and its callback, possibly on different nodes), disconnect, and a forced refresh.

use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use reqwest::StatusCode;
use serde_json::Value;

use super::Cluster;
use crate::support::{ADMIN_TOKEN, JWT_SECRET, jwt_for, location};

/// Where a consent ends when it succeeded.
const CONNECTED: &str = "http://frontend.test/dashboard/integrations?google=connected";

impl Cluster {
    /// A full consent as `user`: connect on node `start`, the sandbox's consent, and the
    /// callback delivered to node `callback` (the shared redirect URI names node 0; the port
    /// is rewritten, as a load balancer would send it anywhere), carrying the browser-binding
    /// cookie the connect set.
    pub async fn connect(&self, user: &str, start: usize, callback: usize) -> Result<(), String> {
        let response = self
            .http
            .post(format!(
                "{}/api/integrations/google/connect",
                self.nodes[start].url
            ))
            .bearer_auth(jwt_for(user, JWT_SECRET, 600))
            .send()
            .await
            .map_err(|e| format!("{user}: connect: {e}"))?;
        if response.status() != StatusCode::OK {
            return Err(format!("{user}: connect answered {}", response.status()));
        }
        let cookies: Vec<String> = response
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_string))
            .filter(|c| c.starts_with("tw_oauth"))
            .collect();
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        let auth_url = body["auth_url"].as_str().ok_or("no auth_url")?;
        let consent = self
            .http
            .get(auth_url)
            .send()
            .await
            .map_err(|e| format!("{user}: consent: {e}"))?;
        if consent.status() != StatusCode::FOUND {
            return Err(format!("{user}: consent answered {}", consent.status()));
        }
        let mut target = url::Url::parse(&location(&consent)).map_err(|e| e.to_string())?;
        target.set_port(Some(self.nodes[callback].port)).unwrap();
        let mut request = self.http.get(target.as_str());
        if !cookies.is_empty() {
            request = request.header(reqwest::header::COOKIE, cookies.join("; "));
        }
        let answer = request
            .send()
            .await
            .map_err(|e| format!("{user}: callback: {e}"))?;
        if answer.status() != StatusCode::FOUND || location(&answer) != CONNECTED {
            return Err(format!(
                "{user}: callback on node {callback} answered {} to {:?}",
                answer.status(),
                answer.headers().get(reqwest::header::LOCATION)
            ));
        }
        Ok(())
    }

    /// Connects every user, `in_flight` at a time; user `k` starts on node `k % n` and its
    /// callback lands on node `(k + 1) % n`. Panics with every failure.
    pub async fn connect_all(&self, users: &[String], in_flight: usize) -> Duration {
        let started = Instant::now();
        let n = self.nodes.len();
        let failures: Vec<String> = stream::iter(users.iter().enumerate())
            .map(|(k, user)| async move { self.connect(user, k % n, (k + 1) % n).await })
            .buffer_unordered(in_flight)
            .filter_map(|r| async move { r.err() })
            .collect()
            .await;
        assert!(failures.is_empty(), "connects failed: {failures:?}");
        started.elapsed()
    }

    /// `DELETE /api/integrations/google` as `user`, sent to node `i`.
    pub async fn disconnect(&self, i: usize, user: &str) -> StatusCode {
        self.http
            .delete(format!("{}/api/integrations/google", self.nodes[i].url))
            .bearer_auth(jwt_for(user, JWT_SECRET, 600))
            .send()
            .await
            .unwrap()
            .status()
    }

    /// `POST /admin/actors/{user}/refresh`, sent to node `i`.
    pub async fn force_refresh(&self, i: usize, user: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}/admin/actors/{user}/refresh", self.nodes[i].url))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// `count` user ids with `prefix`.
pub fn user_ids(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|k| format!("{prefix}-{k:03}")).collect()
}
