//! SQLite is single-node (docs/contract.md section 8): a second `serve` on the same file refuses to
//! start with one line saying the database is held by another process, and the hold is an OS
//! lock that dies with its process, so a restart right after SIGKILL starts normally.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use crate::{
    process::{BIN, Served, free_port, sandboxes},
    support::{ADMIN_TOKEN, Backend, CLIENT_ID, ENCRYPTION_KEY, JWT_SECRET, TestDatabase},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_one_sqlite_file_refuses_and_a_kill_frees_the_file() {
    let (google, microservice) = sandboxes(Duration::from_secs(3600)).await;
    let db = TestDatabase::create(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let first = Served::start(
        dir.path(),
        free_port().await,
        &db.url,
        ENCRYPTION_KEY,
        &google,
        &microservice,
        &[],
    )
    .await;

    // The second process exits at once, non-zero, with one line naming the reason.
    let second = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(dir.path())
        .env("LISTEN_ADDR", format!("127.0.0.1:{}", free_port().await))
        .env("DATABASE_URL", &db.url)
        .env("TOKEN_ENCRYPTION_KEY", ENCRYPTION_KEY)
        .env("GOOGLE_CALENDAR_CLIENT_ID", CLIENT_ID)
        .env("GOOGLE_CALENDAR_CLIENT_SECRET", "secret")
        .env("AUTH_JWT_SECRET", JWT_SECRET)
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .stdin(Stdio::null())
        .output()
        .expect("second serve runs");
    assert!(!second.status.success(), "the second serve must not start");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&second.stdout),
        String::from_utf8_lossy(&second.stderr)
    );
    let reason: Vec<&str> = printed
        .lines()
        .filter(|l| l.contains("held by another process"))
        .collect();
    assert_eq!(reason.len(), 1, "one line says why: {printed}");
    // The first one still serves.
    let ready = reqwest::get(format!("{}/readyz", first.url)).await.unwrap();
    assert_eq!(ready.status(), 200);

    // SIGKILL leaves no stale lock behind: a new serve starts on the file at once.
    first.signal("KILL");
    drop(first);
    let restarted = tokio::time::timeout(
        Duration::from_secs(30),
        Served::start(
            dir.path(),
            free_port().await,
            &db.url,
            ENCRYPTION_KEY,
            &google,
            &microservice,
            &[],
        ),
    )
    .await
    .expect("a restart after SIGKILL is ready");
    restarted.signal("TERM");
}
