//! The `tokenwarden` binary: parses the command line and calls into the library.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tokenwarden::{app::App, cli, config::TelemetryArgs};

#[derive(Parser)]
#[command(
    name = "tokenwarden",
    version,
    about = "Keeps Google Calendar OAuth tokens alive and mirrored to a microservice"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: tokenwarden::config::ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve(Box<tokenwarden::config::ServeArgs>),
    /// Run the service, the sandbox Google provider and the reference microservice together.
    Demo(tokenwarden::demo::DemoArgs),
    /// Drive a real `serve` process with many simulated users and report what it measured.
    Loadtest(tokenwarden::loadtest::LoadtestArgs),
    /// Apply database migrations and exit.
    Migrate(cli::MigrateArgs),
    /// Re-encrypt every stored token with the first key of TOKEN_ENCRYPTION_KEY and exit.
    RotateKey(cli::RotateKeyArgs),
    /// Run only the sandbox Google OAuth provider.
    SandboxGoogle {
        #[command(flatten)]
        args: tokenwarden::sandbox::SandboxGoogleArgs,
        #[command(flatten)]
        telemetry: TelemetryArgs,
    },
    /// Run only the reference microservice.
    Microservice {
        #[command(flatten)]
        args: tokenwarden::sandbox::MicroserviceArgs,
        #[command(flatten)]
        telemetry: TelemetryArgs,
    },
}

/// glibc's allocator spent about a quarter of the service's CPU under load (perf); mimalloc's
/// thread-local free lists cut that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    // A missing .env is normal; a broken one would make later variables look unset.
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("error: cannot read .env: {e}");
        return ExitCode::from(2);
    }
    let cli = parse_cli();
    let result = match cli.command.unwrap_or(Command::Serve(Box::new(cli.serve))) {
        Command::Serve(args) => serve(*args).await,
        Command::Demo(args) => tokenwarden::demo::run(args).await,
        Command::Loadtest(args) => tokenwarden::loadtest::run(args).await.map(|_| ()),
        Command::Migrate(args) => cli::migrate(args).await,
        Command::RotateKey(args) => cli::rotate_key(args).await,
        Command::SandboxGoogle { args, telemetry } => {
            with_telemetry(telemetry, tokenwarden::sandbox::google::run(args)).await
        }
        Command::Microservice { args, telemetry } => {
            with_telemetry(telemetry, tokenwarden::sandbox::microservice::run(args)).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The command line. The top-level serve settings belong to the default command only, so a
/// subcommand is first tried with their environment ignored: `migrate` must not fail on a
/// malformed serve variable it never reads (clap parses the top level's environment even
/// when a subcommand runs).
fn parse_cli() -> Cli {
    let subcommand_only = Cli::command().mut_args(|arg| arg.env(None));
    match subcommand_only.try_get_matches() {
        Ok(mut matches) if matches.subcommand().is_some() => {
            Cli::from_arg_matches_mut(&mut matches).unwrap_or_else(|e| e.exit())
        }
        // No subcommand (serve, reading its environment), `--help`, or an error: as declared.
        _ => Cli::parse(),
    }
}

async fn serve(args: tokenwarden::config::ServeArgs) -> anyhow::Result<()> {
    let config = args.into_config()?;
    let telemetry = tokenwarden::telemetry::init(&config.telemetry)?;
    let result = async {
        let listener = tokio::net::TcpListener::bind(config.listen_addr).await?;
        let app = App::spawn(config, listener).await?;
        cli::run_until_signal(app).await
    }
    .await;
    telemetry.shutdown();
    result
}

/// Runs a sandbox server with logging and trace export set up, flushing spans at the end.
async fn with_telemetry(
    args: TelemetryArgs,
    server: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let telemetry = tokenwarden::telemetry::init(&args.into_config()?)?;
    let result = server.await;
    telemetry.shutdown();
    result
}
