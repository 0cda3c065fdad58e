//! The test harness: [`TestApp`] runs the real service on a random loopback port against a
//! sandbox Google provider and a reference microservice (both real HTTP servers), on a fresh
//! SQLite file or a fresh PostgreSQL database, and offers typed helpers for the calls tests make.

use std::{future::Future, time::Duration};

use reqwest::{Client, StatusCode, redirect::Policy};
use serde_json::{Value, json};
use tokenwarden::{
    app::App,
    config::{Config, Millis, Secs, ServeArgs},
};
use tokenwarden_sandbox::{
    MicroserviceConfig, ReferenceMicroservice, SandboxGoogle, SandboxGoogleConfig, bind_loopback,
};

pub const JWT_SECRET: &str = "test-jwt-secret-that-is-long-enough";
pub const ADMIN_TOKEN: &str = "test-admin-token-of-at-least-32-characters";
/// The `NODE_ID` of in-process apps: every metric carries it as the `node` label.
pub const NODE_ID: &str = "test-node";
pub const CLIENT_ID: &str = "test-client";
pub const CLIENT_SECRET: &str = "test-client-secret";
/// base64 of 32 bytes of 0x2a.
pub const ENCRYPTION_KEY: &str = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";

mod database;
mod logs;

pub use database::{Backend, TestDatabase, postgres_available};
pub use logs::{init_log_capture, init_telemetry, log_lines_with, logs};

/// Knobs of a test app.
#[derive(Clone)]
pub struct Options {
    pub backend: Backend,
    /// Whether `GOOGLE_CALENDAR_MICROSERVICE_URL` is set.
    pub with_microservice: bool,
    pub token_lifetime: Duration,
    pub refresh_lead_secs: u64,
    pub microservice_timeout_ms: u64,
    /// `GOOGLE_HTTP_TIMEOUT_MS`.
    pub google_timeout_ms: u64,
    pub microservice_token: Option<String>,
    /// `TOKEN_ENCRYPTION_KEY`: one base64 key, or a rotation's comma-separated list.
    pub encryption_key: String,
    /// `ACTOR_HIBERNATE_AFTER_SECS`.
    pub hibernate_after_secs: u64,
    /// `REFRESH_RETRY_MAX_MS`.
    pub refresh_retry_max_ms: u64,
    /// `OAUTH_BROWSER_BINDING`.
    pub browser_binding: bool,
    /// `GOOGLE_CALENDAR_MICROSERVICE_SIGNING_SECRET` of the service.
    pub signing_secret: Option<String>,
    /// The secret the reference microservice verifies pushes with.
    pub microservice_signing_secret: Option<String>,
    /// `user:password` written into `GOOGLE_CALENDAR_MICROSERVICE_URL` (the reference
    /// microservice ignores it unless it requires a bearer token).
    pub microservice_userinfo: Option<String>,
    /// `HTTP_HEADER_READ_TIMEOUT_SECS`.
    pub header_read_timeout_secs: u64,
    /// `HTTP_MAX_CONNECTIONS`.
    pub max_connections: usize,
    /// The sandbox Google's time-limited grants (`--grant-lifetime-secs`); zero: ongoing.
    pub grant_lifetime: Duration,
    /// `APP_EVENTS_URL` (events to the app are off when `None`).
    pub app_events_url: Option<String>,
    /// `APP_EVENTS_SIGNING_SECRET`.
    pub app_events_signing_secret: Option<String>,
    /// `AUTHORIZATION_EXPIRY_WARNING_SECS`.
    pub authorization_expiry_warning_secs: u64,
    /// `GOOGLE_RISC_CONFIGURATION_URL` (the sandbox Google's when `None`).
    pub risc_configuration_url: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            backend: Backend::Sqlite,
            with_microservice: true,
            token_lifetime: Duration::from_secs(3600),
            refresh_lead_secs: 300,
            microservice_timeout_ms: 2000,
            google_timeout_ms: 2000,
            microservice_token: None,
            encryption_key: ENCRYPTION_KEY.into(),
            hibernate_after_secs: 60,
            refresh_retry_max_ms: 1000,
            browser_binding: true,
            signing_secret: None,
            microservice_signing_secret: None,
            microservice_userinfo: None,
            header_read_timeout_secs: 10,
            max_connections: 10_000,
            grant_lifetime: Duration::ZERO,
            app_events_url: None,
            app_events_signing_secret: None,
            authorization_expiry_warning_secs: 259_200,
            risc_configuration_url: None,
        }
    }
}

/// The service under test and the two servers it talks to.
pub struct TestApp {
    pub app: Option<App>,
    pub url: String,
    pub google: SandboxGoogle,
    pub microservice: ReferenceMicroservice,
    pub http: Client,
    pub db: TestDatabase,
    pub options: Options,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    pub async fn on(backend: Backend) -> Self {
        Self::spawn_with(Options {
            backend,
            ..Options::default()
        })
        .await
    }

    pub async fn spawn_with(options: Options) -> Self {
        init_log_capture();
        let google = SandboxGoogle::start(
            SandboxGoogleConfig {
                client_id: Some(CLIENT_ID.into()),
                client_secret: Some(CLIENT_SECRET.into()),
                token_lifetime: options.token_lifetime,
                grant_lifetime: options.grant_lifetime,
                ..Default::default()
            },
            bind_loopback().await.unwrap(),
        )
        .await
        .unwrap();
        let microservice = ReferenceMicroservice::start(
            MicroserviceConfig {
                bearer_token: options.microservice_token.clone(),
                signing_secret: options.microservice_signing_secret.clone(),
                sandbox_controls: true,
                ..Default::default()
            },
            bind_loopback().await.unwrap(),
        )
        .await
        .unwrap();
        let db = TestDatabase::create(options.backend).await;
        let mut this = Self {
            app: None,
            url: String::new(),
            google,
            microservice,
            // Keeps cookies like the browser of the user who consents.
            http: Client::builder()
                .redirect(Policy::none())
                .cookie_store(true)
                .build()
                .unwrap(),
            db,
            options,
        };
        this.start().await;
        this
    }

    /// The configuration the service runs with.
    pub fn config(&self, listen: std::net::SocketAddr) -> Config {
        let o = &self.options;
        let url = |raw: String| raw.parse().expect("test URL");
        ServeArgs {
            listen_addr: listen,
            database_url: self.db.url.clone(),
            google_client_id: Some(CLIENT_ID.into()),
            google_client_secret: Some(CLIENT_SECRET.into()),
            google_redirect_uri: url(format!("http://{listen}/api/integrations/google/callback")),
            google_auth_url: url(self.google.auth_url()),
            google_token_url: url(self.google.token_url()),
            google_revoke_url: url(self.google.revoke_url()),
            google_userinfo_url: url(self.google.userinfo_url()),
            microservice_url: o.with_microservice.then(|| {
                let base = self.microservice.base_url();
                match &o.microservice_userinfo {
                    Some(userinfo) => base.replacen("://", &format!("://{userinfo}@"), 1),
                    None => base,
                }
            }),
            microservice_token: o.microservice_token.clone().map(Into::into),
            microservice_timeout_ms: Millis(o.microservice_timeout_ms),
            refresh_lead_secs: Secs(o.refresh_lead_secs),
            refresh_jitter_secs: Secs(0),
            actor_hibernate_after_secs: Secs(o.hibernate_after_secs),
            refresh_retry_base_ms: Millis(100),
            refresh_retry_max_ms: Millis(o.refresh_retry_max_ms),
            sync_retry_base_ms: Millis(100),
            sync_retry_max_ms: Millis(1000),
            google_timeout_ms: Millis(o.google_timeout_ms),
            http_header_read_timeout_secs: Secs(o.header_read_timeout_secs),
            http_max_connections: o.max_connections,
            frontend_url: url("http://frontend.test".into()),
            oauth_browser_binding: o.browser_binding,
            microservice_signing_secret: o.signing_secret.clone().map(Into::into),
            auth_jwt_secret: Some(JWT_SECRET.into()),
            admin_token: Some(ADMIN_TOKEN.into()),
            token_encryption_key: Some(o.encryption_key.clone().into()),
            node_id: Some(NODE_ID.into()),
            app_events_url: o.app_events_url.clone(),
            app_events_signing_secret: o.app_events_signing_secret.clone().map(Into::into),
            app_events_timeout_ms: Millis(2000),
            authorization_expiry_warning_secs: Secs(o.authorization_expiry_warning_secs),
            google_risc_configuration_url: o
                .risc_configuration_url
                .as_deref()
                .map(|u| url::Url::parse(u).expect("a URL"))
                .unwrap_or_else(|| url(self.google.risc_configuration_url())),
            ..Default::default()
        }
        .into_config()
        .expect("test config")
    }

    async fn start(&mut self) {
        let listener = bind_loopback().await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = App::spawn(self.config(addr), listener)
            .await
            .expect("app starts");
        self.url = app.url();
        self.app = Some(app);
    }

    /// Stops the service and starts it again on the same database and port (the redirect URI
    /// names the port).
    pub async fn restart(&mut self) {
        let app = self.app.take().expect("running");
        let addr = app.addr;
        app.shutdown().await;
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let app = App::spawn(self.config(addr), listener)
            .await
            .expect("app restarts");
        self.url = app.url();
        // Actors load in the background after a start; tests that talk to them wait for it,
        // as an operator's deployment waits for `/readyz`.
        let loaded = eventually(Duration::from_secs(10), || async {
            app.supervisor.is_loaded()
        })
        .await;
        assert!(loaded, "every user loaded after the restart");
        self.app = Some(app);
    }

    pub fn app(&self) -> &App {
        self.app.as_ref().expect("running")
    }

    pub fn jwt(&self, user_id: &str) -> String {
        jwt_for(user_id, JWT_SECRET, 3600)
    }

    /// `POST /connect` as `user_id`; returns the `auth_url`.
    pub async fn start_connect(&self, user_id: &str) -> String {
        let response = self
            .http
            .post(format!("{}/api/integrations/google/connect", self.url))
            .bearer_auth(self.jwt(user_id))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        body["auth_url"].as_str().expect("auth_url").to_string()
    }

    /// Follows a consent URL through the sandbox to the callback; returns the callback's answer.
    pub async fn follow_consent(&self, auth_url: &str) -> reqwest::Response {
        let consent = self.http.get(auth_url).send().await.unwrap();
        assert_eq!(
            consent.status(),
            StatusCode::FOUND,
            "sandbox consent redirects"
        );
        let callback = location(&consent);
        self.http.get(callback).send().await.unwrap()
    }

    /// A full connect; asserts it ends in `google=connected`.
    pub async fn connect(&self, user_id: &str) {
        let auth_url = self.start_connect(user_id).await;
        let response = self.follow_consent(&auth_url).await;
        assert_eq!(response.status(), StatusCode::FOUND);
        assert_eq!(
            location(&response),
            "http://frontend.test/dashboard/integrations?google=connected"
        );
    }

    pub async fn status(&self, user_id: &str) -> Value {
        let response = self
            .http
            .get(format!("{}/api/integrations/google/status", self.url))
            .bearer_auth(self.jwt(user_id))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    pub async fn disconnect(&self, user_id: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .delete(format!("{}/api/integrations/google", self.url))
            .bearer_auth(self.jwt(user_id))
            .send()
            .await
            .unwrap();
        (
            response.status(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    /// An admin call.
    pub async fn admin(&self, method: reqwest::Method, path: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        (
            response.status(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    /// `GET /metrics`, as text.
    pub async fn metrics(&self) -> String {
        metrics_text(&self.http, &self.url).await
    }

    pub async fn actor(&self, user_id: &str) -> Option<Value> {
        let (status, body) = self
            .admin(reqwest::Method::GET, &format!("/admin/actors/{user_id}"))
            .await;
        (status == StatusCode::OK).then_some(body)
    }

    /// The access token the database holds for `user_id` (decrypted through the public
    /// store API, as the sync would read it).
    pub async fn stored_access_token(&self, user_id: &str) -> Option<String> {
        use secrecy::ExposeSecret;
        match self.app().store.sync_snapshot(user_id).await.unwrap()? {
            tokenwarden::store::SyncSnapshot::Connected { tokens, .. } => {
                Some(tokens.access_token.expose_secret().to_string())
            }
            _ => None,
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
    }
}

pub fn jwt_for(user_id: &str, secret: &str, expires_in_secs: i64) -> String {
    let exp = chrono::Utc::now().timestamp() + expires_in_secs;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": user_id, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

pub fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(reqwest::header::LOCATION)
        .expect("Location header")
        .to_str()
        .unwrap()
        .to_string()
}

/// `GET /metrics` of the service at `base`, as text.
pub async fn metrics_text(http: &Client, base: &str) -> String {
    let response = http.get(format!("{base}/metrics")).send().await;
    response
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Users whose microservice copy differs from the database (access token, or presence).
pub async fn inconsistent_users(t: &TestApp, users: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for user in users {
        let stored = t.microservice.stored(user).await.unwrap();
        let db = t.stored_access_token(user).await;
        if stored.map(|s| s.access_token) != db {
            out.push(user.clone());
        }
    }
    out
}
