//! RSA keys of the RISC side: the transmitter's signing keys (published in the JWKS) and
//! service-account keys (the JSON key files the RISC API's callers sign with).
//!
//! Keys are generated with the `rsa` crate and used only through `jsonwebtoken`; nothing here
//! signs or verifies by hand. A 2048-bit key takes seconds to generate in a debug build, so the
//! first key of each role is generated once per process and shared by every sandbox in it
//! ([`shared_key`]); a rotation always generates a fresh one. Generation runs on the blocking
//! pool so no request task stalls on it.

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey,
    jwk::{
        AlgorithmParameters, CommonParameters, Jwk, KeyAlgorithm, PublicKeyUse, RSAKeyParameters,
        RSAKeyType, ThumbprintHash,
    },
};
use rsa::{
    RsaPrivateKey, RsaPublicKey,
    pkcs1::EncodeRsaPrivateKey,
    pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding},
    traits::PublicKeyParts,
};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

/// The size Google's keys have, and the least `jsonwebtoken` accepts for RS256.
const KEY_BITS: usize = 2048;

/// What a process-wide shared key is for; each role has its own so a "foreign" key is never
/// the transmitter's.
#[derive(Clone, Copy)]
pub(super) enum KeyRole {
    /// The transmitter's first signing key.
    Transmitter,
    /// A key no JWKS publishes, for forged SETs.
    Foreign,
    /// The key of generated service-account key files.
    ServiceAccount,
}

static TRANSMITTER: OnceCell<Arc<SigningKey>> = OnceCell::const_new();
static FOREIGN: OnceCell<Arc<SigningKey>> = OnceCell::const_new();
static SERVICE_ACCOUNT: OnceCell<Arc<SigningKey>> = OnceCell::const_new();

/// The process-wide key of `role`, generated at its first use.
pub(super) async fn shared_key(role: KeyRole) -> anyhow::Result<Arc<SigningKey>> {
    let cell = match role {
        KeyRole::Transmitter => &TRANSMITTER,
        KeyRole::Foreign => &FOREIGN,
        KeyRole::ServiceAccount => &SERVICE_ACCOUNT,
    };
    cell.get_or_try_init(|| async { SigningKey::generate().await.map(Arc::new) })
        .await
        .cloned()
}

/// An RSA key pair ready to sign RS256 JWTs, with its public half as a JWK.
pub struct SigningKey {
    private: RsaPrivateKey,
    encoding: EncodingKey,
    jwk: Jwk,
}

impl SigningKey {
    /// Generates a fresh 2048-bit key on the blocking pool.
    pub async fn generate() -> anyhow::Result<Self> {
        let private =
            tokio::task::spawn_blocking(|| RsaPrivateKey::new(&mut rand::rngs::OsRng, KEY_BITS))
                .await??;
        Self::from_private(private)
    }

    /// Wraps an existing private key.
    pub fn from_private(private: RsaPrivateKey) -> anyhow::Result<Self> {
        let der = private.to_pkcs1_der()?;
        let encoding = EncodingKey::from_rsa_der(der.as_bytes());
        let jwk = public_jwk(&private.to_public_key());
        Ok(Self {
            private,
            encoding,
            jwk,
        })
    }

    /// Reads a PKCS#8 PEM private key (a service-account key file's `private_key`).
    pub fn from_pkcs8_pem(pem: &str) -> anyhow::Result<Self> {
        Self::from_private(RsaPrivateKey::from_pkcs8_pem(pem)?)
    }

    /// The key id: the JWK's RFC 7638 thumbprint, so a new key always has a new id.
    pub fn kid(&self) -> &str {
        self.jwk.common.key_id.as_deref().unwrap_or_default()
    }

    /// The public key as a JWK (`kty`, `n`, `e`, `kid`, `use: sig`, `alg: RS256`).
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// What `jsonwebtoken` signs with.
    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }

    /// What `jsonwebtoken` verifies with.
    pub fn decoding_key(&self) -> DecodingKey {
        DecodingKey::from_jwk(&self.jwk).expect("an RSA JWK always makes a decoding key")
    }

    /// The private key as PKCS#8 PEM, as Google's key files carry it.
    pub fn private_pkcs8_pem(&self) -> String {
        self.private
            .to_pkcs8_pem(LineEnding::LF)
            .expect("an RSA key always encodes")
            .to_string()
    }

    /// The private key as PKCS#1 PEM (`BEGIN RSA PRIVATE KEY`).
    pub fn private_pkcs1_pem(&self) -> String {
        self.private
            .to_pkcs1_pem(LineEnding::LF)
            .expect("an RSA key always encodes")
            .to_string()
    }

    /// Signs `claims` as an RS256 JWT whose header names this key's `kid`.
    pub fn sign(&self, claims: &impl Serialize) -> anyhow::Result<String> {
        self.sign_as(self.kid(), claims)
    }

    /// Signs `claims` as an RS256 JWT whose header names `kid` (a key file's
    /// `private_key_id`, or a forged one).
    pub fn sign_as(&self, kid: &str, claims: &impl Serialize) -> anyhow::Result<String> {
        let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_owned());
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding)?)
    }
}

/// The public JWK of `public`, with its thumbprint as `kid`.
fn public_jwk(public: &RsaPublicKey) -> Jwk {
    let mut jwk = Jwk {
        common: CommonParameters {
            public_key_use: Some(PublicKeyUse::Signature),
            key_algorithm: Some(KeyAlgorithm::RS256),
            ..Default::default()
        },
        algorithm: AlgorithmParameters::RSA(RSAKeyParameters {
            key_type: RSAKeyType::RSA,
            n: URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            e: URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        }),
    };
    jwk.common.key_id = Some(jwk.thumbprint(ThumbprintHash::SHA256));
    jwk
}

/// A Google service-account JSON key file, as the Cloud console downloads it.
#[derive(Clone, Serialize, Deserialize)]
pub struct ServiceAccountKeyFile {
    #[serde(rename = "type")]
    pub kind: String,
    pub project_id: String,
    pub private_key_id: String,
    pub private_key: String,
    pub client_email: String,
    pub client_id: String,
    pub auth_uri: String,
    pub token_uri: String,
    pub auth_provider_x509_cert_url: String,
    pub client_x509_cert_url: String,
    pub universe_domain: String,
}

/// Without the private key, so a failing test's output never carries it.
impl std::fmt::Debug for ServiceAccountKeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKeyFile")
            .field("client_email", &self.client_email)
            .field("private_key_id", &self.private_key_id)
            .field("private_key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl ServiceAccountKeyFile {
    /// A key file for `client_email` holding `key`.
    pub(super) fn new(client_email: &str, key: &SigningKey) -> Self {
        let project_id = client_email
            .split_once('@')
            .and_then(|(_, domain)| domain.split('.').next())
            .unwrap_or("sandbox-project")
            .to_owned();
        // Google's client ids of service accounts are 21 digits.
        let client_id = format!("1{:020}", rand::random::<u64>());
        Self {
            kind: "service_account".into(),
            project_id,
            // Google's ids are 40 hex digits; the thumbprint's first bytes in hex look alike
            // and stay tied to the key.
            private_key_id: key_id_hex(key),
            private_key: key.private_pkcs8_pem(),
            client_email: client_email.to_owned(),
            client_id,
            auth_uri: "https://accounts.google.com/o/oauth2/auth".into(),
            token_uri: "https://oauth2.googleapis.com/token".into(),
            auth_provider_x509_cert_url: "https://www.googleapis.com/oauth2/v1/certs".into(),
            client_x509_cert_url: format!(
                "https://www.googleapis.com/robot/v1/metadata/x509/{}",
                client_email.replace('@', "%40")
            ),
            universe_domain: "googleapis.com".into(),
        }
    }

    /// A bearer token for the RISC API, as Google asks: RS256 by this key, `kid` = the
    /// `private_key_id`, `iss` = `sub` = the `client_email`, Google's audience, valid 1 hour.
    pub fn risc_api_token(&self) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = serde_json::json!({
            "iss": self.client_email,
            "sub": self.client_email,
            "aud": super::risc::RISC_API_AUDIENCE,
            "iat": now,
            "exp": now + 3600,
        });
        SigningKey::from_pkcs8_pem(&self.private_key)?.sign_as(&self.private_key_id, &claims)
    }

    /// The file's JSON, pretty-printed as Google's downloads are.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a key file always serializes")
    }
}

/// 40 hex digits derived from the key's thumbprint.
fn key_id_hex(key: &SigningKey) -> String {
    let bytes = URL_SAFE_NO_PAD.decode(key.kid()).unwrap_or_default();
    bytes.iter().take(20).map(|b| format!("{b:02x}")).collect()
}
