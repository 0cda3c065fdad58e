//! Small pieces of the command line that are not the service itself: `migrate`,
//! `rotate-key`, and running an app until SIGINT or SIGTERM.

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
