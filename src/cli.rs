//! Small pieces of the command line that are not the service itself: `migrate`, and running
//! an app until SIGINT or SIGTERM.

use anyhow::Context;

use crate::{app::App, store::Store};

/// `tokenwarden migrate`.
#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// Database to migrate.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://tokenwarden.db?mode=rwc"
    )]
    pub database_url: String,
}

pub async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    Store::migrate_only(&args.database_url)
        .await
        .context("cannot migrate the database (DATABASE_URL)")?;
    println!("migrations applied");
    Ok(())
}

/// Serves until SIGINT or SIGTERM, then shuts down in order.
pub async fn run_until_signal(mut app: App) -> anyhow::Result<()> {
    tokio::select! {
        result = app.wait() => return result,
        _ = shutdown_signal() => {}
    }
    tracing::info!("shutting down");
    app.shutdown().await;
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
