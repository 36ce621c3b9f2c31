//! Traces: one run is one trace across the services. A node of real service processes exports
//! spans over OTLP/HTTP to a receiver this test starts (protobuf `ExportTraceServiceRequest`s
//! on `/v1/traces`); a run started by the CLI shows the scheduler's `run`, the file-collector's
//! `collect` and the transfer's `batch` spans under one trace id, each the child of the one
//! before, and the log lines of the run carry that id. A trigger carrying a `traceparent` makes
//! the run part of the publisher's trace; garbage trace headers start a new root and fail
//! nothing. With no endpoint, no trace header is written, no log line carries a trace id and no
//! exporter runs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use chrono::Utc;
use futures::StreamExt;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use uuid::Uuid;

use ferry_tests::{
    NODE, NatsServer, SERVICES, ServiceProcess, ferry_cli, local_task, process_env, services_answer,
};
use ferry_wire::{
    HEADER_EPOCH, HEADER_TRACEPARENT, HEADER_TRACESTATE, RunRequested, RunStatus, Trigger, subjects,
};

/// One span as the receiver got it.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    /// Empty for a root.
    parent: String,
    attributes: BTreeMap<String, String>,
}

/// An OTLP/HTTP receiver on a random loopback port, keeping every span it is sent.
struct Receiver {
    port: u16,
    spans: Arc<Mutex<Vec<Got>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let kept = kept.clone();
                async move {
                    let request =
                        ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export request");
                    kept.lock().unwrap().extend(flatten(request));
                    (
                        [("content-type", "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { port, spans }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spans(&self) -> Vec<Got> {
        self.spans.lock().unwrap().clone()
    }
}

fn text(value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<Got> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(&kv.value))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(Got {
                    service: service.clone(),
                    name: span.name.clone(),
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent: hex::encode(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(&kv.value)))
                        .collect(),
                });
            }
        }
    }
    out
}

/// A node of five service processes with `extra` settings, logging under `logs`; returns once
/// every service answers.
async fn start_node(
    nats: &NatsServer,
    extra: &[(&str, &str)],
    logs: &Path,
) -> (Vec<ServiceProcess>, async_nats::Client) {
    std::fs::create_dir_all(logs).expect("mkdir");
    let mut env = process_env(&nats.url(), NODE);
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    let procs: Vec<ServiceProcess> = SERVICES
        .iter()
        .map(|s| {
            let mut env = env.clone();
            // The file-collector logs JSON, the others text: both must carry the trace id.
            if *s == "file-collector" {
                env.insert("FERRY_LOG_FORMAT".into(), "json".into());
            }
            ServiceProcess::start(s, &env, logs).expect("start")
        })
        .collect();
    let client = async_nats::connect(nats.url()).await.expect("connect");
    services_answer(&client).await;
    (procs, client)
}

/// `ferry apply` a local task moving three files, through the CLI.
fn apply_task(nats: &NatsServer, dir: &Path, task: &str) {
    let (src, dst) = (dir.join("in"), dir.join("out"));
    std::fs::create_dir_all(&src).expect("mkdir");
    let config = dir.join("ferry.toml");
    std::fs::write(&config, local_task(task, &src, &dst, "", "")).expect("write");
    let out = ferry(nats, &["apply", "-f", &config.to_string_lossy()], dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Three new files in the task's source.
fn new_files(dir: &Path) {
    for i in 0..3 {
        std::fs::write(
            dir.join("in").join(format!("{}.csv", Uuid::now_v7())),
            format!("row {i}\n"),
        )
        .expect("write");
    }
}

fn ferry(nats: &NatsServer, args: &[&str], cwd: &Path) -> std::process::Output {
    ferry_cli(&nats.url(), args, cwd)
}

/// `ferry --json task run <task> --wait`: the run's id, once it succeeded.
fn cli_run(nats: &NatsServer, dir: &Path, task: &str) -> Uuid {
    let out = ferry(
        nats,
        &["--json", "task", "run", task, "--wait", "--timeout", "60s"],
        dir,
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let finished: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    finished["run_id"]
        .as_str()
        .expect("a run id")
        .parse()
        .expect("a uuid")
}

/// Start a run through the task's NATS trigger with `headers`; wait until it succeeded.
async fn trigger_run(client: &async_nats::Client, task: &str, headers: HeaderMap) -> Uuid {
    let reply = client
        .request_with_headers(subjects::trigger(task), headers, "go".into())
        .await
        .expect("trigger answered");
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).expect("JSON");
    let run_id: Uuid = reply["run_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{reply}"))
        .parse()
        .expect("a uuid");
    succeeded(client, task, run_id).await;
    run_id
}

async fn succeeded(client: &async_nats::Client, task: &str, run_id: Uuid) {
    let js = async_nats::jetstream::new(client.clone());
    let finished = ferry_service::streams::wait_for_run(&js, task, run_id, Duration::from_secs(60))
        .await
        .expect("the run finished");
    assert_eq!(finished.status, RunStatus::Succeeded, "{finished:?}");
}

/// Every message on the run and work subjects while the test runs: (subject, headers).
fn record_messages(client: &async_nats::Client) -> Arc<Mutex<Vec<(String, HeaderMap)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    let client = client.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    tokio::spawn(async move {
        let mut sub = client.subscribe("ferry.work.>").await.expect("subscribe");
        client.flush().await.expect("flush");
        let _ = ready_tx.send(());
        while let Some(m) = sub.next().await {
            kept.lock()
                .unwrap()
                .push((m.subject.to_string(), m.headers.unwrap_or_default()));
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("subscribed");
    seen
}

/// Threads of the OpenTelemetry SDK's batch span processor in a service process (thread names
/// are cut to 15 bytes: `OpenTelemetry.T`).
fn exporter_threads(p: &ServiceProcess) -> usize {
    std::fs::read_dir(format!("/proc/{}/task", p.pid()))
        .expect("threads")
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .filter(|name| name.starts_with("OpenTelemetry"))
        .count()
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| v.as_str().to_string())
}

fn log_text(logs: &Path, service: &str) -> String {
    std::fs::read_dir(logs)
        .expect("logs")
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{service}-"))
        })
        .map(|e| std::fs::read_to_string(e.path()).expect("read log"))
        .collect()
}

/// The spans named `name` with `run_id` among `spans`.
fn spans_of<'a>(spans: &'a [Got], name: &str, run_id: Uuid) -> Vec<&'a Got> {
    spans
        .iter()
        .filter(|s| s.name == name && s.attributes.get("run_id") == Some(&run_id.to_string()))
        .collect()
}

/// The one span named `name` with `run_id` among `spans`.
fn span_of<'a>(spans: &'a [Got], name: &str, run_id: Uuid) -> &'a Got {
    let found = spans_of(spans, name, run_id);
    assert_eq!(found.len(), 1, "one {name} span of run {run_id} in {spans:#?}");
    found[0]
}

/// The `batch` spans of a run of three files, each the child of the run's `collect` span.
fn batches_of<'a>(spans: &'a [Got], run_id: Uuid, collect: &Got) -> Vec<&'a Got> {
    let batches = spans_of(spans, "batch", run_id);
    let files: u64 = batches
        .iter()
        .map(|b| b.attributes["files"].parse::<u64>().expect("a count"))
        .sum();
    assert_eq!(files, 3, "{batches:#?}");
    for batch in &batches {
        assert_eq!(batch.service, "ferry-transfer");
        assert_eq!(batch.parent, collect.span_id, "{batch:?}");
        assert_eq!(batch.trace_id, collect.trace_id, "{batch:?}");
        assert_eq!(batch.attributes.get("task").map(String::as_str), Some("traced"));
    }
    batches
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_run_is_one_trace_across_the_services_over_otlp() {
    let started = std::time::Instant::now();
    let receiver = Receiver::start().await;
    let nats = NatsServer::start().expect("nats");
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    let endpoint = receiver.endpoint();
    let (mut procs, client) =
        start_node(&nats, &[("FERRY_TELEMETRY__OTLP_ENDPOINT", &endpoint)], &logs).await;
    let seen = record_messages(&client);
    apply_task(&nats, dir.path(), "traced");

    // A run the operator starts with the CLI.
    new_files(dir.path());
    let run = cli_run(&nats, dir.path(), "traced");

    // A run triggered by a publisher that is itself traced: Ferry's run joins its trace.
    new_files(dir.path());
    let (outer_trace, outer_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let mut traced = HeaderMap::new();
    traced.insert(
        HEADER_TRACEPARENT,
        format!("00-{outer_trace}-{outer_span}-01").as_str(),
    );
    traced.insert(HEADER_TRACESTATE, "vendor=opaque");
    let joined = trigger_run(&client, "traced", traced).await;

    // Garbage trace headers, on a trigger and on a run request sent straight to the run queue:
    // each run starts a trace of its own and succeeds.
    new_files(dir.path());
    let mut garbage = HeaderMap::new();
    garbage.insert(HEADER_TRACEPARENT, "00-zzzz-not-a-trace-01 garbage");
    garbage.insert(HEADER_TRACESTATE, "=;,,=");
    let garbage_trigger = trigger_run(&client, "traced", garbage.clone()).await;
    new_files(dir.path());
    let js = async_nats::jetstream::new(client.clone());
    let lease = js
        .get_key_value(ferry_wire::topology::KV_LEASE)
        .await
        .expect("lease bucket")
        .entry(ferry_wire::topology::LEASE_KEY)
        .await
        .expect("read lease")
        .expect("a lease");
    let epoch = ferry_wire::decode::<ferry_wire::Lease>(&lease.value)
        .expect("lease")
        .epoch_at(lease.revision);
    let direct = Uuid::now_v7();
    let request = RunRequested {
        task: "traced".into(),
        run_id: direct,
        epoch,
        node: NODE.into(),
        trigger: Trigger::Manual { by: "test".into() },
        requested_at: Utc::now(),
        parameters: Default::default(),
    };
    let mut headers = garbage.clone();
    headers.insert(HEADER_EPOCH, epoch.to_string().as_str());
    js.publish_with_headers(
        subjects::run_request("traced"),
        headers,
        ferry_wire::encode(&request),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    succeeded(&client, "traced", direct).await;

    // Each service runs an exporter (its batch thread), and an ordered shutdown sends the
    // spans still queued.
    for p in &procs {
        assert!(exporter_threads(p) > 0, "{} runs no exporter", p.name);
    }
    for p in &mut procs {
        let status = p.terminate(Duration::from_secs(30)).expect("exits on SIGTERM");
        assert!(status.success(), "{} exited with {status}", p.name);
    }
    let spans = receiver.spans();

    // The CLI's run: run → collect → batch, one trace, three services, each the child of the
    // one before.
    let root = span_of(&spans, "run", run);
    let collect = span_of(&spans, "collect", run);
    assert_eq!(root.service, "ferry-scheduler");
    assert_eq!(collect.service, "ferry-file-collector");
    assert!(root.parent.is_empty(), "the run span is the root: {root:?}");
    assert_eq!(collect.parent, root.span_id, "{collect:?}");
    assert_eq!(collect.trace_id, root.trace_id, "{collect:?}");
    batches_of(&spans, run, collect);
    let trace = &root.trace_id;
    assert_ne!(trace, &"0".repeat(32));
    let in_trace: Vec<&Got> = spans.iter().filter(|s| &s.trace_id == trace).collect();
    let services: BTreeSet<&str> = in_trace.iter().map(|s| s.service.as_str()).collect();
    assert!(services.len() >= 3, "services in the trace: {services:?}");
    assert_eq!(collect.attributes.get("task").map(String::as_str), Some("traced"));
    // Every span of the trace hangs off the run span.
    let ids: BTreeSet<&str> = in_trace.iter().map(|s| s.span_id.as_str()).collect();
    for s in &in_trace {
        assert!(
            s.parent.is_empty() && s.span_id == root.span_id || ids.contains(s.parent.as_str()),
            "orphan {s:?}"
        );
    }

    // The messages of the run carried the context.
    let seen = seen.lock().unwrap().clone();
    let of_run: Vec<&(String, HeaderMap)> = seen
        .iter()
        .filter(|(subject, headers)| {
            subject.starts_with("ferry.work.")
                && header(headers, HEADER_TRACEPARENT).is_some_and(|t| t.contains(trace.as_str()))
        })
        .collect();
    for prefix in ["ferry.work.run.", "ferry.work.file.", "ferry.work.result."] {
        assert!(
            of_run.iter().any(|(s, _)| s.starts_with(prefix)),
            "no {prefix}* message carried trace {trace}: {seen:?}"
        );
    }

    // Log lines of the run carry its trace id, in text and in JSON.
    let scheduler_log = log_text(&logs, "scheduler");
    assert!(
        scheduler_log.lines().any(|l| l.contains("run requested")
            && l.contains(&run.to_string())
            && l.contains(&format!("trace_id={trace}"))),
        "{scheduler_log}"
    );
    let collector_log = log_text(&logs, "file-collector");
    let json_lines: Vec<serde_json::Value> = collector_log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        json_lines.iter().any(|l| l["fields"]["message"] == "run started"
            && l["span"]["run_id"] == run.to_string()
            && l["span"]["trace_id"] == trace.as_str()),
        "{collector_log}"
    );

    // A traced trigger: the run continues the publisher's trace.
    let joined_root = span_of(&spans, "run", joined);
    assert_eq!(joined_root.trace_id, outer_trace);
    assert_eq!(joined_root.parent, outer_span);
    batches_of(&spans, joined, span_of(&spans, "collect", joined));
    assert_eq!(span_of(&spans, "collect", joined).trace_id, outer_trace);

    // Garbage headers: new roots, and the work went on.
    let garbage_root = span_of(&spans, "run", garbage_trigger);
    assert!(garbage_root.parent.is_empty(), "{garbage_root:?}");
    assert_eq!(
        span_of(&spans, "collect", garbage_trigger).parent,
        garbage_root.span_id
    );
    let direct_collect = span_of(&spans, "collect", direct);
    assert!(direct_collect.parent.is_empty(), "{direct_collect:?}");
    batches_of(&spans, direct, direct_collect);
    let traces: BTreeSet<&str> = [
        &root.trace_id,
        &garbage_root.trace_id,
        &direct_collect.trace_id,
        &joined_root.trace_id,
    ]
    .into_iter()
    .map(String::as_str)
    .collect();
    assert_eq!(traces.len(), 4, "each run is a trace of its own");
    eprintln!("traced runs checked in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_an_endpoint_no_trace_header_log_field_or_exporter_exists() {
    let nats = NatsServer::start().expect("nats");
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    let (mut procs, client) = start_node(&nats, &[], &logs).await;
    let seen = record_messages(&client);
    apply_task(&nats, dir.path(), "untraced");
    new_files(dir.path());
    let run = cli_run(&nats, dir.path(), "untraced");

    // No exporter thread in any service.
    for p in &procs {
        assert_eq!(exporter_threads(p), 0, "{} runs an exporter", p.name);
    }
    for p in &mut procs {
        p.terminate(Duration::from_secs(30)).expect("exits on SIGTERM");
    }
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|(s, _)| s.starts_with("ferry.work.file.")),
        "the run's messages were seen: {seen:?}"
    );
    for (subject, headers) in &seen {
        assert!(
            header(headers, HEADER_TRACEPARENT).is_none() && header(headers, HEADER_TRACESTATE).is_none(),
            "{subject} carries trace headers: {headers:?}"
        );
    }
    for service in SERVICES {
        let log = log_text(&logs, service);
        assert!(!log.contains("trace_id"), "{service}: {log}");
    }
    assert!(log_text(&logs, "file-collector").contains(&run.to_string()));
}
