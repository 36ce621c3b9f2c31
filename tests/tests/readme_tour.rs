//! The README's five-minute tour, step by step, with the real binaries as separate processes
//! against a real nats-server: the quickstart task applied from `examples/quickstart.toml`, a
//! dropped file moved by the *scheduled* run, then the CLI commands the README shows (text and
//! `--json`), each service's `/metrics` and `/healthz`, and a clean stop on SIGTERM.
//!
//! Like `make run`, the CLI runs in a working directory (here a temp dir) holding
//! `examples/quickstart.toml` and `.ferry/demo/{inbox,outbox}`; the file's relative folders
//! resolve against it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use chrono::{Timelike, Utc};
use serde_json::Value;

use ferry_tests::{NODE, NatsServer, ServiceProcess, ferry_cli, process_env, sha256_file, workspace_root};

/// The services `make run` starts, in its order, with the settings section naming each.
const SERVICES: [(&str, &str); 5] = [
    ("failover-coordinator", "FAILOVER_COORDINATOR"),
    ("cert-handler", "CERT_HANDLER"),
    ("scheduler", "SCHEDULER"),
    ("file-collector", "FILE_COLLECTOR"),
    ("transfer", "TRANSFER"),
];

/// A node of real service processes, a working directory laid out like the repository after
/// `make run`, and the CLI pointed at both.
struct TourNode {
    nats: NatsServer,
    dir: tempfile::TempDir,
    services: Vec<ServiceProcess>,
    /// service name → its metrics port.
    metrics_ports: BTreeMap<&'static str, u16>,
}

impl TourNode {
    fn start() -> anyhow::Result<Self> {
        let nats = NatsServer::start()?;
        let dir = tempfile::Builder::new().prefix("ferry-tour-").tempdir()?;
        std::fs::create_dir_all(dir.path().join("examples"))?;
        std::fs::copy(
            workspace_root().join("examples/quickstart.toml"),
            dir.path().join("examples/quickstart.toml"),
        )?;
        std::fs::create_dir_all(dir.path().join(".ferry/demo/inbox"))?;
        std::fs::create_dir_all(dir.path().join(".ferry/demo/outbox"))?;
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs)?;

        // Explicit metrics ports, as `make run` sets them, so the test knows where to look.
        let listeners: Vec<TcpListener> = SERVICES
            .iter()
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<_, _>>()?;
        let mut env = process_env(&nats.url(), NODE);
        let mut metrics_ports = BTreeMap::new();
        for ((service, section), listener) in SERVICES.iter().zip(&listeners) {
            let port = listener.local_addr()?.port();
            env.insert(
                format!("FERRY_{section}__METRICS_ADDR"),
                format!("127.0.0.1:{port}"),
            );
            metrics_ports.insert(*service, port);
        }
        drop(listeners);

        let services = SERVICES
            .iter()
            .map(|(service, _)| ServiceProcess::start(service, &env, &logs))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let node = TourNode {
            nats,
            dir,
            services,
            metrics_ports,
        };
        // `make run` waits for the same answer before applying the quickstart file.
        poll(
            Duration::from_secs(60),
            "`ferry failover status` to answer",
            || {
                node.ferry_output(&["failover", "status"])
                    .status
                    .success()
                    .then_some(())
            },
        );
        poll(
            Duration::from_secs(60),
            "`ferry scheduler status` to answer",
            || {
                node.ferry_output(&["scheduler", "status"])
                    .status
                    .success()
                    .then_some(())
            },
        );
        Ok(node)
    }

    fn inbox(&self) -> PathBuf {
        self.dir.path().join(".ferry/demo/inbox")
    }

    fn outbox(&self) -> PathBuf {
        self.dir.path().join(".ferry/demo/outbox")
    }

    fn ferry_output(&self, args: &[&str]) -> Output {
        ferry_cli(&self.nats.url(), args, self.dir.path())
    }

    /// Run `ferry ARGS`, require success, return stdout.
    fn ferry(&self, args: &[&str]) -> String {
        let out = self.ferry_output(args);
        assert!(
            out.status.success(),
            "`ferry {}` failed ({}):\nstdout: {}\nstderr: {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tails()
        );
        String::from_utf8(out.stdout).expect("the CLI prints UTF-8")
    }

    /// Run `ferry --json ARGS` and parse its one JSON document.
    fn ferry_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let text = self.ferry(&all);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("`ferry --json {}`: {e}\n{text}", args.join(" ")))
    }

    fn log_tails(&self) -> String {
        self.services
            .iter()
            .map(|s| {
                let log = std::fs::read_to_string(&s.log).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(15)..].join("\n");
                format!("--- ferry-{} ---\n{tail}\n", s.name)
            })
            .collect()
    }
}

/// Poll `check` every 200 ms until it gives `Some`, or panic after `timeout` naming `what`.
fn poll<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `GET http://127.0.0.1:PORT/PATH` → (status code, body).
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}

/// Names of the NATS micro services of node `NODE` that answer `$SRV.PING`.
fn micro_service_names(url: &str) -> Vec<String> {
    use futures::StreamExt;
    let runtime = tokio::runtime::Runtime::new().expect("build a tokio runtime");
    runtime.block_on(async {
        let client = async_nats::connect(url).await.expect("connect to NATS");
        let inbox = client.new_inbox();
        let mut replies = client.subscribe(inbox.clone()).await.expect("subscribe");
        client
            .publish_with_reply("$SRV.PING", inbox, "".into())
            .await
            .expect("publish $SRV.PING");
        let mut names = Vec::new();
        while let Ok(Some(reply)) = tokio::time::timeout(Duration::from_secs(1), replies.next()).await {
            let ping: Value = serde_json::from_slice(&reply.payload).expect("a JSON ping response");
            if ping["metadata"]["node"] == NODE {
                names.push(ping["name"].as_str().expect("a name").to_string());
            }
        }
        names.sort();
        names
    })
}

/// Put `content` into `folder/name` the way a well-behaved sender does: write elsewhere, rename in.
fn drop_file(folder: &Path, name: &str, content: &str) -> PathBuf {
    let staging = folder
        .parent()
        .expect("inbox has a parent")
        .join(format!(".{name}.tmp"));
    std::fs::write(&staging, content).expect("write the file to drop");
    let path = folder.join(name);
    std::fs::rename(&staging, &path).expect("rename the file into the inbox");
    path
}

/// Wait until the wall clock is at least 5 s away from a minute boundary (a schedule slot), so a
/// manual run does not meet the every-minute scheduled run of the same task.
fn away_from_slot() {
    while !(5..=45).contains(&Utc::now().second()) {
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn readme_tour_moves_a_dropped_file_on_schedule_and_the_cli_shows_it() {
    let mut node = TourNode::start().expect("start the node");

    // ferry apply -f examples/quickstart.toml
    let applied = node.ferry(&["apply", "-f", "examples/quickstart.toml"]);
    assert!(
        applied.contains("examples/quickstart.toml: applied as revision") && applied.contains("1 task(s)"),
        "{applied}"
    );
    let again = node.ferry(&["apply", "-f", "examples/quickstart.toml"]);
    assert!(
        again.starts_with("examples/quickstart.toml: unchanged (revision "),
        "applying the same file again: {again}"
    );

    // ferry failover status: this node is active, with an epoch.
    let failover = node.ferry(&["failover", "status"]);
    assert!(failover.contains("node:         node1"), "{failover}");
    assert!(failover.contains("role:         active"), "{failover}");
    assert!(failover.contains("lease holder: node1"), "{failover}");
    let failover_json = node.ferry_json(&["failover", "status"]);
    assert_eq!(failover_json["role"], "active", "{failover_json}");
    assert_eq!(failover_json["node"], NODE);
    let epoch = failover_json["epoch"].as_u64().expect("epoch is a number");
    assert!(epoch > 0, "{failover_json}");

    // ferry tasks list: the quickstart task, every minute, with its next run.
    let tasks = node.ferry(&["tasks", "list"]);
    let row = tasks
        .lines()
        .find(|l| l.starts_with("quickstart"))
        .unwrap_or_else(|| panic!("no quickstart row:\n{tasks}"));
    assert!(row.contains("yes") && row.contains("every minute (UTC)"), "{row}");
    let tasks_json = node.ferry_json(&["tasks", "list"]);
    assert_eq!(tasks_json[0]["name"], "quickstart", "{tasks_json}");
    assert_eq!(tasks_json[0]["schedules"][0], "every minute (UTC)");
    assert!(tasks_json[0]["next_run"].is_string(), "{tasks_json}");

    // ferry task show quickstart: folders resolved against the CLI's working directory.
    let show = node.ferry(&["task", "show", "quickstart"]);
    let inbox = node.inbox();
    let outbox = node.outbox();
    assert!(
        show.contains(&format!(
            "local:{}  masks \"*.*\" new-files-only delete-after",
            inbox.display()
        )),
        "{show}"
    );
    assert!(
        show.contains(&format!("local:{}/[OrigName]", outbox.display())),
        "{show}"
    );
    assert!(show.contains("overwrite=Unique"), "{show}");

    // echo hello > .ferry/demo/inbox/hello.txt — the scheduled run moves it within a minute.
    let content = "hello from the README tour\n";
    let dropped = drop_file(&inbox, "hello.txt", content);
    let delivered = outbox.join("hello.txt");
    poll(
        Duration::from_secs(75),
        "the scheduled run to move hello.txt",
        || (delivered.exists() && !dropped.exists()).then_some(()),
    );
    assert_eq!(
        std::fs::read_to_string(&delivered).expect("read outbox file"),
        content
    );
    let sha = sha256_file(&delivered);

    // ferry runs list: the scheduled run that delivered it.
    let runs_json = node.ferry_json(&["runs", "list", "--task", "quickstart"]);
    let run = runs_json
        .as_array()
        .expect("a list")
        .iter()
        .find(|r| r["files_delivered"] == 1)
        .unwrap_or_else(|| panic!("no run delivered a file: {runs_json}"))
        .clone();
    assert_eq!(run["trigger"]["kind"], "schedule", "moved by the schedule: {run}");
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["epoch"], epoch, "runs carry the node's epoch");
    let run_id = run["run_id"].as_str().expect("run id").to_string();
    let runs = node.ferry(&["runs", "list"]);
    let row = runs
        .lines()
        .find(|l| l.starts_with(&run_id))
        .unwrap_or_else(|| panic!("run {run_id} not listed:\n{runs}"));
    assert!(row.contains("quickstart") && row.contains("succeeded"), "{row}");
    assert_eq!(
        row.split_whitespace().rev().take(3).collect::<Vec<_>>(),
        ["0", "0", "1"],
        "OK 1, SKIP 0, FAIL 0: {row}"
    );

    // ferry runs show RUN_ID: the file, from where to where.
    let shown = node.ferry(&["runs", "show", &run_id]);
    assert!(
        shown.contains(&format!(
            "run {run_id} of task quickstart: succeeded (1 delivered"
        )),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "delivered {} -> {}",
            dropped.display(),
            delivered.display()
        )),
        "{shown}"
    );
    let shown_json = node.ferry_json(&["runs", "show", &run_id]);
    assert_eq!(shown_json["files"][0]["sha256"], sha.as_str(), "{shown_json}");

    // ferry audit: the movement, with size, hash, node and epoch; and the source's deletion.
    let audit = node.ferry(&["audit"]);
    let line = audit
        .lines()
        .find(|l| l.contains(" transfer ") && l.contains(&run_id))
        .unwrap_or_else(|| panic!("no transfer record of run {run_id}:\n{audit}"));
    for part in [
        "delivered".to_string(),
        "task=quickstart".to_string(),
        format!("node={NODE}"),
        format!("epoch={epoch}"),
        format!("local:{} -> local:{}", dropped.display(), delivered.display()),
        format!("size={}", content.len()),
        format!("sha256={sha}"),
    ] {
        assert!(line.contains(&part), "audit line lacks {part:?}: {line}");
    }
    assert!(
        audit.lines().any(|l| l.contains(" delete_source ")
            && l.contains(&run_id)
            && l.contains(&format!("{} -> - size=", dropped.display()))),
        "no delete_source record of run {run_id}:\n{audit}"
    );
    let audit_json = node.ferry_json(&["audit", "--task", "quickstart"]);
    let actions: Vec<&str> = audit_json
        .as_array()
        .expect("a list")
        .iter()
        .filter(|r| r["run_id"] == run_id.as_str())
        .map(|r| r["action"].as_str().expect("action"))
        .collect();
    assert_eq!(actions, ["transfer", "delete_source"], "{audit_json}");

    // ferry audit verify: the trail is sealed within seconds and intact.
    let sealed = (0..40).find_map(|_| {
        let text = node.ferry(&["audit", "verify"]);
        if text.contains("audit trail intact") && text.contains(" 0 newer record(s)") {
            return Some(text);
        }
        std::thread::sleep(Duration::from_millis(500));
        None
    });
    let sealed = sealed.expect("the audit trail is sealed within 20 s");
    assert!(sealed.contains("head of the chain: "), "{sealed}");

    // ferry task run quickstart --wait: a manual run, now; exit 0 when it succeeds.
    away_from_slot();
    let second = drop_file(&inbox, "second.txt", "the fast path\n");
    let manual = node.ferry(&["task", "run", "quickstart", "--wait"]);
    assert!(manual.contains("succeeded (1 delivered"), "{manual}");
    assert!(outbox.join("second.txt").exists() && !second.exists());

    // Metrics and health of every service.
    for (service, port) in &node.metrics_ports {
        let (code, body) = http_get(*port, "/healthz").expect("GET /healthz");
        assert_eq!((code, body.as_str()), (200, "ok"), "ferry-{service} /healthz");
        let (code, body) = http_get(*port, "/metrics").expect("GET /metrics");
        assert_eq!(code, 200, "ferry-{service} /metrics");
        let expected = match *service {
            "scheduler" => "ferry_scheduler_runs_requested_total{task=\"quickstart\",trigger=\"schedule\"}",
            "file-collector" => "ferry_file_collector_runs_total",
            "transfer" => "ferry_transfer_files_total{outcome=\"delivered\",task=\"quickstart\"} 2",
            "cert-handler" => "ferry_cert_handler_up 1",
            "failover-coordinator" => "ferry_failover_lease_valid 1",
            other => unreachable!("unknown service {other}"),
        };
        assert!(
            body.contains(expected),
            "ferry-{service} /metrics lacks {expected:?}:\n{body}"
        );
    }

    // Standard NATS tooling discovers the services (`nats micro list` sends `$SRV.PING`).
    let mut expected: Vec<String> = SERVICES.iter().map(|(s, _)| format!("ferry-{s}")).collect();
    expected.sort();
    assert_eq!(micro_service_names(&node.nats.url()), expected);

    // Ctrl-C: every service stops cleanly on the signal.
    for service in &mut node.services {
        let status = service
            .terminate(Duration::from_secs(40))
            .expect("stops on SIGTERM");
        assert!(status.success(), "ferry-{} exited with {status}", service.name);
    }
}

#[test]
fn a_failing_run_exits_non_zero_and_names_the_problem() {
    let node = TourNode::start().expect("start the node");
    let missing = node.dir.path().join("no-such-folder");
    let toml = format!(
        r#"
[[task]]
name = "broken"

[[task.source]]
host = "local"
folder = "{}"

[[task.destination]]
host = "local"
folder = "{}"
"#,
        missing.display(),
        node.outbox().display()
    );
    std::fs::write(node.dir.path().join("broken.toml"), toml).expect("write broken.toml");
    node.ferry(&["apply", "-f", "broken.toml"]);

    let out = node.ferry_output(&["task", "run", "broken", "--wait"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "a failed run exits 1:\n{stdout}");
    assert!(stdout.contains("of task broken: failed"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "error: source[0]: host \"local\": folder {:?}: No such file or directory",
            missing.display().to_string()
        )),
        "the error names the folder:\n{stdout}"
    );

    // A service refuses bad settings, naming the field and value, and exits 2.
    let out = std::process::Command::new(ferry_tests::bin_path("ferry-scheduler"))
        .env("FERRY_NATS_URL", node.nats.url())
        .env("FERRY_NODE_ID", "node.1")
        .output()
        .expect("run ferry-scheduler");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("node_id: \"node.1\" is not a valid name"),
        "{stderr}"
    );

    // A remote host without what it needs to connect is refused, naming the field.
    std::fs::write(
        node.dir.path().join("sftp.toml"),
        "[[host]]\nname = \"bank\"\nkind = \"sftp\"\n",
    )
    .expect("write sftp.toml");
    let out = node.ferry_output(&["apply", "-f", "sftp.toml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("host \"bank\": address: is missing (required)"),
        "{stderr}"
    );

    let out = node.ferry_output(&["--json", "task", "run", "broken", "--wait"]);
    assert_eq!(out.status.code(), Some(1));
    let run: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(run["status"], "failed", "{run}");
    assert!(
        run["error"]
            .as_str()
            .is_some_and(|e| e.contains("no-such-folder")),
        "{run}"
    );
}

/// The `toml` code block of README.md that declares task `name`.
fn readme_toml_block(name: &str) -> String {
    readme_toml_block_with(&format!("name = \"{name}\""))
}

/// The first `toml` code block of README.md that contains `text`.
fn readme_toml_block_with(text: &str) -> String {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("read README.md");
    readme
        .split("```toml\n")
        .skip(1)
        .filter_map(|rest| rest.split_once("\n```").map(|(block, _)| block.to_string()))
        .find(|block| block.contains(text))
        .unwrap_or_else(|| panic!("README.md has no toml block with {text:?}"))
}

/// The README's `[nats]` example is valid node settings: each service its own seed file.
#[test]
fn readme_nats_settings_are_valid_node_settings() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("node.toml");
    std::fs::write(&file, readme_toml_block_with("[nats]")).expect("write the example");
    let settings = ferry_service::Settings::load(Some(&file)).expect("the README's [nats] loads");
    let auth = settings.nats.expand("node2", "transfer");
    assert_eq!(
        auth.nkey_seed_file.as_deref(),
        Some("/etc/ferry/nats/node2/transfer.nk")
    );
}

/// The README's configuration example, with its `/srv/ferry` folders moved under `root`.
fn readme_payroll(root: &Path, overwrite: &str) -> String {
    let block = readme_toml_block("payroll");
    assert!(block.contains("overwrite = \"unique\""), "{block}");
    block
        .replace("/srv/ferry", &root.display().to_string())
        .replace("overwrite = \"unique\"", &format!("overwrite = \"{overwrite}\""))
}

#[test]
fn readme_configuration_example_works_as_described() {
    let node = TourNode::start().expect("start the node");
    let root = node.dir.path().join("srv");
    let src = root.join("payroll/out");
    std::fs::create_dir_all(src.join("sub")).expect("create the source folder");
    for (name, content) in [
        ("a.csv", "a"),
        ("draft-b.csv", "excluded"),
        ("notes.txt", "not matched"),
        ("sub/report1.txt", "report one"),
        ("sub/report12.txt", "? is one character"),
    ] {
        std::fs::write(src.join(name), content).expect("write a source file");
    }
    let apply = |overwrite: &str| {
        let path = node.dir.path().join(format!("payroll-{overwrite}.toml"));
        std::fs::write(&path, readme_payroll(&root, overwrite)).expect("write payroll.toml");
        node.ferry(&["apply", "-f", &path.display().to_string()])
    };
    let run = || -> (bool, Value) {
        let out = node.ferry_output(&["--json", "task", "run", "payroll", "--wait"]);
        let run: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        (out.status.success(), run)
    };
    apply("unique");
    // The example's schedules fire every quarter hour in office hours; keep them from meeting the
    // manual runs below (a task never overlaps itself, so a clash would skip a run).
    let stopped = node.ferry(&["scheduler", "stop"]);
    assert!(stopped.contains("stopped"), "{stopped}");

    let show = node.ferry(&["task", "show", "payroll"]);
    for part in [
        "masks \"*.csv;report?.txt\" exclude \"draft*\" +subdirectories new-files-only",
        "overwrite=Unique +relative-subdirs",
        "schedule       daily at 08:00, 17:30 on mon-fri (Europe/Berlin)",
        "schedule       every 15 minutes from 09:00 to 17:00 (Europe/Berlin)",
    ] {
        assert!(
            show.contains(part),
            "`ferry task show payroll` lacks {part:?}:\n{show}"
        );
    }

    // The first run: the matching files, under dated names, in their subfolders.
    let (ok, first) = run();
    assert!(ok, "{first}");
    assert_eq!(first["files_delivered"], 2, "{first}");
    let started: chrono::DateTime<chrono::Local> = first["started_at"]
        .as_str()
        .expect("started_at")
        .parse::<chrono::DateTime<Utc>>()
        .expect("a time")
        .into();
    let (year, day) = (
        started.format("%Y").to_string(),
        started.format("%Y%m%d").to_string(),
    );
    let bank = root.join("bank").join(&year);
    let a = bank.join(format!("a_{day}.csv"));
    let report = bank.join(format!("sub/report1_{day}.txt"));
    assert_eq!(std::fs::read_to_string(&a).expect("a.csv delivered"), "a");
    assert_eq!(
        std::fs::read_to_string(&report).expect("report1.txt delivered"),
        "report one"
    );
    let mut delivered: Vec<String> = ferry_tests::tree_hashes(&root.join("bank")).into_keys().collect();
    delivered.sort();
    assert_eq!(
        delivered,
        [
            format!("{year}/a_{day}.csv"),
            format!("{year}/sub/report1_{day}.txt")
        ]
    );
    assert!(
        src.join("a.csv").exists(),
        "delete_after = false keeps the source"
    );

    // new_files_only: nothing moves again until a file changes.
    let (ok, second) = run();
    assert!(
        ok && second["files"].as_array().is_some_and(Vec::is_empty),
        "{second}"
    );

    // Each overwrite policy, when a changed a.csv meets the delivered one (same day).
    let mut version = 0;
    let mut change_a = || {
        version += 1;
        // A different size, so the change shows even within the file system's time granularity.
        std::fs::write(src.join("a.csv"), "v".repeat(version + 1)).expect("change a.csv");
    };
    change_a();
    let (ok, unique) = run();
    assert!(ok, "{unique}");
    assert_eq!(unique["files_delivered"], 1, "{unique}");
    assert_eq!(
        std::fs::read_to_string(bank.join(format!("a_{day} (1).csv"))).expect("unique name"),
        "vv"
    );

    apply("skip");
    change_a();
    let (ok, skip) = run();
    assert!(ok, "skip is not a failure: {skip}");
    assert_eq!(
        (skip["files_delivered"].as_u64(), skip["files_skipped"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(
        std::fs::read_to_string(&a).expect("a.csv"),
        "a",
        "skip leaves the file"
    );

    apply("fail");
    change_a();
    let (ok, fail) = run();
    assert!(!ok, "fail fails the run: {fail}");
    assert_eq!(fail["status"], "failed");
    assert!(
        fail["files"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("destination file exists")),
        "{fail}"
    );
    assert_eq!(
        std::fs::read_to_string(&a).expect("a.csv"),
        "a",
        "fail leaves the file"
    );

    apply("overwrite");
    let (ok, overwrite) = run();
    assert!(ok, "the failed file is retried: {overwrite}");
    assert_eq!(overwrite["files_delivered"], 1, "{overwrite}");
    assert_eq!(
        std::fs::read_to_string(&a).expect("a.csv"),
        "vvvv",
        "overwrite replaces the file"
    );

    // A bad file: the README's error, exit 1, nothing changed; --dry-run only validates.
    let bad = readme_payroll(&root, "unique").replace(
        "file_name = \"[OrigBase]_[yyyy][mm][dd].[OrigExt]\"",
        "file_name = \"[OrigNam]\"",
    );
    std::fs::write(node.dir.path().join("payroll.toml"), bad).expect("write payroll.toml");
    let out = node.ferry_output(&["apply", "-f", "payroll.toml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(
            "payroll.toml: configuration rejected (1 problem); nothing was changed:\n  task \"payroll\": \
             destination[0].file_name: \"[OrigNam]\" uses unknown macro [OrigNam]; did you mean [OrigName]? known: [OrigName] "
        ),
        "{stderr}"
    );
    assert!(
        node.ferry(&["task", "show", "payroll"])
            .contains("overwrite=Overwrite")
    );
    std::fs::write(
        node.dir.path().join("payroll.toml"),
        readme_payroll(&root, "skip"),
    )
    .expect("write");
    let dry = node.ferry(&["apply", "--dry-run", "-f", "payroll.toml"]);
    assert!(
        dry.contains("payroll.toml: valid: 1 task(s)") && dry.contains("nothing changed"),
        "{dry}"
    );
    assert!(
        node.ferry(&["task", "show", "payroll"])
            .contains("overwrite=Overwrite")
    );
}

/// A free 127.0.0.1 port, and `n` free consecutive ones (for the metrics ports of `make run`).
fn free_ports(n: u16) -> u16 {
    for _ in 0..200 {
        let base = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind a free port")
            .port();
        if base > u16::MAX - n {
            continue;
        }
        let held: Result<Vec<TcpListener>, _> = (base..base + n)
            .map(|p| TcpListener::bind(("127.0.0.1", p)))
            .collect();
        if held.is_ok() {
            return base;
        }
    }
    panic!("no {n} consecutive free ports");
}

/// `scripts/run-node.sh` (what `make run` runs) in `dir`, with the debug binaries and free ports.
fn run_node_script(dir: &Path, nats_port: u16) -> std::process::Command {
    // The monitoring and five metrics ports, never overlapping the NATS port: it is free until
    // the script starts nats-server, so a separate search could pick it again.
    let others = loop {
        let base = free_ports(6);
        if !(base..base + 6).contains(&nats_port) {
            break base;
        }
    };
    use std::os::unix::process::CommandExt;
    let bin_dir = ferry_tests::bin_path("ferry")
        .parent()
        .expect("binaries live in a folder")
        .to_path_buf();
    let mut command = std::process::Command::new("bash");
    command
        .arg(workspace_root().join("scripts/run-node.sh"))
        .env("FERRY_RUN_DIR", dir)
        .env("FERRY_BIN_DIR", bin_dir)
        .env("FERRY_NATS_SERVER", ferry_testkit::nats_server_path())
        .env("FERRY_NATS_PORT", nats_port.to_string())
        .env("FERRY_NATS_HTTP_PORT", others.to_string())
        .env("FERRY_METRICS_BASE_PORT", (others + 1).to_string())
        .env_remove("FERRY_NATS_URL")
        .env_remove("FERRY_CONFIG")
        .stdin(std::process::Stdio::null())
        // Its own process group, like a terminal's foreground job.
        .process_group(0);
    command
}

/// Children of `pid`, from /proc, other than the `sleep` the script waits with.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|stat| {
                // pid (comm) state ppid ...: comm may contain spaces, so split after the last ')'.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .filter(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() != "sleep"))
        .collect()
}

fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// The running script; if the test fails half-way, SIGTERM makes it stop what it started.
struct ScriptGuard(std::process::Child);

impl Drop for ScriptGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = self.0.wait();
        }
    }
}

#[test]
fn make_run_starts_a_node_that_moves_files_and_ctrl_c_stops_everything() {
    let dir = tempfile::Builder::new()
        .prefix("ferry-make-run-")
        .tempdir()
        .expect("temp dir");
    let out_path = dir.path().join("make-run.out");
    let nats_port = free_ports(1);
    let mut script = ScriptGuard(
        run_node_script(dir.path(), nats_port)
            .stdout(std::fs::File::create(&out_path).expect("create the output file"))
            .stderr(std::fs::File::create(dir.path().join("make-run.err")).expect("create the error file"))
            .spawn()
            .expect("start scripts/run-node.sh"),
    );
    let script = &mut script.0;
    let output = || std::fs::read_to_string(&out_path).unwrap_or_default();
    let errors = || std::fs::read_to_string(dir.path().join("make-run.err")).unwrap_or_default();
    poll(
        Duration::from_secs(120),
        "run-node.sh to print what to try next",
        || {
            if let Some(status) = script.try_wait().expect("poll the script") {
                panic!("run-node.sh exited with {status}:\n{}\n{}", output(), errors());
            }
            output()
                .contains("Press Ctrl-C to stop everything.")
                .then_some(())
        },
    );
    let printed = output();
    for part in [
        "examples/quickstart.toml: applied as revision",
        "role:         active",
        "every minute (UTC)",
        "echo hello > .ferry/demo/inbox/hello.txt",
        "FERRY_CONFIG=.ferry/node.toml",
        "tasks list",
        "runs list",
        "audit",
        "failover status",
    ] {
        assert!(
            printed.contains(part),
            "run-node.sh did not print {part:?}:\n{printed}"
        );
    }
    for service in SERVICES.map(|(s, _)| s).into_iter().chain(["nats-server"]) {
        assert!(
            dir.path().join(format!(".ferry/logs/{service}.log")).exists(),
            "{service} log"
        );
    }
    let started = children(script.id());
    assert_eq!(started.len(), 6, "nats-server and five services: {started:?}");

    // The quickstart task, through the node's own settings file, moves a dropped file.
    away_from_slot();
    let inbox = dir.path().join(".ferry/demo/inbox");
    drop_file(&inbox, "hello.txt", "hello\n");
    let cli = std::process::Command::new(ferry_tests::bin_path("ferry"))
        .args(["task", "run", "quickstart", "--wait"])
        .current_dir(dir.path())
        .env("FERRY_CONFIG", dir.path().join(".ferry/node.toml"))
        .env_remove("FERRY_NATS_URL")
        .output()
        .expect("run the CLI");
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    assert_eq!(
        std::fs::read_to_string(dir.path().join(".ferry/demo/outbox/hello.txt")).expect("delivered"),
        "hello\n"
    );

    // The node's NATS takes no anonymous client (ADR 007); the CLI run where `make run` ran
    // reads .ferry/node.toml by itself and is the admin; the viewer's key cannot run a task.
    let cli_here = |args: &[&str]| {
        std::process::Command::new(ferry_tests::bin_path("ferry"))
            .args(args)
            .current_dir(dir.path())
            .env_remove("FERRY_CONFIG")
            .env_remove("FERRY_NATS_URL")
            .output()
            .expect("run the CLI")
    };
    let empty = dir.path().join("no-credentials.toml");
    std::fs::write(&empty, "").expect("write an empty settings file");
    let anonymous = cli_here(&[
        "--config",
        empty.to_str().expect("utf-8"),
        "--nats-url",
        &format!("nats://127.0.0.1:{nats_port}"),
        "tasks",
        "list",
    ]);
    let text = String::from_utf8_lossy(&anonymous.stderr);
    assert!(
        !anonymous.status.success() && text.contains("refused these credentials"),
        "{text}"
    );
    let status = cli_here(&["failover", "status"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let viewer = cli_here(&[
        "--nats-nkey",
        ".ferry/nats-keys/viewer.nk",
        "task",
        "run",
        "quickstart",
    ]);
    let text = String::from_utf8_lossy(&viewer.stderr);
    assert!(
        !viewer.status.success() && text.contains("permission denied"),
        "{text}"
    );

    // Ctrl-C: the script stops every process it started, then exits 0.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(script.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("send SIGINT");
    let status = poll(Duration::from_secs(90), "run-node.sh to stop", || {
        script.try_wait().expect("poll the script")
    });
    assert!(
        status.success(),
        "run-node.sh exited with {status}:\n{}",
        errors()
    );
    assert!(output().contains("ferry: stopped"), "{}", output());
    let left: Vec<u32> = started.into_iter().filter(|p| running(*p)).collect();
    assert!(left.is_empty(), "still running after Ctrl-C: {left:?}");
    assert!(
        TcpStream::connect(("127.0.0.1", nats_port)).is_err(),
        "nats-server still listens"
    );
}

#[test]
fn make_run_names_a_busy_port_and_how_to_choose_another() {
    let dir = tempfile::tempdir().expect("temp dir");
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let port = busy.local_addr().expect("address").port();
    let out = run_node_script(dir.path(), port)
        .output()
        .expect("run scripts/run-node.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "port 127.0.0.1:{port} (NATS client port) is already in use"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("FERRY_NATS_PORT=<port> make run"), "{stderr}");
    assert!(
        !dir.path().join(".ferry").exists(),
        "nothing was started or written"
    );
}

#[test]
fn make_run_stops_everything_when_a_service_dies() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The transfer service cannot bind its metrics port, so it fails soon after it started.
    let holder = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let taken = holder.local_addr().expect("address");
    let out = run_node_script(dir.path(), free_ports(1))
        .env("FERRY_TRANSFER__METRICS_ADDR", taken.to_string())
        .output()
        .expect("run scripts/run-node.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("ferry: transfer exited unexpectedly (exit status 1)")
            && stderr.contains(&format!("bind metrics address {taken}")),
        "the script names the service and shows its log:\n{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ferry: stopped"));
    let nats_log = std::fs::read_to_string(dir.path().join(".ferry/logs/nats-server.log")).expect("log");
    assert!(nats_log.contains("Server is ready"), "{nats_log}");
    let running: Vec<String> = std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("cmdline")).ok())
        .filter(|cmdline| cmdline.contains(&dir.path().display().to_string()))
        .collect();
    assert!(running.is_empty(), "still running: {running:?}");
}

/// The README's `[[host]]` examples are a valid configuration once `ferry apply` has sealed their
/// secrets (read here from the variables they name), and sealing leaves no secret in the clear.
#[test]
fn readme_host_examples_validate_once_their_secrets_are_sealed() {
    let block = readme_toml_block("bank");
    let secrets = [
        ("BANK_SFTP_PASSWORD", "readme-bank-1"),
        ("LEGACY_FTP_PASSWORD", "readme-legacy-2"),
        ("ARCHIVE_PASSWORD", "readme-archive-3"),
        ("LAKE_SECRET", "readme-lake-4"),
        ("BLOBS_SAS", "sv=2024&sig=readme5"),
    ];
    for (var, value) in secrets {
        // SAFETY: set before anything reads the environment in this test binary's thread.
        unsafe { std::env::set_var(var, value) };
    }
    let mut raw = ferry_config::parse_toml(&block).expect("the README's hosts parse");
    let keymat = ferry_keymat::Keymat::generate();
    ferry_keymat::seal_config(&mut raw, &keymat.public()).expect("every secret resolves and seals");
    let config = raw.validate().expect("the README's hosts are valid");
    let kinds: Vec<String> = ["bank", "legacy", "archive", "lake", "blobs"]
        .iter()
        .map(|h| config.hosts[*h].kind().to_string())
        .collect();
    assert_eq!(kinds, ["sftp", "ftp", "smb", "s3", "azure"]);
    let stored = serde_json::to_string(&config).expect("serializes");
    for (_, value) in secrets {
        assert!(!stored.contains(value), "{value} is stored in the clear");
    }
    match &config.hosts["archive"].spec {
        ferry_config::HostSpec::Smb(smb) => {
            assert_eq!((smb.server.as_str(), smb.share.as_str()), ("fs01", "ferry"))
        }
        other => panic!("{other:?}"),
    }
}
