//! Measurements: each scenario prints what it measured on `cluster-figure` lines (the
//! figures of docs/cluster.md), and latencies are summarised by percentile.

use std::io::Write;

use chrono::Utc;

/// Prints a measurement on one `cluster-figure` line (for docs/cluster.md) and appends it to
/// `target/tmp/cluster-figures.log`.
pub fn figure(line: &str) {
    let line = format!("cluster-figure {line}");
    eprintln!("{line}");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cluster-figures.log");
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(file, "{} {line}", Utc::now().to_rfc3339());
    }
}

/// Percentile `p` (0 to 100) of `values`, nearest rank.
pub fn percentile(values: &[u128], p: usize) -> u128 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}
