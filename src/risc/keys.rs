//! Google's RISC signing keys (docs/contract.md section 10): the configuration document names the
//! issuer and the key set; both are fetched once and cached. A `kid` not in the cache fetches them
//! again, unless the last fetch was less than [`REFETCH_AFTER`] ago: a flood of made-up `kid`s
//! costs Google one request per 10 s, not one per SET. Must not touch: the store, HTTP serving.

use std::{collections::HashMap, sync::Arc, time::Duration};

use jsonwebtoken::{DecodingKey, jwk::JwkSet};
use tokio::{sync::Mutex, time::Instant};
use url::Url;

/// Least time between two fetches of the key set.
pub const REFETCH_AFTER: Duration = Duration::from_secs(10);
/// Longest a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why no key could be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no key {0:?} in Google's RISC key set")]
    UnknownKid(String),
    #[error("Google's RISC configuration or key set cannot be read: {0}")]
    Unavailable(String),
}

/// The issuer and the keys, as last fetched.
#[derive(Default)]
struct Fetched {
    issuer: Option<String>,
    keys: HashMap<String, Arc<DecodingKey>>,
    at: Option<Instant>,
}

/// The cache; cheap to share.
pub struct RiscKeys {
    http: reqwest::Client,
    configuration_url: Url,
    fetched: Mutex<Fetched>,
}

impl RiscKeys {
    pub fn new(configuration_url: Url) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            configuration_url,
            fetched: Mutex::new(Fetched::default()),
        })
    }

    /// The key `kid` and the issuer SETs must name.
    pub async fn key(&self, kid: &str) -> Result<(Arc<DecodingKey>, String), KeyError> {
        let mut fetched = self.fetched.lock().await;
        if let (Some(key), Some(issuer)) = (fetched.keys.get(kid), &fetched.issuer) {
            return Ok((key.clone(), issuer.clone()));
        }
        if fetched.at.is_some_and(|at| at.elapsed() < REFETCH_AFTER) {
            return Err(KeyError::UnknownKid(kid.to_string()));
        }
        fetched.at = Some(Instant::now());
        let (issuer, keys) = self.fetch().await?;
        fetched.issuer = Some(issuer.clone());
        fetched.keys = keys;
        fetched
            .keys
            .get(kid)
            .map(|key| (key.clone(), issuer))
            .ok_or_else(|| KeyError::UnknownKid(kid.to_string()))
    }

    async fn fetch(&self) -> Result<(String, HashMap<String, Arc<DecodingKey>>), KeyError> {
        #[derive(serde::Deserialize)]
        struct Configuration {
            issuer: String,
            jwks_uri: Url,
        }
        let unavailable = |e: reqwest::Error| KeyError::Unavailable(e.without_url().to_string());
        let configuration: Configuration = self
            .http
            .get(self.configuration_url.clone())
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(unavailable)?
            .json()
            .await
            .map_err(unavailable)?;
        let set: JwkSet = self
            .http
            .get(configuration.jwks_uri)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(unavailable)?
            .json()
            .await
            .map_err(unavailable)?;
        let keys = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some((kid, Arc::new(key)))
            })
            .collect();
        tracing::info!(
            issuer = %configuration.issuer,
            "fetched Google's RISC configuration and key set"
        );
        Ok((configuration.issuer, keys))
    }
}
