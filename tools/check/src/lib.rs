//! `tokenwarden check-microservice URL`: runs the microservice contract's cases (SEED.md's
//! bodies and statuses, docs/contract.md section 5a's versions and signatures) against any
//! microservice and prints a pass/fail table.
//!
//! The contract has no read route, so every case is judged by the answers alone: a stale push
//! is shown to have changed nothing by what the microservice answers next (the newer version
//! refused again, a DELETE finding nothing). Each case works on a user id of its own,
//! `<prefix><case>-<random>`, and deletes it afterwards with a newer version, so runs never
//! collide with each other or with real users. Pushes carry `Token-Version`, the bearer token
//! when given one, and Standard Webhooks signatures (the `standardwebhooks` crate) when given a
//! secret, as tokenwarden sends them: then a body also names its user and version, and the
//! replay cases check that a captured push sent again for another user, with another version or
//! as a DELETE is refused.
//!
//! # Layout
//! - this file: the flags, their validation, and the entry points [`run`] and [`check`];
//! - `client`: one push as a case describes it, signed and sent;
//! - `cases`: the cases and how each is judged (`cases::replay`: the replay cases);
//! - `report`: the results and the table.

mod cases;
mod client;
mod report;

use std::{io::Write, time::Duration};

use anyhow::Context;
use standardwebhooks::Webhook;

pub use cases::help;
pub use report::{CaseResult, Report};

/// Longest user id SEED.md's `VARCHAR(50)` key holds.
const MAX_USER_ID_LEN: usize = 50;

/// Default `--user-prefix`.
pub const DEFAULT_USER_PREFIX: &str = "tokenwarden-check-";

/// Flags of `tokenwarden check-microservice`.
#[derive(clap::Args, Clone)]
pub struct CheckArgs {
    /// Base URL of the microservice under test, e.g. http://127.0.0.1:4000 (the service's
    /// GOOGLE_CALENDAR_MICROSERVICE_URL); a trailing slash is ignored
    #[arg(env = "GOOGLE_CALENDAR_MICROSERVICE_URL", hide_env_values = true)]
    pub url: String,
    /// Bearer token the microservice requires: sent on every push, and the cases
    /// bearer-missing and bearer-wrong check that a push without it or with a wrong one is
    /// refused with 401. Without it those cases are not run
    #[arg(
        long,
        env = "GOOGLE_CALENDAR_MICROSERVICE_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Standard Webhooks secret the microservice verifies (whsec_<base64>; several
    /// comma-separated sign every push with each): pushes are signed over a body naming their
    /// user_id and token_version, and the cases signature-missing, signature-tampered and
    /// signature-old check that an unsigned push, a tampered body and a timestamp 10 minutes
    /// old are refused with 401, and replay-user, replay-version, replay-delete-user and
    /// replay-as-delete that a signed push replayed for another user, with another
    /// Token-Version, or as a DELETE is refused with 401 and changes nothing. Without it those
    /// cases are not run and nothing is signed
    #[arg(
        long,
        env = "GOOGLE_CALENDAR_MICROSERVICE_SIGNING_SECRET",
        hide_env_values = true
    )]
    pub signing_secret: Option<String>,
    /// Start of every user id the cases create (<prefix><case>-<random>); user ids must stay
    /// within 50 characters, so at most 20 characters of letters, digits, '-', '_' or '.'
    #[arg(long, env = "CHECK_MICROSERVICE_USER_PREFIX", default_value = DEFAULT_USER_PREFIX)]
    pub user_prefix: String,
    /// How long one request may take before the case counts it as failed, in milliseconds
    #[arg(long, env = "CHECK_MICROSERVICE_TIMEOUT_MS", default_value_t = 10_000)]
    pub timeout_ms: u64,
}

impl std::fmt::Debug for CheckArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckArgs")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field(
                "signing_secret",
                &self.signing_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("user_prefix", &self.user_prefix)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

impl CheckArgs {
    /// The flags for `url` with everything else at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: None,
            signing_secret: None,
            user_prefix: DEFAULT_USER_PREFIX.to_owned(),
            timeout_ms: 10_000,
        }
    }
}

/// Runs every case and writes the table to `out`; the exit code is 0 when every case passed,
/// 1 when one failed and 2 when the flags are unusable (the reason goes to `err`).
pub async fn run(
    args: CheckArgs,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> u8 {
    match check(args, out).await {
        Ok(report) => report.exit_code(),
        Err(e) => {
            let _ = writeln!(err, "error: {e:#}");
            2
        }
    }
}

/// Runs every case, writes the table to `out` and returns the results; an error only when the
/// flags are unusable (a failing microservice is a failed case, not an error).
pub async fn check(args: CheckArgs, out: &mut (dyn Write + Send)) -> anyhow::Result<Report> {
    let target = Target::from_args(&args)?;
    let report = cases::run_all(&target).await;
    out.write_all(report.render().as_bytes())
        .context("cannot write the report")?;
    Ok(report)
}

/// The microservice under test and how to talk to it, validated.
pub(crate) struct Target {
    /// Base URL without a trailing slash.
    base_url: String,
    http: reqwest::Client,
    bearer: Option<String>,
    /// One per configured secret; every push is signed by each.
    keys: Vec<Webhook>,
    user_prefix: String,
}

impl Target {
    fn from_args(args: &CheckArgs) -> anyhow::Result<Self> {
        let base_url = args.url.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&base_url)
            .with_context(|| format!("the microservice URL {base_url:?} is not a URL"))?;
        anyhow::ensure!(
            matches!(parsed.scheme(), "http" | "https"),
            "the microservice URL must start with http:// or https://"
        );
        let keys = match &args.signing_secret {
            Some(secrets) => parse_secrets(secrets)?,
            None => Vec::new(),
        };
        let longest = MAX_USER_ID_LEN - cases::LONGEST_CASE_NAME - 1 - cases::RANDOM_SUFFIX_LEN;
        anyhow::ensure!(
            args.user_prefix.chars().count() <= longest,
            "--user-prefix is {} characters; at most {longest} keep user ids within 50",
            args.user_prefix.chars().count()
        );
        anyhow::ensure!(
            args.user_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
            "--user-prefix may hold only letters, digits, '-', '_' and '.'"
        );
        anyhow::ensure!(args.timeout_ms > 0, "--timeout-ms must be positive");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(args.timeout_ms))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            base_url,
            http,
            bearer: args.token.clone(),
            keys,
            user_prefix: args.user_prefix.clone(),
        })
    }
}

/// Parses `whsec_<base64>`, or several comma-separated; errors name a bad secret's position,
/// never its content.
fn parse_secrets(secrets: &str) -> anyhow::Result<Vec<Webhook>> {
    secrets
        .split(',')
        .map(str::trim)
        .enumerate()
        .map(|(i, secret)| {
            let position = i + 1;
            let encoded = secret.strip_prefix("whsec_").ok_or_else(|| {
                anyhow::anyhow!("--signing-secret {position} must look like whsec_<base64>")
            })?;
            anyhow::ensure!(
                !encoded.is_empty(),
                "--signing-secret {position} is empty after whsec_"
            );
            Webhook::new(secret).map_err(|_| {
                anyhow::anyhow!("--signing-secret {position} is not valid base64 after whsec_")
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_parse_and_errors_never_show_them() {
        assert_eq!(
            parse_secrets("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            parse_secrets("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD, whsec_AAAA")
                .unwrap()
                .len(),
            2
        );
        for bad in ["", "AAAA", "whsec_", "whsec_%%secret%%", "whsec_AAAA,"] {
            let error = parse_secrets(bad).err().unwrap().to_string();
            assert!(error.starts_with("--signing-secret"), "{bad}: {error}");
            assert!(!error.contains("%%secret%%"), "{error}");
        }
    }

    #[test]
    fn targets_check_url_and_prefix() {
        let ok = Target::from_args(&CheckArgs::new("http://127.0.0.1:4000/")).unwrap();
        assert_eq!(ok.base_url, "http://127.0.0.1:4000");
        for bad_url in ["127.0.0.1:4000", "ftp://x", "not a url"] {
            assert!(
                Target::from_args(&CheckArgs::new(bad_url)).is_err(),
                "{bad_url}"
            );
        }
        let mut args = CheckArgs::new("http://127.0.0.1:4000");
        args.user_prefix = "p".repeat(20);
        assert!(Target::from_args(&args).is_ok());
        args.user_prefix = "p".repeat(21);
        assert!(Target::from_args(&args).is_err());
        args.user_prefix = "a/b".into();
        assert!(Target::from_args(&args).is_err());
    }

    #[test]
    fn debug_hides_the_secrets() {
        let mut args = CheckArgs::new("http://127.0.0.1:4000");
        args.token = Some("bearer-value".into());
        args.signing_secret = Some("whsec_secretvalue".into());
        let shown = format!("{args:?}");
        assert!(!shown.contains("bearer-value") && !shown.contains("secretvalue"));
    }
}
