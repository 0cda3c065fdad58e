//! `tokenwarden risc register | status | verify` (docs/contract.md section 10), the real binary
//! against the sandbox Google's RISC API with a generated service-account key file: the
//! registration the sandbox records, the status line, the verification SET reaching a receiver; and
//! the one-line errors for a missing, malformed or unusable key file and for the API's refusals,
//! none of which shows the key.

use std::{
    path::Path,
    process::{Command, Output},
    sync::{Arc, Mutex},
};

use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::any};
use serde_json::{Value, json};
use tokenwarden_sandbox::{SandboxGoogle, SandboxGoogleConfig, bind_loopback};

use crate::process::tokenwarden;

const EMAIL: &str = "tokenwarden-risc@tw-test.iam.gserviceaccount.com";
const VERIFICATION: &str = "https://schemas.openid.net/secevent/risc/event-type/verification";

/// A loopback server answering every request with `status` and `body`, recording bodies.
async fn answering(status: u16, body: Value) -> (String, Arc<Mutex<Vec<String>>>) {
    type Shared = (Arc<Mutex<Vec<String>>>, u16, Value);
    async fn take(
        State((got, status, body)): State<Shared>,
        request: Bytes,
    ) -> (StatusCode, axum::Json<Value>) {
        got.lock()
            .unwrap()
            .push(String::from_utf8_lossy(&request).into_owned());
        (StatusCode::from_u16(status).unwrap(), axum::Json(body))
    }
    let got = Arc::new(Mutex::new(Vec::new()));
    let listener = bind_loopback().await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new()
        .fallback(any(take))
        .with_state((got.clone(), status, body));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

async fn sandbox() -> SandboxGoogle {
    let config = SandboxGoogleConfig {
        client_id: Some(crate::support::CLIENT_ID.into()),
        ..Default::default()
    };
    SandboxGoogle::start(config, bind_loopback().await.unwrap())
        .await
        .unwrap()
}

/// Runs `tokenwarden risc <args>` off the runtime (the sandbox serves on it meanwhile).
async fn risc(dir: &Path, api_url: &str, key_file: Option<&Path>, args: &[&str]) -> Output {
    let mut command: Command = tokenwarden(dir);
    command
        .arg("risc")
        .args(args)
        .env("GOOGLE_RISC_API_URL", api_url);
    if let Some(path) = key_file {
        command.env("GOOGLE_RISC_SERVICE_ACCOUNT_KEY", path);
    }
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The one error line of a failed run, checked to show no key material.
fn error_line(output: &Output) -> String {
    assert!(!output.status.success(), "{output:?}");
    assert!(output.stdout.is_empty(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        !stderr.contains("PRIVATE KEY") && !stderr.contains("MII"),
        "{stderr}"
    );
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_status_and_verify_drive_the_sandbox_risc_api() {
    let dir = tempfile::tempdir().unwrap();
    let google = sandbox().await;
    let account = google.create_risc_service_account(EMAIL).await.unwrap();
    let key_file = dir.path().join("sa.json");
    std::fs::write(&key_file, account.to_json()).unwrap();
    let (receiver, received) = answering(202, json!({})).await;
    let receiver_url = format!("{receiver}/api/integrations/google/risc");
    let api = google.risc_api_url();

    let output = risc(dir.path(), &api, Some(&key_file), &["status"]).await;
    assert!(
        error_line(&output).contains("404"),
        "nothing registered yet"
    );

    let register = ["register", "--receiver-url", receiver_url.as_str()];
    let output = risc(dir.path(), &api, Some(&key_file), &register).await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        stdout(&output),
        format!("registered {receiver_url} for 7 event types")
    );
    let stream = google.risc_stream().unwrap();
    assert_eq!(stream.delivery.url, receiver_url);
    assert_eq!(
        stream.delivery.delivery_method,
        tokenwarden_sandbox::google::PUSH_DELIVERY
    );
    let mut requested = stream.events_requested.clone();
    requested.sort();
    let mut expected: Vec<String> = tokenwarden::risc_cli::EVENTS_REQUESTED
        .iter()
        .map(|e| e.to_string())
        .collect();
    expected.sort();
    assert_eq!(requested, expected);

    let output = risc(dir.path(), &api, Some(&key_file), &["status"]).await;
    assert_eq!(
        stdout(&output),
        format!("receiver {receiver_url}, 7 event types requested")
    );

    let verify = ["verify", "--state", "cli-state-1"];
    let output = risc(dir.path(), &api, Some(&key_file), &verify).await;
    assert!(output.status.success(), "{output:?}");
    assert!(stdout(&output).contains("cli-state-1"), "{output:?}");
    let bodies = received.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1);
    let claims: Value = jsonwebtoken::dangerous::insecure_decode(&bodies[0])
        .unwrap()
        .claims;
    assert_eq!(
        claims["events"][VERIFICATION],
        json!({"state": "cli-state-1"})
    );
    assert_eq!(claims["aud"], json!(crate::support::CLIENT_ID));

    // Without --state a random one is sent, and printed.
    let output = risc(dir.path(), &api, Some(&key_file), &["verify"]).await;
    let line = stdout(&output);
    let state = line
        .split_whitespace()
        .find(|w| w.starts_with("tokenwarden-"))
        .unwrap()
        .trim_end_matches(':');
    let bodies = received.lock().unwrap().clone();
    let claims: Value = jsonwebtoken::dangerous::insecure_decode(&bodies[1])
        .unwrap()
        .claims;
    assert_eq!(claims["events"][VERIFICATION]["state"], json!(state));
    assert_eq!(google.risc_sent()[1].status, Some(202));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_file_and_api_errors_are_one_line_without_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let google = sandbox().await;
    let api = google.risc_api_url();
    let account = google.create_risc_service_account(EMAIL).await.unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };

    let output = risc(dir.path(), &api, None, &["status"]).await;
    assert!(error_line(&output).contains("GOOGLE_RISC_SERVICE_ACCOUNT_KEY is not set"));

    let missing = dir.path().join("missing.json");
    let output = risc(dir.path(), &api, Some(&missing), &["status"]).await;
    let line = error_line(&output);
    assert!(
        line.contains("cannot read the service account key file") && line.contains("missing.json"),
        "{line}"
    );

    let half = write("half.json", &account.to_json()[..200]);
    let line = error_line(&risc(dir.path(), &api, Some(&half), &["status"]).await);
    assert!(
        line.contains("half.json is not a service account JSON key file"),
        "{line}"
    );

    let mut other = serde_json::to_value(&account).unwrap();
    other["type"] = json!("authorized_user");
    let wrong_type = write("user.json", &other.to_string());
    let line = error_line(&risc(dir.path(), &api, Some(&wrong_type), &["status"]).await);
    assert!(line.contains("its type is not service_account"), "{line}");

    let mut other = serde_json::to_value(&account).unwrap();
    other["private_key"] =
        json!("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n");
    let not_rsa = write("not-rsa.json", &other.to_string());
    let line = error_line(&risc(dir.path(), &api, Some(&not_rsa), &["status"]).await);
    assert!(line.contains("is not a PEM RSA private key"), "{line}");

    // A well-formed key file of an account the API does not know: 401.
    let mut stranger = serde_json::to_value(&account).unwrap();
    stranger["client_email"] = json!("stranger@elsewhere.iam.gserviceaccount.com");
    let stranger = write("stranger.json", &stranger.to_string());
    let line = error_line(&risc(dir.path(), &api, Some(&stranger), &["status"]).await);
    assert!(
        line.contains("refused the service account's credentials (401 UNAUTHENTICATED"),
        "{line}"
    );

    let good = write("sa.json", &account.to_json());
    let register = ["register", "--receiver-url", "not a url"];
    let line = error_line(&risc(dir.path(), &api, Some(&good), &register).await);
    assert!(
        line.contains("--receiver-url must be an http or https URL"),
        "{line}"
    );

    let google_error = json!({"error": {"code": 503, "message": "The service is\nunavailable.", "status": "UNAVAILABLE"}});
    let (failing, _) = answering(503, google_error).await;
    let line = error_line(&risc(dir.path(), &failing, Some(&good), &["status"]).await);
    assert!(
        line.contains("the RISC API failed (503 UNAVAILABLE: The service is unavailable.)"),
        "{line}"
    );
    let (refusing, _) = answering(
        400,
        json!({"error": {"code": 400, "message": "Bad.", "status": "INVALID_ARGUMENT"}}),
    )
    .await;
    let line = error_line(&risc(dir.path(), &refusing, Some(&good), &["verify"]).await);
    assert!(
        line.contains("refused the request (400 INVALID_ARGUMENT: Bad.)"),
        "{line}"
    );

    let line = error_line(&risc(dir.path(), "http://127.0.0.1:9", Some(&good), &["status"]).await);
    assert!(
        line.contains("cannot reach the RISC API at http://127.0.0.1:9"),
        "{line}"
    );
    let line = error_line(&risc(dir.path(), "ftp://x", Some(&good), &["status"]).await);
    assert!(line.contains("GOOGLE_RISC_API_URL is malformed"), "{line}");
}

/// The whole registration against the service itself: `register` names the service's
/// receiver, `verify` makes the sandbox send a verification SET, and the service records and
/// logs it with its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reaches_the_services_receiver_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let t = crate::support::TestApp::spawn().await;
    let account = t.google.create_risc_service_account(EMAIL).await.unwrap();
    let key_file = dir.path().join("sa.json");
    std::fs::write(&key_file, account.to_json()).unwrap();
    let api = t.google.risc_api_url();
    let receiver_url = format!("{}/api/integrations/google/risc", t.url);
    let register = ["register", "--receiver-url", receiver_url.as_str()];
    let output = risc(dir.path(), &api, Some(&key_file), &register).await;
    assert!(output.status.success(), "{output:?}");
    let verify = ["verify", "--state", "state-for-the-service"];
    let output = risc(dir.path(), &api, Some(&key_file), &verify).await;
    assert!(
        output.status.success(),
        "the service accepted it: {output:?}"
    );
    let logged = crate::support::eventually(std::time::Duration::from_secs(2), || async {
        !crate::support::log_lines_with(&["security event from Google", "state-for-the-service"])
            .is_empty()
    })
    .await;
    assert!(logged, "the verification is logged with its state");
    // Counted after the outcome is recorded, which follows the log line.
    let counted = || {
        t.app().metrics.render().lines().any(|l| {
            l.starts_with("tokenwarden_risc_events_total")
                && l.contains("type=\"verification\"")
                && l.contains("outcome=\"no_user\"")
                && l.ends_with(" 1")
        })
    };
    let counted =
        crate::support::eventually(std::time::Duration::from_secs(2), || async { counted() }).await;
    assert!(counted, "{}", t.app().metrics.render());
    t.shutdown().await;
}
