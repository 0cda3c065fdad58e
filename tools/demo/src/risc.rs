//! The demo's RISC side (docs/contract.md section 10): the sandbox Google is the transmitter of
//! security events, registered to the service's receiver as an operator registers it with Google's
//! RISC API (a service account's key file, a self-signed JWT, `stream:update`), and the page's
//! "Google revokes this grant" makes it send `tokens-revoked` for the connected user's account.
//! The service then ends the grant (`security_event`), DELETEs the microservice's copy and
//! tells the app, all of which the page already shows.

use std::sync::Arc;

use axum::{Json, extract::State, response::Response};
use serde_json::{Value, json};
use tokenwarden_sandbox::{
    GrantSelector, RiscEvent, SandboxGoogle, SetOptions,
    google::{PUSH_DELIVERY, SUPPORTED_EVENTS},
};

use crate::routes::{Demo, UserParam, answer, connected_email};

/// The service account the demo registers the stream as.
const SERVICE_ACCOUNT: &str = "tokenwarden-demo@sandbox-project.iam.gserviceaccount.com";

/// `<service>/api/integrations/google/risc`.
pub(crate) fn receiver_url(service_url: &str) -> String {
    format!("{service_url}/api/integrations/google/risc")
}

/// Registers the service's receiver with the sandbox's RISC API for every event the contract
/// knows, as `tokenwarden risc register` does against Google. It also makes the transmitter's
/// signing key, so the first press of the button does not wait for it (a 2048-bit key takes
/// seconds in a debug build).
pub(crate) async fn register_stream(
    google: &SandboxGoogle,
    http: &reqwest::Client,
    receiver: &str,
) -> anyhow::Result<()> {
    google.risc_key_id().await?;
    let account = google.create_risc_service_account(SERVICE_ACCOUNT).await?;
    let response = http
        .post(format!("{}/v1beta/stream:update", google.risc_api_url()))
        .bearer_auth(account.risc_api_token()?)
        .json(&json!({
            "delivery": {"delivery_method": PUSH_DELIVERY, "url": receiver},
            "events_requested": SUPPORTED_EVENTS,
        }))
        .send()
        .await?;
    let status = response.status();
    anyhow::ensure!(
        status.is_success(),
        "stream:update answered {status}: {}",
        response.text().await.unwrap_or_default()
    );
    Ok(())
}

/// `POST /demo/google-revokes` `{"user_id"}`: the sandbox Google sends `tokens-revoked` for
/// the account the user connected (its `sub`), through the registered stream; straight to the
/// receiver should the registration not be done yet (it runs in the background at start).
pub(crate) async fn google_revokes(
    State(demo): State<Arc<Demo>>,
    Json(p): Json<UserParam>,
) -> Response {
    answer(
        async {
            let email = connected_email(&demo, &p.user_id).await?;
            let grant = demo
                .google
                .grant(&GrantSelector::Email(email.to_string()))
                .ok_or_else(|| anyhow::anyhow!("the sandbox has no grant for {email}"))?;
            let url = demo
                .google
                .risc_stream()
                .is_none()
                .then(|| receiver_url(&demo.service_url));
            let sent = demo
                .google
                .send_risc_event(
                    RiscEvent::TokensRevoked {
                        sub: grant.sub.clone(),
                    },
                    SetOptions {
                        url,
                        ..SetOptions::default()
                    },
                )
                .await?;
            let answered = sent
                .status
                .map_or_else(|| sent.error.clone().unwrap_or_default(), |s| s.to_string());
            anyhow::ensure!(
                sent.accepted(),
                "the receiver refused the SET: {answered} {}",
                sent.response_body
            );
            Ok(json!({
                "message": format!(
                    "Google sent tokens-revoked for account {} (jti {}); the receiver answered {answered}",
                    grant.sub, sent.jti
                ),
                "jti": sent.jti,
                "sub": grant.sub,
            }) as Value)
        }
        .await,
    )
}
