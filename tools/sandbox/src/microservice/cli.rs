//! `tokenwarden microservice`: the reference microservice alone, from the command line. Must
//! not touch: the routes (it only starts the server).

use std::{fmt, net::SocketAddr};

use tokio::net::TcpListener;

use super::{MicroserviceConfig, ReferenceMicroservice};

/// Command-line flags of `tokenwarden microservice`.
#[derive(clap::Args, Clone)]
pub struct MicroserviceArgs {
    /// Address to listen on; keep it on loopback
    #[arg(long, env = "MICROSERVICE_LISTEN", default_value = "127.0.0.1:4000")]
    pub listen: SocketAddr,
    /// Database for the google_calendar_tokens table (SQLite or postgres://)
    #[arg(
        long,
        env = "MICROSERVICE_DATABASE_URL",
        default_value = "sqlite::memory:",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Bearer token every /api call must carry (none required when unset)
    #[arg(
        long,
        env = "GOOGLE_CALENDAR_MICROSERVICE_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Standard Webhooks secret (whsec_<base64>; several comma-separated during a rotation):
    /// every push must then carry webhook-id, webhook-timestamp (within 5 minutes) and a
    /// webhook-signature by one of them over its exact body, which must name the URL's
    /// user_id and the Token-Version as token_version, or is refused with 401
    #[arg(long, env = "MICROSERVICE_SIGNING_SECRET", hide_env_values = true)]
    pub signing_secret: Option<String>,
    /// Also serve the test routes: POST /sandbox/control (fault injection, no authentication)
    /// and GET /api/users/{user_id}/google-calendar (stored tokens in plaintext). For tests and
    /// demos only; never on a copy that holds real tokens
    #[arg(long, env = "MICROSERVICE_SANDBOX_CONTROLS")]
    pub sandbox_controls: bool,
}

impl fmt::Debug for MicroserviceArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MicroserviceArgs")
            .field("listen", &self.listen)
            .field("database_url", &without_password(&self.database_url))
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field(
                "signing_secret",
                &self.signing_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("sandbox_controls", &self.sandbox_controls)
            .finish()
    }
}

/// The database URL with any password masked, for debug output.
fn without_password(database_url: &str) -> String {
    match url::Url::parse(database_url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("redacted"));
            parsed.into()
        }
        _ => database_url.to_owned(),
    }
}

/// Runs the reference microservice alone until Ctrl-C.
pub async fn run(args: MicroserviceArgs) -> anyhow::Result<()> {
    let bearer = args.token.is_some();
    let signed = args.signing_secret.is_some();
    let config = MicroserviceConfig {
        bearer_token: args.token,
        signing_secret: args.signing_secret,
        database_url: args.database_url,
        // Nothing out of process can read the log, so it would only grow.
        record_requests: false,
        sandbox_controls: args.sandbox_controls,
    };
    let listener = TcpListener::bind(args.listen).await?;
    let microservice = ReferenceMicroservice::start(config, listener).await?;
    if args.sandbox_controls {
        tracing::warn!(
            url = %microservice.base_url(),
            bearer,
            signed,
            control_url = %format!("{}/sandbox/control", microservice.base_url()),
            "reference microservice listening with sandbox controls: anyone who can reach it \
             can inject faults and read stored tokens"
        );
    } else {
        tracing::info!(
            url = %microservice.base_url(),
            bearer,
            signed,
            "reference microservice listening"
        );
    }
    tokio::signal::ctrl_c().await?;
    tracing::info!("reference microservice stopping");
    microservice.stop().await;
    Ok(())
}
