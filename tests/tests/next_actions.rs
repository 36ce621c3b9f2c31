//! Next actions and task parameters against real peers: an email received by a real SMTP server
//! (aiosmtpd, STARTTLS and AUTH) when a run fails, with its macros expanded; a chained task that
//! runs after success with the parameters passed; `ferry apply` refusing a cycle of chained
//! tasks; `ferry task run --param` reaching a destination file name; a secure parameter never in
//! clear in `ferry task show`, the run record or the audit trail.

use std::path::Path;
use std::time::Duration;

use ferry_testkit::peers::smtp::Smtp;
use ferry_tests::{NatsServer, Node, ferry_cli, settings};
use ferry_wire::{RunFinished, RunStatus, Trigger};

const SECRET: &str = "tok-9f3a-very-secret";

/// A task whose source folder does not exist (so its run fails) and that mails on failure.
fn failing_task(smtp: &Smtp, work: &Path) -> String {
    format!(
        r#"
[parameters]
site = "Leeds"
token = {{ secure = "{SECRET}" }}

[[task]]
name = "payroll"
[task.parameters]
site = "Bradford"
[[task.source]]
host = "local"
folder = "{missing}"
[[task.destination]]
host = "local"
folder = "{out}"
{email}
[[task.next_action]]
on = "success"
kind = "event"
name = "never"
"#,
        missing = work.join("no-such-folder").display(),
        out = work.join("out").display(),
        email = email_action(
            smtp,
            "",
            "[\"oncall@example.com\", \"ops@example.com\"]",
            "[TaskName] failed at [Parm:site] code [ErrorCode]",
            "Run [RunID]: [ErrorDescription]"
        ),
    )
}

/// A `[[task.next_action]]` mailing on failure through `smtp` (STARTTLS, AUTH); `extra`: more
/// lines of the table (`per_file = true`).
fn email_action(smtp: &Smtp, extra: &str, to: &str, subject: &str, body: &str) -> String {
    format!(
        r#"[[task.next_action]]
on = "failure"
{extra}
kind = "email"
host = "127.0.0.1"
port = {port}
tls = "starttls"
ca_file = "{ca}"
user = "{user}"
password = "{password}"
from = "ferry@example.com"
to = {to}
subject = "{subject}"
body = "{body}""#,
        port = smtp.port,
        ca = smtp.ca_file.display(),
        user = smtp.user,
        password = smtp.password,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_run_mails_with_macros_and_secrets_stay_sealed() -> anyhow::Result<()> {
    let smtp = Smtp::start("ferry", "smtp-pass-7731")?;
    let nats = NatsServer::start()?;
    let node = Node::start(settings(&nats.url())).await?;
    let work = tempfile::tempdir()?;
    node.apply(&failing_task(&smtp, work.path())).await?;

    let run = node.run_task("payroll", Duration::from_secs(60)).await?;
    assert_eq!(run.status, RunStatus::Failed);
    let mails = smtp.wait_for(1, Duration::from_secs(30))?;
    let mail = &mails[0];
    assert!(
        mail.contains("Subject: payroll failed at Bradford code 2"),
        "the task's parameter wins over the global one: {mail}"
    );
    assert!(mail.contains(&format!("Run {}: ", run.run_id)), "{mail}");
    assert!(
        mail.contains("no-such-folder"),
        "[ErrorDescription] names the missing folder: {mail}"
    );
    assert!(
        mail.contains("X-Envelope-To: oncall@example.com,ops@example.com"),
        "{mail}"
    );

    // The action's outcome is in the run record; the event action did not fire.
    assert_eq!(run.actions.len(), 1, "{:?}", run.actions);
    assert!(run.actions[0].succeeded, "{:?}", run.actions[0]);
    assert_eq!(run.actions[0].kind, "email");
    assert_eq!(run.parameters["site"], "Bradford");
    assert_eq!(run.parameters["token"], ferry_config::params::MASK);

    // The secure parameter and the SMTP password never show in clear.
    let dir = work.path();
    let show = ferry_cli(&nats.url(), &["task", "show", "payroll"], dir);
    let show_json = ferry_cli(&nats.url(), &["--json", "task", "show", "payroll"], dir);
    let runs = ferry_cli(
        &nats.url(),
        &["--json", "runs", "show", &run.run_id.to_string()],
        dir,
    );
    let audit = ferry_cli(&nats.url(), &["--json", "audit", "--task", "payroll"], dir);
    let audit_text = String::from_utf8_lossy(&audit.stdout).into_owned();
    assert!(
        audit_text.contains("next_action:email"),
        "the action is audited: {audit_text}"
    );
    for (what, out) in [
        ("task show", &show),
        ("task show --json", &show_json),
        ("runs show", &runs),
        ("audit", &audit),
    ] {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{what}: {text}");
        for secret in [SECRET, "smtp-pass-7731"] {
            assert!(!text.contains(secret), "{what} shows a secret in clear: {text}");
        }
    }
    let show_text = String::from_utf8_lossy(&show.stdout);
    assert!(
        show_text.contains("next_action[0] on failure: email"),
        "{show_text}"
    );
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chained_task_runs_with_parameters_and_param_reaches_a_file_name() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let node = Node::start(settings(&nats.url())).await?;
    let work = tempfile::tempdir()?;
    let w = work.path();
    for d in ["in-a", "in-b", "out-a", "out-b"] {
        std::fs::create_dir_all(w.join(d))?;
    }
    std::fs::write(w.join("in-a/report.csv"), "a")?;
    std::fs::write(w.join("in-b/x.txt"), "b")?;
    let toml = format!(
        r#"
[[task]]
name = "extract"
[task.parameters]
batch = "default"
[[task.source]]
host = "local"
folder = "{w}/in-a"
[[task.destination]]
host = "local"
folder = "{w}/out-a"
file_name = "[OrigBase]-[Parm:batch].[OrigExt]"
[[task.next_action]]
on = "success"
kind = "run-task"
task = "load"
parameters = {{ batch = "[Parm:batch]-chained" }}

[[task]]
name = "load"
[task.parameters]
batch = "unset"
[[task.source]]
host = "local"
folder = "{w}/in-b"
[[task.destination]]
host = "local"
folder = "{w}/out-b"
file_name = "[Parm:batch].txt"
"#,
        w = w.display()
    );
    let file = w.join("ferry.toml");
    std::fs::write(&file, toml)?;
    let applied = ferry_cli(&nats.url(), &["apply", "-f", "ferry.toml"], w);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );

    let ran = ferry_cli(
        &nats.url(),
        &[
            "task",
            "run",
            "extract",
            "--param",
            "batch=b42",
            "--wait",
            "--timeout",
            "60s",
        ],
        w,
    );
    assert!(
        ran.status.success(),
        "{}{}",
        String::from_utf8_lossy(&ran.stdout),
        String::from_utf8_lossy(&ran.stderr)
    );
    assert_eq!(std::fs::read_to_string(w.join("out-a/report-b42.csv"))?, "a");

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let chained: RunFinished = loop {
        if let Some(r) = node.finished_runs(Some("load")).await?.into_iter().next() {
            break r;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the chained task never finished"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(chained.status, RunStatus::Succeeded);
    assert!(
        matches!(&chained.trigger, Trigger::Chain { task, .. } if task == "extract"),
        "{:?}",
        chained.trigger
    );
    assert_eq!(chained.parameters["batch"], "b42-chained");
    assert_eq!(std::fs::read_to_string(w.join("out-b/b42-chained.txt"))?, "b");
    assert_eq!(
        node.finished_runs(Some("load")).await?.len(),
        1,
        "the chained task runs once"
    );
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apply_refuses_a_cycle_of_chained_tasks() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let node = Node::start(settings(&nats.url())).await?;
    let work = tempfile::tempdir()?;
    let task = |name: &str, next: &str| {
        format!(
            "[[task]]\nname = \"{name}\"\n[[task.source]]\nhost = \"local\"\nfolder = \"/tmp/{name}-in\"\n[[task.destination]]\nhost = \"local\"\nfolder = \"/tmp/{name}-out\"\n[[task.next_action]]\non = \"always\"\nkind = \"run-task\"\ntask = \"{next}\"\n"
        )
    };
    std::fs::write(work.path().join("cycle.toml"), task("a", "b") + &task("b", "a"))?;
    let out = ferry_cli(&nats.url(), &["apply", "-f", "cycle.toml"], work.path());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("makes a cycle of chained tasks: a → b → a"),
        "{text}"
    );
    std::fs::write(work.path().join("self.toml"), task("a", "a"))?;
    let out = ferry_cli(&nats.url(), &["apply", "-f", "self.toml"], work.path());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success() && text.contains("a → a"), "{text}");
    node.shutdown().await;
    Ok(())
}

/// Per-file next actions (`per_file = true`): an email for each failed file and an event for
/// each delivered one, with `[OrigName]` the file's name, as each batch's results come in; the
/// run-level action still fires once; every outcome names its file in the run record and the
/// audit trail; `ferry apply` refuses `per_file` with `on = "no-files"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_file_actions_fire_for_each_file_with_its_name() -> anyhow::Result<()> {
    let smtp = Smtp::start("ferry", "smtp-pass-7731")?;
    let nats = NatsServer::start()?;
    let node = Node::start(settings(&nats.url())).await?;
    let work = tempfile::tempdir()?;
    let (src, out) = (work.path().join("in"), work.path().join("out"));
    std::fs::create_dir_all(&src)?;
    std::fs::create_dir_all(&out)?;
    for name in ["a.csv", "b.csv", "c.csv"] {
        std::fs::write(src.join(name), format!("{name}\n"))?;
    }
    // c.csv is already at the destination, which refuses to overwrite: it fails.
    std::fs::write(out.join("c.csv"), "older\n")?;
    let config = format!(
        r#"
[[task]]
name = "perfile"
[[task.source]]
host = "local"
folder = "{src}"
size_stable_ms = 0
[[task.destination]]
host = "local"
folder = "{out}"
overwrite = "fail"
{email}
[[task.next_action]]
on = "success"
per_file = true
kind = "event"
name = "file-done"
[[task.next_action]]
on = "always"
kind = "event"
name = "run-done"
"#,
        src = src.display(),
        out = out.display(),
        email = email_action(
            &smtp,
            "per_file = true",
            "[\"oncall@example.com\"]",
            "[OrigName] failed in [TaskName] code [ErrorCode]",
            "[ErrorDescription]"
        ),
    );
    node.apply(&config).await?;
    let run = node.run_task("perfile", Duration::from_secs(60)).await?;
    assert_eq!(run.status, RunStatus::Failed, "{run:#?}");
    assert_eq!((run.files_delivered, run.files_failed), (2, 1));

    let mails = smtp.wait_for(1, Duration::from_secs(30))?;
    assert!(
        mails[0].contains("Subject: c.csv failed in perfile code 1"),
        "{}",
        mails[0]
    );
    let events: Vec<ferry_wire::TaskEvent> = ferry_service::streams::read(
        &node.js,
        ferry_wire::topology::STREAM_EVENTS,
        &ferry_wire::subjects::task_event("perfile", "file-done"),
        None,
    )
    .await?;
    let mut files: Vec<String> = events
        .iter()
        .map(|e| {
            let f = e.file.as_ref().expect("a per-file event names its file");
            assert!(f.sha256.is_some(), "{e:?}");
            f.source_path.rsplit('/').next().unwrap_or_default().to_string()
        })
        .collect();
    files.sort();
    assert_eq!(files, ["a.csv", "b.csv"]);

    // One run-level action and three per-file ones, each naming its file.
    let per_file: Vec<_> = run.actions.iter().filter(|a| a.file.is_some()).collect();
    let run_level: Vec<_> = run.actions.iter().filter(|a| a.file.is_none()).collect();
    assert_eq!(run_level.len(), 1, "{:?}", run.actions);
    assert_eq!(per_file.len(), 3, "{:?}", run.actions);
    assert!(per_file.iter().all(|a| a.succeeded), "{per_file:?}");
    let emailed: Vec<_> = per_file.iter().filter(|a| a.kind == "email").collect();
    assert_eq!(emailed.len(), 1);
    assert!(emailed[0].file.as_deref().is_some_and(|f| f.ends_with("c.csv")));
    let audit = ferry_cli(
        &nats.url(),
        &["--json", "audit", "--task", "perfile"],
        work.path(),
    );
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert_eq!(audit.matches("next_action:event").count(), 3, "{audit}");
    assert_eq!(audit.matches("next_action:email").count(), 1, "{audit}");

    // `no-files` means nothing for one file.
    std::fs::write(
        work.path().join("bad.toml"),
        config.replace(
            "on = \"success\"\nper_file = true",
            "on = \"no-files\"\nper_file = true",
        ),
    )?;
    let refused = ferry_cli(&nats.url(), &["apply", "-f", "bad.toml"], work.path());
    let text =
        String::from_utf8_lossy(&refused.stderr).into_owned() + &String::from_utf8_lossy(&refused.stdout);
    assert!(
        !refused.status.success() && text.contains("does not apply with per_file = true"),
        "{text}"
    );
    node.shutdown().await;
    Ok(())
}
