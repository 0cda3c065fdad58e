//! Real PostgreSQL servers of a test's own (issue 23): a primary made with `initdb`, streaming
//! standbys made with `pg_basebackup`, hard stops and promotions with `pg_ctl`, each in a
//! temporary directory on a free loopback port; and [`MovableProxy`], the one address the
//! nodes know, which the test points at the promoted standby as a cloud database's DNS name
//! or virtual IP moves. The binaries come from `PG_BIN` or the newest
//! `/usr/lib/postgresql/<version>/bin`; PostgreSQL refuses to run as root, so as root every
//! command runs as the `postgres` user in directories that user owns.
//!
//! Without the binaries the tests are skipped with a loud message, except under `CI=true`,
//! where that is a failure.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use sea_orm::{ConnectionTrait, Database};
use tokenwarden_sandbox::bind_loopback;
use tokio::{net::TcpStream, task::AbortHandle};

use crate::{
    process::{free_port, running_as_root},
    support::eventually,
};

/// The database the nodes use on these servers.
pub const DB_NAME: &str = "tokenwarden";

/// Where `initdb`, `pg_ctl` and `pg_basebackup` are, or `None` (after saying why) when the
/// test should be skipped. Panics under `CI=true`.
pub fn pg_bin() -> Option<PathBuf> {
    let found = std::env::var_os("PG_BIN").map(PathBuf::from).or_else(|| {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| {
                let e = e.ok()?;
                let version = e.file_name().to_str()?.parse().ok()?;
                Some((version, e.path().join("bin")))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, path)| path)
    });
    match found {
        Some(bin) if bin.join("initdb").exists() && bin.join("pg_basebackup").exists() => Some(bin),
        _ => {
            let message = "the database failover tests need PostgreSQL's initdb, pg_ctl and \
                           pg_basebackup (Debian: postgresql-15; or set PG_BIN)";
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
            eprintln!("SKIPPED (loudly): {message}");
            None
        }
    }
}

/// One PostgreSQL server: its data directory and port. Stopped (immediately) when dropped.
pub struct PgServer {
    bin: PathBuf,
    /// Holds the data directory, the socket and the log.
    dir: tempfile::TempDir,
    pub port: u16,
    /// `postgres://postgres@127.0.0.1:<port>/tokenwarden`.
    pub url: String,
    running: bool,
}

impl PgServer {
    /// Runs one of PostgreSQL's programs, as `postgres` when this process is root; panics
    /// with its output when it fails.
    fn run(bin: &Path, program: &str, args: &[&str]) {
        let path = bin.join(program);
        let mut command = if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let output = command.args(args).output().unwrap();
        assert!(
            output.status.success(),
            "{program} {args:?}: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn new_dir() -> tempfile::TempDir {
        let dir = tempfile::Builder::new().prefix("tw-pg-").tempdir().unwrap();
        if running_as_root() {
            let ok = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown the PostgreSQL directory");
        }
        dir
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// A new primary with the nodes' empty database; replication is asynchronous until
    /// [`PgServer::require_synchronous_standby`] (commits would wait for a standby that does
    /// not exist yet).
    pub async fn primary(bin: &Path) -> Self {
        let dir = Self::new_dir();
        let data = dir.path().join("data").display().to_string();
        // --no-sync and fsync=off: a test server's files need not survive a power cut, only
        // a hard stop of the server process, which the OS's page cache outlives.
        Self::run(
            bin,
            "initdb",
            &["-D", &data, "-U", "postgres", "-A", "trust", "--no-sync"],
        );
        append(
            &format!("{data}/postgresql.conf"),
            "fsync = off\nwal_level = replica\nmax_wal_senders = 8\nhot_standby = on\n\
             wal_sender_timeout = 5s\nwal_receiver_status_interval = 1s\n",
        );
        let mut server = Self::at(bin, dir).await;
        server.start(&[]);
        let admin = server.url.replace(DB_NAME, "postgres");
        let db = Database::connect(admin.as_str()).await.unwrap();
        db.execute_unprepared(&format!("CREATE DATABASE {DB_NAME}"))
            .await
            .unwrap();
        let _ = db.close().await;
        server
    }

    /// A streaming standby of the server at `upstream_port` (the primary itself, or a proxy
    /// to it), copied with `pg_basebackup -R`. It starts with no synchronous standby of its
    /// own: promoted, it must not wait for one that does not exist yet (what Patroni does
    /// when the last synchronous standby is gone).
    pub async fn standby(bin: &Path, upstream_port: u16) -> Self {
        let dir = Self::new_dir();
        let data = dir.path().join("data").display().to_string();
        Self::run(
            bin,
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &upstream_port.to_string(),
                "-U",
                "postgres",
                "-D",
                &data,
                "-R",
                "-X",
                "stream",
                "--no-sync",
                "-c",
                "fast",
            ],
        );
        // In the configuration file, not on the command line: a later `ALTER SYSTEM` must be
        // able to turn it on (the command line outranks every file, reloads included).
        append(
            &format!("{data}/postgresql.auto.conf"),
            "synchronous_standby_names = ''\n",
        );
        let mut server = Self::at(bin, dir).await;
        server.start(&[]);
        server
    }

    async fn at(bin: &Path, dir: tempfile::TempDir) -> Self {
        let mut port = free_port().await;
        // Not a port PostgreSQL's default or another server of this test uses.
        while port == 5432 {
            port = free_port().await;
        }
        Self {
            bin: bin.to_path_buf(),
            url: format!("postgres://postgres@127.0.0.1:{port}/{DB_NAME}"),
            dir,
            port,
            running: false,
        }
    }

    fn start(&mut self, extra: &[&str]) {
        let socket = self.dir.path().display().to_string();
        let mut options = format!(
            "-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories={socket}",
            self.port
        );
        for arg in extra {
            options.push(' ');
            options.push_str(arg);
        }
        let log = self.dir.path().join("server.log").display().to_string();
        Self::run(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
        self.running = true;
    }

    /// `pg_ctl stop -m immediate`: the server process ends at once, no checkpoint, every
    /// connection cut (as a crashed machine's, except that the OS keeps what was written).
    pub fn stop_hard(&mut self) {
        Self::run(
            &self.bin,
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
        self.running = false;
    }

    /// `pg_ctl promote -w`: the standby ends recovery and takes writes.
    pub fn promote(&self) {
        Self::run(&self.bin, "pg_ctl", &["-D", &self.data(), "-w", "promote"]);
    }

    /// Makes commits on this primary wait for a standby from now on (`ALTER SYSTEM`).
    pub async fn require_synchronous_standby(&self) {
        let db = Database::connect(self.url.as_str()).await.unwrap();
        db.execute_unprepared("ALTER SYSTEM SET synchronous_standby_names = '*'")
            .await
            .unwrap();
        db.execute_unprepared("SELECT pg_reload_conf()")
            .await
            .unwrap();
        let _ = db.close().await;
    }

    /// Waits (bounded) until a standby streams from this server, in `sync` state when
    /// `synchronous`.
    pub async fn wait_standby(&self, synchronous: bool, timeout: Duration) -> bool {
        let db = Database::connect(self.url.as_str()).await.unwrap();
        let want = if synchronous { "sync" } else { "async" };
        let ok = eventually(timeout, || async {
            let rows = db
                .query_all_raw(sea_orm::Statement::from_string(
                    sea_orm::DbBackend::Postgres,
                    "SELECT state, sync_state FROM pg_stat_replication",
                ))
                .await
                .unwrap_or_default();
            rows.iter().any(|r| {
                r.try_get::<String>("", "state").ok().as_deref() == Some("streaming")
                    && r.try_get::<String>("", "sync_state").ok().as_deref() == Some(want)
            })
        })
        .await;
        let _ = db.close().await;
        ok
    }

    /// The end of the server's log, for a failing test.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running {
            let data = self.data();
            let bin = self.bin.clone();
            let _ = std::panic::catch_unwind(|| {
                Self::run(&bin, "pg_ctl", &["-D", &data, "-m", "immediate", "stop"])
            });
        }
    }
}

fn append(path: &str, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// A TCP proxy on loopback whose upstream can be moved (every open link is cut then, as the
/// old server's are when it dies) or cut altogether (new connections refused).
pub struct MovableProxy {
    pub port: u16,
    upstream: Arc<Mutex<Option<u16>>>,
    links: Arc<Mutex<Vec<AbortHandle>>>,
}

impl MovableProxy {
    pub async fn start(upstream_port: u16) -> Self {
        let listener = bind_loopback().await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = Arc::new(Mutex::new(Some(upstream_port)));
        let links: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (upstream2, links2) = (upstream.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let Some(to) = *upstream2.lock().unwrap() else {
                    continue; // dropped: refused
                };
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", to)).await {
                        let _ = outbound.set_nodelay(true);
                        let _ = inbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut links = links2.lock().unwrap();
                links.retain(|l| !l.is_finished());
                links.push(task.abort_handle());
            }
        });
        Self {
            port,
            upstream,
            links,
        }
    }

    /// Sends new connections to `port` (or refuses them: `None`) and cuts the open ones.
    pub fn point_at(&self, port: Option<u16>) {
        *self.upstream.lock().unwrap() = port;
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    /// `postgres://postgres@127.0.0.1:<proxy port>/tokenwarden`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{DB_NAME}", self.port)
    }
}
