//! Where a test's data lives: a fresh SQLite file or a fresh PostgreSQL database per test,
//! and the rule that PostgreSQL may be skipped only outside CI.

use sea_orm::{ConnectionTrait, Database};

/// Where a test's data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs `$test(Backend)` once per backend, as two tests named `sqlite` and `postgres`.
#[macro_export]
macro_rules! on_both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::support::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if $crate::support::postgres_available().await {
                    super::$name($crate::support::Backend::Postgres).await
                }
            }
        }
    };
}

fn admin_postgres_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// Whether PostgreSQL tests can run. Under `CI=true` an unreachable server is a failure, not
/// a skip: CI must prove both backends.
pub async fn postgres_available() -> bool {
    let url = admin_postgres_url();
    let reachable = match Database::connect(url.as_str()).await {
        Ok(db) => db.execute_unprepared("SELECT 1").await.is_ok(),
        Err(_) => false,
    };
    if !reachable {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "PostgreSQL at {url} is unreachable and CI=true: storage tests must run on it"
        );
        eprintln!("SKIPPED: PostgreSQL at {url} is unreachable (set TEST_DATABASE_URL)");
    }
    reachable
}

/// A database of the test's own, dropped when this is dropped.
pub struct TestDatabase {
    pub url: String,
    postgres_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    pub async fn create(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path = dir.path().join("tokenwarden.db");
                Self {
                    url: format!("sqlite://{}?mode=rwc", path.display()),
                    postgres_name: None,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let admin = admin_postgres_url();
                let name = format!("tw_test_{}", uuid_like());
                let db = Database::connect(admin.as_str()).await.expect("postgres");
                db.execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create database");
                let mut url = url::Url::parse(&admin).expect("TEST_DATABASE_URL");
                url.set_path(&name);
                Self {
                    url: url.to_string(),
                    postgres_name: Some(name),
                    _dir: None,
                }
            }
        }
    }

    /// A PostgreSQL database the test runs itself (nothing to drop).
    pub fn existing(url: &str) -> Self {
        Self {
            url: url.to_string(),
            postgres_name: None,
            _dir: None,
        }
    }

    /// The SQLite file's path, if this is SQLite.
    pub fn sqlite_path(&self) -> Option<std::path::PathBuf> {
        self._dir.as_ref().map(|d| d.path().join("tokenwarden.db"))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some(name) = self.postgres_name.take() else {
            return;
        };
        let admin = admin_postgres_url();
        // Drop may run inside a runtime: do the async cleanup on a thread of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                if let Ok(db) = Database::connect(admin.as_str()).await {
                    let _ = db
                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

fn uuid_like() -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().r#gen();
    format!("{}_{n:016x}", std::process::id())
}
