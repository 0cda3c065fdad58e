//! PostgreSQL unreachable (docs/contract.md section 8): a node stops acting for shards whose leases
//! it cannot renew, and resumes without a duplicate refresh when the database is back. The node is
//! a real `serve` process whose only way to the database is a TCP proxy on loopback that the
//! test cuts (every connection closed, new ones refused) for longer than the lease TTL.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};
use tokenwarden_sandbox::bind_loopback;
use tokio::{net::TcpStream, task::AbortHandle};

use crate::{
    process::{Served, client, connect_at, free_port, sandboxes},
    support::{Backend, ENCRYPTION_KEY, TestDatabase, eventually},
};

/// A TCP proxy to PostgreSQL that can be cut and restored.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = bind_loopback().await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let links: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (cut2, links2) = (cut.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if cut2.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                links2.lock().unwrap().push(task.abort_handle());
            }
        });
        Self { port, cut, links }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// `user_id -> (token_version, refresh_count)` as the database holds them.
async fn rows(url: &str) -> HashMap<String, (i64, i64)> {
    let db = Database::connect(url).await.unwrap();
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT user_id, token_version, refresh_count FROM users",
        ))
        .await
        .unwrap();
    let _ = db.close().await;
    rows.into_iter()
        .map(|r| {
            let id: String = r.try_get("", "user_id").unwrap();
            let version: i64 = r.try_get("", "token_version").unwrap();
            let count: i64 = r.try_get("", "refresh_count").unwrap();
            (id, (version, count))
        })
        .collect()
}

async fn metric(url: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_stops_the_node_and_it_resumes_without_a_duplicate_refresh() {
    if !crate::support::postgres_available().await {
        eprintln!("skipped: PostgreSQL is not available");
        return;
    }
    let (google, microservice) = sandboxes(Duration::from_secs(8)).await;
    // Rotation without grace: a refresh token used twice (a duplicate refresh for one due
    // time) would be refused and counted.
    google.set_rotation(true, Duration::ZERO);
    let db = TestDatabase::create(Backend::Postgres).await;
    let mut proxied = url::Url::parse(&db.url).unwrap();
    let proxy = Proxy::start(format!(
        "{}:{}",
        proxied.host_str().unwrap(),
        proxied.port().unwrap_or(5432)
    ))
    .await;
    proxied.set_host(Some("127.0.0.1")).unwrap();
    proxied.set_port(Some(proxy.port)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(
        dir.path(),
        free_port().await,
        proxied.as_str(),
        ENCRYPTION_KEY,
        &google,
        &microservice,
        &[
            ("CLUSTER_LEASE_TTL_SECS", "3".into()),
            ("REFRESH_LEAD_SECS", "4".into()),
            ("NODE_ID", "solo".into()),
        ],
    )
    .await;
    let users: Vec<String> = (0..8).map(|i| format!("outage-{i}")).collect();
    let http = client();
    for user in &users {
        connect_at(&http, &served.url, user).await;
    }
    let refreshing = eventually(Duration::from_secs(20), || async {
        let rows = rows(&db.url).await;
        users
            .iter()
            .all(|u| rows.get(u).is_some_and(|(_, n)| *n >= 1))
    })
    .await;
    assert!(refreshing, "every user refreshed once before the outage");

    proxy.cut();
    let before = rows(&db.url).await;
    // Longer than the lease TTL: the lease is no longer valid by the node's clock.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let ready = reqwest::get(format!("{}/readyz", served.url))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "not ready without its database");
    let during = rows(&db.url).await;
    assert_eq!(before, during, "nothing was written during the outage");
    proxy.restore();

    // Back: every user refreshes again, and the microservice catches up with the database.
    let resumed = eventually(Duration::from_secs(30), || async {
        let rows = rows(&db.url).await;
        let mut all = true;
        for user in &users {
            let (version, count) = rows[user];
            let pushed = microservice.token_version(user).await.unwrap();
            all &= count > before[user].1 && pushed == Some(version as u64);
        }
        all
    })
    .await;
    let stats = google.stats();
    assert!(
        resumed,
        "every user refreshed and pushed after the outage: {stats:?}\n{}",
        served.output()
    );
    assert_eq!(
        (stats.superseded_refresh_uses, stats.stale_refresh_uses),
        (0, 0),
        "no refresh token was used twice: {stats:?}"
    );
    assert!(
        metric(&served.url, "tokenwarden_cluster_lease_skips_total").await > 0.0,
        "refreshes due during the outage waited for the lease"
    );
    let ready = reqwest::get(format!("{}/readyz", served.url))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}
