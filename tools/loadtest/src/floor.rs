//! The machine's floor: what the simplest pieces of a refresh cost on this machine, measured
//! at the start of every run so that the run's CPU figures can also be read in these units
//! ("floor units"), which travel between machines where milliseconds do not. Each unit is the
//! CPU time (user + system, every thread) of a process of its own (this binary, started with
//! `--floor-probe`, with the service's allocator) doing nothing else:
//! - an outbound exchange: one small JSON POST with a client built as the service builds its
//!   Google and microservice clients (reqwest, rustls), on keep-alive loopback connections, to
//!   a server in this process (its CPU is not counted);
//! - an inbound exchange: the same request from this process's client, answered by the
//!   service's own server loop (`tokenwarden::http::serve`, hyper and axum) in the probe;
//! - a commit: one single-row `UPDATE` in its own transaction through the store's own
//!   connection (`Store::connect`: sea-orm, sqlx, the same pragmas and socket options), on a
//!   scratch SQLite file, and on the run's PostgreSQL database when the run uses one.
//!
//! The exchange unit is the mean of the outbound and the inbound exchange: a refresh makes two
//! outbound exchanges, a connect two inbound and three outbound.
//!
//! The probe takes one command a line on stdin and answers one line on stdout; CPU is read
//! with `clock_gettime(CLOCK_PROCESS_CPUTIME_ID)` around the measured part only (a warm-up of
//! a tenth of the count comes first).

use std::{process::Stdio, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{Json, Router, routing::post};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde::Serialize;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
    process::{Child, ChildStdin, ChildStdout, Command},
};

use tokenwarden::{crypto::TokenCipher, store::Store};

/// Requests in flight at once in the exchange measurements: enough to keep both sides busy,
/// as at saturation, without measuring a queue.
const CONCURRENCY: usize = 16;
/// Rows of the scratch table the commits update, one at a time in turn.
const ROWS: i64 = 1000;
/// Longest the whole floor may take (the probe is killed after it).
const FLOOR_TIMEOUT: Duration = Duration::from_secs(300);

/// The floor of this machine, in microseconds of CPU per unit.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Floor {
    /// Exchanges measured each way, and SQLite commits; PostgreSQL commits are a quarter.
    pub count: u64,
    pub http_outbound_us: f64,
    pub http_inbound_us: f64,
    /// The exchange unit: the mean of the two above.
    pub exchange_us: f64,
    pub sqlite_commit_us: f64,
    /// Measured when the run uses PostgreSQL.
    pub postgres_commit_us: Option<f64>,
}

/// Measures the floor with `probe` (this binary) and returns it.
pub async fn measure(
    probe: &std::path::Path,
    count: u64,
    postgres_url: Option<&str>,
) -> anyhow::Result<Floor> {
    tokio::time::timeout(FLOOR_TIMEOUT, measure_inner(probe, count, postgres_url))
        .await
        .context("the floor took longer than its timeout")?
}

async fn measure_inner(
    probe: &std::path::Path,
    count: u64,
    postgres_url: Option<&str>,
) -> anyhow::Result<Floor> {
    let mut probe = Probe::spawn(probe)?;
    let server = TcpListener::bind("127.0.0.1:0").await?;
    let server_url = format!("http://{}/floor", server.local_addr()?);
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(tokenwarden::http::serve(
        server,
        router(),
        server_limits(),
        stop.clone(),
    ));
    let out_ns = probe
        .ask(&format!("out {server_url} {count}"))
        .await?
        .parse::<f64>()?;
    let probe_url = format!("http://{}/floor", probe.ask("serve").await?);
    exchanges(&probe_url, count / 10).await?;
    let before = probe.ask("cpu").await?.parse::<f64>()?;
    exchanges(&probe_url, count).await?;
    let in_ns = probe.ask("cpu").await?.parse::<f64>()? - before;
    let sqlite_ns = probe
        .ask(&format!("commit sqlite {count}"))
        .await?
        .parse::<f64>()?;
    let postgres_ns = match postgres_url {
        Some(url) => Some(
            probe
                .ask(&format!("commit {url} {}", (count / 4).max(1)))
                .await?
                .parse::<f64>()?,
        ),
        None => None,
    };
    let _ = probe.ask("exit").await;
    stop.cancel();
    let us = |ns: f64, n: u64| ns / 1000.0 / n.max(1) as f64;
    let (outbound, inbound) = (us(out_ns, count), us(in_ns, count));
    Ok(Floor {
        count,
        http_outbound_us: outbound,
        http_inbound_us: inbound,
        exchange_us: (outbound + inbound) / 2.0,
        sqlite_commit_us: us(sqlite_ns, count),
        postgres_commit_us: postgres_ns.map(|ns| us(ns, (count / 4).max(1))),
    })
}

/// The probe process, spoken to a line at a time.
struct Probe {
    _child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Probe {
    fn spawn(bin: &std::path::Path) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .arg("--floor-probe")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting the floor probe {}", bin.display()))?;
        let stdin = child.stdin.take().context("probe stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("probe stdout")?).lines();
        Ok(Self {
            _child: child,
            stdin,
            stdout,
        })
    }

    async fn ask(&mut self, command: &str) -> anyhow::Result<String> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        self.stdin.flush().await?;
        let line = self.stdout.next_line().await?.context("the probe ended")?;
        line.strip_prefix("ok ")
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("floor probe: {line}"))
    }
}

/// The minimal route both sides answer: a small JSON body back.
fn router() -> Router {
    Router::new().route(
        "/floor",
        post(|Json(body): Json<serde_json::Value>| async move {
            Json(serde_json::json!({ "ok": true, "n": body.get("n") }))
        }),
    )
}

fn server_limits() -> tokenwarden::config::HttpServerConfig {
    tokenwarden::config::HttpServerConfig {
        header_read_timeout: Duration::from_secs(10),
        max_connections: 1024,
    }
}

/// A client built as the service builds its outbound clients (`google`, `sync`).
fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// `count` POSTs to `url`, [`CONCURRENCY`] at a time.
async fn exchanges(url: &str, count: u64) -> anyhow::Result<()> {
    let client = client()?;
    let url: Arc<str> = url.into();
    let mut tasks = Vec::new();
    for worker in 0..CONCURRENCY as u64 {
        let (client, url) = (client.clone(), url.clone());
        let share = count / CONCURRENCY as u64 + u64::from(worker < count % CONCURRENCY as u64);
        tasks.push(tokio::spawn(async move {
            for n in 0..share {
                client
                    .post(&*url)
                    .json(&serde_json::json!({ "n": n }))
                    .send()
                    .await?
                    .error_for_status()?
                    .bytes()
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// This process's CPU time so far (every thread, user + system), in nanoseconds.
fn cpu_ns() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable timespec for the call's duration.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e9 + t.tv_nsec as f64
}

/// The probe's side: runs until stdin closes or says `exit`.
pub async fn probe() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    let stop = tokio_util::sync::CancellationToken::new();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["cpu"] => Ok(format!("{}", cpu_ns())),
            ["serve"] => serve(stop.clone()).await,
            ["out", url, count] => timed_exchanges(url, count.parse()?).await,
            ["commit", target, count] => commits(target, count.parse()?).await,
            ["exit"] => break,
            _ => Err(anyhow::anyhow!("unknown command {line:?}")),
        };
        let reply = match answer {
            Ok(value) => format!("ok {value}\n"),
            Err(e) => format!("error {e:#}\n"),
        };
        stdout.write_all(reply.as_bytes()).await?;
        stdout.flush().await?;
    }
    stop.cancel();
    Ok(())
}

async fn serve(stop: tokio_util::sync::CancellationToken) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(tokenwarden::http::serve(
        listener,
        router(),
        server_limits(),
        stop,
    ));
    Ok(addr.to_string())
}

async fn timed_exchanges(url: &str, count: u64) -> anyhow::Result<String> {
    exchanges(url, count / 10).await?;
    let start = cpu_ns();
    exchanges(url, count).await?;
    Ok(format!("{}", cpu_ns() - start))
}

/// `count` single-row update commits, one after another, through the store's connection;
/// `target` is `sqlite` (a scratch file) or a PostgreSQL URL (a scratch table, dropped after).
async fn commits(target: &str, count: u64) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let url = match target {
        "sqlite" => format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("floor.db").display()
        ),
        url => url.to_string(),
    };
    let store = Store::connect(&url, TokenCipher::new(&[7u8; 32])).await?;
    let db = store.connection();
    let backend = db.get_database_backend();
    let table = "loadtest_floor";
    db.execute_unprepared(&format!("DROP TABLE IF EXISTS {table}"))
        .await?;
    db.execute_unprepared(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, n BIGINT NOT NULL)"
    ))
    .await?;
    let values: Vec<String> = (0..ROWS).map(|id| format!("({id}, 0)")).collect();
    db.execute_unprepared(&format!(
        "INSERT INTO {table} (id, n) VALUES {}",
        values.join(", ")
    ))
    .await?;
    let sql = match backend {
        DbBackend::Postgres => format!("UPDATE {table} SET n = n + 1 WHERE id = $1"),
        _ => format!("UPDATE {table} SET n = n + 1 WHERE id = ?"),
    };
    let update =
        |i: u64| Statement::from_sql_and_values(backend, &sql, [((i as i64) % ROWS).into()]);
    for i in 0..count / 10 {
        db.execute_raw(update(i)).await?;
    }
    let start = cpu_ns();
    for i in 0..count {
        db.execute_raw(update(i)).await?;
    }
    let spent = cpu_ns() - start;
    db.execute_unprepared(&format!("DROP TABLE {table}"))
        .await?;
    Ok(format!("{spent}"))
}
