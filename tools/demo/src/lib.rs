//! `tokenwarden demo`: the service, the sandbox Google provider, the reference microservice,
//! the reference receiver of events to the app and a one-page frontend, all in one process on
//! loopback, with tokens that live two minutes so a refresh shows up every minute. The page
//! stands in for the main app: it mints the user's JWT (the demo knows the secret), proxies
//! the calls, so the browser needs no CORS, and shows the events the app received; it can make
//! the current grant end in two minutes, to show a time-limited grant's whole life, and make
//! Google revoke it with a security event (the sandbox is the RISC transmitter, its stream
//! registered to the service's receiver; see `risc`).
//!
//! This crate is tooling and knows nothing of the service's types: [`prepare`] starts the
//! stand-ins and says how the service must be configured ([`DemoService`]); the `tokenwarden`
//! binary starts the service from that, then calls [`PreparedDemo::open`]. The page's routes
//! are in `routes`.

mod risc;
mod routes;

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use base64::Engine;
use rand::RngCore;
use tokio::net::TcpListener;

use tokenwarden_sandbox::{
    self as sandbox, AppEventsReceiver, AppEventsReceiverConfig, ReferenceMicroservice,
    SandboxGoogle, SandboxGoogleConfig,
};

use routes::{Demo, page_router};

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
    /// `GOOGLE_RISC_CONFIGURATION_URL`: the sandbox's, so the service takes its SETs.
    pub risc_configuration_url: String,
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
    /// `APP_EVENTS_URL`: the demo's reference receiver of events to the app.
    pub app_events_url: String,
    /// `APP_EVENTS_SIGNING_SECRET` (`whsec_...`, not the pushes' one): the receiver verifies
    /// every event as an app should.
    pub app_events_signing_secret: String,
}

/// The stand-ins running, and the page ready to open once the service runs.
pub struct PreparedDemo {
    demo: Demo,
    page_listener: TcpListener,
    page_url: String,
    token_lifetime_secs: u64,
    refresh_lead_secs: u64,
}

/// Starts the sandbox Google provider, the reference microservice and the reference receiver
/// of events to the app, binds the service's and
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
    let signing_secret = whsec();
    let microservice = ReferenceMicroservice::start(
        sandbox::MicroserviceConfig {
            sandbox_controls: true,
            signing_secret: Some(signing_secret.clone()),
            ..Default::default()
        },
        sandbox::bind_loopback().await?,
    )
    .await?;
    let app_events_signing_secret = whsec();
    // Loopback on a free port: the page shows what it receives, nobody else needs to reach it.
    let receiver = AppEventsReceiver::start(
        AppEventsReceiverConfig {
            signing_secret: Some(app_events_signing_secret.clone()),
            sandbox_controls: true,
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
        risc_configuration_url: google.risc_configuration_url(),
        microservice_url: microservice.base_url(),
        refresh_lead_secs: args.refresh_lead_secs,
        refresh_jitter_secs: 5,
        frontend_url: page_url.clone(),
        jwt_secret: jwt_secret.clone(),
        admin_token: admin_token.clone(),
        encryption_key: base64::engine::general_purpose::STANDARD.encode(key),
        signing_secret,
        app_events_url: receiver.events_url(),
        app_events_signing_secret,
    };
    let demo = Demo {
        service_url,
        jwt_secret,
        admin_token,
        microservice,
        google,
        receiver,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?,
    };
    let prepared = PreparedDemo {
        demo,
        page_listener,
        page_url,
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
        println!("  sandbox Google:          {}", demo.google.base_url());
        println!(
            "  reference microservice:  {}",
            demo.microservice.base_url()
        );
        println!(
            "  app events receiver:     {}  (GET lists the events to the app)",
            demo.receiver.events_url()
        );
        let receiver = risc::receiver_url(&demo.service_url);
        println!("  security events receiver: {receiver}  (Google's RISC stream, the sandbox's)");
        println!(
            "  tokens live {token_lifetime_secs}s and are refreshed {refresh_lead_secs}s before expiry; Ctrl-C stops"
        );
        println!();
        let (google, http) = (demo.google.clone(), demo.http.clone());
        tokio::spawn(async move {
            // In the background: key generation is slow in a debug build, and until the
            // stream is registered the page's button sends straight to the receiver.
            match risc::register_stream(&google, &http, &receiver).await {
                Ok(()) => {
                    println!("  RISC stream registered: the sandbox Google sends to {receiver}")
                }
                Err(e) => eprintln!("  cannot register the sandbox's RISC stream: {e:#}"),
            }
        });
        tokio::spawn(async move {
            // The stand-ins live as long as the page (it holds them): all stop with the process.
            let _ = axum::serve(page_listener, page_router(demo)).await;
        });
    }
}

/// A Standard Webhooks secret, fresh each run.
fn whsec() -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(random_secret())
    )
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
