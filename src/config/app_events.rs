//! The settings of events to the app (docs/contract.md section 9): where they go, how they are
//! signed and how long an attempt may take. Owns turning `APP_EVENTS_*` into [`AppEventsConfig`];
//! must not touch the other variables (`mod.rs` assembles the whole [`Config`](super::Config)).

use std::{sync::Arc, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::{ConfigError, Millis, malformed, parse_url, without_userinfo};
use crate::signing::Signer;

/// Where and how events go to the app. Its `Debug` shows the URL without credentials.
#[derive(Clone)]
pub struct AppEventsConfig {
    /// The URL every event is POSTed to.
    pub url: Url,
    /// Signs every attempt when `APP_EVENTS_SIGNING_SECRET` is set.
    pub signer: Option<Arc<Signer>>,
    /// Bounds one attempt.
    pub timeout: Duration,
}

impl std::fmt::Debug for AppEventsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppEventsConfig")
            .field("url", &without_userinfo(self.url.as_str()))
            .field("signer", &self.signer)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The events' settings: `None` when `APP_EVENTS_URL` is unset or empty (no events, nothing
/// stored). A signing secret is checked even then, so a typo shows before the URL is set.
pub(super) fn app_events(
    url: Option<String>,
    signing_secret: Option<SecretString>,
    timeout: Millis,
) -> Result<Option<AppEventsConfig>, ConfigError> {
    let signer = match signing_secret.filter(|s| !s.expose_secret().trim().is_empty()) {
        Some(secret) => Some(Arc::new(
            Signer::from_secrets(&secret).map_err(|e| malformed("APP_EVENTS_SIGNING_SECRET", e))?,
        )),
        None => None,
    };
    let Some(url) = url.filter(|u| !u.trim().is_empty()) else {
        return Ok(None);
    };
    Ok(Some(AppEventsConfig {
        url: parse_url("APP_EVENTS_URL", &url)?,
        signer,
        timeout: timeout.into(),
    }))
}
