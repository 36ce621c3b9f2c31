//! The shared `main` of every service: parse the command line, load and validate settings (fail
//! fast), initialise logging, run until SIGINT/SIGTERM, shut down in order with a deadline; a
//! second signal forces exit.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::Settings;

#[derive(Debug, Parser)]
struct Args {
    /// Node settings file (TOML); `FERRY_*` environment variables override it.
    #[arg(long, env = "FERRY_CONFIG")]
    config: Option<PathBuf>,
}

/// How long an ordered shutdown may take before the process exits anyway.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);

/// Run a service's `run(settings, shutdown)` as a process.
pub fn run_service<F, Fut>(service: &'static str, run: F) -> std::process::ExitCode
where
    F: FnOnce(Settings, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let args = Args::parse();
    init_logging();
    let settings = match Settings::load(args.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ferry-{service}: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("build the tokio runtime");
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let mut task = tokio::spawn(run(settings, shutdown.clone()));
        tokio::select! {
            result = &mut task => return exit_code(service, result),
            _ = signal() => tracing::info!(service, "shutting down"),
        }
        shutdown.cancel();
        tokio::select! {
            result = &mut task => exit_code(service, result),
            _ = signal() => {
                tracing::warn!(service, "second signal: exiting now");
                std::process::ExitCode::from(130)
            }
            _ = tokio::time::sleep(SHUTDOWN_DEADLINE) => {
                tracing::error!(service, "shutdown deadline passed: exiting");
                std::process::ExitCode::FAILURE
            }
        }
    })
}

fn exit_code(
    service: &str,
    result: Result<anyhow::Result<()>, tokio::task::JoinError>,
) -> std::process::ExitCode {
    match result {
        Ok(Ok(())) => std::process::ExitCode::SUCCESS,
        Ok(Err(e)) => {
            tracing::error!(service, error = format!("{e:#}"), "service failed");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            tracing::error!(service, error = %e, "service panicked");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Structured logs on stderr: JSON when `FERRY_LOG_FORMAT=json`, filter from `RUST_LOG`
/// (default `info`). Safe to call more than once.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if std::env::var("FERRY_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
