//! The service under measurement and what it talks to: one real `tokenwarden serve` process
//! (the release binary beside this one), the sandbox Google as its OAuth provider and RISC
//! transmitter, and the reference microservice recording every request it receives, all on
//! loopback. Users are connected through the real consent path, so each connection carries
//! the Google account id (`sub`) security events name.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context;
use base64::Engine;
use rand::RngCore;
use tokenwarden_sandbox::{
    self as sandbox, GrantSelector, MicroserviceConfig, ReferenceMicroservice, SandboxGoogle,
    SandboxGoogleConfig,
};

const CLIENT_ID: &str = "tokenwarden-risc-bench";

/// The running service and its stand-ins.
pub struct Service {
    pub url: String,
    pub google: SandboxGoogle,
    pub microservice: ReferenceMicroservice,
    pub http: reqwest::Client,
    jwt_secret: String,
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Service {
    fn drop(&mut self) {
        // Only the child this tool started, by its own handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn secret() -> String {
    let mut raw = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

impl Service {
    /// Starts the stand-ins and `serve` (`bin`) on `database_url`, and waits for `/readyz`.
    pub async fn start(bin: &Path, database_url: &str, workdir: &Path) -> anyhow::Result<Self> {
        // Hour-long tokens: no refresh runs during a measurement.
        let google = SandboxGoogle::start(
            SandboxGoogleConfig {
                client_id: Some(CLIENT_ID.into()),
                token_lifetime: Duration::from_secs(3600),
                ..Default::default()
            },
            sandbox::bind_loopback().await?,
        )
        .await?;
        let microservice = ReferenceMicroservice::start(
            MicroserviceConfig::default(),
            sandbox::bind_loopback().await?,
        )
        .await?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        let jwt_secret = secret();
        let log = workdir.join("service.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(bin)
            .arg("serve")
            .env_clear()
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", database_url)
            .env("GOOGLE_CALENDAR_CLIENT_ID", CLIENT_ID)
            .env("GOOGLE_CALENDAR_CLIENT_SECRET", "unused-by-the-sandbox")
            .env(
                "GOOGLE_CALENDAR_REDIRECT_URI",
                format!("{url}/api/integrations/google/callback"),
            )
            .env("GOOGLE_OAUTH_AUTH_URL", google.auth_url())
            .env("GOOGLE_OAUTH_TOKEN_URL", google.token_url())
            .env("GOOGLE_OAUTH_REVOKE_URL", google.revoke_url())
            .env("GOOGLE_USERINFO_URL", google.userinfo_url())
            .env(
                "GOOGLE_RISC_CONFIGURATION_URL",
                google.risc_configuration_url(),
            )
            .env("GOOGLE_CALENDAR_MICROSERVICE_URL", microservice.base_url())
            .env("FRONTEND_URL", "http://frontend.bench")
            .env("AUTH_JWT_SECRET", &jwt_secret)
            .env("ADMIN_TOKEN", secret())
            .env(
                "TOKEN_ENCRYPTION_KEY",
                base64::engine::general_purpose::STANDARD.encode(key),
            )
            // As the load test: a line per SET at a thousand a second would measure the
            // logger; the receiver's own lines are at warn and stay.
            .env("RUST_LOG", "warn")
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()?;
        let service = Self {
            url,
            google,
            microservice,
            http,
            jwt_secret,
            child,
            log,
        };
        for _ in 0..200 {
            let ready = service
                .http
                .get(format!("{}/readyz", service.url))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ready {
                return Ok(service);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("serve did not become ready:\n{}", service.log_text())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `<service>/api/integrations/google/risc`.
    pub fn receiver(&self) -> String {
        format!("{}/api/integrations/google/risc", self.url)
    }

    fn jwt(&self, user: &str) -> anyhow::Result<String> {
        let exp = chrono::Utc::now().timestamp() + 3600;
        Ok(jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &serde_json::json!({"sub": user, "exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(self.jwt_secret.as_bytes()),
        )?)
    }

    /// Connects `user` through connect, the sandbox's consent and the callback (with the
    /// browser-binding cookie); returns the Google account's `sub`.
    pub async fn connect(&self, user: &str) -> anyhow::Result<String> {
        let connected = self
            .http
            .post(format!("{}/api/integrations/google/connect", self.url))
            .bearer_auth(self.jwt(user)?)
            .send()
            .await?;
        let cookies: Vec<String> = connected
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_owned))
            .collect();
        let body: serde_json::Value = connected.json().await?;
        let auth_url = body["auth_url"].as_str().context("auth_url")?;
        let consent = self.http.get(auth_url).send().await?;
        let callback = consent
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .context("consent redirect")?;
        let answer = self
            .http
            .get(callback)
            .header(reqwest::header::COOKIE, cookies.join("; "))
            .send()
            .await?;
        anyhow::ensure!(
            answer.status() == 302,
            "callback answered {}",
            answer.status()
        );
        let status: serde_json::Value = self
            .http
            .get(format!("{}/api/integrations/google/status", self.url))
            .bearer_auth(self.jwt(user)?)
            .send()
            .await?
            .json()
            .await?;
        let email = status["google_email"]
            .as_str()
            .filter(|_| status["connected"] == true)
            .with_context(|| format!("{user} is not connected: {status}"))?;
        let grant = self
            .google
            .grant(&GrantSelector::Email(email.to_owned()))
            .context("no sandbox grant")?;
        Ok(grant.sub)
    }

    /// The sum of `name`'s samples whose labels contain `label` (all when empty).
    pub async fn metric(&self, name: &str, label: &str) -> anyhow::Result<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }
}
