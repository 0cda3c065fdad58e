//! `src/store/nodelay.rs` turns Nagle's algorithm off on the store's PostgreSQL connections
//! because sqlx 0.9.0 stopped doing it (sqlx issue #4335). That workaround sets a socket
//! option on descriptors it finds in `/proc/self/fd` rather than owns, so it should go as soon
//! as sqlx sets the option again: this test fails on that day.

use sea_orm::sqlx::{self, Connection as _, PgConnection};

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_alone_still_leaves_nagle_on() {
    if !crate::support::postgres_available().await {
        return;
    }
    let url = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let port = url::Url::parse(&url).unwrap().port().unwrap_or(5432);
    // A connection of sqlx's own, without the store's hook.
    let mut connection = PgConnection::connect(&url).await.unwrap();
    sqlx::query("SELECT 1")
        .execute(&mut connection)
        .await
        .unwrap();
    let (sockets, all_without_delay) = tokenwarden::store::database_sockets_without_delay(port);
    assert!(sockets >= 1, "no connection to port {port} found");
    assert!(
        !all_without_delay,
        "sqlx now sets TCP_NODELAY: remove store/nodelay.rs (and this test)"
    );
    connection.close().await.unwrap();
}
