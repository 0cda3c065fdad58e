//! `tokenwarden demo`: the service, the sandbox Google provider, the reference microservice
//! and a one-page frontend, all in one process on loopback, with tokens that live two minutes
//! so a refresh shows up every minute. The page stands in for the main app: it mints the
//! user's JWT (the demo knows the secret) and proxies the calls, so the browser needs no CORS.
//!
//! This crate is tooling and knows nothing of the service's types: [`prepare`] starts the
//! stand-ins and says how the service must be configured ([`DemoService`]); the `tokenwarden`
//! binary starts the service from that, then calls [`PreparedDemo::open`].

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{
    Json, Router,
    extract::{Query, State},
    response::{Html, IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine;
use jsonwebtoken::{EncodingKey, Header};
use rand::RngCore;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use tokenwarden_sandbox::{
    self as sandbox, ReferenceMicroservice, SandboxGoogle, SandboxGoogleConfig,
};

const PAGE: &str = include_str!("page.html");
const CLIENT_ID: &str = "tokenwarden-demo";

/// Flags of `tokenwarden demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Where the service listens (0 picks a free port).
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:3000")]
    pub listen_addr: SocketAddr,
    /// Where the demo page listens (0 picks a free port).
    #[arg(long, env = "DEMO_PAGE_ADDR", default_value = "127.0.0.1:5173")]
    pub page_addr: SocketAddr,
    /// The demo's own SQLite file.
    #[arg(
        long,
        env = "DEMO_DATABASE_URL",
        default_value = "sqlite://tokenwarden-demo.db?mode=rwc",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Lifetime of the sandbox's access tokens, in seconds.
    #[arg(long, default_value_t = 120)]
    pub token_lifetime_secs: u64,
    /// Refresh this long before expiry, in seconds.
    #[arg(long, default_value_t = 60)]
    pub refresh_lead_secs: u64,
}

/// How the service must be configured to run in the demo: the values `serve` would read from
/// the environment.
pub struct DemoService {
    /// Where the service serves (already bound).
    pub listener: TcpListener,
    pub database_url: String,
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uri: String,
    pub auth_url: String,
    pub token_url: String,
    pub revoke_url: String,
    pub userinfo_url: String,
    pub microservice_url: String,
    pub refresh_lead_secs: u64,
    pub refresh_jitter_secs: u64,
    pub frontend_url: String,
    pub jwt_secret: String,
    pub admin_token: String,
    /// 32 random bytes, base64.
    pub encryption_key: String,
    /// `whsec_...`: the demo signs its pushes, and its microservice verifies them.
    pub signing_secret: String,
}

/// The stand-ins running, and the page ready to open once the service runs.
pub struct PreparedDemo {
    demo: Demo,
    page_listener: TcpListener,
    page_url: String,
    google: SandboxGoogle,
    token_lifetime_secs: u64,
    refresh_lead_secs: u64,
}

#[derive(Clone)]
struct Demo {
    service_url: String,
    jwt_secret: String,
    admin_token: String,
    microservice: ReferenceMicroservice,
    http: reqwest::Client,
}

/// Starts the sandbox Google provider and the reference microservice, binds the service's and
/// the page's listeners, and returns how to configure the service. The demo's SQLite file is
/// removed first: a fresh key each run could not read an older demo's rows.
pub async fn prepare(args: DemoArgs) -> anyhow::Result<(PreparedDemo, DemoService)> {
    let client_secret = random_secret();
    let google = SandboxGoogle::start(
        SandboxGoogleConfig {
            client_id: Some(CLIENT_ID.into()),
            client_secret: Some(client_secret.clone()),
            token_lifetime: Duration::from_secs(args.token_lifetime_secs),
            ..Default::default()
        },
        sandbox::bind_loopback().await?,
    )
    .await?;
    let signing_secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(random_secret())
    );
    let microservice = ReferenceMicroservice::start(
        sandbox::MicroserviceConfig {
            sandbox_controls: true,
            signing_secret: Some(signing_secret.clone()),
            ..Default::default()
        },
        sandbox::bind_loopback().await?,
    )
    .await?;
    let service_listener = bind_or_any(args.listen_addr).await?;
    let page_listener = bind_or_any(args.page_addr).await?;
    let service_url = format!("http://{}", service_listener.local_addr()?);
    let page_url = format!("http://{}", page_listener.local_addr()?);
    let (jwt_secret, admin_token) = (random_secret(), random_secret());
    let mut key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut key);
    remove_sqlite_file(&args.database_url);
    let service = DemoService {
        listener: service_listener,
        database_url: args.database_url.clone(),
        client_id: CLIENT_ID.into(),
        client_secret,
        redirect_uri: format!("{service_url}/api/integrations/google/callback"),
        auth_url: google.auth_url(),
        token_url: google.token_url(),
        revoke_url: google.revoke_url(),
        userinfo_url: google.userinfo_url(),
        microservice_url: microservice.base_url(),
        refresh_lead_secs: args.refresh_lead_secs,
        refresh_jitter_secs: 5,
        frontend_url: page_url.clone(),
        jwt_secret: jwt_secret.clone(),
        admin_token: admin_token.clone(),
        encryption_key: base64::engine::general_purpose::STANDARD.encode(key),
        signing_secret,
    };
    let demo = Demo {
        service_url,
        jwt_secret,
        admin_token,
        microservice,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?,
    };
    let prepared = PreparedDemo {
        demo,
        page_listener,
        page_url,
        google,
        token_lifetime_secs: args.token_lifetime_secs,
        refresh_lead_secs: args.refresh_lead_secs,
    };
    Ok((prepared, service))
}

impl PreparedDemo {
    /// Serves the page (the service runs by now) and prints where everything is.
    pub fn open(self) {
        let Self {
            demo,
            page_listener,
            page_url,
            google,
            token_lifetime_secs,
            refresh_lead_secs,
        } = self;
        println!();
        println!("  tokenwarden demo is running");
        println!("  open the demo page:      {page_url}/");
        println!(
            "  service:                 {}  (admin token: {})",
            demo.service_url, demo.admin_token
        );
        println!("  sandbox Google:          {}", google.base_url());
        println!(
            "  reference microservice:  {}",
            demo.microservice.base_url()
        );
        println!(
            "  tokens live {token_lifetime_secs}s and are refreshed {refresh_lead_secs}s before expiry; Ctrl-C stops"
        );
        println!();
        tokio::spawn(async move {
            // The provider lives as long as the page: both stop with the process.
            let _google = google;
            let _ = axum::serve(page_listener, page_router(demo)).await;
        });
    }
}

/// A token as the page may show it: its first 6 characters and a fingerprint (the first 8 hex
/// digits of its SHA-256), enough to see it change, never any more of the value itself (a
/// prefix alone is the same for every token: Google's access tokens all start `ya29.`).
fn redacted(token: &str) -> String {
    use sha2::Digest;
    let prefix: String = token.chars().take(6).collect();
    let digest = sha2::Sha256::digest(token.as_bytes());
    let fingerprint: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}… #{fingerprint}")
}

/// The contract's user ids: 1 to 50 of `A-Z a-z 0-9 - _ . @`.
fn valid_user_id(user_id: &str) -> bool {
    (1..=50).contains(&user_id.len())
        && user_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

fn random_secret() -> String {
    let mut raw = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

async fn bind_or_any(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(_) => TcpListener::bind(SocketAddr::new(addr.ip(), 0))
            .await
            .with_context(|| format!("cannot listen on {}", addr.ip())),
    }
}

fn remove_sqlite_file(url: &str) {
    if let Some(rest) = url.strip_prefix("sqlite://") {
        let path = rest.split('?').next().unwrap_or_default();
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{path}{suffix}"));
        }
    }
}

fn page_router(demo: Demo) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/dashboard/integrations", get(page))
        .route("/demo/connect", post(connect))
        .route("/demo/disconnect", post(disconnect))
        .route("/demo/refresh", post(refresh))
        .route("/demo/state", get(state))
        .with_state(Arc::new(demo))
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

#[derive(Deserialize)]
struct UserParam {
    user_id: String,
}

impl Demo {
    fn jwt(&self, user_id: &str) -> anyhow::Result<String> {
        let exp = chrono::Utc::now().timestamp() + 3600;
        Ok(jsonwebtoken::encode(
            &Header::default(),
            &json!({"sub": user_id, "exp": exp}),
            &EncodingKey::from_secret(self.jwt_secret.as_bytes()),
        )?)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: &str,
    ) -> anyhow::Result<Value> {
        let response = self
            .http
            .request(method, format!("{}{path}", self.service_url))
            .bearer_auth(bearer)
            .send()
            .await?;
        Ok(response.json().await.unwrap_or(Value::Null))
    }
}

fn answer(result: anyhow::Result<Value>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(e) => (
            axum::http::StatusCode::BAD_GATEWAY,
            Json(json!({"error": "demo", "message": e.to_string()})),
        )
            .into_response(),
    }
}

fn checked(user_id: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        valid_user_id(user_id),
        "user id: 1 to 50 of A-Z a-z 0-9 - _ . @"
    );
    Ok(())
}

/// Proxies connect as a main app's backend would: the service's browser-binding cookie is
/// passed on to the browser, which presents it at the callback (page and service share the
/// loopback host, and cookies ignore ports).
async fn connect(State(demo): State<Arc<Demo>>, Json(p): Json<UserParam>) -> Response {
    let result = async {
        checked(&p.user_id)?;
        let jwt = demo.jwt(&p.user_id)?;
        let response = demo
            .http
            .post(format!(
                "{}/api/integrations/google/connect",
                demo.service_url
            ))
            .bearer_auth(jwt)
            .send()
            .await?;
        let cookies: Vec<_> = response
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .cloned()
            .collect();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        anyhow::Ok((cookies, body))
    }
    .await;
    match result {
        Ok((cookies, body)) => {
            let mut response = Json(body).into_response();
            for cookie in cookies {
                response
                    .headers_mut()
                    .append(axum::http::header::SET_COOKIE, cookie);
            }
            response
        }
        Err(e) => answer(Err(e)),
    }
}

async fn disconnect(State(demo): State<Arc<Demo>>, Json(p): Json<UserParam>) -> Response {
    answer(
        async {
            checked(&p.user_id)?;
            let jwt = demo.jwt(&p.user_id)?;
            demo.call(reqwest::Method::DELETE, "/api/integrations/google", &jwt)
                .await
        }
        .await,
    )
}

async fn refresh(State(demo): State<Arc<Demo>>, Json(p): Json<UserParam>) -> Response {
    answer(
        async {
            checked(&p.user_id)?;
            let path = format!("/admin/actors/{}/refresh", p.user_id);
            demo.call(reqwest::Method::POST, &path, &demo.admin_token)
                .await
        }
        .await,
    )
}

/// Everything the page shows, with the microservice's tokens cut short.
async fn state(State(demo): State<Arc<Demo>>, Query(p): Query<UserParam>) -> Response {
    answer(
        async {
            checked(&p.user_id)?;
            let jwt = demo.jwt(&p.user_id)?;
            let status = demo
                .call(
                    reqwest::Method::GET,
                    "/api/integrations/google/status",
                    &jwt,
                )
                .await?;
            let actors = demo
                .call(
                    reqwest::Method::GET,
                    "/admin/actors?limit=20",
                    &demo.admin_token,
                )
                .await?;
            let copy = demo.microservice.stored(&p.user_id).await?.map(|t| {
                json!({
                    "access_token": redacted(&t.access_token),
                    "refresh_token": redacted(&t.refresh_token),
                    "token_expiry": t.token_expiry,
                    "scope": t.scope,
                })
            });
            Ok(json!({"status": status, "actors": actors, "microservice": copy}))
        }
        .await,
    )
}
