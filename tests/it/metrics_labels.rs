//! `/metrics` stays bounded whatever clients send (docs/reliability.md, Security: High 2): invented
//! methods fold into `other` and unknown paths into `unmatched`, so a burst of junk requests
//! adds no series and does not grow the scrape.

use std::collections::BTreeSet;

use reqwest::Method;

use crate::support::TestApp;

const COUNT: &str = "tokenwarden_http_request_duration_seconds_count";

async fn scrape(t: &TestApp) -> String {
    t.metrics().await
}

/// The label sets of the HTTP duration histogram, one per series.
fn duration_series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix(COUNT))
        .filter_map(|rest| rest.split_once('}').map(|(labels, _)| labels.to_string()))
        .collect()
}

/// Whatever the server answers (405, 404, 400 or a closed connection) is fine here.
async fn send(t: &TestApp, method: Method, path: &str) {
    let _ = t
        .http
        .request(method, format!("{}{path}", t.url))
        .send()
        .await;
}

fn invented(name: &str) -> Method {
    Method::from_bytes(name.as_bytes()).unwrap()
}

#[tokio::test]
async fn junk_methods_and_paths_add_no_series() {
    let t = TestApp::spawn().await;
    // One request of each shape the burst sends, so that their bounded series exist before
    // the first scrape (and the scrape's own series too).
    send(&t, Method::GET, "/metrics").await;
    send(&t, invented("WARMUP"), "/healthz").await;
    send(&t, invented("WARMUP"), "/warmup").await;
    send(&t, Method::GET, "/warmup").await;
    let before = scrape(&t).await;

    let mut methods: Vec<Method> = (0..19).map(|i| invented(&format!("JUNK{i}"))).collect();
    methods.push(invented(&"X".repeat(100_000)));
    for (i, method) in methods.into_iter().enumerate() {
        send(&t, method.clone(), "/healthz").await;
        send(&t, method, &format!("/junk/{i}/{}", "p".repeat(i * 50))).await;
        send(&t, Method::GET, &format!("/junk-{i}")).await;
    }
    let after = scrape(&t).await;

    let (old, new) = (duration_series(&before), duration_series(&after));
    let added: Vec<&String> = new.difference(&old).collect();
    assert!(
        added.is_empty(),
        "junk requests added {} series, e.g. {:.200}",
        added.len(),
        added.first().map(|s| s.as_str()).unwrap_or_default()
    );
    // Only counts and sums change: a few bytes per line, nothing like a new series.
    assert!(
        after.len() < before.len() + 4096,
        "the scrape grew from {} to {} bytes",
        before.len(),
        after.len()
    );
    let standard = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "other",
    ];
    for labels in &new {
        assert!(
            standard
                .iter()
                .any(|m| labels.contains(&format!("method=\"{m}\""))),
            "{labels:.200}"
        );
    }
    assert!(
        new.iter().any(|l| l.contains("method=\"other\"")),
        "invented methods counted as other: {new:?}"
    );
    t.shutdown().await;
}
