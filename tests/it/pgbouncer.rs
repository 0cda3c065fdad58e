//! PostgreSQL behind PgBouncer (issue 23), Debian's `pgbouncer` run by the test on a free
//! loopback port in front of `TEST_DATABASE_URL`'s server. In transaction pooling mode a
//! server connection changes hands after every transaction, which breaks what needs a
//! session: `LISTEN`, the session advisory lock of the migrations (both go over
//! `DATABASE_SESSION_URL`, direct), and sqlx's named prepared statements on PgBouncer before
//! 1.21 (or with `max_prepared_statements = 0`), which `serve` detects and refuses at start
//! in one line.
//!
//! Without `pgbouncer` the tests are skipped with a loud message, except under `CI=true`
//! (`.ci/run` installs it), where that fails.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    cluster::{Cluster, Settings, user_ids, wait_actor_total},
    process::{free_port, running_as_root, sandboxes, serve_env, tokenwarden},
    support::{Backend, ENCRYPTION_KEY, TestDatabase, eventually, postgres_available},
};

/// A PgBouncer process of the test's own, stopped when dropped.
pub struct PgBouncer {
    pub port: u16,
    /// `(major, minor)` of `pgbouncer --version`.
    pub version: (u32, u32),
    child: Child,
    dir: tempfile::TempDir,
}

fn pgbouncer_binary() -> Option<PathBuf> {
    ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl PgBouncer {
    /// PgBouncer in `pool_mode` (`transaction` or `session`) in front of `TEST_DATABASE_URL`'s
    /// server, every database name passed through; `None` (after saying so) without
    /// `pgbouncer` or PostgreSQL outside CI. `keep_prepared`: `max_prepared_statements = 200`
    /// on PgBouncer 1.21 and later (earlier versions have no such setting).
    pub async fn start(pool_mode: &str, keep_prepared: bool) -> Option<Self> {
        let ci = std::env::var("CI").as_deref() == Ok("true");
        let Some(binary) = pgbouncer_binary() else {
            let message = "the PgBouncer tests need pgbouncer (Debian: apt-get install pgbouncer)";
            assert!(!ci, "{message}");
            eprintln!("SKIPPED (loudly): {message}");
            return None;
        };
        if !postgres_available().await {
            eprintln!("SKIPPED: the PgBouncer tests need PostgreSQL");
            return None;
        }
        let version_text = Command::new(&binary).arg("--version").output().unwrap();
        let version_text = String::from_utf8_lossy(&version_text.stdout).into_owned();
        let version = parse_version(&version_text).expect("pgbouncer --version");
        let admin = url::Url::parse(
            &std::env::var("TEST_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port().await;
        let prepared = if keep_prepared && version >= (1, 21) {
            "max_prepared_statements = 200\n"
        } else {
            ""
        };
        let config = format!(
            "[databases]\n* = host={host} port={pg_port}\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {dir}/users.txt\npool_mode = {pool_mode}\n\
             default_pool_size = 60\nmax_client_conn = 1000\n\
             ignore_startup_parameters = extra_float_digits,options\n\
             logfile = {dir}/pgbouncer.log\n{prepared}",
            host = admin.host_str().unwrap_or("127.0.0.1"),
            pg_port = admin.port().unwrap_or(5432),
            dir = dir.path().display(),
        );
        std::fs::write(dir.path().join("pgbouncer.ini"), config).unwrap();
        std::fs::write(
            dir.path().join("users.txt"),
            format!(
                "\"{}\" \"{}\"\n",
                admin.username(),
                admin.password().unwrap_or_default()
            ),
        )
        .unwrap();
        // PgBouncer refuses to run as root: as root, it runs as `postgres` (setpriv execs it,
        // so the child is PgBouncer itself and can be stopped by its id).
        let mut command = if running_as_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown the PgBouncer directory");
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(&binary);
            c
        } else {
            Command::new(&binary)
        };
        let child = command
            .arg(dir.path().join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let bouncer = Self {
            port,
            version,
            child,
            dir,
        };
        let up = eventually(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        assert!(up, "PgBouncer did not listen:\n{}", bouncer.log());
        Some(bouncer)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }

    /// Whether this PgBouncer keeps prepared statements in transaction mode when asked to.
    pub fn keeps_prepared_statements(&self) -> bool {
        self.version >= (1, 21)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// `(1, 18)` from `PgBouncer 1.18.0` (the first line of `pgbouncer --version`).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let number = text.split_whitespace().nth(1)?;
    let mut parts = number.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[test]
fn the_version_is_read_from_the_first_line() {
    assert_eq!(
        parse_version("PgBouncer 1.18.0\nlibevent 2.1.12"),
        Some((1, 18))
    );
}

/// PgBouncer in transaction mode without prepared statement support: `serve` stops at start
/// with one line saying what is wrong and what would do, instead of failing now and then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pooling_without_prepared_statements_is_refused_at_start_in_one_line() {
    let Some(bouncer) = PgBouncer::start("transaction", false).await else {
        return;
    };
    let (google, microservice) = sandboxes(Duration::from_secs(3600)).await;
    let db = TestDatabase::create(Backend::Postgres).await;
    let mut pooled = url::Url::parse(&db.url).unwrap();
    pooled.set_host(Some("127.0.0.1")).unwrap();
    pooled.set_port(Some(bouncer.port)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().await;
    let mut child = tokenwarden(dir.path())
        .arg("serve")
        .envs(serve_env(
            port,
            pooled.as_str(),
            ENCRYPTION_KEY,
            &google,
            &microservice,
        ))
        .env("DATABASE_SESSION_URL", &db.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let Some(status) = status else {
        panic!("serve through PgBouncer in transaction mode kept running:\n{stderr}");
    };
    assert!(!status.success(), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one line:\n{stderr}");
    assert!(
        errors[0].contains("does not keep prepared statements between transactions")
            && errors[0].contains("max_prepared_statements")
            && errors[0].contains("DATABASE_URL"),
        "{}",
        errors[0]
    );
}

/// Three nodes whose `DATABASE_URL` goes through PgBouncer and `DATABASE_SESSION_URL`
/// direct: consents that start on one node and come back to another, refreshes pushed, a
/// node killed and its users refreshed by the others, nothing lost. Transaction pooling with
/// `max_prepared_statements` where the PgBouncer installed has it (1.21 and later); Debian
/// 12's 1.18 has not, so there it runs in session pooling, the mode that PgBouncer version
/// supports for this service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_behind_pgbouncer_routes_refreshes_and_fails_over() {
    let Some(probe) = PgBouncer::start("session", false).await else {
        return;
    };
    let mode = if probe.keeps_prepared_statements() {
        "transaction"
    } else {
        "session"
    };
    drop(probe);
    let Some(bouncer) = PgBouncer::start(mode, true).await else {
        return;
    };
    eprintln!(
        "PgBouncer {}.{} in {mode} pooling mode",
        bouncer.version.0, bouncer.version.1
    );
    let Some(mut cluster) = Cluster::start(Settings {
        token_lifetime: Duration::from_secs(16),
        refresh_lead_secs: 8,
        rotation: true,
        pooled_port: Some(bouncer.port),
        ..Settings::default()
    })
    .await
    else {
        return;
    };
    cluster.wait_even(Duration::from_secs(15)).await;
    let users = user_ids("bouncer", 30);
    // Routing: each consent starts on one node and its callback reaches the next.
    for (i, user) in users.iter().enumerate() {
        cluster.connect(user, i % 3, (i + 1) % 3).await.unwrap();
    }
    assert!(wait_actor_total(&cluster, users.len() as i64, Duration::from_secs(10)).await);
    let refreshing = eventually(Duration::from_secs(15), || async {
        cluster.google.stats().refreshes >= 5
    })
    .await;
    assert!(refreshing, "refreshes: {:?}", cluster.google.stats());

    let victim_id = cluster.nodes[1].id.clone();
    let victims = cluster.actor_ids(1).await;
    let killed_at = chrono::Utc::now();
    let killed = Instant::now();
    cluster.kill(1).await;
    let moved = cluster
        .wait_shards_moved(0, &victim_id, killed, Duration::from_secs(10))
        .await;
    assert!(moved.is_some(), "{victim_id}'s shards moved");
    let refreshed = eventually(Duration::from_secs(20), || async {
        let db = cluster.db_users().await;
        victims.iter().all(|u| {
            db.get(u)
                .and_then(|r| r.last_refresh_at)
                .is_some_and(|at| at > killed_at)
        })
    })
    .await;
    assert!(refreshed, "{victim_id}'s users refreshed by the others");
    cluster.settle(&users, Duration::from_secs(20)).await;
    cluster.assert_nothing_lost(&users).await;
    assert!(
        !bouncer.log().contains("prepared statement"),
        "{}",
        bouncer.log()
    );
}
