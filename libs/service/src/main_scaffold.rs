//! The shared `main` of every service: parse the command line, load and validate settings (fail
//! fast), initialise logging and traces, run until SIGINT/SIGTERM, shut down in order with a
//! deadline, send the last spans; a second signal forces exit.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::Settings;
use crate::trace::Telemetry;

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
    let settings = match Settings::load(args.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ferry-{service}: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let telemetry = match Telemetry::start(service, &settings) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ferry-{service}: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    init_logging_with(&telemetry);
    let runtime = tokio::runtime::Runtime::new().expect("build the tokio runtime");
    let code = runtime.block_on(async move {
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
    });
    // After a second signal the operator wants out now; otherwise the spans of the last runs
    // are sent before the process ends.
    if code != std::process::ExitCode::from(130) {
        telemetry.shutdown();
    }
    code
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
/// (default `info`). Safe to call more than once. Every field of a text line goes through
/// [`EscapedFields`] (JSON escapes on its own), so a name from a listing or a message cannot
/// break a line, fake one, or send escape sequences to a terminal.
pub fn init_logging() {
    init_logging_with(&Telemetry::off());
}

/// [`init_logging`], with spans also going to `telemetry`'s exporter when traces are on. The
/// fields of the spans a line is in are part of the line (text: `span{field=…}:` before the
/// message; JSON: `span` and `spans`), so a line inside a run carries its `trace_id`.
pub fn init_logging_with(telemetry: &Telemetry) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if std::env::var("FERRY_LOG_FORMAT").as_deref() == Ok("json") {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.fmt_fields(EscapedFields).with_filter(filter).boxed()
    };
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(telemetry.layer())
        .try_init();
}

/// The fields of a text log line, as tracing's default writes them (`message key=value ...`,
/// strings quoted), with control characters and bidirectional overrides escaped in every value
/// ([`ferry_hosts::path::printable`]) — also in `%`-formatted fields and in the message, which
/// the default writes raw.
pub struct EscapedFields;

impl<'writer> tracing_subscriber::fmt::FormatFields<'writer> for EscapedFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: tracing_subscriber::fmt::format::Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut visitor = EscapingVisitor {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'a, 'w> {
    writer: &'a mut tracing_subscriber::fmt::format::Writer<'w>,
    first: bool,
    result: std::fmt::Result,
}

impl EscapingVisitor<'_, '_> {
    fn write(&mut self, field: &tracing::field::Field, text: &str) {
        if self.result.is_err() {
            return;
        }
        let sep = if std::mem::take(&mut self.first) { "" } else { " " };
        let text = ferry_hosts::path::printable(text);
        self.result = match field.name() {
            "message" => write!(self.writer, "{sep}{text}"),
            name => write!(self.writer, "{sep}{}={text}", name.trim_start_matches("r#")),
        };
    }
}

impl tracing::field::Visit for EscapingVisitor<'_, '_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.write(field, value);
        } else {
            self.write(field, &format!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.write(field, &format!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    /// What the text formatter writes, one event at a time.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_field_of_a_text_line_is_escaped() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .fmt_fields(super::EscapedFields)
            .with_writer(move || writer.clone())
            .finish();
        let hostile = "a.csv\n2026-12-02T00:00:00Z  INFO fake: delivered\x1b[2J\u{202e}vsc.exe";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(path = %hostile, debug = ?hostile, plain = hostile, n = 3, "seen {hostile}");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "one event, one line: {text:?}");
        assert!(!text.contains('\x1b') && !text.contains('\u{202e}'), "{text:?}");
        assert!(
            text.contains(
                "seen a.csv\\n2026-12-02T00:00:00Z  INFO fake: delivered\\u{1b}[2J\\u{202e}vsc.exe"
            ),
            "{text:?}"
        );
        assert!(text.contains(" path=a.csv\\n2026"), "{text:?}");
        assert!(text.contains(" plain=\"a.csv\\n2026"), "{text:?}");
        assert!(text.contains(" debug=\"a.csv\\n2026"), "{text:?}");
        assert!(text.trim_end().ends_with(" n=3"), "{text:?}");
    }
}
