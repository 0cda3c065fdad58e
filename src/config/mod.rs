//! Configuration: every variable of docs/configuration.md, read once at start
//! (flags or environment, `.env` if present) into the typed [`Config`]. Nothing else in the
//! crate reads the environment. A missing or malformed variable yields one line naming it.
//!
//! - `args`: the clap structs ([`ServeArgs`], [`TelemetryArgs`]), typed, with their defaults.
//! - `values`: the typed values and their parsers, whose errors name the variable.
//! - `app_events`: the settings of events to the app ([`AppEventsConfig`]).
//! - here: [`Config`] and the checks that need more than one value or a secret.

mod app_events;
mod args;
mod values;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::{crypto::TokenCipher, signing::Signer, telemetry::TelemetryConfig};

// Defined where logs are made (`telemetry`), named here too: both are settings' values.
pub use crate::telemetry::{LogFormat, without_userinfo};

pub use app_events::AppEventsConfig;
pub use args::{ServeArgs, TelemetryArgs};
pub use values::{BaseUrl, Millis, Secs};

/// The calendar scopes asked for when `GOOGLE_CALENDAR_SCOPES` is unset.
pub const DEFAULT_SCOPES: &str =
    "https://www.googleapis.com/auth/calendar https://www.googleapis.com/auth/calendar.events";

impl TelemetryArgs {
    /// Validates the telemetry variables, naming the first one that is wrong.
    pub fn into_config(self) -> Result<TelemetryConfig, ConfigError> {
        let otlp_endpoint = match self.otel_endpoint.filter(|e| !e.trim().is_empty()) {
            Some(e) => Some(parse_url("OTEL_EXPORTER_OTLP_ENDPOINT", &e)?.to_string()),
            None => None,
        };
        Ok(TelemetryConfig {
            log_format: self.log_format,
            otlp_endpoint,
            otlp_protocol: self.otel_protocol,
            service_name: self.otel_service_name,
            ..TelemetryConfig::default()
        })
    }
}

/// A variable that is missing or cannot be used; the message names it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is required but not set")]
    Missing(&'static str),
    #[error("{var} is malformed: {reason}")]
    Malformed { var: String, reason: String },
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

/// Where Google's security events come from (docs/contract.md section 10).
#[derive(Debug, Clone)]
pub struct RiscConfig {
    /// The RISC configuration document: its `issuer` and `jwks_uri`.
    pub configuration_url: Url,
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
    /// `None` means sync is skipped with the seed's warning.
    pub url: Option<BaseUrl>,
    pub token: Option<SecretString>,
    /// Signs every push when `GOOGLE_CALENDAR_MICROSERVICE_SIGNING_SECRET` is set.
    pub signer: Option<Arc<Signer>>,
    pub timeout: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub concurrency: usize,
}

impl std::fmt::Debug for MicroserviceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MicroserviceConfig")
            .field("url", &self.url)
            .field("token", &self.token)
            .field("signer", &self.signer)
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

/// This process as a node of a cluster (docs/contract.md section 8; PostgreSQL only).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node_id: String,
    pub advertise_url: BaseUrl,
    pub lease_ttl: Duration,
}

/// The whole, validated configuration of `serve`. Its `Debug` leaves every secret out.
#[derive(Clone)]
pub struct Config {
    pub listen_addr: SocketAddr,
    pub database_url: String,
    /// `DATABASE_SESSION_URL`, else `DATABASE_URL`: the `LISTEN` connection and the migration
    /// lock need a session of their own, which a transaction pooler does not give.
    pub database_session_url: String,
    pub http: HttpServerConfig,
    pub google: GoogleConfig,
    pub risc: RiscConfig,
    pub microservice: MicroserviceConfig,
    pub refresh: RefreshConfig,
    pub frontend_url: BaseUrl,
    /// Whether a callback must present the cookie its connect set (`OAUTH_BROWSER_BINDING`).
    pub browser_binding: bool,
    pub jwt_secret: SecretString,
    pub admin_token: SecretString,
    /// The key that encrypts tokens at rest (the first of `TOKEN_ENCRYPTION_KEY`).
    pub encryption_key: [u8; 32],
    /// Keys of a rotation in progress: they still decrypt, never encrypt.
    pub old_encryption_keys: Vec<[u8; 32]>,
    pub telemetry: TelemetryConfig,
    pub cluster: ClusterConfig,
    /// Events to the app; `None` when `APP_EVENTS_URL` is unset (none sent, none stored).
    pub app_events: Option<AppEventsConfig>,
    /// How long before a time-limited grant's end the app is warned
    /// (`AUTHORIZATION_EXPIRY_WARNING_SECS`).
    pub authorization_expiry_warning: Duration,
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
            .field("cluster", &self.cluster)
            .field("app_events", &self.app_events)
            .field(
                "authorization_expiry_warning",
                &self.authorization_expiry_warning,
            )
            .field(
                "encryption_keys",
                &1_usize.saturating_add(self.old_encryption_keys.len()),
            )
            .field("telemetry", &self.telemetry)
            .finish_non_exhaustive()
    }
}

impl ServeArgs {
    /// Checks what clap could not (required secrets, the keys, the optional microservice
    /// URL), naming the first variable that is wrong, and builds the [`Config`].
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let google = GoogleConfig {
            client_id: required("GOOGLE_CALENDAR_CLIENT_ID", self.google_client_id)?,
            client_secret: required_secret(
                "GOOGLE_CALENDAR_CLIENT_SECRET",
                self.google_client_secret,
            )?,
            redirect_uri: self.google_redirect_uri,
            scopes: requested_scopes(&self.google_scopes),
            required_scopes: self
                .google_scopes
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            auth_url: self.google_auth_url,
            token_url: self.google_token_url,
            revoke_url: self.google_revoke_url,
            userinfo_url: self.google_userinfo_url,
            timeout: self.google_timeout_ms.into(),
        };
        let microservice_url = match self.microservice_url.filter(|u| !u.trim().is_empty()) {
            Some(u) => Some(base_url("GOOGLE_CALENDAR_MICROSERVICE_URL", &u)?),
            None => None,
        };
        let microservice =
            MicroserviceConfig {
                url: microservice_url,
                token: self
                    .microservice_token
                    .filter(|t| !t.expose_secret().is_empty()),
                signer: match self
                    .microservice_signing_secret
                    .filter(|s| !s.expose_secret().trim().is_empty())
                {
                    Some(secret) => Some(Arc::new(Signer::from_secrets(&secret).map_err(|e| {
                        malformed("GOOGLE_CALENDAR_MICROSERVICE_SIGNING_SECRET", e)
                    })?)),
                    None => None,
                },
                timeout: self.microservice_timeout_ms.into(),
                retry_base: self.sync_retry_base_ms.into(),
                retry_max: self.sync_retry_max_ms.into(),
                concurrency: self.sync_concurrency,
            };
        let refresh = RefreshConfig {
            lead: self.refresh_lead_secs.into(),
            jitter_max: self.refresh_jitter_secs.into(),
            retry_base: self.refresh_retry_base_ms.into(),
            retry_max: self.refresh_retry_max_ms.into(),
            concurrency: self.refresh_concurrency,
            hibernate_after: self.actor_hibernate_after_secs.into(),
        };
        let http = HttpServerConfig {
            header_read_timeout: self.http_header_read_timeout_secs.into(),
            max_connections: self.http_max_connections,
        };
        let cluster = ClusterConfig {
            node_id: match self.node_id.filter(|id| !id.trim().is_empty()) {
                Some(id) => node_id("NODE_ID", id.trim())?,
                None => default_node_id(),
            },
            advertise_url: match self.node_advertise_url.filter(|u| !u.trim().is_empty()) {
                Some(u) => base_url("NODE_ADVERTISE_URL", &u)?,
                None => base_url("LISTEN_ADDR", &format!("http://{}", self.listen_addr))?,
            },
            lease_ttl: self.cluster_lease_ttl_secs.into(),
        };
        let key = required_secret("TOKEN_ENCRYPTION_KEY", self.token_encryption_key)?;
        let (encryption_key, old_encryption_keys) = parse_keys(key.expose_secret())?;
        Ok(Config {
            listen_addr: self.listen_addr,
            database_session_url: self
                .database_session_url
                .filter(|u| !u.trim().is_empty())
                .unwrap_or_else(|| self.database_url.clone()),
            database_url: self.database_url,
            http,
            google,
            risc: RiscConfig {
                configuration_url: self.google_risc_configuration_url,
            },
            microservice,
            refresh,
            frontend_url: BaseUrl::from(self.frontend_url),
            browser_binding: self.oauth_browser_binding,
            jwt_secret: required_secret("AUTH_JWT_SECRET", self.auth_jwt_secret)?,
            admin_token: admin_token(self.admin_token)?,
            encryption_key,
            old_encryption_keys,
            telemetry: self.telemetry.into_config()?,
            cluster,
            app_events: app_events::app_events(
                self.app_events_url,
                self.app_events_signing_secret,
                self.app_events_timeout_ms,
            )?,
            authorization_expiry_warning: self.authorization_expiry_warning_secs.into(),
        })
    }
}

/// A node id: 1 to 255 printable ASCII characters without spaces (it is a metric label and a
/// log field).
fn node_id(var: &'static str, id: &str) -> Result<String, ConfigError> {
    if id.len() > 255 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(malformed(
            var,
            "use 1 to 255 printable ASCII characters without spaces",
        ));
    }
    Ok(id.to_string())
}

/// The host name plus a random suffix, so two processes on one host differ.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "tokenwarden".to_string());
    format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
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

fn required_secret(
    var: &'static str,
    value: Option<SecretString>,
) -> Result<SecretString, ConfigError> {
    value
        .filter(|v| !v.expose_secret().trim().is_empty())
        .ok_or(ConfigError::Missing(var))
}

/// Shortest admin token `serve` accepts (docs/contract.md section 4): with 32 characters even a
/// token of lowercase letters and digits holds over 160 bits, out of reach of online guessing
/// (which is throttled besides) and of any offline search.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;

/// `ADMIN_TOKEN`: required, and long enough that nobody guesses it.
fn admin_token(value: Option<SecretString>) -> Result<SecretString, ConfigError> {
    let token = required_secret("ADMIN_TOKEN", value)?;
    let chars = token.expose_secret().trim().chars().count();
    if chars < MIN_ADMIN_TOKEN_CHARS {
        return Err(malformed(
            "ADMIN_TOKEN",
            format!(
                "it has {chars} characters, at least {MIN_ADMIN_TOKEN_CHARS} are required \
                 (for example: openssl rand -base64 32)"
            ),
        ));
    }
    Ok(token)
}

fn malformed(var: &'static str, reason: impl ToString) -> ConfigError {
    ConfigError::Malformed {
        var: var.to_string(),
        reason: reason.to_string(),
    }
}

fn parse_url(var: &'static str, value: &str) -> Result<Url, ConfigError> {
    values::http_url(value).map_err(|reason| malformed(var, reason))
}

fn base_url(var: &'static str, value: &str) -> Result<BaseUrl, ConfigError> {
    BaseUrl::parse(value).map_err(|reason| malformed(var, reason))
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

#[cfg(test)]
mod tests;
