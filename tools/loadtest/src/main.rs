//! `tokenwarden-loadtest`: the load test as a binary of its own, so the service's binary does
//! not carry plotting and progress-bar code. `tokenwarden loadtest ...` runs this.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "tokenwarden loadtest",
    version,
    about = "Drive a real `tokenwarden serve` process with many simulated users and report what it measured"
)]
struct Cli {
    /// Runs as the floor probe (`floor`), which the load test starts itself.
    #[arg(long, hide = true)]
    floor_probe: bool,
    #[command(flatten)]
    args: tokenwarden_loadtest::LoadtestArgs,
}

/// The service's allocator (see its `main.rs`), which the floor probe in this binary must
/// share to measure what the service would spend.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.floor_probe {
        return match tokenwarden_loadtest::floor_probe().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    match tokenwarden_loadtest::run(cli.args).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
