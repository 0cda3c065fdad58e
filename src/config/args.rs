//! The flags and environment variables of `serve` (docs/configuration.md: Configuration) as clap reads them,
//! already typed: a malformed value stops the parse with one line naming its variable (see
//! `values`). Each default is written once, in its `#[arg]` attribute; `Default` parses an
//! empty command line without the environment to get them. Must not touch: what a setting
//! means (`mod.rs` turns these into [`Config`](super::Config)).

use std::net::SocketAddr;

use clap::{Args, FromArgMatches};
use secrecy::SecretString;
use url::Url;

use super::{
    DEFAULT_SCOPES, LogFormat,
    values::{
        Millis, Secs, http_url, log_format, millis, named, otlp_protocol, positive,
        positive_millis, positive_secs, secs, socket_addr, switch,
    },
    without_userinfo,
};
use crate::telemetry::OtlpProtocol;

/// `serve` settings as they come from flags or the environment. No `Debug`: it holds secrets
/// and URLs that may carry credentials.
#[derive(Args, Clone)]
pub struct ServeArgs {
    /// Address the service listens on.
    #[arg(
        long,
        env = "LISTEN_ADDR",
        default_value = "127.0.0.1:3000",
        value_parser = named(socket_addr)
    )]
    pub listen_addr: SocketAddr,
    /// SQLite (`sqlite://file.db?mode=rwc`) or PostgreSQL (`postgres://...`) URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://tokenwarden.db?mode=rwc",
        hide_env_values = true
    )]
    pub database_url: String,
    /// PostgreSQL URL that reaches the database without a transaction-pooling proxy in
    /// between, for what needs a session: the one `LISTEN` connection and the migration lock.
    /// Default: `DATABASE_URL`.
    #[arg(long, env = "DATABASE_SESSION_URL", hide_env_values = true)]
    pub database_session_url: Option<String>,
    /// OAuth client id of the Google Cloud project.
    #[arg(long, env = "GOOGLE_CALENDAR_CLIENT_ID")]
    pub google_client_id: Option<String>,
    /// OAuth client secret of the Google Cloud project.
    #[arg(long, env = "GOOGLE_CALENDAR_CLIENT_SECRET", hide_env_values = true)]
    pub google_client_secret: Option<SecretString>,
    /// Where Google sends the browser back; must reach `/api/integrations/google/callback`.
    #[arg(
        long,
        env = "GOOGLE_CALENDAR_REDIRECT_URI",
        default_value = "http://localhost:3000/api/integrations/google/callback",
        value_parser = named(http_url)
    )]
    pub google_redirect_uri: Url,
    /// Space-separated scopes; `openid email` are always added for the account's address.
    #[arg(long, env = "GOOGLE_CALENDAR_SCOPES", default_value = DEFAULT_SCOPES)]
    pub google_scopes: String,
    /// Google's consent page.
    #[arg(
        long,
        env = "GOOGLE_OAUTH_AUTH_URL",
        default_value = "https://accounts.google.com/o/oauth2/v2/auth",
        hide_env_values = true,
        value_parser = named(http_url)
    )]
    pub google_auth_url: Url,
    /// Google's token endpoint (code exchange and refresh).
    #[arg(
        long,
        env = "GOOGLE_OAUTH_TOKEN_URL",
        default_value = "https://oauth2.googleapis.com/token",
        hide_env_values = true,
        value_parser = named(http_url)
    )]
    pub google_token_url: Url,
    /// Google's revocation endpoint.
    #[arg(
        long,
        env = "GOOGLE_OAUTH_REVOKE_URL",
        default_value = "https://oauth2.googleapis.com/revoke",
        hide_env_values = true,
        value_parser = named(http_url)
    )]
    pub google_revoke_url: Url,
    /// Google's OpenID userinfo endpoint (the account's email).
    #[arg(
        long,
        env = "GOOGLE_USERINFO_URL",
        default_value = "https://openidconnect.googleapis.com/v1/userinfo",
        hide_env_values = true,
        value_parser = named(http_url)
    )]
    pub google_userinfo_url: Url,
    /// Google's RISC configuration (the issuer and key set of security events).
    #[arg(
        long,
        env = "GOOGLE_RISC_CONFIGURATION_URL",
        default_value = "https://accounts.google.com/.well-known/risc-configuration",
        hide_env_values = true,
        value_parser = named(http_url)
    )]
    pub google_risc_configuration_url: Url,
    /// Microservice base URL without trailing slash; unset skips the sync.
    // Text, checked in `into_config`: an empty value means unset (compose files write
    // `VAR=`), which a typed clap value cannot say, and the URL is used as written.
    #[arg(long, env = "GOOGLE_CALENDAR_MICROSERVICE_URL", hide_env_values = true)]
    pub microservice_url: Option<String>,
    /// Bearer token sent to the microservice on every call.
    #[arg(
        long,
        env = "GOOGLE_CALENDAR_MICROSERVICE_TOKEN",
        hide_env_values = true
    )]
    pub microservice_token: Option<SecretString>,
    /// Standard Webhooks secret (`whsec_<base64>`) that signs every push; during a rotation
    /// two, comma-separated, and every push carries a signature by each. Unset: unsigned.
    #[arg(
        long,
        env = "GOOGLE_CALENDAR_MICROSERVICE_SIGNING_SECRET",
        hide_env_values = true
    )]
    pub microservice_signing_secret: Option<SecretString>,
    /// Per-request timeout towards the microservice, in milliseconds.
    #[arg(
        long,
        env = "GOOGLE_CALENDAR_MICROSERVICE_TIMEOUT_MS",
        default_value = "10000",
        value_parser = named(millis)
    )]
    pub microservice_timeout_ms: Millis,
    /// Where each event about a user's connection is POSTed, as given (docs/app-events.md: Events to the
    /// app); unset: no events are sent and none are stored.
    // Text, checked in `into_config`, as the microservice URL: empty means unset.
    #[arg(long, env = "APP_EVENTS_URL", hide_env_values = true)]
    pub app_events_url: Option<String>,
    /// Standard Webhooks secret (`whsec_<base64>`) that signs every event; during a rotation
    /// two, comma-separated, and every event carries a signature by each. Unset: unsigned.
    #[arg(long, env = "APP_EVENTS_SIGNING_SECRET", hide_env_values = true)]
    pub app_events_signing_secret: Option<SecretString>,
    /// Per-attempt timeout of an event's delivery to the app, in milliseconds.
    #[arg(
        long,
        env = "APP_EVENTS_TIMEOUT_MS",
        default_value = "10000",
        value_parser = named(positive_millis)
    )]
    pub app_events_timeout_ms: Millis,
    /// A time-limited grant's `connection.authorization_expiring` event goes to the app once
    /// its end is this many seconds away (at once if it arrives closer than that).
    #[arg(
        long,
        env = "AUTHORIZATION_EXPIRY_WARNING_SECS",
        default_value = "259200",
        value_parser = named(secs)
    )]
    pub authorization_expiry_warning_secs: Secs,
    /// Refresh this many seconds before the access token expires.
    #[arg(long, env = "REFRESH_LEAD_SECS", default_value = "300", value_parser = named(secs))]
    pub refresh_lead_secs: Secs,
    /// Frontend origin: the callback redirects there, and CORS allows it.
    #[arg(
        long,
        env = "FRONTEND_URL",
        default_value = "http://localhost:5173",
        value_parser = named(http_url)
    )]
    pub frontend_url: Url,
    /// `on`: a callback must come from the browser that started the consent (a cookie set by
    /// connect). `off` gives that up for deployments that cannot carry the cookie: a consent
    /// link forwarded to someone else can then attach their Google account to the sender.
    /// Also `true`/`false`, `1`/`0`.
    #[arg(
        long,
        env = "OAUTH_BROWSER_BINDING",
        default_value = "on",
        action = clap::ArgAction::Set,
        value_parser = named(switch)
    )]
    pub oauth_browser_binding: bool,
    /// HS256 secret of the main app's user JWTs (raw bytes of the string).
    #[arg(long, env = "AUTH_JWT_SECRET", hide_env_values = true)]
    pub auth_jwt_secret: Option<SecretString>,
    /// Bearer token of the `/admin` routes.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<SecretString>,
    /// 32 bytes, base64: the AES-256-GCM key of tokens at rest. During a key rotation, a
    /// comma-separated list: the first encrypts, the others only decrypt.
    #[arg(long, env = "TOKEN_ENCRYPTION_KEY", hide_env_values = true)]
    pub token_encryption_key: Option<SecretString>,
    /// How many refreshes may talk to Google at once, across all users.
    #[arg(long, env = "REFRESH_CONCURRENCY", default_value = "64", value_parser = named(positive))]
    pub refresh_concurrency: usize,
    /// First retry delay of a failed refresh, in milliseconds (doubles up to the max).
    #[arg(
        long,
        env = "REFRESH_RETRY_BASE_MS",
        default_value = "1000",
        value_parser = named(millis)
    )]
    pub refresh_retry_base_ms: Millis,
    /// Longest delay between refresh retries, in milliseconds.
    #[arg(
        long,
        env = "REFRESH_RETRY_MAX_MS",
        default_value = "60000",
        value_parser = named(millis)
    )]
    pub refresh_retry_max_ms: Millis,
    /// Upper bound of the random jitter subtracted from each refresh time, in seconds.
    #[arg(long, env = "REFRESH_JITTER_SECS", default_value = "30", value_parser = named(secs))]
    pub refresh_jitter_secs: Secs,
    /// A user actor whose next refresh is further away than this parks its state and stops
    /// ("hibernates"); it is woken shortly before the refresh. In seconds.
    #[arg(
        long,
        env = "ACTOR_HIBERNATE_AFTER_SECS",
        default_value = "60",
        value_parser = named(positive_secs)
    )]
    pub actor_hibernate_after_secs: Secs,
    /// First retry delay of a failed microservice sync, in milliseconds.
    #[arg(long, env = "SYNC_RETRY_BASE_MS", default_value = "1000", value_parser = named(millis))]
    pub sync_retry_base_ms: Millis,
    /// Longest delay between sync retries, in milliseconds.
    #[arg(long, env = "SYNC_RETRY_MAX_MS", default_value = "60000", value_parser = named(millis))]
    pub sync_retry_max_ms: Millis,
    /// How many microservice calls may be in flight at once.
    #[arg(long, env = "SYNC_CONCURRENCY", default_value = "64", value_parser = named(positive))]
    pub sync_concurrency: usize,
    /// Per-request timeout towards Google, in milliseconds.
    #[arg(
        long,
        env = "GOOGLE_HTTP_TIMEOUT_MS",
        default_value = "10000",
        value_parser = named(millis)
    )]
    pub google_timeout_ms: Millis,
    /// Longest a client may take to send a request's headers, in seconds; the connection is
    /// closed after that. A keep-alive connection idle that long is closed too.
    #[arg(
        long,
        env = "HTTP_HEADER_READ_TIMEOUT_SECS",
        default_value = "10",
        value_parser = named(positive_secs)
    )]
    pub http_header_read_timeout_secs: Secs,
    /// Most client connections open at once; further clients wait to be accepted.
    #[arg(
        long,
        env = "HTTP_MAX_CONNECTIONS",
        default_value = "10000",
        value_parser = named(positive)
    )]
    pub http_max_connections: usize,
    /// This process's name in a cluster (PostgreSQL only); unique among live nodes. Default:
    /// the host name plus a random suffix.
    #[arg(long, env = "NODE_ID")]
    pub node_id: Option<String>,
    /// Where other nodes reach this one (admin calls about its users are forwarded there).
    /// Default: `http://` + LISTEN_ADDR.
    // Hidden in `--help`: a URL may carry `user:password@` (for a proxy in front of the node).
    #[arg(long, env = "NODE_ADVERTISE_URL", hide_env_values = true)]
    pub node_advertise_url: Option<String>,
    /// A node that stops renewing its shard leases loses them after this many seconds.
    #[arg(
        long,
        env = "CLUSTER_LEASE_TTL_SECS",
        default_value = "10",
        value_parser = named(positive_secs)
    )]
    pub cluster_lease_ttl_secs: Secs,
    /// Logs and traces.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// Logging and trace export settings, shared by every long-running subcommand.
#[derive(Args, Clone)]
pub struct TelemetryArgs {
    /// Log format: `pretty` or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = "pretty", value_parser = named(log_format))]
    pub log_format: LogFormat,
    /// OTLP collector base URL; unset: no export.
    // Text for the same reason as the microservice URL: empty means unset.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", hide_env_values = true)]
    pub otel_endpoint: Option<String>,
    /// `grpc`, `http/protobuf` or `http/json`.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        default_value = "grpc",
        value_parser = named(otlp_protocol)
    )]
    pub otel_protocol: OtlpProtocol,
    /// `service.name` of exported spans.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "tokenwarden")]
    pub otel_service_name: String,
}

impl std::fmt::Debug for TelemetryArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryArgs")
            .field("log_format", &self.log_format)
            .field(
                "otel_endpoint",
                &self.otel_endpoint.as_deref().map(without_userinfo),
            )
            .field("otel_protocol", &self.otel_protocol)
            .field("otel_service_name", &self.otel_service_name)
            .finish()
    }
}

impl Default for ServeArgs {
    /// The documented defaults, without reading the environment (tests and the demo start
    /// from these and set what they need).
    fn default() -> Self {
        defaults()
    }
}

impl Default for TelemetryArgs {
    /// The documented defaults, without reading the environment.
    fn default() -> Self {
        defaults()
    }
}

/// `T` as clap builds it from an empty command line with the environment ignored: the
/// defaults of its `#[arg]` attributes.
fn defaults<T: Args + FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults").no_binary_name(true))
        .mut_args(|arg| arg.env(None));
    // The defaults are constants of this file; the unit tests parse them.
    let matches = command
        .try_get_matches_from(std::iter::empty::<&str>())
        .expect("the written defaults parse");
    T::from_arg_matches(&matches).expect("the written defaults parse")
}
