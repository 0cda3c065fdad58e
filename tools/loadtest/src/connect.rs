//! Users connected through the real consent path while the run goes on: connect on one node,
//! consent at the sandbox, the callback delivered to the next node with the browser-binding
//! cookie, as a browser behind a load balancer would.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use chrono::Utc;

use crate::{LoadtestArgs, nodes::RoundRobin};

/// Connects users through the real path (connect, sandbox consent, callback) at the set
/// rate, recording each callback's latency in milliseconds.
pub async fn connect_users(
    args: LoadtestArgs,
    nodes: RoundRobin,
    jwt_secret: String,
    latencies: Arc<Mutex<Vec<f64>>>,
) {
    if args.connect_users == 0 {
        return;
    }
    let http = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
    {
        Ok(http) => http,
        Err(_) => return,
    };
    if args.connect_rate == 0 {
        return saturate_connects(args, http, nodes, jwt_secret, latencies).await;
    }
    let mut every = tokio::time::interval(Duration::from_secs_f64(
        1.0 / args.connect_rate.max(1) as f64,
    ));
    for i in 0..args.connect_users {
        every.tick().await;
        let (http, nodes, secret, latencies) = (
            http.clone(),
            nodes.clone(),
            jwt_secret.clone(),
            latencies.clone(),
        );
        tokio::spawn(async move {
            let user = format!("lt-connect-{i:08}");
            match connect_one(&http, &nodes, &secret, &user).await {
                Ok(ms) => latencies.lock().expect("latencies").push(ms),
                Err(e) => eprintln!("connect of {user} failed: {e:#}"),
            }
        });
    }
}

/// Connect saturation (`--connect-rate 0`): `--connect-workers` loops each run one consent
/// after another, as fast as the service (and the stand-ins) take them.
async fn saturate_connects(
    args: LoadtestArgs,
    http: reqwest::Client,
    nodes: RoundRobin,
    jwt_secret: String,
    latencies: Arc<Mutex<Vec<f64>>>,
) {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let workers: Vec<_> = (0..args.connect_workers.max(1))
        .map(|_| {
            let (http, nodes, secret, latencies, next) = (
                http.clone(),
                nodes.clone(),
                jwt_secret.clone(),
                latencies.clone(),
                next.clone(),
            );
            let total = args.connect_users;
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= total {
                        return;
                    }
                    let user = format!("lt-connect-{i:08}");
                    match connect_one(&http, &nodes, &secret, &user).await {
                        Ok(ms) => latencies.lock().expect("latencies").push(ms),
                        Err(e) => eprintln!("connect of {user} failed: {e:#}"),
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
}

/// One consent: connect on the next node in turn, the callback on the node after it.
async fn connect_one(
    http: &reqwest::Client,
    nodes: &RoundRobin,
    secret: &str,
    user: &str,
) -> anyhow::Result<f64> {
    let exp = Utc::now().timestamp() + 3600;
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": user, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?;
    let (started_on, url) = nodes.next();
    let connected = http
        .post(format!("{url}/api/integrations/google/connect"))
        .bearer_auth(jwt)
        .send()
        .await?;
    // The browser-binding cookie goes back with the callback, as a browser would send it.
    let cookies = cookies_to_send(connected.headers());
    let body: serde_json::Value = connected.json().await?;
    let auth_url = body["auth_url"].as_str().context("auth_url")?;
    let consent = http.get(auth_url).send().await?;
    let callback = consent
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .context("consent redirect")?;
    // The redirect URI names node 1; the load balancer we stand in for sends it elsewhere.
    let callback = format!(
        "{}{}",
        nodes.after(started_on),
        callback
            .strip_prefix(nodes.first())
            .with_context(|| format!("consent redirect {callback} is not to node 1"))?
    );
    let started = Instant::now();
    let answer = http
        .get(callback)
        .header(reqwest::header::COOKIE, cookies)
        .send()
        .await?;
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    let location = answer
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    // An error redirect is a 302 too: only a completed connection counts.
    anyhow::ensure!(
        answer.status() == 302 && location.ends_with("google=connected"),
        "callback answered {} to {location}",
        answer.status()
    );
    Ok(elapsed)
}

/// The `Cookie` header a browser would send back after a response with these headers.
/// One user's round-trip at a time: no jar shared by thousands of simulated browsers.
fn cookies_to_send(headers: &reqwest::header::HeaderMap) -> String {
    headers
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| cookie::Cookie::parse(v.to_string()).ok())
        .map(|c| format!("{}={}", c.name(), c.value()))
        .collect::<Vec<_>>()
        .join("; ")
}
