//! `tokenwarden risc register | status | verify`: registering this service's SET receiver
//! with Google's RISC API (docs/contract.md section 10), reading the registration back, and asking
//! Google for a verification event.
//!
//! Google authenticates these calls with a JWT the caller signs itself with a service
//! account's key (no OAuth token exchange): RS256, `kid` = the key file's `private_key_id`,
//! `iss` = `sub` = its `client_email`, the RISC API's audience, one hour of validity. The key
//! file's PEM is parsed with the `rsa` crate and the JWT made by `jsonwebtoken`. Each command
//! prints one line; every failure is one line too, and none ever shows the key.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, anyhow, bail};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs8::DecodePrivateKey;
use rsa::{RsaPrivateKey, pkcs1::DecodeRsaPrivateKey, pkcs1::EncodeRsaPrivateKey};
use serde::Deserialize;
use serde_json::{Value, json};

/// The audience Google's RISC API requires.
const AUDIENCE: &str =
    "https://risc.googleapis.com/google.identity.risc.v1beta.RiscManagementService";

/// The only delivery method Google offers.
const PUSH: &str = "https://schemas.openid.net/secevent/risc/delivery-method/push";

/// The events `register` requests: docs/contract.md section 10's table.
pub const EVENTS_REQUESTED: [&str; 7] = [
    "https://schemas.openid.net/secevent/oauth/event-type/tokens-revoked",
    "https://schemas.openid.net/secevent/oauth/event-type/token-revoked",
    "https://schemas.openid.net/secevent/risc/event-type/account-disabled",
    "https://schemas.openid.net/secevent/risc/event-type/sessions-revoked",
    "https://schemas.openid.net/secevent/risc/event-type/account-enabled",
    "https://schemas.openid.net/secevent/risc/event-type/account-credential-change-required",
    "https://schemas.openid.net/secevent/risc/event-type/verification",
];

/// `tokenwarden risc`. No `Debug`: nothing here should ever be printed whole.
#[derive(clap::Args)]
pub struct RiscArgs {
    #[command(subcommand)]
    pub command: RiscCommand,
    /// Base URL of Google's RISC API (the sandbox Google's base URL to try it locally)
    #[arg(
        long,
        env = "GOOGLE_RISC_API_URL",
        default_value = "https://risc.googleapis.com",
        global = true
    )]
    pub api_url: String,
    /// Path of the service account's JSON key file (as the Cloud console downloads it)
    #[arg(long, env = "GOOGLE_RISC_SERVICE_ACCOUNT_KEY", global = true)]
    pub service_account_key: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
pub enum RiscCommand {
    /// Register (or replace) the receiver of Google's security events, requesting every event
    /// type this service acts on.
    Register {
        /// Where Google should POST the SETs: this service's
        /// `/api/integrations/google/risc`, reachable from the internet over HTTPS.
        #[arg(long)]
        receiver_url: String,
    },
    /// Show the registered receiver and the events requested.
    Status,
    /// Ask Google to send a verification event to the registered receiver.
    Verify {
        /// The state the verification event carries (random when not given).
        #[arg(long)]
        state: Option<String>,
    },
}

/// The fields of a service-account key file this command reads.
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: String,
    private_key_id: String,
    private_key: String,
    client_email: String,
}

/// Runs one `risc` subcommand and prints its one line.
pub async fn run(args: RiscArgs) -> anyhow::Result<()> {
    let line = execute(args).await?;
    println!("{line}");
    Ok(())
}

/// Runs one `risc` subcommand and returns the line to print.
pub async fn execute(args: RiscArgs) -> anyhow::Result<String> {
    let api = api_base(&args.api_url)?;
    let path = args.service_account_key.ok_or_else(|| {
        anyhow!("GOOGLE_RISC_SERVICE_ACCOUNT_KEY is not set (the service account's JSON key file)")
    })?;
    let token = api_token(&load_key_file(&path)?, &path)?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let call = |request: reqwest::RequestBuilder| async {
        let response = request.bearer_auth(&token).send().await.map_err(|e| {
            // The causes say why (refused, timed out, TLS); reqwest's own line does not.
            let why = format!("{:#}", anyhow::Error::new(e));
            anyhow!("cannot reach the RISC API at {api}: {}", one_line(&why))
        })?;
        answer(response).await
    };
    match args.command {
        RiscCommand::Register { receiver_url } => {
            let parsed = url::Url::parse(&receiver_url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| anyhow!("--receiver-url must be an http or https URL"))?;
            let body = json!({
                "delivery": {"delivery_method": PUSH, "url": parsed.as_str()},
                "events_requested": EVENTS_REQUESTED,
            });
            call(
                client
                    .post(format!("{api}/v1beta/stream:update"))
                    .json(&body),
            )
            .await?;
            Ok(format!(
                "registered {parsed} for {} event types",
                EVENTS_REQUESTED.len()
            ))
        }
        RiscCommand::Status => {
            let stream = call(client.get(format!("{api}/v1beta/stream"))).await?;
            let url = stream["delivery"]["url"].as_str().unwrap_or("(none)");
            let requested = stream["events_requested"].as_array().map_or(0, Vec::len);
            let missing = EVENTS_REQUESTED
                .iter()
                .filter(|e| {
                    !stream["events_requested"]
                        .as_array()
                        .is_some_and(|a| a.contains(&json!(e)))
                })
                .count();
            let note = if missing == 0 {
                String::new()
            } else {
                format!(" ({missing} of this service's event types not requested: run register)")
            };
            Ok(format!(
                "receiver {url}, {requested} event types requested{note}"
            ))
        }
        RiscCommand::Verify { state } => {
            let state = state.unwrap_or_else(random_state);
            let body = json!({"state": state});
            call(
                client
                    .post(format!("{api}/v1beta/stream:verify"))
                    .json(&body),
            )
            .await?;
            Ok(format!(
                "verification requested with state {state}: the receiver records it as a verification event"
            ))
        }
    }
}

/// The API's base URL without a trailing slash.
fn api_base(url: &str) -> anyhow::Result<String> {
    let parsed = url::Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| {
            anyhow!("GOOGLE_RISC_API_URL is malformed: it must be an http or https URL")
        })?;
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
}

/// Reads and checks the key file. Errors name the file and what is wrong, never its content.
fn load_key_file(path: &Path) -> anyhow::Result<KeyFile> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the service account key file {shown} (GOOGLE_RISC_SERVICE_ACCOUNT_KEY)"
        )
    })?;
    let file: KeyFile = serde_json::from_str(&text).map_err(|e| {
        // Every field read is a string, so a data error can only quote a non-string value,
        // never the key; a syntax error is reported by position alone.
        let what = if e.is_data() {
            e.to_string()
        } else {
            format!("not JSON (line {}, column {})", e.line(), e.column())
        };
        anyhow!("{shown} is not a service account JSON key file: {what}")
    })?;
    if file.kind != "service_account" {
        bail!("{shown} is not a service account JSON key file: its type is not service_account");
    }
    Ok(file)
}

/// The bearer JWT Google's RISC API asks for.
fn api_token(file: &KeyFile, path: &Path) -> anyhow::Result<String> {
    let shown = path.display();
    let key = RsaPrivateKey::from_pkcs8_pem(&file.private_key)
        .or_else(|_| RsaPrivateKey::from_pkcs1_pem(&file.private_key))
        .map_err(|_| anyhow!("the private_key of {shown} is not a PEM RSA private key"))?;
    // jsonwebtoken's RSA signer takes PKCS#1 DER; the rsa crate converts.
    let der = key
        .to_pkcs1_der()
        .map_err(|_| anyhow!("the private_key of {shown} cannot be used"))?;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(file.private_key_id.clone());
    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "iss": file.client_email,
        "sub": file.client_email,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 3600,
    });
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_der(der.as_bytes()))
        .map_err(|e| anyhow!("cannot sign the RISC API token: {e}"))
}

/// The JSON of a 2xx answer; any other answer as one line naming its status and Google's
/// message.
async fn answer(response: reqwest::Response) -> anyhow::Result<Value> {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(body);
    }
    let error = &body["error"];
    let detail = match (error["status"].as_str(), error["message"].as_str()) {
        (Some(code), Some(message)) => {
            format!("{} {code}: {}", status.as_u16(), one_line(&message))
        }
        (None, Some(message)) => format!("{}: {}", status.as_u16(), one_line(&message)),
        _ => status.to_string(),
    };
    Err(match status.as_u16() {
        401 | 403 => anyhow!("the RISC API refused the service account's credentials ({detail})"),
        400..=499 => anyhow!("the RISC API refused the request ({detail})"),
        _ => anyhow!("the RISC API failed ({detail})"),
    })
}

/// `text` on one line, at most 300 characters.
fn one_line(text: &impl ToString) -> String {
    let text = text
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    match text.char_indices().nth(300) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text,
    }
}

fn random_state() -> String {
    use rand::Rng;
    let suffix: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(16)
        .map(char::from)
        .collect();
    format!("tokenwarden-{suffix}")
}
