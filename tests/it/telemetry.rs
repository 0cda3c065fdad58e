//! Traces and logs: an in-process OTLP/HTTP (JSON) receiver collects the service's spans over
//! loopback; a connect, a refresh and a disconnect must tell their story in joined traces, with
//! no token anywhere, and JSON log lines must carry the trace ids.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, routing::post};
use reqwest::Method;
use serde_json::Value;
use tokenwarden::{
    config::LogFormat,
    telemetry::{OtlpProtocol, TelemetryConfig},
};

use crate::support::{Options, TestApp, eventually, init_telemetry, location, logs};

/// One exported span, flattened out of the OTLP JSON.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: Vec<(String, Value)>,
    raw: String,
}

impl Span {
    fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
    fn attr_str(&self, key: &str) -> Option<String> {
        self.attr(key).and_then(|v| {
            v.get("stringValue")
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| {
                    v.get("intValue")
                        .map(|i| i.to_string().trim_matches('"').to_string())
                })
        })
    }
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

impl Receiver {
    async fn start() -> (Self, String) {
        let receiver = Self::default();
        let app = Router::new()
            .route("/v1/traces", post(collect))
            .with_state(receiver.clone());
        let listener = tokenwarden_sandbox::bind_loopback().await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    fn spans(&self) -> Vec<Span> {
        self.0.lock().unwrap().clone()
    }

    fn named(&self, name: &str) -> Vec<Span> {
        self.spans()
            .into_iter()
            .filter(|s| s.name == name)
            .collect()
    }
}

async fn collect(State(receiver): State<Receiver>, body: Bytes) -> &'static str {
    let request: Value = serde_json::from_slice(&body).expect("OTLP JSON");
    let mut spans = receiver.0.lock().unwrap();
    for resource in request["resourceSpans"].as_array().into_iter().flatten() {
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let attributes = span["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        (
                            a["key"].as_str().unwrap_or_default().to_string(),
                            a["value"].clone(),
                        )
                    })
                    .collect();
                spans.push(Span {
                    name: span["name"].as_str().unwrap_or_default().to_string(),
                    trace_id: span["traceId"].as_str().unwrap_or_default().to_string(),
                    span_id: span["spanId"].as_str().unwrap_or_default().to_string(),
                    parent_span_id: span["parentSpanId"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    attributes,
                    raw: span.to_string(),
                });
            }
        }
    }
    "{}"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refresh_and_disconnect_tell_their_story() {
    let (receiver, endpoint) = Receiver::start().await;
    let telemetry = init_telemetry(&TelemetryConfig {
        log_format: LogFormat::Json,
        otlp_endpoint: Some(endpoint),
        otlp_protocol: OtlpProtocol::HttpJson,
        service_name: "tokenwarden-test".into(),
        export_interval: Duration::from_millis(200),
    });
    let t = TestApp::spawn_with(Options::default()).await;
    t.connect("otel-user").await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            t.microservice.stored("otel-user").await.unwrap().is_some()
        })
        .await
    );
    let before = t.google.stats().refreshes;
    t.admin(Method::POST, "/admin/actors/otel-user/refresh")
        .await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            t.google.stats().refreshes > before
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            t.microservice
                .received()
                .iter()
                .filter(|r| r.method == "POST")
                .count()
                >= 2
        })
        .await
    );
    assert_eq!(t.disconnect("otel-user").await.0, 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            t.microservice.stored("otel-user").await.unwrap().is_none()
        })
        .await
    );

    let arrived = eventually(Duration::from_secs(10), || async {
        telemetry.flush();
        ["microservice.delete", "oauth.revoke", "actor.refresh"]
            .iter()
            .all(|n| !receiver.named(n).is_empty())
    })
    .await;
    assert!(
        arrived,
        "spans exported: {:?}",
        receiver.spans().iter().map(|s| &s.name).collect::<Vec<_>>()
    );

    // The callback's request span and everything it caused share one trace.
    let callback = receiver
        .named("GET /api/integrations/google/callback")
        .pop()
        .expect("callback request span");
    assert_eq!(
        callback.attr_str("http.route").as_deref(),
        Some("/api/integrations/google/callback")
    );
    assert_eq!(
        callback.attr_str("http.response.status_code").as_deref(),
        Some("302")
    );
    let in_callback_trace = |name: &str| {
        receiver
            .named(name)
            .into_iter()
            .filter(|s| s.trace_id == callback.trace_id)
            .collect::<Vec<_>>()
    };
    for name in [
        "oauth.exchange_code",
        "oauth.userinfo",
        "db.take_state",
        "db.save_connection",
        "microservice.sync",
        "reference_microservice.request",
    ] {
        let found = in_callback_trace(name);
        assert!(!found.is_empty(), "{name} in the callback's trace");
    }
    let sync = &in_callback_trace("microservice.sync")[0];
    assert_eq!(sync.attr_str("user.id").as_deref(), Some("otel-user"));
    assert_eq!(
        sync.attr_str("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(sync.attr_str("sync.attempt").as_deref(), Some("1"));
    let exchange = &in_callback_trace("oauth.exchange_code")[0];
    assert_eq!(
        exchange.parent_span_id, callback.span_id,
        "exchange is a child of the request"
    );

    // The microservice received a traceparent of that trace.
    let first_post = t
        .microservice
        .received()
        .into_iter()
        .find(|r| r.method == "POST")
        .unwrap();
    let traceparent = first_post.traceparent.expect("traceparent sent");
    assert_eq!(
        traceparent.split('-').nth(1),
        Some(callback.trace_id.as_str())
    );

    // A forced refresh is a root span of its own, with its reason, and its push joins it.
    let refresh = receiver
        .named("actor.refresh")
        .into_iter()
        .find(|s| s.attr_str("refresh.reason").as_deref() == Some("forced"))
        .expect("forced refresh span");
    assert!(refresh.parent_span_id.is_empty(), "root span");
    assert_eq!(refresh.attr_str("refresh.outcome").as_deref(), Some("ok"));
    let in_refresh = |name: &str| {
        receiver
            .named(name)
            .into_iter()
            .any(|s| s.trace_id == refresh.trace_id)
    };
    for name in ["oauth.refresh", "db.save_refreshed", "microservice.sync"] {
        assert!(in_refresh(name), "{name} in the refresh's trace");
    }
    assert!(!receiver.named("microservice.delete").is_empty());

    // No token value in any span.
    let tokens = t.google.issued_tokens();
    for span in receiver.spans() {
        for token in &tokens {
            assert!(
                !span.raw.contains(token.as_str()),
                "token in span {}",
                span.name
            );
        }
    }
    // JSON logs join the traces.
    let joined = logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .any(|l| {
            l["message"] == "Google Calendar connected"
                && l["trace_id"] == callback.trace_id.as_str()
        });
    assert!(joined, "log line carries the callback's trace id");
    for token in &tokens {
        assert!(!logs().contains(token.as_str()));
    }
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_exporter_blocks_nothing() {
    let dead = tokenwarden_sandbox::bind_loopback().await.unwrap();
    let endpoint = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let telemetry = init_telemetry(&TelemetryConfig {
        otlp_endpoint: Some(endpoint),
        otlp_protocol: OtlpProtocol::Grpc,
        export_interval: Duration::from_millis(100),
        ..Default::default()
    });
    let t = TestApp::spawn().await;
    let started = std::time::Instant::now();
    for user in ["dead-1", "dead-2", "dead-3"] {
        t.connect(user).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "connects were not slowed"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            t.microservice.stored_count().await.unwrap() == 3
        })
        .await
    );
    let started = std::time::Instant::now();
    telemetry.shutdown();
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "shutdown is bounded"
    );
    t.shutdown().await;
}

/// A request span names its method from the standard set or `other` (docs/reliability.md,
/// Security: High 2): an invented or 100 KB method must not reach span names and attributes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_carry_a_bounded_method() {
    let (receiver, endpoint) = Receiver::start().await;
    let telemetry = init_telemetry(&TelemetryConfig {
        log_format: LogFormat::Json,
        otlp_endpoint: Some(endpoint),
        otlp_protocol: OtlpProtocol::HttpJson,
        service_name: "tokenwarden-test".into(),
        export_interval: Duration::from_millis(200),
    });
    let t = TestApp::spawn_with(Options::default()).await;
    let long = "X".repeat(100_000);
    for (method, path) in [("FROBNICATE", "/healthz"), (long.as_str(), "/nowhere")] {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let _ = t
            .http
            .request(method, format!("{}{path}", t.url))
            .send()
            .await;
    }
    let arrived = eventually(Duration::from_secs(10), || async {
        telemetry.flush();
        !receiver.named("other /healthz").is_empty()
            && !receiver.named("other unmatched").is_empty()
    })
    .await;
    let names: Vec<String> = receiver
        .spans()
        .iter()
        .map(|s| s.name.chars().take(40).collect())
        .collect();
    assert!(
        arrived,
        "request spans named by a bounded method: {names:?}"
    );
    let span = &receiver.named("other /healthz")[0];
    assert_eq!(
        span.attr_str("http.request.method").as_deref(),
        Some("other")
    );
    assert_eq!(span.attr_str("http.route").as_deref(), Some("/healthz"));
    for span in receiver.spans() {
        assert!(
            !span.raw.contains("FROBNICATE") && !span.raw.contains(&long[..64]),
            "a request-chosen method in span {:.80}",
            span.name
        );
    }
    t.shutdown().await;
}

/// An unauthenticated request does not continue its caller's trace (issue 19): the callback
/// starts a trace of its own and links the caller's, so the caller's `traceparent` never
/// reaches the push. An authenticated route (disconnect, with the user's JWT) still continues
/// its caller's trace into the microservice's DELETE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_callers_trace_is_linked_not_continued() {
    let (receiver, endpoint) = Receiver::start().await;
    let telemetry = init_telemetry(&TelemetryConfig {
        otlp_endpoint: Some(endpoint),
        otlp_protocol: OtlpProtocol::HttpJson,
        export_interval: Duration::from_millis(200),
        ..Default::default()
    });
    let t = TestApp::spawn().await;
    let anonymous = "4bf92f3577b34da6a3ce929d0e0e4736";
    let auth_url = t.start_connect("linked-user").await;
    let consent = t.http.get(&auth_url).send().await.unwrap();
    let answer = t
        .http
        .get(location(&consent))
        .header("traceparent", format!("00-{anonymous}-00f067aa0ba902b7-01"))
        .header("tracestate", "caller=chosen")
        .send()
        .await
        .unwrap();
    assert!(location(&answer).ends_with("google=connected"));
    let push = |method: &'static str| {
        let received = t.microservice.received();
        async move { received.into_iter().find(|r| r.method == method) }
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            push("POST").await.is_some()
        })
        .await
    );
    let sent = push("POST")
        .await
        .unwrap()
        .traceparent
        .expect("traceparent sent");
    let sent_trace = sent.split('-').nth(1).unwrap().to_string();
    assert_ne!(
        sent_trace, anonymous,
        "the push continued an anonymous caller's trace"
    );

    // The callback's span is the root of that trace and links the caller's.
    let linked = eventually(Duration::from_secs(10), || async {
        telemetry.flush();
        !receiver
            .named("GET /api/integrations/google/callback")
            .is_empty()
    })
    .await;
    assert!(linked, "callback span exported");
    let callback = receiver
        .named("GET /api/integrations/google/callback")
        .pop()
        .unwrap();
    assert_eq!(callback.trace_id, sent_trace);
    assert!(callback.parent_span_id.is_empty(), "a root span");
    let span: Value = serde_json::from_str(&callback.raw).unwrap();
    assert_eq!(span["links"][0]["traceId"], anonymous, "{}", callback.raw);
    assert!(!callback.raw.contains("caller=chosen"), "{}", callback.raw);

    // A verified caller's trace is continued.
    let verified = "0af7651916cd43dd8448eb211c80319c";
    let response = t
        .http
        .delete(format!("{}/api/integrations/google", t.url))
        .bearer_auth(t.jwt("linked-user"))
        .header("traceparent", format!("00-{verified}-b7ad6b7169203331-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            push("DELETE").await.is_some()
        })
        .await
    );
    let deleted = push("DELETE")
        .await
        .unwrap()
        .traceparent
        .expect("traceparent sent");
    assert_eq!(deleted.split('-').nth(1), Some(verified));
    t.shutdown().await;
}
