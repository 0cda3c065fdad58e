//! The two measurements. Every SET is built and signed by the sandbox Google (its current key,
//! or for forged ones a key its JWKS does not hold, under the current `kid`) before the clock
//! starts, so the driver's own RSA signing never competes with the service for the two cores.
//!
//! - `latency`: one `tokens-revoked` at a time, each for another connected user; from the
//!   arrival of the receiver's `202` to the reference microservice recording the DELETE
//!   (both wall clocks of this machine, the microservice's stamp taken on arrival).
//! - `load`: a steady rate of SETs, a share of them forged; the valid ones end some grants
//!   (`tokens-revoked`, timed as above) and are otherwise `sessions-revoked` (recorded, the
//!   tokens stay); the forged ones name bystanders, who must keep their grants. The service's
//!   CPU comes from `/proc/<pid>/stat` (utime + stime) before the first SET and after the last
//!   SET was acted on.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use tokenwarden_sandbox::{RiscEvent, SetOptions, SetSigning};

use crate::service::Service;

/// Signs the SET `event` names, as `signing` says; its `jti` and the JWT.
async fn signed(
    service: &Service,
    event: &RiscEvent,
    signing: SetSigning,
) -> anyhow::Result<(String, String)> {
    let claims = service
        .google
        .risc_set_claims(event, &SetOptions::default());
    let jti = claims["jti"].as_str().unwrap_or_default().to_owned();
    Ok((jti, service.google.sign_risc_set(&claims, signing).await?))
}

/// POSTs a SET; the status, and when the answer arrived.
async fn post(
    http: &reqwest::Client,
    receiver: &str,
    set: String,
) -> anyhow::Result<(u16, DateTime<Utc>)> {
    let response = http
        .post(receiver)
        .header("content-type", "application/secevent+jwt")
        .body(set)
        .send()
        .await?;
    let at = Utc::now();
    Ok((response.status().as_u16(), at))
}

/// When the microservice recorded each user's first DELETE.
fn deletes(service: &Service) -> HashMap<String, DateTime<Utc>> {
    let mut seen = HashMap::new();
    for r in service.microservice.received() {
        if r.method == "DELETE" {
            seen.entry(r.user_id).or_insert(r.received_at);
        }
    }
    seen
}

fn millis(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0
}

/// `q` (0 to 1) of `values`, nearest rank; 0 when empty.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n => sorted[((q * n as f64).ceil() as usize).clamp(1, n) - 1],
    }
}

/// Measurement (a): milliseconds from each `202` to its DELETE, one event at a time.
pub async fn latency(service: &Service, users: &[(String, String)]) -> anyhow::Result<Vec<f64>> {
    let receiver = service.receiver();
    let mut out = Vec::with_capacity(users.len());
    for (user, sub) in users {
        let event = RiscEvent::TokensRevoked { sub: sub.clone() };
        let (_, set) = signed(service, &event, SetSigning::Current).await?;
        let (status, accepted_at) = post(&service.http, &receiver, set).await?;
        anyhow::ensure!(status == 202, "{user}: the receiver answered {status}");
        let started = Instant::now();
        let deleted_at = loop {
            if let Some(at) = deletes(service).get(user) {
                break *at;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(10),
                "{user}: no DELETE within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        out.push(millis(accepted_at, deleted_at));
    }
    Ok(out)
}

/// What the load phase saw.
pub struct Load {
    pub sent: usize,
    pub forged: usize,
    pub send_secs: f64,
    /// Answers: 202 to valid ones, 400 to forged ones, anything else.
    pub valid_accepted: usize,
    pub forged_refused: usize,
    pub wrong_answers: usize,
    /// The receiver's answer time, milliseconds.
    pub answer_ms: Vec<f64>,
    /// `202` to DELETE of the grant-ending SETs, milliseconds.
    pub act_ms: Vec<f64>,
    pub act_missing: usize,
    /// From the last SET's answer until the service counted every valid one as done.
    pub settle_ms: f64,
    pub counted_valid: f64,
    pub counted_refused: f64,
    pub bystanders_deleted: usize,
    pub cpu_secs: f64,
}

/// Measurement (b): `rate` SETs/s for `secs`, `forged_share` of them forged.
pub async fn load(
    service: &Service,
    revoked: &[(String, String)],
    recorded: &[(String, String)],
    bystanders: &[(String, String)],
    rate: usize,
    secs: usize,
    forged_share: f64,
) -> anyhow::Result<Load> {
    let total = rate * secs;
    let forged_total = (total as f64 * forged_share).round() as usize;
    // Every k-th valid SET ends a grant, spread evenly over the run.
    let every = ((total - forged_total) / revoked.len().max(1)).max(1);
    let mut plan = Vec::with_capacity(total);
    let mut forged_debt = 0.0;
    let (mut valid_slot, mut next_revoked, mut next_recorded) = (0, 0, 0);
    for i in 0..total {
        forged_debt += forged_share;
        if forged_debt >= 1.0 {
            forged_debt -= 1.0;
            let (_, sub) = &bystanders[i % bystanders.len()];
            let event = RiscEvent::TokensRevoked { sub: sub.clone() };
            plan.push((event, SetSigning::ForeignKey, None));
            continue;
        }
        valid_slot += 1;
        if valid_slot % every == 0 && next_revoked < revoked.len() {
            let (user, sub) = &revoked[next_revoked];
            next_revoked += 1;
            let event = RiscEvent::TokensRevoked { sub: sub.clone() };
            plan.push((event, SetSigning::Current, Some(user.clone())));
        } else {
            let (_, sub) = &recorded[next_recorded % recorded.len()];
            next_recorded += 1;
            let event = RiscEvent::SessionsRevoked { sub: sub.clone() };
            plan.push((event, SetSigning::Current, None));
        }
    }
    let forged = plan
        .iter()
        .filter(|(_, s, _)| *s == SetSigning::ForeignKey)
        .count();
    eprintln!("signing {total} SETs ({forged} forged) before the clock starts");
    let mut sets = Vec::with_capacity(total);
    for (event, signing, user) in &plan {
        let (_, set) = signed(service, event, *signing).await?;
        sets.push((set, *signing == SetSigning::ForeignKey, user.clone()));
    }

    let receiver = Arc::new(service.receiver());
    // The earlier measurement's SETs are counted too: only what this phase adds is its own.
    let valid_before = service.metric("tokenwarden_risc_events_total", "").await?;
    let refused_before = service.metric("tokenwarden_risc_refused_total", "").await?;
    let results = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let cpu_before = tokenwarden_loadtest::cpu_secs(service.pid()).unwrap_or(0.0);
    let started = Instant::now();
    // A batch every 10 ms: 1,000/s without a timer per SET.
    let per_tick = (rate / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(total);
    let mut queue = sets.into_iter();
    'send: loop {
        tick.tick().await;
        for _ in 0..per_tick {
            let Some((set, forged, user)) = queue.next() else {
                break 'send;
            };
            let (http, receiver, results) =
                (service.http.clone(), receiver.clone(), results.clone());
            tasks.push(tokio::spawn(async move {
                let sent = Instant::now();
                let answer = post(&http, &receiver, set).await;
                let ms = sent.elapsed().as_secs_f64() * 1000.0;
                results
                    .lock()
                    .expect("results")
                    .push((answer.ok(), forged, user, ms));
            }));
        }
    }
    for task in tasks {
        task.await?;
    }
    let send_secs = started.elapsed().as_secs_f64();
    let answered = Instant::now();
    let valid = (total - forged) as f64;
    let mut counted_valid = 0.0;
    while answered.elapsed() < Duration::from_secs(30) {
        counted_valid = service.metric("tokenwarden_risc_events_total", "").await? - valid_before;
        // A valid SET is counted once it was acted on (whatever the outcome).
        if counted_valid >= valid {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let settle_ms = answered.elapsed().as_secs_f64() * 1000.0;
    let cpu_secs = tokenwarden_loadtest::cpu_secs(service.pid()).unwrap_or(0.0) - cpu_before;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = deletes(service);
    let results = results.lock().expect("results").clone();
    let mut load = Load {
        sent: total,
        forged,
        send_secs,
        valid_accepted: 0,
        forged_refused: 0,
        wrong_answers: 0,
        answer_ms: Vec::with_capacity(total),
        act_ms: Vec::new(),
        act_missing: 0,
        settle_ms,
        counted_valid,
        counted_refused: service.metric("tokenwarden_risc_refused_total", "").await?
            - refused_before,
        bystanders_deleted: bystanders
            .iter()
            .filter(|(u, _)| seen.contains_key(u))
            .count(),
        cpu_secs,
    };
    for (answer, forged, user, ms) in results {
        load.answer_ms.push(ms);
        match (answer, forged) {
            (Some((400, _)), true) => load.forged_refused += 1,
            (Some((202, at)), false) => {
                load.valid_accepted += 1;
                if let Some(user) = user {
                    match seen.get(&user) {
                        Some(deleted) => load.act_ms.push(millis(at, *deleted)),
                        None => load.act_missing += 1,
                    }
                }
            }
            _ => load.wrong_answers += 1,
        }
    }
    Ok(load)
}
