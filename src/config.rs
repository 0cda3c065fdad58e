//! Configuration: every variable of CONTRACT section 2, read once at start (flags or
//! environment, `.env` if present) into the typed [`Config`]. Nothing else in the crate reads
//! the environment. A missing or malformed variable yields one line naming it.

use std::{net::SocketAddr, time::Duration};

use base64::Engine;
use secrecy::SecretString;
use url::Url;

use crate::{
    crypto::TokenCipher,
    telemetry::{OtlpProtocol, TelemetryConfig},
};

/// The calendar scopes asked for when `GOOGLE_CALENDAR_SCOPES` is unset.
pub const DEFAULT_SCOPES: &str =
    "https://www.googleapis.com/auth/calendar https://www.googleapis.com/auth/calendar.events";

/// Raw `serve` settings as they come from flags or the environment. Everything is text here so
/// that [`ServeArgs::into_config`] can name the variable that is wrong.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address the service listens on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:3000")]
    pub listen_addr: String,
    /// SQLite (`sqlite://file.db?mode=rwc`) or PostgreSQL (`postgres://...`) URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://tokenwarden.db?mode=rwc",
        hide_env_values = true
    )]
    pub database_url: String,
    /// OAuth client id of the Google Cloud project.
    #[arg(long, env = "GOOGLE_CALENDAR_CLIENT_ID")]
    pub google_client_id: Option<String>,
    /// OAuth client secret of the Google Cloud project.
    #[arg(long, env = "GOOGLE_CALENDAR_CLIENT_SECRET", hide_env_values = true)]
    pub google_client_secret: Option<String>,
    /// Where Google sends the browser back; must reach `/api/integrations/google/callback`.
    #[arg(
        long,
        env = "GOOGLE_CALENDAR_REDIRECT_URI",
        default_value = "http://localhost:3000/api/integrations/google/callback"
    )]
    pub google_redirect_uri: String,
    /// Space-separated scopes; `openid email` are always added for the account's address.
    #[arg(long, env = "GOOGLE_CALENDAR_SCOPES", default_value = DEFAULT_SCOPES)]
    pub google_scopes: String,
    /// Google's consent page.
    #[arg(
        long,
        env = "GOOGLE_OAUTH_AUTH_URL",
        default_value = "https://accounts.google.com/o/oauth2/v2/auth",
        hide_env_values = true
    )]
    pub google_auth_url: String,
    /// Google's token endpoint (code exchange and refresh).
    #[arg(
        long,
        env = "GOOGLE_OAUTH_TOKEN_URL",
        default_value = "https://oauth2.googleapis.com/token",
        hide_env_values = true
    )]
    pub google_token_url: String,
    /// Google's revocation endpoint.
    #[arg(
        long,
        env = "GOOGLE_OAUTH_REVOKE_URL",
        default_value = "https://oauth2.googleapis.com/revoke",
        hide_env_values = true
    )]
    pub google_revoke_url: String,
    /// Google's OpenID userinfo endpoint (the account's email).
    #[arg(
        long,
        env = "GOOGLE_USERINFO_URL",
        default_value = "https://openidconnect.googleapis.com/v1/userinfo",
        hide_env_values = true
    )]
    pub google_userinfo_url: String,
    /// Microservice base URL without trailing slash; unset skips the sync.
    #[arg(long, env = "GOOGLE_CALENDAR_MICROSERVICE_URL", hide_env_values = true)]
    pub microservice_url: Option<String>,
    /// Bearer token sent to the microservice on every call.
    #[arg(
        long,
        env = "GOOGLE_CALENDAR_MICROSERVICE_TOKEN",
        hide_env_values = true
    )]
    pub microservice_token: Option<String>,
    /// Per-request timeout towards the microservice, in milliseconds.
    #[arg(
        long,
        env = "GOOGLE_CALENDAR_MICROSERVICE_TIMEOUT_MS",
        default_value = "10000"
    )]
    pub microservice_timeout_ms: String,
    /// Refresh this many seconds before the access token expires.
    #[arg(long, env = "REFRESH_LEAD_SECS", default_value = "300")]
    pub refresh_lead_secs: String,
    /// Frontend origin: the callback redirects there, and CORS allows it.
    #[arg(long, env = "FRONTEND_URL", default_value = "http://localhost:5173")]
    pub frontend_url: String,
    /// `on`: a callback must come from the browser that started the consent (a cookie set by
    /// connect). `off` gives that up for deployments that cannot carry the cookie: a consent
    /// link forwarded to someone else can then attach their Google account to the sender.
    #[arg(long, env = "OAUTH_BROWSER_BINDING", default_value = "on")]
    pub oauth_browser_binding: String,
    /// HS256 secret of the main app's user JWTs (raw bytes of the string).
    #[arg(long, env = "AUTH_JWT_SECRET", hide_env_values = true)]
    pub auth_jwt_secret: Option<String>,
    /// Bearer token of the `/admin` routes.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// 32 bytes, base64: the AES-256-GCM key of tokens at rest. During a key rotation, a
    /// comma-separated list: the first encrypts, the others only decrypt.
    #[arg(long, env = "TOKEN_ENCRYPTION_KEY", hide_env_values = true)]
    pub token_encryption_key: Option<String>,
    /// How many refreshes may talk to Google at once, across all users.
    #[arg(long, env = "REFRESH_CONCURRENCY", default_value = "64")]
    pub refresh_concurrency: String,
    /// First retry delay of a failed refresh, in milliseconds (doubles up to the max).
    #[arg(long, env = "REFRESH_RETRY_BASE_MS", default_value = "1000")]
    pub refresh_retry_base_ms: String,
    /// Longest delay between refresh retries, in milliseconds.
    #[arg(long, env = "REFRESH_RETRY_MAX_MS", default_value = "60000")]
    pub refresh_retry_max_ms: String,
    /// Upper bound of the random jitter subtracted from each refresh time, in seconds.
    #[arg(long, env = "REFRESH_JITTER_SECS", default_value = "30")]
    pub refresh_jitter_secs: String,
    /// A user actor whose next refresh is further away than this parks its state and stops
    /// ("hibernates"); it is woken shortly before the refresh. In seconds.
    #[arg(long, env = "ACTOR_HIBERNATE_AFTER_SECS", default_value = "60")]
    pub actor_hibernate_after_secs: String,
    /// First retry delay of a failed microservice sync, in milliseconds.
    #[arg(long, env = "SYNC_RETRY_BASE_MS", default_value = "1000")]
    pub sync_retry_base_ms: String,
    /// Longest delay between sync retries, in milliseconds.
    #[arg(long, env = "SYNC_RETRY_MAX_MS", default_value = "60000")]
    pub sync_retry_max_ms: String,
    /// How many microservice calls may be in flight at once.
    #[arg(long, env = "SYNC_CONCURRENCY", default_value = "64")]
    pub sync_concurrency: String,
    /// Per-request timeout towards Google, in milliseconds.
    #[arg(long, env = "GOOGLE_HTTP_TIMEOUT_MS", default_value = "10000")]
    pub google_timeout_ms: String,
    /// Longest a client may take to send a request's headers, in seconds; the connection is
    /// closed after that. A keep-alive connection idle that long is closed too.
    #[arg(long, env = "HTTP_HEADER_READ_TIMEOUT_SECS", default_value = "10")]
    pub http_header_read_timeout_secs: String,
    /// Most client connections open at once; further clients wait to be accepted.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value = "10000")]
    pub http_max_connections: String,
    /// Logs and traces.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// Logging and trace export settings, shared by every long-running subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct TelemetryArgs {
    /// Log format: `pretty` or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = "pretty")]
    pub log_format: String,
    /// OTLP collector base URL; unset: no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", hide_env_values = true)]
    pub otel_endpoint: Option<String>,
    /// `grpc`, `http/protobuf` or `http/json`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value = "grpc")]
    pub otel_protocol: String,
    /// `service.name` of exported spans.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "tokenwarden")]
    pub otel_service_name: String,
}

impl Default for TelemetryArgs {
    fn default() -> Self {
        Self {
            log_format: "pretty".into(),
            otel_endpoint: None,
            otel_protocol: "grpc".into(),
            otel_service_name: "tokenwarden".into(),
        }
    }
}

impl TelemetryArgs {
    /// Validates the telemetry variables, naming the first one that is wrong.
    pub fn into_config(self) -> Result<TelemetryConfig, ConfigError> {
        let otlp_endpoint = match self.otel_endpoint.filter(|e| !e.trim().is_empty()) {
            Some(e) => Some(parse_url("OTEL_EXPORTER_OTLP_ENDPOINT", &e)?.to_string()),
            None => None,
        };
        Ok(TelemetryConfig {
            log_format: parse_log_format(&self.log_format)?,
            otlp_endpoint,
            otlp_protocol: OtlpProtocol::parse(&self.otel_protocol).ok_or_else(|| {
                malformed(
                    "OTEL_EXPORTER_OTLP_PROTOCOL",
                    "expected grpc, http/protobuf or http/json",
                )
            })?,
            service_name: self.otel_service_name,
            ..TelemetryConfig::default()
        })
    }
}

impl Default for ServeArgs {
    /// The documented defaults, without reading the environment (tests and the demo start
    /// from these and set what they need).
    fn default() -> Self {
        Self {
            listen_addr: "127.0.0.1:3000".into(),
            database_url: "sqlite://tokenwarden.db?mode=rwc".into(),
            google_redirect_uri: "http://localhost:3000/api/integrations/google/callback".into(),
            google_scopes: DEFAULT_SCOPES.into(),
            google_auth_url: "https://accounts.google.com/o/oauth2/v2/auth".into(),
            google_token_url: "https://oauth2.googleapis.com/token".into(),
            google_revoke_url: "https://oauth2.googleapis.com/revoke".into(),
            google_userinfo_url: "https://openidconnect.googleapis.com/v1/userinfo".into(),
            microservice_timeout_ms: "10000".into(),
            refresh_lead_secs: "300".into(),
            frontend_url: "http://localhost:5173".into(),
            oauth_browser_binding: "on".into(),
            refresh_concurrency: "64".into(),
            refresh_retry_base_ms: "1000".into(),
            refresh_retry_max_ms: "60000".into(),
            refresh_jitter_secs: "30".into(),
            actor_hibernate_after_secs: "60".into(),
            sync_retry_base_ms: "1000".into(),
            sync_retry_max_ms: "60000".into(),
            sync_concurrency: "64".into(),
            google_timeout_ms: "10000".into(),
            http_header_read_timeout_secs: "10".into(),
            http_max_connections: "10000".into(),
            telemetry: TelemetryArgs::default(),
            google_client_id: None,
            google_client_secret: None,
            microservice_url: None,
            microservice_token: None,
            auth_jwt_secret: None,
            admin_token: None,
            token_encryption_key: None,
        }
    }
}

/// A variable that is missing or cannot be used; the message names it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is required but not set")]
    Missing(&'static str),
    #[error("{var} is malformed: {reason}")]
    Malformed { var: &'static str, reason: String },
}

/// Where and how the service talks to Google.
#[derive(Debug, Clone)]
pub struct GoogleConfig {
    pub client_id: String,
    pub client_secret: SecretString,
    pub redirect_uri: Url,
    /// Scopes asked for at consent: the configured ones plus `openid email`.
    pub scopes: Vec<String>,
    /// The configured (`GOOGLE_CALENDAR_SCOPES`) scopes: a consent that grants fewer is refused.
    pub required_scopes: Vec<String>,
    pub auth_url: Url,
    pub token_url: Url,
    pub revoke_url: Url,
    pub userinfo_url: Url,
    pub timeout: Duration,
}

/// Limits of the front door's client connections.
#[derive(Debug, Clone, Copy)]
pub struct HttpServerConfig {
    /// Longest a client may take to send a request's headers (slow clients would otherwise
    /// hold a connection forever).
    pub header_read_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

/// Where and how tokens are pushed. Its `Debug` shows the URL without credentials.
#[derive(Clone)]
pub struct MicroserviceConfig {
    /// Base URL without trailing slash; `None` means sync is skipped with the seed's warning.
    pub url: Option<String>,
    pub token: Option<SecretString>,
    pub timeout: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub concurrency: usize,
}

impl std::fmt::Debug for MicroserviceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MicroserviceConfig")
            .field("url", &self.url.as_deref().map(without_userinfo))
            .field("token", &self.token)
            .field("timeout", &self.timeout)
            .field("retry_base", &self.retry_base)
            .field("retry_max", &self.retry_max)
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

/// When and how fast actors refresh.
#[derive(Debug, Clone)]
pub struct RefreshConfig {
    pub lead: Duration,
    pub jitter_max: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub concurrency: usize,
    /// Park an idle actor whose next refresh is further away than this.
    pub hibernate_after: Duration,
}

/// Log output shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The whole, validated configuration of `serve`. Its `Debug` leaves every secret out.
#[derive(Clone)]
pub struct Config {
    pub listen_addr: SocketAddr,
    pub database_url: String,
    pub http: HttpServerConfig,
    pub google: GoogleConfig,
    pub microservice: MicroserviceConfig,
    pub refresh: RefreshConfig,
    /// Without trailing slash.
    pub frontend_url: String,
    /// Whether a callback must present the cookie its connect set (`OAUTH_BROWSER_BINDING`).
    pub browser_binding: bool,
    pub jwt_secret: SecretString,
    pub admin_token: SecretString,
    /// The key that encrypts tokens at rest (the first of `TOKEN_ENCRYPTION_KEY`).
    pub encryption_key: [u8; 32],
    /// Keys of a rotation in progress: they still decrypt, never encrypt.
    pub old_encryption_keys: Vec<[u8; 32]>,
    pub telemetry: TelemetryConfig,
}

impl Config {
    /// The cipher of tokens at rest: encrypts with the current key, decrypts with any.
    pub fn token_cipher(&self) -> TokenCipher {
        TokenCipher::with_old_keys(&self.encryption_key, &self.old_encryption_keys)
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen_addr", &self.listen_addr)
            .field("http", &self.http)
            .field("google", &self.google)
            .field("microservice", &self.microservice)
            .field("refresh", &self.refresh)
            .field("frontend_url", &self.frontend_url)
            .field("browser_binding", &self.browser_binding)
            .field(
                "encryption_keys",
                &1_usize.saturating_add(self.old_encryption_keys.len()),
            )
            .field("telemetry", &self.telemetry)
            .finish_non_exhaustive()
    }
}

impl ServeArgs {
    /// Validates every variable, naming the first one that is wrong.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let google = GoogleConfig {
            client_id: required("GOOGLE_CALENDAR_CLIENT_ID", self.google_client_id)?,
            client_secret: required("GOOGLE_CALENDAR_CLIENT_SECRET", self.google_client_secret)?
                .into(),
            redirect_uri: parse_url("GOOGLE_CALENDAR_REDIRECT_URI", &self.google_redirect_uri)?,
            scopes: requested_scopes(&self.google_scopes),
            required_scopes: self
                .google_scopes
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            auth_url: parse_url("GOOGLE_OAUTH_AUTH_URL", &self.google_auth_url)?,
            token_url: parse_url("GOOGLE_OAUTH_TOKEN_URL", &self.google_token_url)?,
            revoke_url: parse_url("GOOGLE_OAUTH_REVOKE_URL", &self.google_revoke_url)?,
            userinfo_url: parse_url("GOOGLE_USERINFO_URL", &self.google_userinfo_url)?,
            timeout: millis("GOOGLE_HTTP_TIMEOUT_MS", &self.google_timeout_ms)?,
        };
        let microservice_url = match self.microservice_url.filter(|u| !u.trim().is_empty()) {
            Some(u) => {
                parse_url("GOOGLE_CALENDAR_MICROSERVICE_URL", &u)?;
                Some(u.trim().trim_end_matches('/').to_string())
            }
            None => None,
        };
        let microservice = MicroserviceConfig {
            url: microservice_url,
            token: self
                .microservice_token
                .filter(|t| !t.is_empty())
                .map(SecretString::from),
            timeout: millis(
                "GOOGLE_CALENDAR_MICROSERVICE_TIMEOUT_MS",
                &self.microservice_timeout_ms,
            )?,
            retry_base: millis("SYNC_RETRY_BASE_MS", &self.sync_retry_base_ms)?,
            retry_max: millis("SYNC_RETRY_MAX_MS", &self.sync_retry_max_ms)?,
            concurrency: positive("SYNC_CONCURRENCY", &self.sync_concurrency)?,
        };
        let refresh = RefreshConfig {
            lead: Duration::from_secs(number("REFRESH_LEAD_SECS", &self.refresh_lead_secs)?),
            jitter_max: Duration::from_secs(number(
                "REFRESH_JITTER_SECS",
                &self.refresh_jitter_secs,
            )?),
            retry_base: millis("REFRESH_RETRY_BASE_MS", &self.refresh_retry_base_ms)?,
            retry_max: millis("REFRESH_RETRY_MAX_MS", &self.refresh_retry_max_ms)?,
            concurrency: positive("REFRESH_CONCURRENCY", &self.refresh_concurrency)?,
            hibernate_after: Duration::from_secs(positive(
                "ACTOR_HIBERNATE_AFTER_SECS",
                &self.actor_hibernate_after_secs,
            )? as u64),
        };
        let http = HttpServerConfig {
            header_read_timeout: Duration::from_secs(positive(
                "HTTP_HEADER_READ_TIMEOUT_SECS",
                &self.http_header_read_timeout_secs,
            )? as u64),
            max_connections: positive("HTTP_MAX_CONNECTIONS", &self.http_max_connections)?,
        };
        let frontend_url = parse_url("FRONTEND_URL", &self.frontend_url)?;
        let (encryption_key, old_encryption_keys) = parse_keys(&required(
            "TOKEN_ENCRYPTION_KEY",
            self.token_encryption_key,
        )?)?;
        Ok(Config {
            listen_addr: self
                .listen_addr
                .parse()
                .map_err(|e| malformed("LISTEN_ADDR", e))?,
            database_url: self.database_url,
            http,
            google,
            microservice,
            refresh,
            frontend_url: frontend_url.as_str().trim_end_matches('/').to_string(),
            browser_binding: parse_switch("OAUTH_BROWSER_BINDING", &self.oauth_browser_binding)?,
            jwt_secret: required("AUTH_JWT_SECRET", self.auth_jwt_secret)?.into(),
            admin_token: required("ADMIN_TOKEN", self.admin_token)?.into(),
            encryption_key,
            old_encryption_keys,
            telemetry: self.telemetry.into_config()?,
        })
    }
}

/// The configured scopes plus `openid email`, without duplicates, in a stable order.
fn requested_scopes(configured: &str) -> Vec<String> {
    let mut scopes: Vec<String> = Vec::new();
    for scope in configured.split_whitespace().chain(["openid", "email"]) {
        if !scopes.iter().any(|s| s == scope) {
            scopes.push(scope.to_string());
        }
    }
    scopes
}

fn required(var: &'static str, value: Option<String>) -> Result<String, ConfigError> {
    value
        .filter(|v| !v.trim().is_empty())
        .ok_or(ConfigError::Missing(var))
}

fn malformed(var: &'static str, reason: impl ToString) -> ConfigError {
    ConfigError::Malformed {
        var,
        reason: reason.to_string(),
    }
}

fn parse_url(var: &'static str, value: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value.trim()).map_err(|e| malformed(var, e))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(malformed(
            var,
            format!("scheme {other} is not http or https"),
        )),
    }
}

/// `url` without its userinfo (`https://user:pass@host/x` becomes `https://host/x`), for logs
/// and debug output; anything else about it is kept as written.
pub fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    // The last `@` ends the userinfo, as URL parsers read it.
    match rest[..authority].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

fn number(var: &'static str, value: &str) -> Result<u64, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|e| malformed(var, format!("{e} (expected a whole number)")))
}

fn positive(var: &'static str, value: &str) -> Result<usize, ConfigError> {
    match number(var, value)? {
        0 => Err(malformed(var, "must be at least 1")),
        n => Ok(n as usize),
    }
}

fn millis(var: &'static str, value: &str) -> Result<Duration, ConfigError> {
    Ok(Duration::from_millis(number(var, value)?))
}

/// Decodes `TOKEN_ENCRYPTION_KEY`: one base64 key, or a comma-separated list whose first key
/// is the current one and the rest old ones. The reason never echoes a value.
pub fn parse_keys(value: &str) -> Result<([u8; 32], Vec<[u8; 32]>), ConfigError> {
    let parts: Vec<&str> = value.split(',').map(str::trim).collect();
    let mut keys = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            return Err(malformed(
                "TOKEN_ENCRYPTION_KEY",
                format!("key {} of {} is empty", i + 1, parts.len()),
            ));
        }
        keys.push(parse_key(part).map_err(|e| match e {
            ConfigError::Malformed { var, reason } if parts.len() > 1 => ConfigError::Malformed {
                var,
                reason: format!("key {} of {}: {reason}", i + 1, parts.len()),
            },
            other => other,
        })?);
    }
    let current = keys.remove(0);
    Ok((current, keys))
}

/// Decodes one base64 AES-256 key; the reason never echoes the value.
pub fn parse_key(value: &str) -> Result<[u8; 32], ConfigError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| malformed("TOKEN_ENCRYPTION_KEY", "not valid base64"))?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        malformed(
            "TOKEN_ENCRYPTION_KEY",
            format!("decodes to {} bytes, expected 32", b.len()),
        )
    })
}

/// `on`/`off` (also `true`/`false`, `1`/`0`).
fn parse_switch(var: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        other => Err(malformed(var, format!("{other} is not on or off"))),
    }
}

fn parse_log_format(value: &str) -> Result<LogFormat, ConfigError> {
    match value.trim() {
        "pretty" | "" => Ok(LogFormat::Pretty),
        "json" => Ok(LogFormat::Json),
        other => Err(malformed(
            "LOG_FORMAT",
            format!("{other} is not pretty or json"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete() -> ServeArgs {
        ServeArgs {
            listen_addr: "127.0.0.1:0".into(),
            database_url: "sqlite::memory:".into(),
            google_client_id: Some("id".into()),
            google_client_secret: Some("secret".into()),
            google_redirect_uri: "http://localhost:3000/api/integrations/google/callback".into(),
            google_scopes: DEFAULT_SCOPES.into(),
            google_auth_url: "http://127.0.0.1:1/auth".into(),
            google_token_url: "http://127.0.0.1:1/token".into(),
            google_revoke_url: "http://127.0.0.1:1/revoke".into(),
            google_userinfo_url: "http://127.0.0.1:1/userinfo".into(),
            microservice_url: Some("http://127.0.0.1:4000/".into()),
            microservice_token: None,
            microservice_timeout_ms: "10000".into(),
            refresh_lead_secs: "300".into(),
            frontend_url: "http://localhost:5173/".into(),
            oauth_browser_binding: "on".into(),
            auth_jwt_secret: Some("jwt".into()),
            admin_token: Some("admin".into()),
            token_encryption_key: Some(base64::engine::general_purpose::STANDARD.encode([7u8; 32])),
            refresh_concurrency: "64".into(),
            refresh_retry_base_ms: "1000".into(),
            refresh_retry_max_ms: "60000".into(),
            refresh_jitter_secs: "30".into(),
            actor_hibernate_after_secs: "60".into(),
            sync_retry_base_ms: "1000".into(),
            sync_retry_max_ms: "60000".into(),
            sync_concurrency: "64".into(),
            google_timeout_ms: "10000".into(),
            http_header_read_timeout_secs: "10".into(),
            http_max_connections: "10000".into(),
            telemetry: TelemetryArgs {
                log_format: "json".into(),
                ..TelemetryArgs::default()
            },
        }
    }

    #[test]
    fn complete_settings_parse_and_trailing_slashes_go() {
        let config = complete().into_config().expect("valid");
        assert_eq!(
            config.microservice.url.as_deref(),
            Some("http://127.0.0.1:4000")
        );
        assert_eq!(config.frontend_url, "http://localhost:5173");
        assert_eq!(
            config.google.scopes.last().map(String::as_str),
            Some("email")
        );
        assert_eq!(config.telemetry.log_format, LogFormat::Json);
    }

    #[test]
    fn missing_secret_names_its_variable() {
        let mut args = complete();
        args.admin_token = None;
        let err = args.into_config().unwrap_err().to_string();
        assert_eq!(err, "ADMIN_TOKEN is required but not set");
    }

    #[test]
    fn short_key_is_refused_without_echoing_it() {
        let mut args = complete();
        args.token_encryption_key = Some("c2hvcnQ=".into());
        let err = args.into_config().unwrap_err().to_string();
        assert!(
            err.starts_with("TOKEN_ENCRYPTION_KEY is malformed"),
            "{err}"
        );
        assert!(!err.contains("c2hvcnQ="));
    }

    #[test]
    fn several_keys_parse_current_first_and_bad_ones_are_named_by_position() {
        let b64 = |b: u8| base64::engine::general_purpose::STANDARD.encode([b; 32]);
        let mut args = complete();
        args.token_encryption_key = Some(format!("{} , {},{}", b64(1), b64(2), b64(3)));
        let config = args.into_config().expect("valid");
        assert_eq!(config.encryption_key, [1u8; 32]);
        assert_eq!(config.old_encryption_keys, vec![[2u8; 32], [3u8; 32]]);
        let shown = format!("{config:?}");
        assert!(
            !shown.contains(&b64(1)) && !shown.contains("[1, 1, 1"),
            "{shown}"
        );

        for (value, needle) in [
            (
                format!("{},c2hvcnQ=", b64(1)),
                "key 2 of 2: decodes to 5 bytes",
            ),
            (format!("{},", b64(1)), "key 2 of 2 is empty"),
            (format!("@@@,{}", b64(1)), "key 1 of 2: not valid base64"),
        ] {
            let mut args = complete();
            args.token_encryption_key = Some(value.clone());
            let err = args.into_config().unwrap_err().to_string();
            assert!(
                err.starts_with("TOKEN_ENCRYPTION_KEY is malformed"),
                "{err}"
            );
            assert!(err.contains(needle), "{err}");
            assert!(!err.contains(&b64(1)), "{err}");
        }
    }

    #[test]
    fn browser_binding_is_on_unless_switched_off() {
        assert!(complete().into_config().expect("valid").browser_binding);
        let mut args = complete();
        args.oauth_browser_binding = "off".into();
        assert!(!args.into_config().expect("valid").browser_binding);
        let mut args = complete();
        args.oauth_browser_binding = "maybe".into();
        let err = args.into_config().unwrap_err().to_string();
        assert!(
            err.starts_with("OAUTH_BROWSER_BINDING is malformed"),
            "{err}"
        );
    }

    #[test]
    fn connection_limits_parse_and_zero_is_refused_by_name() {
        let config = complete().into_config().expect("valid");
        assert_eq!(config.http.header_read_timeout, Duration::from_secs(10));
        assert_eq!(config.http.max_connections, 10000);
        let mut args = complete();
        args.http_header_read_timeout_secs = "0".into();
        let err = args.into_config().unwrap_err().to_string();
        assert!(
            err.starts_with("HTTP_HEADER_READ_TIMEOUT_SECS is malformed"),
            "{err}"
        );
        let mut args = complete();
        args.http_max_connections = "many".into();
        let err = args.into_config().unwrap_err().to_string();
        assert!(
            err.starts_with("HTTP_MAX_CONNECTIONS is malformed"),
            "{err}"
        );
    }

    #[test]
    fn userinfo_is_stripped_from_shown_urls() {
        for (url, shown) in [
            (
                "https://user:pass@ms.example/base",
                "https://ms.example/base",
            ),
            ("https://user@ms.example", "https://ms.example"),
            ("http://u:p%40ss@127.0.0.1:4000", "http://127.0.0.1:4000"),
            ("http://a@b:c@[::1]:4000/x?y=z", "http://[::1]:4000/x?y=z"),
            (
                "https://ms.example/users/a@b?c=d@e",
                "https://ms.example/users/a@b?c=d@e",
            ),
            ("https://ms.example", "https://ms.example"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(without_userinfo(url), shown, "{url}");
        }
        let mut args = complete();
        args.microservice_url = Some("https://tw:hunter2@ms.example".into());
        let shown = format!("{:?}", args.into_config().expect("valid"));
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn malformed_number_names_its_variable() {
        let mut args = complete();
        args.refresh_lead_secs = "soon".into();
        let err = args.into_config().unwrap_err().to_string();
        assert!(err.starts_with("REFRESH_LEAD_SECS is malformed"), "{err}");
    }
}
