//! The typed values of the command line and how clap parses them. Every parser here names the
//! variable it reads in a one-line error (`REFRESH_LEAD_SECS is malformed: ...`), never the
//! long clap message that would span three lines and echo the value (a URL may carry a
//! password). Owns parsing only: what a value means to the service is `mod.rs`'s business.

use std::{ffi::OsStr, net::SocketAddr, time::Duration};

use clap::{Arg, Command, builder::TypedValueParser, error::ErrorKind};
use url::Url;

use super::{ConfigError, LogFormat};
use crate::telemetry::OtlpProtocol;

/// A whole number of seconds, as the `*_SECS` variables are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secs(pub u64);

impl From<Secs> for Duration {
    fn from(secs: Secs) -> Self {
        Duration::from_secs(secs.0)
    }
}

/// A whole number of milliseconds, as the `*_MS` variables are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Millis(pub u64);

impl From<Millis> for Duration {
    fn from(millis: Millis) -> Self {
        Duration::from_millis(millis.0)
    }
}

/// A clap value parser running `parse`; its error names the argument's environment variable
/// (or its flag, for an argument without one) on one line.
#[derive(Clone, Copy)]
pub struct Named<T>(fn(&str) -> Result<T, String>);

/// [`Named`] around `parse`, for `#[arg(value_parser = named(...))]`.
pub const fn named<T>(parse: fn(&str) -> Result<T, String>) -> Named<T> {
    Named(parse)
}

impl<T: Clone + Send + Sync + 'static> TypedValueParser for Named<T> {
    type Value = T;

    fn parse_ref(
        &self,
        _command: &Command,
        arg: Option<&Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let parsed = match value.to_str() {
            Some(text) => (self.0)(text),
            None => Err("not valid UTF-8".to_string()),
        };
        parsed.map_err(|reason| {
            let var = match arg {
                Some(arg) => match (arg.get_env(), arg.get_long()) {
                    (Some(env), _) => env.to_string_lossy().into_owned(),
                    (None, Some(long)) => format!("--{long}"),
                    (None, None) => arg.get_id().to_string(),
                },
                None => "a setting".to_string(),
            };
            // A raw message: clap prints it after `error: ` and adds no usage or hint lines.
            let error = ConfigError::Malformed { var, reason };
            clap::Error::raw(ErrorKind::ValueValidation, format!("{error}\n"))
        })
    }
}

/// A whole number; the reason never echoes the value.
fn whole(value: &str) -> Result<u64, String> {
    value
        .trim()
        .parse()
        .map_err(|e| format!("{e} (expected a whole number)"))
}

fn at_least_one(value: &str) -> Result<u64, String> {
    match whole(value)? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

/// Seconds, 0 allowed.
pub fn secs(value: &str) -> Result<Secs, String> {
    whole(value).map(Secs)
}

/// Seconds, at least 1.
pub fn positive_secs(value: &str) -> Result<Secs, String> {
    at_least_one(value).map(Secs)
}

/// Milliseconds, 0 allowed.
pub fn millis(value: &str) -> Result<Millis, String> {
    whole(value).map(Millis)
}

/// Milliseconds, at least 1 (a timeout of 0 would fail every attempt).
pub fn positive_millis(value: &str) -> Result<Millis, String> {
    at_least_one(value).map(Millis)
}

/// A count of at least 1 (concurrency, connections).
pub fn positive(value: &str) -> Result<usize, String> {
    let n = at_least_one(value)?;
    usize::try_from(n).map_err(|e| e.to_string())
}

/// An address to listen on, `host:port`.
pub fn socket_addr(value: &str) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|e: std::net::AddrParseError| e.to_string())
}

/// An `http` or `https` URL; the reason never echoes the value.
pub fn http_url(value: &str) -> Result<Url, String> {
    let url = Url::parse(value.trim()).map_err(|e| e.to_string())?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!("scheme {other} is not http or https")),
    }
}

/// `on`/`off` (also `true`/`false`, `1`/`0`).
pub fn switch(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        other => Err(format!("{other} is not on or off")),
    }
}

/// `pretty` (also empty) or `json`.
pub fn log_format(value: &str) -> Result<LogFormat, String> {
    match value.trim() {
        "pretty" | "" => Ok(LogFormat::Pretty),
        "json" => Ok(LogFormat::Json),
        other => Err(format!("{other} is not pretty or json")),
    }
}

/// `grpc` (also empty), `http/protobuf` or `http/json`.
pub fn otlp_protocol(value: &str) -> Result<OtlpProtocol, String> {
    OtlpProtocol::parse(value).ok_or_else(|| "expected grpc, http/protobuf or http/json".into())
}

/// An `http` or `https` URL that paths are appended to (the microservice, the frontend, a
/// node's advertised address): parsed once, then shown and joined without a trailing slash,
/// so `http://host/` and `http://host` name the same base.
#[derive(Clone, PartialEq, Eq)]
pub struct BaseUrl(Url);

impl BaseUrl {
    /// Parses `value` (trimmed); the reason never echoes the value.
    pub fn parse(value: &str) -> Result<Self, String> {
        http_url(value).map(Self)
    }

    /// The base as text, without a trailing slash (userinfo included: this is what calls use).
    pub fn as_str(&self) -> &str {
        self.0.as_str().trim_end_matches('/')
    }

    /// The parsed URL.
    pub fn url(&self) -> &Url {
        &self.0
    }

    /// `path` (which starts with `/`) under this base.
    pub fn join(&self, path: &str) -> String {
        format!("{}{path}", self.as_str())
    }

    /// The base as logs and pages may show it: without `user:password@`.
    pub fn shown(&self) -> String {
        crate::telemetry::without_userinfo(self.as_str())
    }
}

impl std::fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Shows the base without userinfo: a `Debug` of the configuration never leaks a password.
impl std::fmt::Debug for BaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.shown())
    }
}

/// A URL clap has already checked (`FRONTEND_URL`).
impl From<Url> for BaseUrl {
    fn from(url: Url) -> Self {
        Self(url)
    }
}

impl PartialEq<&str> for BaseUrl {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}
