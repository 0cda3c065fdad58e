//! A small load test in the suite: about a thousand users for thirty seconds with short
//! lifetimes, against the real binary. Only correctness figures are asserted; speed is for
//! BENCHMARKS.md.

use std::path::PathBuf;

use tokenwarden_loadtest::{LoadtestArgs, run};

/// The service's binary, which the workspace's test run builds for the root package's own
/// tests: it sits in the target directory, one level above this test's `deps/`.
fn service_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("tokenwarden"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} is missing: run the workspace's tests (cargo nextest run --workspace)",
        bin.display()
    );
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_users_for_thirty_seconds_stay_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let args = LoadtestArgs {
        users: 1000,
        connect_users: 20,
        connect_rate: 10,
        connect_workers: 32,
        duration_secs: 30,
        token_lifetime_secs: 20,
        refresh_lead_secs: 10,
        refresh_jitter_secs: 1,
        database_url: None,
        microservice_latency_ms: 0,
        google_latency_ms: 0,
        google_error_rate: 0.0,
        rotate: true,
        refresh_concurrency: 64,
        sync_concurrency: 64,
        hibernate_after_secs: 5,
        report: dir.path().join("report.json"),
        chart: dir.path().join("chart.svg"),
        service_bin: Some(service_bin()),
        quiet: true,
        nodes: 1,
        lease_ttl_secs: None,
        app_events: false,
        app_events_backlog: 0,
        app_events_drain_timeout_secs: 60,
        floor_count: 400,
        floor_probe_bin: Some(env!("CARGO_BIN_EXE_tokenwarden-loadtest").into()),
    };
    let report = run(args).await.expect("load test runs");
    eprintln!("{}", report.table());
    assert_eq!(report.actors_listed, 1020, "every user has its actor");
    assert_eq!(report.connected_through_callback, 20);
    assert_eq!(
        report.expired_before_refresh, 0,
        "no token expired before its refresh"
    );
    assert_eq!(report.expired_at_end, 0);
    assert_eq!(
        report.stale_at_microservice, 0,
        "the microservice holds every latest token"
    );
    assert_eq!(
        report.never_refreshed, 0,
        "every seeded user refreshed at least once"
    );
    assert!(report.refreshes >= 2000.0, "{} refreshes", report.refreshes);
    let floor = report.floor.as_ref().expect("the floor was measured");
    assert!(
        floor.http_outbound_us > 0.0 && floor.http_inbound_us > 0.0 && floor.sqlite_commit_us > 0.0,
        "{floor:?}"
    );
    assert!(
        report.cpu_per_refresh_exchange_units.is_none(),
        "a mixed run has no split"
    );
    assert!(dir.path().join("report.json").exists() && dir.path().join("chart.svg").exists());
}

/// Events to the app stored for every user while the app is down arrive once it is back:
/// none lost, each user's in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_events_to_the_app_arrives_whole_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let args = LoadtestArgs {
        users: 300,
        connect_users: 0,
        connect_rate: 10,
        connect_workers: 32,
        duration_secs: 3,
        token_lifetime_secs: 3600,
        refresh_lead_secs: 60,
        refresh_jitter_secs: 0,
        database_url: None,
        microservice_latency_ms: 0,
        google_latency_ms: 0,
        google_error_rate: 0.0,
        rotate: false,
        refresh_concurrency: 64,
        sync_concurrency: 64,
        hibernate_after_secs: 5,
        report: dir.path().join("report.json"),
        chart: dir.path().join("chart.svg"),
        service_bin: Some(service_bin()),
        quiet: true,
        nodes: 1,
        lease_ttl_secs: None,
        app_events: false,
        app_events_backlog: 3,
        app_events_drain_timeout_secs: 60,
        floor_count: 0,
        floor_probe_bin: None,
    };
    let report = run(args).await.expect("load test runs");
    eprintln!("{}", report.table());
    let events = report.app_events.expect("backlog figures");
    assert_eq!(events.events_stored, 900);
    assert!(events.failed_attempts_while_down >= 300.0, "{events:?}");
    assert_eq!(
        (
            events.delivered,
            events.lost,
            events.out_of_order,
            events.pending_at_end
        ),
        (900, 0, 0, 0),
        "{events:?}"
    );
}
