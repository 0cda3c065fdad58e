//! The load test's results: the figures of the table, the time series sampled while
//! it ran, a printed table, `loadtest-report.json`, and an SVG chart.

use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

/// Picks one plotted value out of a sample.
type Pick = Box<dyn Fn(&Sample) -> Option<f64>>;

/// One sample, taken about every second.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the run phase started.
    pub t: f64,
    pub refreshes_per_sec: f64,
    /// p99 refresh lateness over the window since the previous sample, in seconds.
    pub lateness_p99: Option<f64>,
    pub rss_mib: f64,
    pub actors: u64,
    pub sync_queue_depth: f64,
}

/// One node's share of a multi-node run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct NodeFigures {
    /// Its `NODE_ID`.
    pub node_id: String,
    /// Its CPU time over the run phase (user + system, `/proc/<pid>/stat`).
    pub cpu_secs: f64,
    /// Refreshes it completed over the run phase (its `/metrics`).
    pub refreshes: f64,
    /// `total` of its `/admin/actors` at the end of the run phase.
    pub actors: u64,
    /// Its RSS once the sync queue has drained.
    pub rss_end_kib: u64,
    /// Shards it owns at the end, by `/admin/nodes`; absent on a build without clustering.
    pub shards: Option<u64>,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub date: String,
    pub machine: String,
    pub command: String,
    pub database: String,
    /// `serve` processes behind the tool's round-robin (`--nodes`).
    pub nodes: u64,
    pub users: u64,
    pub connected_through_callback: u64,
    pub duration_secs: u64,
    pub token_lifetime_secs: u64,
    pub refresh_lead_secs: u64,
    /// Seeding the database, the sandbox and the microservice (not the service's work).
    pub seed_secs: f64,
    /// From service start to `/readyz` answering 200 (every user loaded).
    pub load_secs: f64,
    /// RSS figures are summed over the nodes.
    pub rss_after_load_kib: u64,
    pub rss_end_kib: u64,
    /// RSS at the end divided by the users held.
    pub rss_per_user_bytes: f64,
    /// Sum over the nodes of `total` of `/admin/actors` (each node lists its own).
    pub actors_listed: u64,
    pub refreshes: f64,
    pub refreshes_per_sec_avg: f64,
    pub refreshes_per_sec_peak_10s: f64,
    pub refresh_failures: f64,
    pub refresh_lateness_p50_secs: Option<f64>,
    pub refresh_lateness_p99_secs: Option<f64>,
    pub sync_lag_p99_secs: Option<f64>,
    pub sync_failures: f64,
    pub callback_p50_ms: Option<f64>,
    pub callback_p99_ms: Option<f64>,
    /// Connects completed through the consent path while the run was sampled.
    pub connects_in_run: u64,
    /// The service processes' CPU time (user + system, `/proc/<pid>/stat`) over the run,
    /// summed over the nodes.
    pub service_cpu_secs: f64,
    /// `service_cpu_secs` per refresh, when the run did refreshes and no connects (so the CPU
    /// is theirs alone).
    pub cpu_ms_per_refresh: Option<f64>,
    /// `service_cpu_secs` per connect, when the run did connects and no refreshes.
    pub cpu_ms_per_connect: Option<f64>,
    /// Refreshes that came after the previous access token had expired (sandbox count).
    pub expired_before_refresh: u64,
    /// Users whose database token is expired at the end.
    pub expired_at_end: u64,
    /// Users for whom the microservice holds a different (older) token than the database.
    pub stale_at_microservice: u64,
    /// Of those, users whose latest change was still queued when the run stopped.
    pub stale_still_pending: u64,
    /// Users never refreshed during the run.
    pub never_refreshed: u64,
    /// PostgreSQL only: WAL written over the sampled run (the whole server's), and per refresh.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal_bytes_per_refresh: Option<f64>,
    /// The machine's floor, measured before the run (`floor`); absent with `--floor-count 0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor: Option<crate::Floor>,
    /// `cpu_ms_per_refresh` in exchange units of this run's floor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_per_refresh_exchange_units: Option<f64>,
    /// `cpu_ms_per_connect` in exchange units of this run's floor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_per_connect_exchange_units: Option<f64>,
    /// `cpu_ms_per_refresh` in commit units of the run's database (SQLite or PostgreSQL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_per_refresh_commit_units: Option<f64>,
    /// `cpu_ms_per_connect` in commit units of the run's database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_per_connect_commit_units: Option<f64>,
    /// PostgreSQL only: WAL, row updates and transactions over the sampled run, per refresh.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_cost: Option<crate::DatabaseCost>,
    /// `--app-events-backlog` runs only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_events: Option<crate::AppEventsFigures>,
    /// Per node, in node order; left out of the JSON for a single node (the totals say it all).
    #[serde(skip_serializing_if = "single")]
    pub per_node: Vec<NodeFigures>,
    pub samples: Vec<Sample>,
}

fn single(per_node: &[NodeFigures]) -> bool {
    per_node.len() <= 1
}

fn opt(v: Option<f64>, scale: f64, unit: &str) -> String {
    v.map_or("-".into(), |v| format!("{:.1} {unit}", v * scale))
}

/// The rows of a backlog run (`--app-events-backlog`).
fn app_event_rows(e: &crate::AppEventsFigures) -> Vec<(&'static str, String)> {
    vec![
        (
            "events to the app stored / users (the app down)",
            format!(
                "{} / {} (stored in {:.1} s)",
                e.events_stored, e.users_with_events, e.store_secs
            ),
        ),
        (
            "app down: for / failed attempts / service CPU",
            format!(
                "{:.0} s / {:.0} / {:.1} s",
                e.down_secs, e.failed_attempts_while_down, e.cpu_secs_down
            ),
        ),
        (
            "service RSS while the app was down, peak / at its end",
            format!(
                "{} MiB / {} MiB",
                e.rss_peak_down_kib / 1024,
                e.rss_end_of_down_kib / 1024
            ),
        ),
        (
            "delivery once back: all in / average / peak 10 s",
            format!(
                "{:.1} s / {:.0} /s / {:.0} /s",
                e.drain_secs, e.delivery_per_sec_avg, e.delivery_per_sec_peak_10s
            ),
        ),
        (
            "events delivered / lost / out of order / dup. / pending",
            format!(
                "{} / {} / {} / {} / {}",
                e.delivered, e.lost, e.out_of_order, e.duplicates, e.pending_at_end
            ),
        ),
    ]
}

/// The floor's rows of the table.
fn floor_rows(report: &Report) -> Vec<(&'static str, String)> {
    let Some(floor) = &report.floor else {
        return Vec::new();
    };
    let units = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
    let pg = floor
        .postgres_commit_us
        .map_or("-".into(), |us| format!("{us:.1} us"));
    vec![
        (
            "floor: exchange out / in / unit; commit SQLite / PG",
            format!(
                "{:.1} / {:.1} / {:.1} us; {:.1} us / {pg}",
                floor.http_outbound_us,
                floor.http_inbound_us,
                floor.exchange_us,
                floor.sqlite_commit_us
            ),
        ),
        (
            "CPU per refresh / per connect, exchange units",
            format!(
                "{} / {}",
                units(report.cpu_per_refresh_exchange_units),
                units(report.cpu_per_connect_exchange_units)
            ),
        ),
        (
            "CPU per refresh / per connect, commit units (run's db)",
            format!(
                "{} / {}",
                units(report.cpu_per_refresh_commit_units),
                units(report.cpu_per_connect_commit_units)
            ),
        ),
    ]
}

impl Report {
    /// Fills in the CPU figures in floor units, once the run's figures and the floor are in.
    pub fn in_floor_units(&mut self) {
        let Some(floor) = &self.floor else { return };
        let commit_us = match self.database.as_str() {
            "PostgreSQL" => floor.postgres_commit_us,
            _ => Some(floor.sqlite_commit_us),
        };
        let ratio = |ms: Option<f64>, unit_us: Option<f64>| {
            ms.zip(unit_us.filter(|u| *u > 0.0))
                .map(|(ms, us)| ms * 1000.0 / us)
        };
        let exchange = Some(floor.exchange_us);
        self.cpu_per_refresh_exchange_units = ratio(self.cpu_ms_per_refresh, exchange);
        self.cpu_per_connect_exchange_units = ratio(self.cpu_ms_per_connect, exchange);
        self.cpu_per_refresh_commit_units = ratio(self.cpu_ms_per_refresh, commit_us);
        self.cpu_per_connect_commit_units = ratio(self.cpu_ms_per_connect, commit_us);
    }

    /// The table, with this run's figures.
    pub fn table(&self) -> String {
        let rows = [
            (
                if self.nodes > 1 {
                    "connected users held, sum over the processes"
                } else {
                    "connected users held, one process"
                },
                format!("{}", self.actors_listed),
            ),
            (
                "service RSS per connected user",
                format!("{:.0} B", self.rss_per_user_bytes),
            ),
            (
                "time to load all actors at start",
                format!("{:.1} s", self.load_secs),
            ),
            (
                "refreshes end to end, average / peak 10 s",
                format!(
                    "{:.0} /s / {:.0} /s",
                    self.refreshes_per_sec_avg, self.refreshes_per_sec_peak_10s
                ),
            ),
            (
                "service CPU per refresh / per connect",
                format!(
                    "{} / {}  ({:.1} s of CPU, {} connects in the run)",
                    opt(self.cpu_ms_per_refresh, 1.0, "ms"),
                    opt(self.cpu_ms_per_connect, 1.0, "ms"),
                    self.service_cpu_secs,
                    self.connects_in_run
                ),
            ),
            (
                "refresh lateness p50 / p99",
                format!(
                    "{} / {}",
                    opt(self.refresh_lateness_p50_secs, 1000.0, "ms"),
                    opt(self.refresh_lateness_p99_secs, 1000.0, "ms")
                ),
            ),
            (
                "tokens expired before refresh (sandbox)",
                format!("{}", self.expired_before_refresh),
            ),
            (
                "microservice older than database (of which still queued)",
                format!(
                    "{} ({})",
                    self.stale_at_microservice, self.stale_still_pending
                ),
            ),
            (
                "OAuth callback latency p50 / p99",
                format!(
                    "{} / {}",
                    opt(self.callback_p50_ms, 1.0, "ms"),
                    opt(self.callback_p99_ms, 1.0, "ms")
                ),
            ),
            ("sync lag p99", opt(self.sync_lag_p99_secs, 1000.0, "ms")),
            (
                "refreshes / failures / never refreshed",
                format!(
                    "{:.0} / {:.0} / {}",
                    self.refreshes, self.refresh_failures, self.never_refreshed
                ),
            ),
            (
                "RSS after load / at end",
                format!(
                    "{} MiB / {} MiB",
                    self.rss_after_load_kib / 1024,
                    self.rss_end_kib / 1024
                ),
            ),
        ];
        let nodes = if self.nodes > 1 {
            format!(", {} nodes", self.nodes)
        } else {
            String::new()
        };
        let mut rows = rows.to_vec();
        rows.extend(floor_rows(self));
        if let Some(cost) = &self.database_cost {
            rows.extend(cost.rows());
        }
        if let Some(e) = &self.app_events {
            rows.extend(app_event_rows(e));
        }
        let mut out = format!(
            "tokenwarden loadtest: {} users, {}{nodes}, {} s, lifetime {} s, lead {} s\n",
            self.users,
            self.database,
            self.duration_secs,
            self.token_lifetime_secs,
            self.refresh_lead_secs
        );
        for (name, value) in rows {
            out.push_str(&format!("  {name:<58} {value}\n"));
        }
        if self.per_node.len() > 1 {
            out.push_str("  per node: CPU / refreshes / actors / RSS at end / shards\n");
            for node in &self.per_node {
                let shards = node.shards.map_or("-".into(), |s| s.to_string());
                out.push_str(&format!(
                    "    {:<56} {:.1} s / {:.0} / {} / {} MiB / {shards}\n",
                    node.node_id,
                    node.cpu_secs,
                    node.refreshes,
                    node.actors,
                    node.rss_end_kib / 1024
                ));
            }
        }
        out
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }

    /// Three stacked charts over time: refreshes per second, p99 lateness, RSS.
    pub fn write_chart(&self, path: &Path) -> anyhow::Result<()> {
        let root = SVGBackend::new(path, (900, 900)).into_drawing_area();
        root.fill(&WHITE)?;
        let panels = root.split_evenly((3, 1));
        let end = self.samples.last().map_or(1.0, |s| s.t.max(1.0));
        let series: [(&str, Pick); 3] = [
            (
                "refreshes per second",
                Box::new(|s| Some(s.refreshes_per_sec)),
            ),
            (
                "refresh lateness p99 (ms)",
                Box::new(|s| s.lateness_p99.filter(|v| v.is_finite()).map(|v| v * 1000.0)),
            ),
            ("service RSS (MiB)", Box::new(|s| Some(s.rss_mib))),
        ];
        for (panel, (title, value)) in panels.iter().zip(series) {
            let points: Vec<(f64, f64)> = self
                .samples
                .iter()
                .filter_map(|s| value(s).map(|v| (s.t, v)))
                .collect();
            let top = points.iter().map(|p| p.1).fold(1.0_f64, f64::max) * 1.1;
            let mut chart = ChartBuilder::on(panel)
                .caption(title, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(60)
                .build_cartesian_2d(0.0..end, 0.0..top)?;
            chart.configure_mesh().x_desc("seconds").draw()?;
            chart.draw_series(LineSeries::new(points, &BLUE))?;
        }
        root.present()?;
        Ok(())
    }
}
