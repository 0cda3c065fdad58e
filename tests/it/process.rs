//! The real `tokenwarden` binary as a child process: a clean environment (only PATH), the
//! in-process sandbox Google provider and reference microservice, and its output kept in a
//! file that failing tests print.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use reqwest::{Client, StatusCode};
use tokenwarden_sandbox::{
    MicroserviceConfig, ReferenceMicroservice, SandboxGoogle, SandboxGoogleConfig, bind_loopback,
};

use crate::support::{
    ADMIN_TOKEN, CLIENT_ID, CLIENT_SECRET, JWT_SECRET, eventually, jwt_for, location,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_tokenwarden");

/// The binary with a clean environment, run in `dir` (so no `.env` of the host is read).
pub fn tokenwarden(dir: &Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(dir);
    command
}

/// `tokenwarden serve` running as a child process.
pub struct Served {
    child: Child,
    pub url: String,
    log: PathBuf,
}

impl Served {
    /// Starts `serve` on `port` against the sandbox servers, with the test's settings plus
    /// `extra` variables, and waits until `/readyz` answers 200.
    pub async fn start(
        dir: &Path,
        port: u16,
        database_url: &str,
        key: &str,
        google: &SandboxGoogle,
        microservice: &ReferenceMicroservice,
        extra: &[(&str, String)],
    ) -> Self {
        let url = format!("http://127.0.0.1:{port}");
        let log = dir.join(format!("serve-{}.log", rand::random::<u32>()));
        let out = std::fs::File::create(&log).unwrap();
        let mut command = tokenwarden(dir);
        command
            .arg("serve")
            .envs(serve_env(port, database_url, key, google, microservice))
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out));
        for (name, value) in extra {
            command.env(name, value);
        }
        let child = command.spawn().unwrap();
        let mut served = Self { child, url, log };
        let http = client();
        let ready = eventually(Duration::from_secs(20), || async {
            matches!(http.get(format!("{}/readyz", served.url)).send().await, Ok(r) if r.status() == 200)
        })
        .await;
        if !ready {
            let _ = served.child.kill();
            panic!("serve did not become ready:\n{}", served.output());
        }
        served
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal by name (`TERM`, `KILL`) with `kill`.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name}");
    }

    /// Waits (polling, bounded) for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The environment `serve` runs with in the tests (without PATH): listening on `port` on
/// loopback, the sandbox servers, short retries and timeouts.
pub fn serve_env(
    port: u16,
    database_url: &str,
    key: &str,
    google: &SandboxGoogle,
    microservice: &ReferenceMicroservice,
) -> Vec<(&'static str, String)> {
    let url = format!("http://127.0.0.1:{port}");
    vec![
        ("LISTEN_ADDR", format!("127.0.0.1:{port}")),
        ("DATABASE_URL", database_url.to_string()),
        ("TOKEN_ENCRYPTION_KEY", key.to_string()),
        ("GOOGLE_CALENDAR_CLIENT_ID", CLIENT_ID.to_string()),
        ("GOOGLE_CALENDAR_CLIENT_SECRET", CLIENT_SECRET.to_string()),
        ("AUTH_JWT_SECRET", JWT_SECRET.to_string()),
        ("ADMIN_TOKEN", ADMIN_TOKEN.to_string()),
        (
            "GOOGLE_CALENDAR_REDIRECT_URI",
            format!("{url}/api/integrations/google/callback"),
        ),
        ("GOOGLE_OAUTH_AUTH_URL", google.auth_url()),
        ("GOOGLE_OAUTH_TOKEN_URL", google.token_url()),
        ("GOOGLE_OAUTH_REVOKE_URL", google.revoke_url()),
        ("GOOGLE_USERINFO_URL", google.userinfo_url()),
        // As in-process test apps: the sandbox is Google's RISC transmitter too.
        (
            "GOOGLE_RISC_CONFIGURATION_URL",
            google.risc_configuration_url(),
        ),
        ("GOOGLE_CALENDAR_MICROSERVICE_URL", microservice.base_url()),
        ("FRONTEND_URL", "http://frontend.test".to_string()),
        ("REFRESH_JITTER_SECS", "0".to_string()),
        ("REFRESH_RETRY_BASE_MS", "100".to_string()),
        ("REFRESH_RETRY_MAX_MS", "1000".to_string()),
        ("SYNC_RETRY_BASE_MS", "100".to_string()),
        ("SYNC_RETRY_MAX_MS", "1000".to_string()),
        ("GOOGLE_HTTP_TIMEOUT_MS", "2000".to_string()),
        (
            "GOOGLE_CALENDAR_MICROSERVICE_TIMEOUT_MS",
            "2000".to_string(),
        ),
        ("RUST_LOG", "info,sqlx=warn".to_string()),
    ]
}

impl Drop for Served {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An HTTP client that does not follow redirects and keeps cookies, like a browser.
pub fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A full consent through the service at `url`, as `user`; asserts it ends connected.
pub async fn connect_at(http: &Client, url: &str, user: &str) {
    let response = http
        .post(format!("{url}/api/integrations/google/connect"))
        .bearer_auth(jwt_for(user, JWT_SECRET, 600))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = response.json().await.unwrap();
    let consent = http
        .get(body["auth_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let callback = http.get(location(&consent)).send().await.unwrap();
    assert_eq!(
        location(&callback),
        "http://frontend.test/dashboard/integrations?google=connected"
    );
}

/// Whether this process runs as root (PostgreSQL and PgBouncer refuse to: the tests then run
/// them as `postgres`).
pub fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// A loopback port that was free a moment ago.
/// Picked below the kernel's ephemeral range (32768 and up here): a port handed out by a bind
/// to port 0 can be taken a moment later as the source port of any outgoing connection, and a
/// child process binding it then fails with "Address already in use".
pub async fn free_port() -> u16 {
    use rand::Rng;
    for _ in 0..200 {
        let port = rand::thread_rng().gen_range(20_000..32_000);
        if tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return port;
        }
    }
    panic!("no free loopback port below the ephemeral range after 200 tries")
}

/// `tokenwarden demo` running as a child process, on free ports, with its own SQLite file.
pub struct DemoProcess {
    child: Child,
    /// The demo page, without a trailing slash.
    pub page_url: String,
    /// The service the demo runs, without a trailing slash.
    pub service_url: String,
    /// The admin token the demo made up and printed.
    pub admin_token: String,
    log: PathBuf,
}

impl DemoProcess {
    /// Starts the demo in `dir` and waits (at most 20 s) until it prints where its page is.
    pub async fn start(dir: &Path) -> Self {
        let log = dir.join("demo.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = tokenwarden(dir)
            .args([
                "demo",
                "--listen-addr",
                "127.0.0.1:0",
                "--page-addr",
                "127.0.0.1:0",
            ])
            .args(["--database-url", "sqlite://demo.db?mode=rwc"])
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        let mut demo = Self {
            child,
            page_url: String::new(),
            service_url: String::new(),
            admin_token: String::new(),
            log,
        };
        let started = eventually(Duration::from_secs(20), || async {
            demo.read_addresses().is_some()
        })
        .await;
        match demo.read_addresses() {
            Some((page, service, token)) if started => {
                (demo.page_url, demo.service_url, demo.admin_token) = (page, service, token);
                demo
            }
            _ => panic!("demo did not start:\n{}", demo.output()),
        }
    }

    /// The page, the service and the admin token, once the demo printed them:
    /// `open the demo page: URL/` and `service: URL  (admin token: T)`.
    fn read_addresses(&self) -> Option<(String, String, String)> {
        let output = self.output();
        let field = |prefix: &str| {
            output
                .lines()
                .find_map(|l| l.trim().strip_prefix(prefix).map(str::trim))
        };
        let page = field("open the demo page:")?
            .trim_end_matches('/')
            .to_string();
        let service_line = field("service:")?;
        let (service, rest) = service_line.split_once(char::is_whitespace)?;
        let token = rest
            .trim()
            .strip_prefix("(admin token:")?
            .trim_end_matches(')')
            .trim();
        Some((page, service.to_string(), token.to_string()))
    }

    /// Everything the demo printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for DemoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sandbox servers a child `serve` process talks to.
pub async fn sandboxes(lifetime: Duration) -> (SandboxGoogle, ReferenceMicroservice) {
    let google = SandboxGoogle::start(
        SandboxGoogleConfig {
            client_id: Some(CLIENT_ID.into()),
            client_secret: Some(CLIENT_SECRET.into()),
            token_lifetime: lifetime,
            ..Default::default()
        },
        bind_loopback().await.unwrap(),
    )
    .await
    .unwrap();
    let microservice = ReferenceMicroservice::start(
        MicroserviceConfig::default(),
        bind_loopback().await.unwrap(),
    )
    .await
    .unwrap();
    (google, microservice)
}
