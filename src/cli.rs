//! Small pieces of the command line that are not the service itself: `migrate`,
//! `rotate-key`, `healthcheck`, and running an app until SIGINT or SIGTERM.

use anyhow::Context;

use crate::{
    app::App,
    config::{ConfigError, parse_keys},
    crypto::TokenCipher,
    store::Store,
};

/// `tokenwarden migrate`.
#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// Database to migrate.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://tokenwarden.db?mode=rwc",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Reaches PostgreSQL without a transaction pooler (the migration lock needs a session);
    /// used instead of `DATABASE_URL` when set.
    #[arg(long, env = "DATABASE_SESSION_URL", hide_env_values = true)]
    pub database_session_url: Option<String>,
}

pub async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let url = args
        .database_session_url
        .filter(|u| !u.trim().is_empty())
        .unwrap_or(args.database_url);
    Store::migrate_only(&url)
        .await
        .context("cannot migrate the database (DATABASE_URL)")?;
    println!("migrations applied");
    Ok(())
}

/// `tokenwarden healthcheck`.
#[derive(clap::Args, Debug)]
pub struct HealthcheckArgs {
    /// The service's listen address; an unspecified IP (`0.0.0.0`, `::`) is asked on loopback.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:3000")]
    pub listen_addr: std::net::SocketAddr,
}

/// How long the health check waits for the connection and the answer together.
const HEALTHCHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// One `GET /healthz` over plain HTTP/1.0 on the local socket: no client library, no TLS,
/// no runtime needed for one request to this process's own listener.
pub fn healthcheck(args: HealthcheckArgs) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let mut addr = args.listen_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let mut stream = std::net::TcpStream::connect_timeout(&addr, HEALTHCHECK_TIMEOUT)
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(HEALTHCHECK_TIMEOUT))?;
    stream.set_write_timeout(Some(HEALTHCHECK_TIMEOUT))?;
    write!(stream, "GET /healthz HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head)?;
    let status_line = String::from_utf8_lossy(&head[..n]);
    anyhow::ensure!(
        status_line.starts_with("HTTP/1.1 200") || status_line.starts_with("HTTP/1.0 200"),
        "/healthz on {addr} answered {:?}",
        status_line.lines().next().unwrap_or_default()
    );
    println!("healthy");
    Ok(())
}

/// `tokenwarden rotate-key`. No `Debug`: it holds keys.
#[derive(clap::Args)]
pub struct RotateKeyArgs {
    /// Database whose tokens are re-encrypted.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://tokenwarden.db?mode=rwc",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Comma-separated base64 keys: the new key first, then every older key that may still
    /// have written a stored token.
    #[arg(long, env = "TOKEN_ENCRYPTION_KEY", hide_env_values = true)]
    pub token_encryption_key: Option<String>,
}

/// Re-encrypts every stored token and PKCE verifier with the first key, so the others can
/// then be dropped. Safe while the service runs (with the same key list): each row is only
/// rewritten if no refresh changed it meanwhile.
pub async fn rotate_key(args: RotateKeyArgs) -> anyhow::Result<()> {
    let value = args
        .token_encryption_key
        .filter(|v| !v.trim().is_empty())
        .ok_or(ConfigError::Missing("TOKEN_ENCRYPTION_KEY"))?;
    let (current, old) = parse_keys(&value)?;
    let cipher = TokenCipher::with_old_keys(&current, &old);
    let key_id = cipher.current_key_id().to_string();
    let store = Store::connect(&args.database_url, cipher)
        .await
        .context("cannot open the database (DATABASE_URL)")?;
    let report = store.rotate_keys().await.context("key rotation stopped")?;
    println!(
        "re-encrypted {} users and {} pending consents with key {key_id} \
         ({} users and {} consents were already current)",
        report.users_rewritten,
        report.states_rewritten,
        report.users_current,
        report.states_current,
    );
    Ok(())
}

/// Serves until SIGINT or SIGTERM, then shuts down in order.
pub async fn run_until_signal(mut app: App) -> anyhow::Result<()> {
    tokio::select! {
        result = app.wait() => return result,
        _ = shutdown_signal() => {}
    }
    tracing::info!("shutting down");
    tokio::select! {
        () = app.shutdown() => {}
        () = shutdown_signal() => {
            tracing::warn!("second signal: exiting without waiting for work in flight");
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
