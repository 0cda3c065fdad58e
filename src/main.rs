//! The `tokenwarden` binary: parses the command line and calls into the library. With the
//! default `tools` feature it also composes the tool crates (`demo`, `sandbox-google`,
//! `microservice`, `app-events-receiver`, `check-microservice`); `loadtest` runs the `tokenwarden-loadtest` binary,
//! git-style.

use std::{ffi::OsString, process::ExitCode};

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
    #[cfg(feature = "tools")]
    Demo {
        #[command(flatten)]
        args: tokenwarden_demo::DemoArgs,
        /// Logs and trace export (`OTEL_EXPORTER_OTLP_ENDPOINT` to see the demo in Jaeger).
        #[command(flatten)]
        telemetry: TelemetryArgs,
    },
    /// Drive a real `serve` process with many simulated users and report what it measured
    /// (runs `tokenwarden-loadtest`, built by `cargo build --workspace`; `--help` for its flags).
    #[command(disable_help_flag = true)]
    Loadtest {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Apply database migrations and exit.
    Migrate(cli::MigrateArgs),
    /// Ask the local service's `/healthz` and exit 0 when it answers 200 (a container's
    /// health check in an image without a shell or curl).
    Healthcheck(cli::HealthcheckArgs),
    /// Re-encrypt every stored token with the first key of TOKEN_ENCRYPTION_KEY and exit.
    RotateKey(cli::RotateKeyArgs),
    /// Register the receiver of Google's security events with the RISC API, show the
    /// registration, or ask for a verification event (GOOGLE_RISC_SERVICE_ACCOUNT_KEY).
    Risc(tokenwarden::risc_cli::RiscArgs),
    /// Run only the sandbox Google OAuth provider.
    #[cfg(feature = "tools")]
    SandboxGoogle {
        #[command(flatten)]
        args: tokenwarden_sandbox::SandboxGoogleArgs,
        #[command(flatten)]
        telemetry: TelemetryArgs,
    },
    /// Run only the reference microservice.
    #[cfg(feature = "tools")]
    Microservice {
        #[command(flatten)]
        args: tokenwarden_sandbox::MicroserviceArgs,
        #[command(flatten)]
        telemetry: TelemetryArgs,
    },
    /// Run only the reference receiver of events to the app (APP_EVENTS_URL).
    #[cfg(feature = "tools")]
    AppEventsReceiver {
        #[command(flatten)]
        args: tokenwarden_sandbox::AppEventsReceiverArgs,
        #[command(flatten)]
        telemetry: TelemetryArgs,
    },
    /// Run the microservice contract's cases against a microservice and print a pass/fail table.
    // The long help lists the cases, from the checker's one list of them.
    #[cfg(feature = "tools")]
    #[command(long_about = tokenwarden_check::help())]
    CheckMicroservice(tokenwarden_check::CheckArgs),
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
        #[cfg(feature = "tools")]
        Command::Demo { args, telemetry } => with_telemetry(telemetry, demo(args)).await,
        Command::Loadtest { args } => return loadtest(args),
        Command::Migrate(args) => cli::migrate(args).await,
        // 1, not 2, when unhealthy: Docker's HEALTHCHECK reserves exit code 2.
        Command::Healthcheck(args) => {
            return match cli::healthcheck(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            };
        }
        Command::RotateKey(args) => cli::rotate_key(args).await,
        Command::Risc(args) => tokenwarden::risc_cli::run(args).await,
        #[cfg(feature = "tools")]
        Command::SandboxGoogle { args, telemetry } => {
            with_telemetry(telemetry, tokenwarden_sandbox::google::run(args)).await
        }
        #[cfg(feature = "tools")]
        Command::Microservice { args, telemetry } => {
            with_telemetry(telemetry, tokenwarden_sandbox::microservice::run(args)).await
        }
        #[cfg(feature = "tools")]
        Command::AppEventsReceiver { args, telemetry } => {
            with_telemetry(telemetry, tokenwarden_sandbox::app_events::run(args)).await
        }
        #[cfg(feature = "tools")]
        Command::CheckMicroservice(args) => {
            let code =
                tokenwarden_check::run(args, &mut std::io::stdout(), &mut std::io::stderr()).await;
            return ExitCode::from(code);
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

/// The demo: the stand-ins and the page come from the demo crate, the service is this one,
/// configured as the demo says.
#[cfg(feature = "tools")]
async fn demo(args: tokenwarden_demo::DemoArgs) -> anyhow::Result<()> {
    use tokenwarden::config::Secs;
    let (demo, service) = tokenwarden_demo::prepare(args).await?;
    let config = tokenwarden::config::ServeArgs {
        database_url: service.database_url,
        google_client_id: Some(service.client_id),
        google_client_secret: Some(service.client_secret.into()),
        google_redirect_uri: service.redirect_uri.parse()?,
        google_auth_url: service.auth_url.parse()?,
        google_token_url: service.token_url.parse()?,
        google_revoke_url: service.revoke_url.parse()?,
        google_userinfo_url: service.userinfo_url.parse()?,
        google_risc_configuration_url: service.risc_configuration_url.parse()?,
        microservice_url: Some(service.microservice_url),
        refresh_lead_secs: Secs(service.refresh_lead_secs),
        refresh_jitter_secs: Secs(service.refresh_jitter_secs),
        frontend_url: service.frontend_url.parse()?,
        auth_jwt_secret: Some(service.jwt_secret.into()),
        admin_token: Some(service.admin_token.into()),
        token_encryption_key: Some(service.encryption_key.into()),
        microservice_signing_secret: Some(service.signing_secret.into()),
        app_events_url: Some(service.app_events_url),
        app_events_signing_secret: Some(service.app_events_signing_secret.into()),
        ..Default::default()
    }
    .into_config()?;
    let app = App::spawn(config, service.listener).await?;
    demo.open();
    cli::run_until_signal(app).await
}

/// Runs `tokenwarden-loadtest` from beside this binary (else from `PATH`) with the same
/// arguments, and exits as it exits.
fn loadtest(args: Vec<OsString>) -> ExitCode {
    const TOOL: &str = "tokenwarden-loadtest";
    let beside = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name(TOOL))
        .filter(|path| path.exists());
    let program = beside.map_or_else(|| OsString::from(TOOL), |p| p.into_os_string());
    match std::process::Command::new(&program).args(args).status() {
        Ok(status) => match status.code() {
            Some(0) => ExitCode::SUCCESS,
            Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(2)),
            None => ExitCode::from(2),
        },
        Err(e) => {
            eprintln!(
                "error: cannot run {TOOL} ({e}); build it with `cargo build --release --workspace`"
            );
            ExitCode::from(2)
        }
    }
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
