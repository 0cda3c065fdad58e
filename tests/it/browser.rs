//! The browser harness: Debian's Chromium driven over WebDriver (`fantoccini`) through a
//! `chromedriver` this test starts on a free loopback port. Every wait is bounded, every step
//! leaves a screenshot under `target/browser-screenshots/<test>/<nn>-<step>.png`, and a failing
//! test leaves one more (`<nn>-failed.png`) of what the browser showed when it failed.
//!
//! Without Chromium or ChromeDriver a test is skipped with `SKIPPED:` on stderr, except under
//! `CI=true`, where a missing browser fails the test (as a missing PostgreSQL does).

use std::{
    future::Future,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use fantoccini::{Client, ClientBuilder, Locator, elements::Element, wd::TimeoutConfiguration};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

/// Where Debian installs the browser and its driver; `CHROMIUM` and `CHROMEDRIVER` override.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long one wait for the page (an element, a text, a URL) may take.
pub const WAIT: Duration = Duration::from_secs(15);
/// How long a whole browser test may take, setup and teardown included.
pub const TEST_LIMIT: Duration = Duration::from_secs(180);
/// How long one WebDriver command may take (a page load, a click, a screenshot).
const COMMAND: Duration = Duration::from_secs(30);
const DRIVER_START: Duration = Duration::from_secs(20);

/// The flags the machine notes ask for: headless, as root, and no calls to Google's hosts
/// (the machine's closed network refuses them, many at a time).
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
];

fn program(env: &str, default: &str) -> PathBuf {
    std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| default.into())
}

/// Whether the browser can run here. Under `CI=true` a missing browser fails the test: CI must
/// prove the pages work in a browser (`.ci/run` installs it).
pub fn browser_available() -> bool {
    let chromium = program("CHROMIUM", CHROMIUM);
    let driver = program("CHROMEDRIVER", CHROMEDRIVER);
    let missing: Vec<String> = [&chromium, &driver]
        .into_iter()
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} missing and CI=true: browser tests must run (apt-get install chromium chromium-driver)",
        missing.join(" and ")
    );
    eprintln!(
        "SKIPPED: {} missing (apt-get install chromium chromium-driver)",
        missing.join(" and ")
    );
    false
}

/// The screenshots' folder of `test`: `target/browser-screenshots/<test>/`, found from the
/// binary under test so that `CARGO_TARGET_DIR` is honoured.
pub fn screenshot_dir(test: &str) -> PathBuf {
    let bin = Path::new(crate::process::BIN);
    let target = bin
        .parent()
        .and_then(Path::parent)
        .expect("the binary lives in <target>/<profile>/");
    target.join("browser-screenshots").join(test)
}

/// `chromedriver` as a child process in a process group of its own, so the Chromium it starts
/// goes with it even when a test fails before closing the session.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    /// Starts `chromedriver --port=0` and reads the port it picked from its first lines.
    fn start(log: &Path) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(program("CHROMEDRIVER", CHROMEDRIVER))
            .args([
                "--port=0",
                "--allowed-ips=127.0.0.1",
                &format!("--log-path={}", log.display()),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting chromedriver")?;
        let stdout = child.stdout.take().expect("piped");
        // The read blocks: a thread of its own, and a bounded wait for its answer.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line
                    .split("started successfully on port ")
                    .nth(1)
                    .and_then(|rest| rest.trim_end_matches('.').trim().parse::<u16>().ok())
                {
                    let _ = tx.send(port);
                }
            }
        });
        let mut driver = Self {
            child,
            url: String::new(),
        };
        match rx.recv_timeout(DRIVER_START) {
            Ok(port) => {
                driver.url = format!("http://127.0.0.1:{port}");
                Ok(driver)
            }
            Err(_) => bail!("chromedriver did not say its port within {DRIVER_START:?}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the browser it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

/// A headless Chromium session of one test.
pub struct Browser {
    client: Client,
    test: String,
    dir: PathBuf,
    step: u32,
    // Dropped after the client: the browser goes, then its profile.
    _driver: Driver,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts ChromeDriver and a fresh Chromium for `test`, or `None` (after `SKIPPED:`) where
    /// no browser is installed. Old screenshots of `test` are removed.
    pub async fn start(test: &str) -> Option<Self> {
        if !browser_available() {
            return None;
        }
        let dir = screenshot_dir(test);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        let profile = tempfile::tempdir().expect("profile dir");
        let driver = Driver::start(&profile.path().join("chromedriver.log"))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!(
            "--user-data-dir={}",
            profile.path().join("chromium").display()
        ));
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": program("CHROMIUM", CHROMIUM),
                "args": args,
            },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let client = tokio::time::timeout(
            COMMAND,
            ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities)
                .connect(&driver.url),
        )
        .await
        .expect("Chromium started within the time limit")
        .unwrap_or_else(|e| panic!("Chromium did not start: {e}"));
        // Page loads and scripts bounded; no implicit wait: every wait here is explicit.
        let timeouts =
            TimeoutConfiguration::new(Some(COMMAND), Some(COMMAND), Some(Duration::ZERO));
        tokio::time::timeout(COMMAND, client.update_timeouts(timeouts))
            .await
            .expect("WebDriver answered within the time limit")
            .expect("timeouts set");
        Some(Self {
            client,
            test: test.into(),
            dir,
            step: 0,
            _driver: driver,
            _profile: profile,
        })
    }

    /// Runs one WebDriver command, bounded by [`COMMAND`].
    async fn bounded<T, E: std::fmt::Display>(
        &self,
        what: &str,
        command: impl Future<Output = Result<T, E>>,
    ) -> anyhow::Result<T> {
        match tokio::time::timeout(COMMAND, command).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => bail!("{what}: {e}"),
            Err(_) => bail!("{what}: no answer within {COMMAND:?}"),
        }
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.bounded(&format!("open {url}"), self.client.goto(url))
            .await
    }

    /// Saves a screenshot as `<nn>-<step>.png`.
    pub async fn screenshot(&mut self, step: &str) -> anyhow::Result<PathBuf> {
        self.step += 1;
        let png = self.bounded("screenshot", self.client.screenshot()).await?;
        let path = self.dir.join(format!("{:02}-{step}.png", self.step));
        std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Waits (bounded by [`WAIT`]) for an element that `locator` finds.
    pub async fn find(&self, locator: Locator<'_>) -> anyhow::Result<Element> {
        let what = format!("waiting for {locator:?}");
        self.bounded(
            &what,
            self.client
                .wait()
                .at_most(WAIT)
                .every(Duration::from_millis(100))
                .for_element(locator),
        )
        .await
    }

    pub async fn click(&self, locator: Locator<'_>) -> anyhow::Result<()> {
        let element = self.find(locator).await?;
        self.bounded(&format!("click {locator:?}"), element.click())
            .await
    }

    /// Replaces the value of the input `locator` finds with `text`.
    pub async fn fill(&self, locator: Locator<'_>, text: &str) -> anyhow::Result<()> {
        let element = self.find(locator).await?;
        self.bounded(&format!("clear {locator:?}"), element.clear())
            .await?;
        self.bounded(&format!("type into {locator:?}"), element.send_keys(text))
            .await
    }

    /// The attribute `name` of what `locator` finds (waiting for it as [`Self::find`] does).
    pub async fn attr(&self, locator: Locator<'_>, name: &str) -> anyhow::Result<Option<String>> {
        let element = self.find(locator).await?;
        self.bounded(&format!("{name} of {locator:?}"), element.attr(name))
            .await
    }

    /// How many elements `locator` finds now.
    pub async fn count(&self, locator: Locator<'_>) -> anyhow::Result<usize> {
        let found = self.bounded("find", self.client.find_all(locator)).await?;
        Ok(found.len())
    }

    /// The visible text of what `locator` finds now (empty when it finds nothing).
    pub async fn text_now(&self, locator: Locator<'_>) -> anyhow::Result<String> {
        let found = self.bounded("find", self.client.find_all(locator)).await?;
        match found.first() {
            Some(element) => self.bounded("text", element.text()).await,
            None => Ok(String::new()),
        }
    }

    /// Waits (bounded by [`WAIT`]) until the text of what `locator` finds satisfies `check`;
    /// returns it. For pages that update themselves.
    pub async fn wait_text(
        &self,
        locator: Locator<'_>,
        what: &str,
        check: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        self.poll_text(locator, what, false, check).await
    }

    /// [`Self::wait_text`] for server-rendered pages: reloads the page before each look.
    pub async fn wait_text_reloading(
        &self,
        locator: Locator<'_>,
        what: &str,
        check: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        self.poll_text(locator, what, true, check).await
    }

    async fn poll_text(
        &self,
        locator: Locator<'_>,
        what: &str,
        reload: bool,
        check: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            // A page that navigates away under us makes a read fail: try again.
            let text = self.text_now(locator).await.unwrap_or_default();
            if check(&text) {
                return Ok(text);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("{locator:?}: waited {WAIT:?} for {what}; it shows:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(if reload { 250 } else { 100 })).await;
            if reload {
                self.bounded("reload", self.client.refresh()).await?;
            }
        }
    }

    pub async fn current_url(&self) -> anyhow::Result<String> {
        Ok(self
            .bounded("current URL", self.client.current_url())
            .await?
            .to_string())
    }

    /// Waits (bounded by [`WAIT`]) until the address satisfies `check`; returns it.
    pub async fn wait_url(
        &self,
        what: &str,
        check: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let url = self.current_url().await.unwrap_or_default();
            if check(&url) {
                return Ok(url);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("waited {WAIT:?} for {what}; the browser is at {url}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The whole page's visible text.
    pub async fn page_text(&self) -> anyhow::Result<String> {
        self.text_now(Locator::Css("body")).await
    }

    /// Ends the test: on `Err`, saves `<nn>-failed.png` and panics with the error and the
    /// page's text; closes the browser either way.
    pub async fn finish(mut self, result: anyhow::Result<()>) {
        let failure = match result {
            Ok(()) => None,
            Err(e) => {
                let shot = self
                    .screenshot("failed")
                    .await
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|e| format!("(no screenshot: {e})"));
                let url = self.current_url().await.unwrap_or_default();
                let text = self.page_text().await.unwrap_or_default();
                Some(format!(
                    "{}: {e:#}\nat {url}, screenshot {shot}\npage text:\n{text}",
                    self.test
                ))
            }
        };
        let _ = tokio::time::timeout(COMMAND, self.client.close()).await;
        if let Some(message) = failure {
            panic!("{message}");
        }
    }
}

/// Runs a browser test's body within [`TEST_LIMIT`].
pub async fn within_limit<F: Future<Output = ()>>(test: &str, body: F) {
    if tokio::time::timeout(TEST_LIMIT, body).await.is_err() {
        panic!("{test}: did not finish within {TEST_LIMIT:?}");
    }
}
