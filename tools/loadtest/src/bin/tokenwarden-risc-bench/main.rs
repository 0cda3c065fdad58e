//! `tokenwarden-risc-bench`: measures the receiver of Google's security events (issue 21,
//! docs/contract.md section 10) on a real `tokenwarden serve` process, the release binary beside
//! this one: (a) the time from the receiver's `202` to the microservice's DELETE, one
//! `tokens-revoked` at a time; (b) the receiver under a steady rate of SETs of which a share is
//! forged: the valid ones still acted on within 2 s, and the service's CPU per SET. A binary of its
//! own beside the load test (not a flag of it): it shares only the `/proc` reading, and so stays
//! out of the load test's files.
//!
//! Run: `cargo build --release -p tokenwarden -p tokenwarden-loadtest` then
//! `target/release/tokenwarden-risc-bench` (flags: `--help`).

mod phases;
mod service;

use std::{path::PathBuf, time::Duration};

use clap::Parser;

use phases::quantile;
use service::Service;

#[derive(Parser, Debug)]
#[command(
    name = "tokenwarden-risc-bench",
    about = "Measure the receiver of Google's security events on a real serve process"
)]
struct Args {
    /// Users whose grant measurement (a) ends, one `tokens-revoked` each.
    #[arg(long, default_value_t = 100)]
    latency_users: usize,
    /// SETs per second in measurement (b).
    #[arg(long, default_value_t = 1000)]
    rate: usize,
    /// Length of measurement (b), in seconds.
    #[arg(long, default_value_t = 10)]
    secs: usize,
    /// Share of measurement (b)'s SETs forged (signed with a key the JWKS does not hold).
    #[arg(long, default_value_t = 0.5)]
    forged_share: f64,
    /// Users whose grant measurement (b) ends (timed to the DELETE); the other valid SETs
    /// are `sessions-revoked`, recorded with the tokens kept.
    #[arg(long, default_value_t = 200)]
    load_revoked_users: usize,
    /// The service's database; default a fresh SQLite file in a temporary directory.
    #[arg(long, env = "RISC_BENCH_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The `tokenwarden` binary; default the one beside this binary.
    #[arg(long)]
    service_bin: Option<PathBuf>,
}

fn summary(name: &str, values: &[f64]) {
    let max = values.iter().copied().fold(0.0, f64::max);
    println!(
        "{name}: n={} p50={:.1} ms p99={:.1} ms max={:.1} ms",
        values.len(),
        quantile(values, 0.5),
        quantile(values, 0.99),
        max
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let workdir = tempfile::tempdir()?;
    let database_url = args.database_url.clone().unwrap_or_else(|| {
        format!(
            "sqlite://{}?mode=rwc",
            workdir.path().join("service.db").display()
        )
    });
    let bin = match &args.service_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()?.with_file_name("tokenwarden"),
    };
    let service = Service::start(&bin, &database_url, workdir.path()).await?;
    let result = measure(&args, &service).await;
    if result.is_err() {
        let log = service.log_text();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        eprintln!("the service's last lines:");
        for line in tail.into_iter().rev() {
            eprintln!("{line}");
        }
    }
    result
}

async fn measure(args: &Args, service: &Service) -> anyhow::Result<()> {
    let (a, b, c) = (
        args.latency_users,
        args.load_revoked_users,
        args.load_revoked_users,
    );
    let bystanders = 50;
    let total = a + b + c + bystanders;
    eprintln!("connecting {total} users through the consent path");
    let mut users = Vec::with_capacity(total);
    for i in 0..total {
        let user = format!("risc-bench-{i:05}");
        let sub = service.connect(&user).await?;
        users.push((user, sub));
    }
    let mut copied = false;
    for _ in 0..600 {
        if service.microservice.stored_count().await? == total as u64 {
            copied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::ensure!(copied, "not every copy reached the microservice");
    // The first SET fetches the configuration and the key set: not part of either figure.
    let warm = service
        .google
        .send_risc_event(
            tokenwarden_sandbox::RiscEvent::Verification { state: None },
            tokenwarden_sandbox::SetOptions {
                url: Some(service.receiver()),
                ..Default::default()
            },
        )
        .await?;
    anyhow::ensure!(warm.status == Some(202), "warm-up: {warm:?}");

    let (latency_users, rest) = users.split_at(a);
    let (revoked, rest) = rest.split_at(b);
    let (recorded, bystanders) = rest.split_at(c);
    eprintln!("(a) {a} tokens-revoked, one at a time");
    let latency = phases::latency(service, latency_users).await?;
    summary("(a) 202 -> microservice DELETE", &latency);

    eprintln!(
        "(b) {} SETs/s for {} s, {:.0}% forged",
        args.rate,
        args.secs,
        args.forged_share * 100.0
    );
    let load = phases::load(
        service,
        revoked,
        recorded,
        bystanders,
        args.rate,
        args.secs,
        args.forged_share,
    )
    .await?;
    println!(
        "(b) sent {} SETs ({} forged) in {:.2} s = {:.0}/s; valid 202: {}, forged 400: {}, \
         other answers: {}",
        load.sent,
        load.forged,
        load.send_secs,
        load.sent as f64 / load.send_secs,
        load.valid_accepted,
        load.forged_refused,
        load.wrong_answers
    );
    summary("(b) receiver answer", &load.answer_ms);
    summary("(b) 202 -> microservice DELETE", &load.act_ms);
    println!(
        "(b) grant-ending SETs without a DELETE: {}; bystanders (named only by forged SETs) \
         deleted: {}",
        load.act_missing, load.bystanders_deleted
    );
    println!(
        "(b) metrics: {:.0} valid SETs counted as acted on, {:.0} refused; all valid ones \
         counted {:.0} ms after the last answer",
        load.counted_valid, load.counted_refused, load.settle_ms
    );
    println!(
        "(b) service CPU {:.2} s for {} SETs = {:.3} ms per SET ({:.0}% of one core over the \
         send time)",
        load.cpu_secs,
        load.sent,
        load.cpu_secs * 1000.0 / load.sent as f64,
        load.cpu_secs / load.send_secs * 100.0
    );
    Ok(())
}
