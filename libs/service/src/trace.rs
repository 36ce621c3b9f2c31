//! Traces: one trace per run (`docs/observability.md`). The scheduler's `run` span is the root;
//! its context travels in the W3C Trace Context headers ([`ferry_wire::HEADER_TRACEPARENT`],
//! [`ferry_wire::HEADER_TRACESTATE`]) of the run's messages, so the file-collector's `collect`
//! span and every transfer's `batch` span are its descendants. Spans go to an OTLP/HTTP receiver
//! when `telemetry.otlp_endpoint` is set ([`Telemetry::start`]).
//!
//! This module alone writes and reads the trace headers: publishers pass their message through
//! [`inject`], consumers call [`follow`] on the span of the work a message starts.
//!
//! Invariants:
//! - Off (no endpoint) is free: no exporter, no OpenTelemetry layer in the subscriber, and
//!   [`inject`] and [`follow`] return after one relaxed atomic load — no header is written or
//!   parsed. The spans themselves are plain `tracing` spans, which the logs use anyway.
//! - Trace headers never fail a message: missing, malformed or hostile ones start a new root.
//! - A log line inside a traced run carries the run's `trace_id` (a field of the span [`follow`]
//!   was called on), in text and JSON logs alike.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::message::PublishMessage;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::Settings;

/// Whether this process exports traces; set once by [`Telemetry::start`].
static ON: AtomicBool = AtomicBool::new(false);

/// How long the exit waits for the last spans to reach the receiver.
const FLUSH_DEADLINE: Duration = Duration::from_secs(5);

/// The span field that carries a run's trace id into its log lines.
pub const TRACE_ID_FIELD: &str = "trace_id";

/// This process's trace exporter, or nothing when traces are off.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Traces off: no exporter.
    pub fn off() -> Telemetry {
        Telemetry { provider: None }
    }

    /// Build the OTLP exporter when `telemetry.otlp_endpoint` is set (validated by
    /// [`Settings::validate`]). The exporter sends from a thread of its own, in batches, so a
    /// slow or absent receiver never holds up a run: spans beyond its queue are dropped.
    pub fn start(service: &str, settings: &Settings) -> anyhow::Result<Telemetry> {
        let Some(endpoint) = &settings.telemetry.otlp_endpoint else {
            return Ok(Telemetry::off());
        };
        use opentelemetry_otlp::{Protocol, WithExportConfig};
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(traces_url(endpoint))
            .build()
            .with_context(|| format!("telemetry.otlp_endpoint: {endpoint:?}: build the OTLP exporter"))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(format!("ferry-{service}"))
            .with_attributes([
                opentelemetry::KeyValue::new("service.namespace", "ferry"),
                opentelemetry::KeyValue::new("service.version", crate::VERSION),
                opentelemetry::KeyValue::new(
                    "service.instance.id",
                    format!("{}/{service}", settings.node_id),
                ),
                opentelemetry::KeyValue::new("ferry.node", settings.node_id.clone()),
            ])
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            // The services of a run follow the sampling decision in its traceparent.
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                settings.telemetry.sample_ratio,
            ))))
            .build();
        ON.store(true, Ordering::Relaxed);
        Ok(Telemetry {
            provider: Some(provider),
        })
    }

    /// The subscriber layer that turns `tracing` spans into OpenTelemetry spans (nothing when
    /// off). It sees the spans and events of Ferry's own crates at `info` and above, whatever
    /// `RUST_LOG` says: quieter logs do not cut traces short.
    pub fn layer<S>(&self) -> Option<impl tracing_subscriber::Layer<S> + use<S>>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        use tracing_subscriber::Layer;
        let provider = self.provider.as_ref()?;
        let ferry_only = tracing_subscriber::filter::filter_fn(|meta| {
            meta.target().starts_with("ferry") && *meta.level() <= tracing::Level::INFO
        });
        Some(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("ferry"))
                .with_filter(ferry_only),
        )
    }

    /// Send the spans still queued and stop the exporter (the last step of an ordered
    /// shutdown), waiting at most a few seconds for the receiver.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown_with_timeout(FLUSH_DEADLINE)
        {
            tracing::warn!(error = %e, "could not send the last spans");
        }
    }
}

/// `<base>/v1/traces`, as the OTLP specification derives a signal's URL from
/// `OTEL_EXPORTER_OTLP_ENDPOINT`; a URL already ending in `/v1/traces` is kept.
fn traces_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Whether this process exports traces.
pub fn is_on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// `message` with the trace context of the current span in its headers; unchanged when traces
/// are off.
pub fn inject(message: PublishMessage) -> PublishMessage {
    if !is_on() {
        return message;
    }
    let mut fields = Fields::default();
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut fields);
    fields
        .0
        .into_iter()
        .fold(message, |message, (name, value)| message.header(name, value))
}

/// Make `span` a child of the trace context in `headers` — a new root when there is none or it
/// is not valid — and record its trace id in the span's `trace_id` field (which the span must
/// declare as `trace_id = tracing::field::Empty`). Call it before the span is first entered.
/// Nothing when traces are off.
pub fn follow(span: &tracing::Span, headers: Option<&HeaderMap>) {
    if !is_on() {
        return;
    }
    if let Some(headers) = headers {
        let parent = TraceContextPropagator::new().extract(&Carrier(headers));
        if parent.span().span_context().is_valid() {
            // Only fails if the span was already started, which callers rule out.
            let _ = span.set_parent(parent);
        }
    }
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record(TRACE_ID_FIELD, tracing::field::display(trace_id));
    }
}

/// Headers to add, as the propagator sets them.
#[derive(Default)]
struct Fields(Vec<(String, String)>);

impl Injector for Fields {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_string(), value));
    }
}

/// A received message's headers, read by the propagator.
struct Carrier<'a>(&'a HeaderMap);

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_propagator_writes_the_headers_the_wire_contract_names() {
        let propagator = TraceContextPropagator::new();
        let fields: Vec<&str> = propagator.fields().collect();
        assert_eq!(
            fields,
            [ferry_wire::HEADER_TRACEPARENT, ferry_wire::HEADER_TRACESTATE]
        );
    }

    #[test]
    fn malformed_trace_headers_give_no_parent() {
        for (traceparent, tracestate) in [
            ("", ""),
            ("garbage", "x"),
            ("00-00000000000000000000000000000000-0000000000000000-01", ""),
            ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ""),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", "a=b"),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                "",
            ),
            ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", ""),
            (
                "\u{202e}00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "",
            ),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(ferry_wire::HEADER_TRACEPARENT, traceparent);
            headers.insert(ferry_wire::HEADER_TRACESTATE, tracestate);
            let cx = TraceContextPropagator::new().extract(&Carrier(&headers));
            assert!(!cx.span().span_context().is_valid(), "{traceparent:?}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            ferry_wire::HEADER_TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        headers.insert(ferry_wire::HEADER_TRACESTATE, "=;,,=\u{0}");
        let cx = TraceContextPropagator::new().extract(&Carrier(&headers));
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "a bad tracestate is dropped, the traceparent kept"
        );
    }

    #[test]
    fn the_traces_url_follows_the_otlp_convention() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://otel.example/"),
            "https://otel.example/v1/traces"
        );
        assert_eq!(
            traces_url("https://otel.example/v1/traces"),
            "https://otel.example/v1/traces"
        );
    }

    #[test]
    fn off_writes_no_header() {
        assert!(!is_on());
        let message = inject(PublishMessage::build());
        let built = format!("{message:?}");
        assert!(!built.contains("traceparent"), "{built}");
    }
}
