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
    #[command(flatten)]
    args: tokenwarden_loadtest::LoadtestArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match tokenwarden_loadtest::run(cli.args).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
