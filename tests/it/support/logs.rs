//! The log lines a test can read: the service's own telemetry setup, writing into a buffer.

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(Captured::default)
}

/// Sends every log line of this process to a buffer tests can read (nextest runs each test in
/// its own process, so the buffer holds one test's logs), through the service's own telemetry
/// setup. A test that needs export or JSON calls [`init_telemetry`] first; the first wins.
pub fn init_log_capture() {
    init_telemetry(&tokenwarden::telemetry::TelemetryConfig::default());
}

/// Installs the service's subscriber with `config`, logging into the capture buffer.
pub fn init_telemetry(
    config: &tokenwarden::telemetry::TelemetryConfig,
) -> tokenwarden::telemetry::Telemetry {
    let writer = captured().clone();
    tokenwarden::telemetry::init_with_writer(config, move || writer.clone()).expect("telemetry")
}

/// Every log line captured so far.
pub fn logs() -> String {
    String::from_utf8_lossy(&captured().0.lock().unwrap()).into_owned()
}

/// Log lines that contain all of `needles`.
pub fn log_lines_with(needles: &[&str]) -> Vec<String> {
    logs()
        .lines()
        .filter(|line| needles.iter().all(|n| line.contains(n)))
        .map(str::to_string)
        .collect()
}
