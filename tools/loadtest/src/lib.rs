//! `tokenwarden loadtest` (the `tokenwarden-loadtest` binary, which `tokenwarden loadtest`
//! runs): drives a real `tokenwarden serve` process (its own process, its
//! own database) with many users, against the sandbox Google provider and the reference
//! microservice running in this process, all on loopback. It seeds users straight into the
//! database (and the same tokens into the microservice and the sandbox), starts the service
//! and times how long it takes to load them, optionally connects more users through the real
//! consent path at a set rate, lets refreshes run for a set duration while sampling the
//! service, then stops it and checks every user: no token expired before its refresh, and the
//! microservice never holds an older token than the database.

mod report;
mod sample;

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use base64::Engine;
use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};
use rand::RngCore;

pub use report::{Report, Sample};
pub use sample::{cpu_secs, parse_metrics, quantile, rss_kib};

use tokenwarden::{
    config::DEFAULT_SCOPES,
    crypto::TokenCipher,
    store::{SeedUser, Store},
};
use tokenwarden_sandbox::{
    self as sandbox, FaultMode, MicroserviceConfig, ReferenceMicroservice, SandboxGoogle,
    SandboxGoogleConfig, StoredTokens,
};

/// Users seeded per database statement.
const SEED_BATCH: usize = 1000;
/// Longest wait for the service to load every user.
const LOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest wait for the sync queue to drain at the end.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
const CLIENT_ID: &str = "tokenwarden-loadtest";

/// Flags of `tokenwarden loadtest`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadtestArgs {
    /// Users seeded straight into the database before the service starts.
    #[arg(long, default_value_t = 1000)]
    pub users: u64,
    /// Users connected through the real consent path while the run goes on.
    #[arg(long, default_value_t = 0)]
    pub connect_users: u64,
    /// Connects per second for `--connect-users`; 0 connects as fast as the service takes
    /// them (connect saturation, `--connect-workers` at a time).
    #[arg(long, default_value_t = 50)]
    pub connect_rate: u64,
    /// Consents in flight at once under connect saturation.
    #[arg(long, default_value_t = 32)]
    pub connect_workers: u64,
    /// Length of the run phase, in seconds.
    #[arg(long, default_value_t = 60)]
    pub duration_secs: u64,
    /// Lifetime of every access token the sandbox issues, in seconds.
    #[arg(long, default_value_t = 120)]
    pub token_lifetime_secs: u64,
    /// `REFRESH_LEAD_SECS` of the service.
    #[arg(long, default_value_t = 60)]
    pub refresh_lead_secs: u64,
    /// `REFRESH_JITTER_SECS` of the service.
    #[arg(long, default_value_t = 5)]
    pub refresh_jitter_secs: u64,
    /// The service's database; default a fresh SQLite file in a temporary directory.
    #[arg(long, env = "LOADTEST_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Delay of every microservice answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub microservice_latency_ms: u64,
    /// Delay of every sandbox `/token` answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub google_latency_ms: u64,
    /// Share of refreshes the sandbox answers with a 500.
    #[arg(long, default_value_t = 0.0)]
    pub google_error_rate: f64,
    /// Rotate refresh tokens on every refresh.
    #[arg(long)]
    pub rotate: bool,
    /// `REFRESH_CONCURRENCY` of the service.
    #[arg(long, default_value_t = 256)]
    pub refresh_concurrency: u64,
    /// `ACTOR_HIBERNATE_AFTER_SECS` of the service: short, so that only the users due soon
    /// hold a live actor.
    #[arg(long, default_value_t = 10)]
    pub hibernate_after_secs: u64,
    /// `SYNC_CONCURRENCY` of the service.
    #[arg(long, default_value_t = 256)]
    pub sync_concurrency: u64,
    /// Where the JSON report goes.
    #[arg(long, default_value = "loadtest-report.json")]
    pub report: PathBuf,
    /// Where the SVG chart goes.
    #[arg(long, default_value = "loadtest-chart.svg")]
    pub chart: PathBuf,
    /// The `tokenwarden` binary to run as the service; default the one beside this binary.
    #[arg(long)]
    pub service_bin: Option<PathBuf>,
    /// No progress bar (for tests and logs).
    #[arg(long)]
    pub quiet: bool,
}

/// Runs the load test and returns its report (also printed and written).
pub async fn run(args: LoadtestArgs) -> anyhow::Result<Report> {
    let workdir = tempfile::tempdir()?;
    let database_url = args.database_url.clone().unwrap_or_else(|| {
        format!(
            "sqlite://{}?mode=rwc",
            workdir.path().join("service.db").display()
        )
    });
    let google = SandboxGoogle::start(
        SandboxGoogleConfig {
            client_id: Some(CLIENT_ID.into()),
            client_secret: None,
            token_lifetime: Duration::from_secs(args.token_lifetime_secs),
            rotate_refresh_tokens: args.rotate,
            latency: Duration::from_millis(args.google_latency_ms),
            error_rate: args.google_error_rate,
            record_issued: false,
            ..Default::default()
        },
        sandbox::bind_loopback().await?,
    )
    .await?;
    let microservice = ReferenceMicroservice::start(
        MicroserviceConfig {
            record_requests: false,
            sandbox_controls: true,
            ..Default::default()
        },
        sandbox::bind_loopback().await?,
    )
    .await?;
    let mut key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut key);
    let store = Store::connect(&database_url, TokenCipher::new(&key)).await?;
    let progress = Progress::new(args.quiet);
    let seeding = Instant::now();
    let first_refresh = seed(&args, &google, &microservice, &store, &progress).await?;
    let seed_secs = seeding.elapsed().as_secs_f64();

    let service = Service::spawn(
        &args,
        &database_url,
        &key,
        &google,
        &microservice,
        workdir.path(),
    )?;
    let started = Instant::now();
    wait_ready(&service, &progress).await?;
    let mut report = Report {
        date: Utc::now().to_rfc3339(),
        machine: machine(),
        // A database URL may carry a password: the report shows it without one.
        command: std::env::args()
            .map(|arg| tokenwarden::config::without_userinfo(&arg))
            .collect::<Vec<_>>()
            .join(" "),
        database: if database_url.starts_with("postgres") {
            "PostgreSQL"
        } else {
            "SQLite"
        }
        .into(),
        users: args.users,
        duration_secs: args.duration_secs,
        token_lifetime_secs: args.token_lifetime_secs,
        refresh_lead_secs: args.refresh_lead_secs,
        load_secs: started.elapsed().as_secs_f64(),
        rss_after_load_kib: rss_kib(service.pid()).unwrap_or(0),
        seed_secs,
        ..Report::default()
    };
    // The sampled run starts with the first refreshes, so it measures the steady state.
    progress.stage("waiting for the first refreshes", 0);
    if let Ok(wait) = (first_refresh - Utc::now()).to_std() {
        tokio::time::sleep(wait).await;
    }
    microservice.set_latency(Duration::from_millis(args.microservice_latency_ms));
    let callbacks = Arc::new(Mutex::new(Vec::new()));
    let connects = tokio::spawn(connect_users(
        args.clone(),
        service.url.clone(),
        service.jwt_secret.clone(),
        callbacks.clone(),
    ));
    run_phase(&args, &service, &progress, &mut report, &callbacks).await?;
    connects.abort();
    microservice.set_latency(Duration::ZERO);
    microservice.set_mode(FaultMode::Healthy);
    drain(&service).await;
    report.rss_end_kib = rss_kib(service.pid()).unwrap_or(0);
    let stopped_at = Utc::now();
    service.stop().await;
    report_service_errors(workdir.path());
    progress.finish();

    let latencies = std::mem::take(&mut *callbacks.lock().expect("callback latencies"));
    report.connected_through_callback = latencies.len() as u64;
    (report.callback_p50_ms, report.callback_p99_ms) =
        (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    let users_held = report.users + report.connected_through_callback;
    report.rss_per_user_bytes = report.rss_end_kib as f64 * 1024.0 / users_held.max(1) as f64;
    report.expired_before_refresh = google.stats().expired_before_refresh;
    let lead = chrono::Duration::seconds(args.refresh_lead_secs as i64);
    audit(lead, stopped_at, &store, &microservice, &mut report).await?;
    println!("{}", report.table());
    report.write_json(&args.report)?;
    report.write_chart(&args.chart)?;
    println!(
        "report: {}   chart: {}",
        args.report.display(),
        args.chart.display()
    );
    google.shutdown().await;
    microservice.stop().await;
    Ok(report)
}

/// A progress bar, or nothing when quiet.
struct Progress(Option<ProgressBar>);

impl Progress {
    fn new(quiet: bool) -> Self {
        Self((!quiet).then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} {msg}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            bar
        }))
    }
    fn stage(&self, message: &str, len: u64) {
        if let Some(bar) = &self.0 {
            bar.set_length(len);
            bar.set_position(0);
            bar.set_message(message.to_string());
        }
    }
    fn set(&self, pos: u64, message: Option<String>) {
        if let Some(bar) = &self.0 {
            bar.set_position(pos);
            if let Some(m) = message {
                bar.set_message(m);
            }
        }
    }
    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

fn user_id(i: u64) -> String {
    format!("lt-{i:08}")
}

/// Seeds users with first refreshes spread evenly over one refresh period, so the run starts
/// in its steady state instead of with everyone due at once. The first refresh comes after a
/// margin that leaves time to seed and load everyone; returns when it is due.
async fn seed(
    args: &LoadtestArgs,
    google: &SandboxGoogle,
    microservice: &ReferenceMicroservice,
    store: &Store,
    progress: &Progress,
) -> anyhow::Result<chrono::DateTime<Utc>> {
    progress.stage("seeding users", args.users);
    let period = args
        .token_lifetime_secs
        .saturating_sub(args.refresh_lead_secs)
        .max(1) as f64;
    let margin = 3 + (args.users / 8000) as i64;
    let first_refresh = Utc::now() + chrono::Duration::seconds(margin);
    let first_due = first_refresh + chrono::Duration::seconds(args.refresh_lead_secs as i64);
    let users = args.users as usize;
    let mut done = 0usize;
    while done < users {
        let count = SEED_BATCH.min(users - done);
        let offset = done;
        let grants = google.seed_grants(count, DEFAULT_SCOPES, |i| {
            let share = (offset + i) as f64 / users as f64;
            first_due + chrono::Duration::milliseconds((share * period * 1000.0) as i64)
        });
        let rows: Vec<SeedUser> = grants
            .iter()
            .enumerate()
            .map(|(i, g)| SeedUser {
                user_id: user_id((offset + i) as u64),
                access_token: g.access_token.clone(),
                refresh_token: g.refresh_token.clone(),
                expires_at: g.expires_at,
                scope: g.scope.clone(),
            })
            .collect();
        store.seed_users(&rows).await?;
        let copies: Vec<(String, StoredTokens)> = rows
            .into_iter()
            .map(|u| {
                let tokens = StoredTokens {
                    access_token: u.access_token,
                    refresh_token: u.refresh_token,
                    token_expiry: tokenwarden::http::rfc3339(u.expires_at),
                    scope: u.scope,
                    updated_at: String::new(),
                };
                (u.user_id, tokens)
            })
            .collect();
        microservice.seed(&copies).await?;
        done += count;
        progress.set(done as u64, None);
    }
    Ok(first_refresh)
}

/// The service process under test.
struct Service {
    child: Child,
    url: String,
    admin_token: String,
    jwt_secret: String,
    http: reqwest::Client,
}

impl Service {
    fn spawn(
        args: &LoadtestArgs,
        database_url: &str,
        key: &[u8; 32],
        google: &SandboxGoogle,
        microservice: &ReferenceMicroservice,
        workdir: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let admin_token = random_secret();
        let jwt_secret = random_secret();
        let bin = match &args.service_bin {
            Some(bin) => bin.clone(),
            None => std::env::current_exe()?.with_file_name("tokenwarden"),
        };
        let log = std::fs::File::create(workdir.join("service.log"))?;
        let child = Command::new(bin)
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", database_url)
            .env("GOOGLE_CALENDAR_CLIENT_ID", CLIENT_ID)
            .env("GOOGLE_CALENDAR_CLIENT_SECRET", "unused-by-the-sandbox")
            .env(
                "GOOGLE_CALENDAR_REDIRECT_URI",
                format!("{url}/api/integrations/google/callback"),
            )
            .env("GOOGLE_OAUTH_AUTH_URL", google.auth_url())
            .env("GOOGLE_OAUTH_TOKEN_URL", google.token_url())
            .env("GOOGLE_OAUTH_REVOKE_URL", google.revoke_url())
            .env("GOOGLE_USERINFO_URL", google.userinfo_url())
            .env("GOOGLE_CALENDAR_MICROSERVICE_URL", microservice.base_url())
            .env("REFRESH_LEAD_SECS", args.refresh_lead_secs.to_string())
            .env("REFRESH_JITTER_SECS", args.refresh_jitter_secs.to_string())
            .env("REFRESH_CONCURRENCY", args.refresh_concurrency.to_string())
            .env("SYNC_CONCURRENCY", args.sync_concurrency.to_string())
            .env(
                "ACTOR_HIBERNATE_AFTER_SECS",
                args.hibernate_after_secs.to_string(),
            )
            .env("FRONTEND_URL", "http://frontend.loadtest")
            .env("AUTH_JWT_SECRET", &jwt_secret)
            .env("ADMIN_TOKEN", &admin_token)
            .env(
                "TOKEN_ENCRYPTION_KEY",
                base64::engine::general_purpose::STANDARD.encode(key),
            )
            // Per-sync info lines at thousands a second would measure the logger, not us.
            .env("RUST_LOG", "warn")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("cannot start the service")?;
        Ok(Self {
            child,
            url,
            admin_token,
            jwt_secret,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()?,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn get(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.admin_token)
            .send()
            .await?)
    }

    async fn scrape(&self) -> anyhow::Result<sample::Scrape> {
        Ok(parse_metrics(&self.get("/metrics").await?.text().await?))
    }

    async fn actors_total(&self) -> anyhow::Result<u64> {
        let body: serde_json::Value = self.get("/admin/actors?limit=1").await?.json().await?;
        Ok(body["total"].as_u64().unwrap_or(0))
    }

    /// SIGTERM, then up to 20 s for a clean exit, then SIGKILL.
    async fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        for _ in 0..200 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
    }
}

async fn wait_ready(service: &Service, progress: &Progress) -> anyhow::Result<()> {
    progress.stage("service loading users", LOAD_TIMEOUT.as_secs());
    let started = Instant::now();
    while started.elapsed() < LOAD_TIMEOUT {
        if matches!(service.get("/readyz").await, Ok(r) if r.status() == 200) {
            return Ok(());
        }
        progress.set(started.elapsed().as_secs(), None);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the service did not become ready within {LOAD_TIMEOUT:?}")
}

/// Samples the service about every second for the run's duration.
async fn run_phase(
    args: &LoadtestArgs,
    service: &Service,
    progress: &Progress,
    report: &mut Report,
    connects: &Mutex<Vec<f64>>,
) -> anyhow::Result<()> {
    progress.stage("running", args.duration_secs);
    let lateness = "tokenwarden_refresh_lateness_seconds";
    let first = service.scrape().await?;
    let cpu_at_start = cpu_secs(service.pid());
    let connects_at_start = connects.lock().expect("connect latencies").len();
    let mut previous = first.clone();
    let started = Instant::now();
    let mut previous_at = started;
    let deadline = started + Duration::from_secs(args.duration_secs);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let scrape = service.scrape().await?;
        let now = Instant::now();
        let dt = now.duration_since(previous_at).as_secs_f64();
        let window = sample::window(
            scrape
                .histograms
                .get(lateness)
                .map_or(&[][..], Vec::as_slice),
            previous
                .histograms
                .get(lateness)
                .map_or(&[][..], Vec::as_slice),
        );
        let sample = Sample {
            t: now.duration_since(started).as_secs_f64(),
            refreshes_per_sec: (scrape.refreshes_ok - previous.refreshes_ok) / dt,
            lateness_p99: quantile(&window, 0.99),
            rss_mib: rss_kib(service.pid()).unwrap_or(0) as f64 / 1024.0,
            actors: service.actors_total().await.unwrap_or(0),
            sync_queue_depth: scrape.sync_queue_depth,
        };
        progress.set(
            sample.t as u64,
            Some(format!(
                "{:.0} refreshes/s, RSS {:.0} MiB, queue {}",
                sample.refreshes_per_sec, sample.rss_mib, sample.sync_queue_depth
            )),
        );
        report.samples.push(sample);
        previous = scrape;
        previous_at = now;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_secs(service.pid())
        .zip(cpu_at_start)
        .map_or(0.0, |(end, start)| end - start);
    let last = &previous;
    report.refreshes = last.refreshes_ok - first.refreshes_ok;
    report.connects_in_run =
        (connects.lock().expect("connect latencies").len() - connects_at_start) as u64;
    report.service_cpu_secs = cpu;
    // Attributed only when one kind of work ran alone: a mixed run has no honest split.
    if report.connects_in_run == 0 {
        report.cpu_ms_per_refresh = sample::cpu_ms_per(cpu, report.refreshes);
    } else if report.refreshes < 1.0 {
        report.cpu_ms_per_connect = sample::cpu_ms_per(cpu, report.connects_in_run as f64);
    }
    report.refreshes_per_sec_avg = report.refreshes / elapsed.max(1.0);
    report.refreshes_per_sec_peak_10s = report
        .samples
        .windows(10)
        .map(|w| w.iter().map(|s| s.refreshes_per_sec).sum::<f64>() / w.len() as f64)
        .fold(0.0, f64::max);
    report.refresh_failures = last.refresh_failures - first.refresh_failures;
    report.sync_failures = last.sync_failures - first.sync_failures;
    let run_window = |name: &str| {
        sample::window(
            last.histograms.get(name).map_or(&[][..], Vec::as_slice),
            first.histograms.get(name).map_or(&[][..], Vec::as_slice),
        )
    };
    report.refresh_lateness_p50_secs = quantile(&run_window(lateness), 0.5);
    report.refresh_lateness_p99_secs = quantile(&run_window(lateness), 0.99);
    report.sync_lag_p99_secs = quantile(&run_window("tokenwarden_sync_lag_seconds"), 0.99);
    report.actors_listed = service.actors_total().await.unwrap_or(0);
    Ok(())
}

/// Waits (bounded) until the service has pushed every queued change.
async fn drain(service: &Service) {
    let started = Instant::now();
    while started.elapsed() < DRAIN_TIMEOUT {
        if service
            .scrape()
            .await
            .is_ok_and(|s| s.sync_queue_depth == 0.0)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Connects users through the real path (connect, sandbox consent, callback) at the set
/// rate, recording each callback's latency in milliseconds.
async fn connect_users(
    args: LoadtestArgs,
    url: String,
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
        return saturate_connects(args, http, url, jwt_secret, latencies).await;
    }
    let mut every = tokio::time::interval(Duration::from_secs_f64(
        1.0 / args.connect_rate.max(1) as f64,
    ));
    for i in 0..args.connect_users {
        every.tick().await;
        let (http, url, secret, latencies) = (
            http.clone(),
            url.clone(),
            jwt_secret.clone(),
            latencies.clone(),
        );
        tokio::spawn(async move {
            let user = format!("lt-connect-{i:08}");
            match connect_one(&http, &url, &secret, &user).await {
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
    url: String,
    jwt_secret: String,
    latencies: Arc<Mutex<Vec<f64>>>,
) {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let workers: Vec<_> = (0..args.connect_workers.max(1))
        .map(|_| {
            let (http, url, secret, latencies, next) = (
                http.clone(),
                url.clone(),
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
                    match connect_one(&http, &url, &secret, &user).await {
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

async fn connect_one(
    http: &reqwest::Client,
    url: &str,
    secret: &str,
    user: &str,
) -> anyhow::Result<f64> {
    let exp = Utc::now().timestamp() + 3600;
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": user, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?;
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
        .context("consent redirect")?
        .to_string();
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

/// Compares every user's database state with the microservice's copy.
async fn audit(
    lead: chrono::Duration,
    stopped_at: chrono::DateTime<Utc>,
    store: &Store,
    microservice: &ReferenceMicroservice,
    report: &mut Report,
) -> anyhow::Result<()> {
    let copies = microservice.access_tokens().await?;
    let mut after: Option<String> = None;
    loop {
        let page = store.audit_page(after.as_deref(), 5000).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.user_id.clone());
        for row in &page {
            if row.token_expiry.is_some_and(|e| e <= stopped_at) {
                report.expired_at_end += 1;
            }
            // Only users whose first refresh was due before the end count as missed.
            let was_due = row.token_expiry.is_some_and(|e| e - lead <= stopped_at);
            if row.refresh_count == 0 && was_due && row.user_id.starts_with("lt-0") {
                report.never_refreshed += 1;
            }
            if row.access_token.as_ref() != copies.get(&row.user_id) {
                report.stale_at_microservice += 1;
                if row.synced_version < row.token_version {
                    report.stale_still_pending += 1;
                }
            }
        }
    }
    Ok(())
}

/// Prints the service's error lines (at most 20): a load test must not hide them.
fn report_service_errors(workdir: &std::path::Path) {
    let log = std::fs::read_to_string(workdir.join("service.log")).unwrap_or_default();
    for line in log.lines().filter(|l| l.contains("ERROR")).take(20) {
        eprintln!("service: {line}");
    }
}

fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[index])
}

fn random_secret() -> String {
    let mut raw = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// Cores and memory of this machine, for the report.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    format!("{cores} cores, {} GiB", mem_kib / 1024 / 1024)
}
