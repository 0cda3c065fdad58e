//! The sampled run phase: every node's `/metrics`, `/admin/actors` and `/proc` figures read
//! about every second and summed, and the end-of-run figures, in total and per node.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::{
    DRAIN_TIMEOUT, LoadtestArgs, Progress,
    nodes::Nodes,
    report::{NodeFigures, Report, Sample},
    sample::{self, Scrape, quantile},
};

const LATENESS: &str = "tokenwarden_refresh_lateness_seconds";

/// Samples the nodes about every second for the run's duration.
pub async fn run_phase(
    args: &LoadtestArgs,
    nodes: &Nodes,
    progress: &Progress,
    report: &mut Report,
    connects: &Mutex<Vec<f64>>,
) -> anyhow::Result<()> {
    progress.stage("running", args.duration_secs);
    let first_each = nodes.scrape_each().await?;
    let first = Scrape::sum(&first_each);
    let cpu_at_start = nodes.cpu_each();
    let connects_at_start = connects.lock().expect("connect latencies").len();
    let mut previous_each = first_each.clone();
    let mut previous = first.clone();
    let started = Instant::now();
    let mut previous_at = started;
    let deadline = started + Duration::from_secs(args.duration_secs);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let each = nodes.scrape_each().await?;
        let scrape = Scrape::sum(&each);
        let now = Instant::now();
        let dt = now.duration_since(previous_at).as_secs_f64();
        let window = sample::window(
            scrape
                .histograms
                .get(LATENESS)
                .map_or(&[][..], Vec::as_slice),
            previous
                .histograms
                .get(LATENESS)
                .map_or(&[][..], Vec::as_slice),
        );
        let sample = Sample {
            t: now.duration_since(started).as_secs_f64(),
            refreshes_per_sec: (scrape.refreshes_ok - previous.refreshes_ok) / dt,
            lateness_p99: quantile(&window, 0.99),
            rss_mib: nodes.rss_each().iter().sum::<u64>() as f64 / 1024.0,
            actors: nodes.actors_each().await.iter().sum(),
            sync_queue_depth: scrape.sync_queue_depth,
        };
        progress.set(
            sample.t as u64,
            Some(format!(
                "{:.0} refreshes/s, RSS {:.0} MiB, queue {}",
                sample.refreshes_per_sec, sample.rss_mib, sample.sync_queue_depth
            )),
        );
        report.samples.push(sample);
        previous_each = each;
        previous = scrape;
        previous_at = now;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_each: Vec<f64> = nodes
        .cpu_each()
        .into_iter()
        .zip(cpu_at_start)
        .map(|(end, start)| end.zip(start).map_or(0.0, |(end, start)| end - start))
        .collect();
    let cpu: f64 = cpu_each.iter().sum();
    let last = &previous;
    report.refreshes = last.refreshes_ok - first.refreshes_ok;
    report.connects_in_run =
        (connects.lock().expect("connect latencies").len() - connects_at_start) as u64;
    report.service_cpu_secs = cpu;
    // Attributed only when one kind of work ran alone: a mixed run has no honest split.
    if report.connects_in_run == 0 {
        report.cpu_ms_per_refresh = sample::cpu_ms_per(cpu, report.refreshes);
    } else if report.refreshes < 1.0 {
        report.cpu_ms_per_connect = sample::cpu_ms_per(cpu, report.connects_in_run as f64);
    }
    report.refreshes_per_sec_avg = report.refreshes / elapsed.max(1.0);
    report.refreshes_per_sec_peak_10s = report
        .samples
        .windows(10)
        .map(|w| w.iter().map(|s| s.refreshes_per_sec).sum::<f64>() / w.len() as f64)
        .fold(0.0, f64::max);
    report.refresh_failures = last.refresh_failures - first.refresh_failures;
    report.sync_failures = last.sync_failures - first.sync_failures;
    let run_window = |name: &str| {
        sample::window(
            last.histograms.get(name).map_or(&[][..], Vec::as_slice),
            first.histograms.get(name).map_or(&[][..], Vec::as_slice),
        )
    };
    report.refresh_lateness_p50_secs = quantile(&run_window(LATENESS), 0.5);
    report.refresh_lateness_p99_secs = quantile(&run_window(LATENESS), 0.99);
    report.sync_lag_p99_secs = quantile(&run_window("tokenwarden_sync_lag_seconds"), 0.99);
    let actors_each = nodes.actors_each().await;
    report.actors_listed = actors_each.iter().sum();
    report.per_node = nodes
        .iter()
        .zip(first_each.iter().zip(&previous_each))
        .zip(cpu_each.into_iter().zip(actors_each))
        .map(|((node, (first, last)), (cpu_secs, actors))| NodeFigures {
            node_id: node.id.clone(),
            cpu_secs,
            refreshes: last.refreshes_ok - first.refreshes_ok,
            actors,
            ..NodeFigures::default()
        })
        .collect();
    Ok(())
}

/// Waits (bounded) until every node has pushed every queued change.
pub async fn drain(nodes: &Nodes) {
    let started = Instant::now();
    while started.elapsed() < DRAIN_TIMEOUT {
        if nodes
            .scrape_each()
            .await
            .is_ok_and(|each| Scrape::sum(&each).sync_queue_depth == 0.0)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Fills in what is read after the drain: each node's RSS and its shards.
pub async fn end_figures(nodes: &Nodes, report: &mut Report) {
    let rss_each = nodes.rss_each();
    report.rss_end_kib = rss_each.iter().sum();
    let shards = nodes.shards().await;
    for (figures, rss) in report.per_node.iter_mut().zip(rss_each) {
        figures.rss_end_kib = rss;
        figures.shards = shards
            .as_ref()
            .and_then(|s| s.get(&figures.node_id).copied());
    }
}
