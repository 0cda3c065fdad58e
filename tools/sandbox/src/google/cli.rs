//! The `tokenwarden sandbox-google` subcommand: its flags (each also read from an environment
//! variable) and running the provider alone until Ctrl-C.

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;

use tokio::net::TcpListener;

use super::{SandboxGoogle, SandboxGoogleConfig, ServiceAccountKeyFile};

/// Command-line flags of `tokenwarden sandbox-google`.
#[derive(clap::Args, Clone)]
pub struct SandboxGoogleArgs {
    /// Address to listen on; keep it on loopback
    #[arg(long, env = "SANDBOX_GOOGLE_LISTEN", default_value = "127.0.0.1:4100")]
    pub listen: SocketAddr,
    /// Only this client id is accepted (any when unset)
    #[arg(long, env = "GOOGLE_CALENDAR_CLIENT_ID")]
    pub client_id: Option<String>,
    /// Only this client secret is accepted (any when unset)
    #[arg(long, env = "GOOGLE_CALENDAR_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: Option<String>,
    /// Lifetime of issued access tokens, in seconds
    #[arg(long, env = "SANDBOX_TOKEN_LIFETIME_SECS", default_value_t = 3600)]
    pub token_lifetime_secs: u64,
    /// Delay added to every /token answer, in milliseconds
    #[arg(long, env = "SANDBOX_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,
    /// Probability (0.0 to 1.0) that a refresh is answered with a 500
    #[arg(long, env = "SANDBOX_ERROR_RATE", default_value_t = 0.0)]
    pub error_rate: f64,
    /// Answer each refresh with a new refresh token, superseding the old one
    #[arg(long, env = "SANDBOX_ROTATE_REFRESH_TOKENS")]
    pub rotate_refresh_tokens: bool,
    /// How long a superseded refresh token keeps working, in seconds
    #[arg(long, env = "SANDBOX_ROTATION_GRACE_SECS", default_value_t = 30)]
    pub rotation_grace_secs: u64,
    /// Make every new grant time-limited: it ends this many seconds after its consent (0:
    /// ongoing access)
    #[arg(long, env = "SANDBOX_GRANT_LIFETIME_SECS", default_value_t = 0)]
    pub grant_lifetime_secs: u64,
    /// Serve the RISC transmitter: its configuration, JWKS, stream API and controls
    #[arg(long, env = "SANDBOX_RISC", default_value_t = true, action = clap::ArgAction::Set)]
    pub risc: bool,
    /// The `issuer` of the RISC configuration and of every SET (default: the base URL)
    #[arg(long, env = "SANDBOX_RISC_ISSUER")]
    pub risc_issuer: Option<String>,
    /// A service-account JSON key file the RISC API accepts; created there if missing
    #[arg(long, env = "SANDBOX_RISC_SERVICE_ACCOUNT_KEY")]
    pub risc_service_account_key: Option<PathBuf>,
}

impl fmt::Debug for SandboxGoogleArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxGoogleArgs")
            .field("listen", &self.listen)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("token_lifetime_secs", &self.token_lifetime_secs)
            .field("latency_ms", &self.latency_ms)
            .field("error_rate", &self.error_rate)
            .field("rotate_refresh_tokens", &self.rotate_refresh_tokens)
            .field("rotation_grace_secs", &self.rotation_grace_secs)
            .field("grant_lifetime_secs", &self.grant_lifetime_secs)
            .field("risc", &self.risc)
            .field("risc_issuer", &self.risc_issuer)
            .field("risc_service_account_key", &self.risc_service_account_key)
            .finish()
    }
}

/// Runs the provider alone until Ctrl-C.
pub async fn run(args: SandboxGoogleArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.error_rate),
        "--error-rate must be between 0.0 and 1.0"
    );
    let config = SandboxGoogleConfig {
        client_id: args.client_id,
        client_secret: args.client_secret,
        token_lifetime: Duration::from_secs(args.token_lifetime_secs),
        rotate_refresh_tokens: args.rotate_refresh_tokens,
        rotation_grace: Duration::from_secs(args.rotation_grace_secs),
        latency: Duration::from_millis(args.latency_ms),
        error_rate: args.error_rate,
        // Nothing out of process can read the list, so it would only grow.
        record_issued: false,
        grant_lifetime: Duration::from_secs(args.grant_lifetime_secs),
        risc: args.risc,
        risc_issuer: args.risc_issuer,
    };
    let listener = TcpListener::bind(args.listen).await?;
    let google = SandboxGoogle::start(config, listener).await?;
    if args.risc {
        start_risc(&google, args.risc_service_account_key).await?;
    }
    tracing::info!(
        auth_url = %google.auth_url(),
        token_url = %google.token_url(),
        revoke_url = %google.revoke_url(),
        userinfo_url = %google.userinfo_url(),
        control_url = %format!("{}/sandbox/control", google.base_url()),
        grant_url = %format!("{}/sandbox/grant", google.base_url()),
        "sandbox Google provider listening"
    );
    tokio::signal::ctrl_c().await?;
    tracing::info!("sandbox Google provider stopping");
    google.shutdown().await;
    Ok(())
}

/// Generates the signing key now rather than at the first fetch, and registers (or creates)
/// the service account's key file.
async fn start_risc(google: &SandboxGoogle, key_file: Option<PathBuf>) -> anyhow::Result<()> {
    let kid = google.risc_key_id().await?;
    tracing::info!(
        configuration_url = %google.risc_configuration_url(),
        issuer = %google.risc_issuer(),
        %kid,
        "sandbox RISC transmitter ready"
    );
    let Some(path) = key_file else {
        return Ok(());
    };
    let shown = path.display();
    if path.exists() {
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {shown}"))?;
        let file: ServiceAccountKeyFile = serde_json::from_str(&text)
            .with_context(|| format!("{shown} is not a service-account JSON key file"))?;
        google
            .register_risc_service_account(&file)
            .with_context(|| format!("{shown}"))?;
        tracing::info!(client_email = %file.client_email, "RISC service account accepted");
    } else {
        let file = google
            .create_risc_service_account("risc-receiver@sandbox-project.iam.gserviceaccount.com")
            .await?;
        std::fs::write(&path, file.to_json()).with_context(|| format!("cannot write {shown}"))?;
        tracing::info!(client_email = %file.client_email, path = %shown, "RISC service account created");
    }
    Ok(())
}
