//! No secret appears in any output of a full run: a node of real processes moves files to an FTP
//! server and an S3 bucket with the right credentials and fails with wrong ones, and an operator
//! uses the CLI as usual; then every log line of every service, every CLI output (text and
//! `--json`), every metric, the stored configuration, run records, results and the audit trail
//! are searched for every password and key used.

mod remote;

use std::path::Path;

use ferry_testkit::peers::TEST_PASSWORD;
use ferry_tests::{
    NODE, NatsServer, SERVICES, ServiceProcess, bin_path, free_port, http_get, process_env, services_answer,
};
use ferry_wire::topology;
use remote::Remote;

/// Every message of a stream, as text.
async fn stream_text(js: &async_nats::jetstream::Context, stream: &str) -> String {
    use futures::StreamExt;
    let Ok(stream) = js.get_stream(stream).await else {
        return String::new();
    };
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .expect("consumer");
    let pending = consumer.cached_info().num_pending;
    let mut text = String::new();
    if pending == 0 {
        return text;
    }
    let mut messages = consumer.messages().await.expect("messages");
    while let Some(Ok(m)) = messages.next().await {
        text.push_str(&String::from_utf8_lossy(&m.payload));
        text.push('\n');
        if m.info().expect("info").pending == 0 {
            break;
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_appears_in_any_output_of_a_full_run() {
    let ftp = Remote::plain_ftp().expect("vsftpd");
    let s3 = Remote::s3().expect("moto");
    let s3_secret = s3.secret().expect("a secret key");
    let secrets = [
        TEST_PASSWORD.to_string(),
        "wrong-password-1".to_string(),
        s3_secret,
    ];

    let nats = NatsServer::start().expect("nats");
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    let mut env = process_env(&nats.url(), NODE);
    let mut ports = Vec::new();
    for service in SERVICES {
        let port = free_port();
        ports.push(port);
        let key = format!("FERRY_{}__METRICS_ADDR", service.to_uppercase().replace('-', "_"));
        env.insert(key, format!("127.0.0.1:{port}"));
    }
    let _procs: Vec<ServiceProcess> = SERVICES
        .iter()
        .map(|s| ServiceProcess::start(s, &env, &logs).expect("start"))
        .collect();
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    services_answer(&client).await;

    // The operator's configuration file holds the secrets in the clear, as written.
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    for i in 0..20 {
        std::fs::write(src.join(format!("f{i}.csv")), format!("row {i}\n")).expect("write");
    }
    ftp.make_folder("up").await;
    s3.make_folder("up").await;
    let config = [
        ftp.host("ftp-ok", true),
        ftp.host("ftp-bad", false),
        s3.host("s3-ok", true),
        s3.host("s3-bad", false),
        remote::task(
            "to-ftp",
            ("local", &src.to_string_lossy()),
            ("ftp-ok", &ftp.folder("up")),
            "",
        ),
        remote::task(
            "to-ftp-bad",
            ("local", &src.to_string_lossy()),
            ("ftp-bad", &ftp.folder("up")),
            "",
        ),
        remote::task(
            "to-s3",
            ("local", &src.to_string_lossy()),
            ("s3-ok", &s3.folder("up")),
            "",
        ),
        remote::task(
            "to-s3-bad",
            ("local", &src.to_string_lossy()),
            ("s3-bad", &s3.folder("up")),
            "",
        ),
        remote::task(
            "from-s3-bad",
            ("s3-bad", &s3.folder("up")),
            ("local", &dir.path().join("back").to_string_lossy()),
            "",
        ),
    ]
    .join("\n");
    let config_file = dir.path().join("ferry.toml");
    std::fs::write(&config_file, &config).expect("write");

    let mut seen = String::new();
    let mut cli = |args: &[&str]| -> std::process::Output {
        let out = std::process::Command::new(bin_path("ferry"))
            .args(args)
            .current_dir(dir.path())
            .env("FERRY_NATS_URL", nats.url())
            .env("FERRY_NODE_ID", NODE)
            .env("FERRY_DATA_DIR", &env["FERRY_DATA_DIR"])
            .output()
            .expect("run ferry");
        seen.push_str(&format!(
            "$ ferry {}\n{}{}\n",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
        out
    };
    let applied = cli(&["apply", "-f", config_file.to_str().expect("utf-8")]);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    for task in ["to-ftp", "to-s3"] {
        let out = cli(&["task", "run", task, "--wait", "--timeout", "2m"]);
        assert!(
            out.status.success(),
            "{task}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    for task in ["to-ftp-bad", "to-s3-bad", "from-s3-bad"] {
        let out = cli(&["task", "run", task, "--wait", "--timeout", "2m"]);
        assert!(!out.status.success(), "{task} must fail with a wrong secret");
    }
    for args in [
        &["tasks", "list"][..],
        &["--json", "tasks", "list"],
        &["task", "show", "to-ftp"],
        &["--json", "task", "show", "to-s3"],
        &["runs", "list"],
        &["--json", "runs", "list"],
        &["audit"],
        &["--json", "audit"],
        &["host", "test", "ftp-ok"],
        &["--json", "host", "test", "ftp-bad"],
        &["host", "test", "s3-bad"],
        &["--json", "host", "test", "s3-ok"],
        &["failover", "status"],
        &["keymat", "status"],
        &["--json", "scheduler", "status"],
    ] {
        cli(args);
    }
    let json_runs = cli(&["--json", "runs", "list"]);
    let runs: serde_json::Value = serde_json::from_slice(&json_runs.stdout).expect("json");
    for run in runs.as_array().expect("a list") {
        let id = run["run_id"].as_str().expect("an id").to_string();
        cli(&["runs", "show", &id]);
        cli(&["--json", "runs", "show", &id]);
    }
    // Metrics of every service.
    for port in &ports {
        if let Ok((_, body)) = http_get(*port, "/metrics") {
            seen.push_str(&body);
        }
    }
    // What is stored: the configuration document, run records, results, events, audit.
    let kv = js
        .get_key_value(topology::KV_CONFIG)
        .await
        .expect("config bucket");
    let stored = kv.get(topology::CONFIG_KEY).await.expect("read").expect("stored");
    seen.push_str(&String::from_utf8_lossy(&stored));
    for stream in [
        topology::STREAM_EVENTS,
        topology::STREAM_AUDIT,
        topology::STREAM_RESULTS,
        "KV_ferry_runs",
        "KV_ferry_config",
    ] {
        seen.push_str(&stream_text(&js, stream).await);
    }
    // Every service's log.
    let mut log_text = String::new();
    for entry in std::fs::read_dir(&logs).expect("logs") {
        log_text.push_str(&std::fs::read_to_string(entry.expect("entry").path()).unwrap_or_default());
    }
    assert!(
        log_text.contains("file not delivered"),
        "the logs must show the failures: the search covers them"
    );
    seen.push_str(&log_text);

    for secret in &secrets {
        if let Some(at) = seen.find(secret.as_str()) {
            let from = at.saturating_sub(300);
            panic!(
                "a secret appears in the output:\n…{}…",
                &seen[seen.floor_char_boundary(from)
                    ..seen.ceil_char_boundary(at + secret.len() + 100).min(seen.len())]
            );
        }
    }
    // The search is not vacuous: the outputs name the hosts and the servers' refusals.
    for expected in [
        "ftp-bad",
        "530",
        "s3-bad",
        "SignatureDoesNotMatch",
        "sealed under",
    ] {
        assert!(seen.contains(expected), "the outputs should contain {expected:?}");
    }
    assert!(Path::new(&config_file).exists());
}
