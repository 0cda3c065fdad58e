//! Reading the service under load from the outside: RSS and CPU time from `/proc`, counters
//! and histograms from `/metrics` (OpenMetrics text), percentiles from cumulative histogram
//! buckets.

use std::collections::BTreeMap;

/// CPU time the process has used so far (user + system), in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = procfs::process::Process::new(i32::try_from(pid).ok()?)
        .ok()?
        .stat()
        .ok()?;
    Some((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

/// CPU milliseconds per unit of work, when there was work.
pub fn cpu_ms_per(cpu_secs: f64, units: f64) -> Option<f64> {
    (units >= 1.0).then(|| cpu_secs * 1000.0 / units)
}

/// The series of one `/metrics` scrape that the report uses.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub refreshes_ok: f64,
    pub refresh_failures: f64,
    pub syncs_ok: f64,
    pub sync_failures: f64,
    pub sync_queue_depth: f64,
    /// `tokenwarden_app_events_total` by result (all types).
    pub app_events_delivered: f64,
    pub app_events_failed: f64,
    /// Cumulative buckets (`le` upper bound, count) by histogram name.
    pub histograms: BTreeMap<String, Vec<(f64, f64)>>,
}

impl Scrape {
    /// The cluster's figures: counters, gauges and histogram buckets of every node added up.
    pub fn sum(scrapes: &[Scrape]) -> Scrape {
        let mut total = Scrape::default();
        for s in scrapes {
            total.refreshes_ok += s.refreshes_ok;
            total.refresh_failures += s.refresh_failures;
            total.syncs_ok += s.syncs_ok;
            total.sync_failures += s.sync_failures;
            total.sync_queue_depth += s.sync_queue_depth;
            total.app_events_delivered += s.app_events_delivered;
            total.app_events_failed += s.app_events_failed;
            for (name, buckets) in &s.histograms {
                let into = total.histograms.entry(name.clone()).or_default();
                for &(le, count) in buckets {
                    match into.iter_mut().find(|(l, _)| *l == le) {
                        Some(bucket) => bucket.1 += count,
                        None => into.push((le, count)),
                    }
                }
                into.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
        }
        total
    }
}

/// Parses the metrics the load test needs out of the service's `/metrics` text.
pub fn parse_metrics(text: &str) -> Scrape {
    let mut scrape = Scrape::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        match name {
            "tokenwarden_refreshes_total" if labels.contains("result=\"ok\"") => {
                scrape.refreshes_ok += value
            }
            // A refresh that found its user on another node (a hand-over in a cluster) did not
            // fail: nothing ran.
            "tokenwarden_refreshes_total"
                if !labels.contains("result=\"superseded\"")
                    && !labels.contains("result=\"not_owner\"") =>
            {
                scrape.refresh_failures += value
            }
            "tokenwarden_syncs_total" if labels.contains("result=\"ok\"") => {
                scrape.syncs_ok += value
            }
            "tokenwarden_syncs_total" if labels.contains("result=\"failed\"") => {
                scrape.sync_failures += value
            }
            "tokenwarden_sync_queue_depth" => scrape.sync_queue_depth = value,
            "tokenwarden_app_events_total" if labels.contains("result=\"delivered\"") => {
                scrape.app_events_delivered += value
            }
            "tokenwarden_app_events_total" if labels.contains("result=\"failed\"") => {
                scrape.app_events_failed += value
            }
            _ if name.ends_with("_bucket") => {
                let le = labels
                    .split("le=\"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .map(|le| {
                        if le == "+Inf" {
                            f64::INFINITY
                        } else {
                            le.parse().unwrap_or(f64::NAN)
                        }
                    });
                if let Some(le) = le {
                    let family = name.trim_end_matches("_bucket").to_string();
                    scrape
                        .histograms
                        .entry(family)
                        .or_default()
                        .push((le, value));
                }
            }
            _ => {}
        }
    }
    scrape
}

/// The `q` quantile (0..1) of a cumulative histogram, as the upper bound of the bucket it
/// falls in; `None` when empty. Bucket resolution bounds its precision.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let target = total * q;
    buckets
        .iter()
        .find(|(_, count)| *count >= target)
        .map(|(le, _)| *le)
}

/// Bucket-by-bucket difference of two scrapes of one histogram (the window between them).
pub fn window(later: &[(f64, f64)], earlier: &[(f64, f64)]) -> Vec<(f64, f64)> {
    later
        .iter()
        .map(|(le, count)| {
            let before = earlier
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, c)| *c);
            (*le, count - before)
        })
        .collect()
}

/// Resident set size of a process in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters_and_quantiles() {
        let text = "# TYPE tokenwarden_refreshes counter\n\
            tokenwarden_refreshes_total{reason=\"scheduled\",result=\"ok\"} 7\n\
            tokenwarden_refreshes_total{reason=\"forced\",result=\"ok\"} 3\n\
            tokenwarden_refreshes_total{reason=\"retry\",result=\"transient\"} 2\n\
            tokenwarden_sync_queue_depth 4\n\
            tokenwarden_refresh_lateness_seconds_bucket{le=\"0.001\"} 50\n\
            tokenwarden_refresh_lateness_seconds_bucket{le=\"0.01\"} 99\n\
            tokenwarden_refresh_lateness_seconds_bucket{le=\"+Inf\"} 100\n# EOF\n";
        let s = parse_metrics(text);
        assert_eq!(
            (s.refreshes_ok, s.refresh_failures, s.sync_queue_depth),
            (10.0, 2.0, 4.0)
        );
        let buckets = &s.histograms["tokenwarden_refresh_lateness_seconds"];
        assert_eq!(quantile(buckets, 0.5), Some(0.001));
        assert_eq!(quantile(buckets, 0.99), Some(0.01));
        assert_eq!(quantile(buckets, 1.0), Some(f64::INFINITY));
        assert_eq!(quantile(&[], 0.5), None);
        let w = window(
            buckets,
            &[(0.001, 50.0), (0.01, 50.0), (f64::INFINITY, 50.0)],
        );
        assert_eq!(w, vec![(0.001, 0.0), (0.01, 49.0), (f64::INFINITY, 50.0)]);
    }

    #[test]
    fn sums_the_nodes_scrapes() {
        let node = |ok: u64, queued: u64, fast: u64, all: u64| {
            parse_metrics(&format!(
                "tokenwarden_refreshes_total{{node=\"n\",reason=\"scheduled\",result=\"ok\"}} {ok}\n\
                 tokenwarden_sync_queue_depth{{node=\"n\"}} {queued}\n\
                 tokenwarden_refresh_lateness_seconds_bucket{{node=\"n\",le=\"0.01\"}} {fast}\n\
                 tokenwarden_refresh_lateness_seconds_bucket{{node=\"n\",le=\"+Inf\"}} {all}\n"
            ))
        };
        let one = node(7, 1, 5, 10);
        let alone = Scrape::sum(std::slice::from_ref(&one));
        assert_eq!(alone.refreshes_ok, 7.0);
        assert_eq!(alone.histograms, one.histograms);
        let both = Scrape::sum(&[one, node(3, 2, 0, 10)]);
        assert_eq!((both.refreshes_ok, both.sync_queue_depth), (10.0, 3.0));
        let buckets = &both.histograms["tokenwarden_refresh_lateness_seconds"];
        assert_eq!(buckets, &vec![(0.01, 5.0), (f64::INFINITY, 20.0)]);
        assert_eq!(quantile(buckets, 0.5), Some(f64::INFINITY));
        assert_eq!(quantile(buckets, 0.25), Some(0.01));
    }
}
