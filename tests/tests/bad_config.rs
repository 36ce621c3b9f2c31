//! Bad input is rejected clearly and changes nothing: every file in `tests/bad-configs` goes
//! through `ferry apply -f` against a real node that holds a valid configuration. Each must exit
//! non-zero, name its task, field and value (the substrings on the file's `# expect:` line), and
//! leave the stored configuration byte-for-byte unchanged, in text and in `--json` output.
//!
//! A file's first line is `# expect: <substring> | <substring> | ...`; an optional second line
//! `# problems: N` says how many errors it must produce (default 1: one mistake, one error).
//! Adding a file adds a case.

use std::path::{Path, PathBuf};
use std::process::Output;

use ferry_tests::{NatsServer, Node, ferry_cli, local_task, settings};
use ferry_wire::{ApplyResponse, topology};

/// What a bad configuration file says about itself.
struct Case {
    path: PathBuf,
    expect: Vec<String>,
    problems: usize,
}

fn cases() -> anyhow::Result<Vec<Case>> {
    ferry_tests::corpus("bad-configs")?
        .into_iter()
        .map(|case| {
            anyhow::ensure!(
                case.expect.len() >= 2,
                "{}: `# expect:` must list at least the field and the value",
                case.path.display()
            );
            let problems = match case
                .text
                .lines()
                .nth(1)
                .and_then(|l| l.strip_prefix("# problems: "))
            {
                Some(n) => n.trim().parse()?,
                None => 1,
            };
            Ok(Case {
                path: case.path,
                expect: case.expect,
                problems,
            })
        })
        .collect()
}

/// The stored configuration: (revision, bytes).
async fn stored(node: &Node) -> anyhow::Result<(u64, Vec<u8>)> {
    let kv = node.js.get_key_value(topology::KV_CONFIG).await?;
    let entry = kv
        .entry(topology::CONFIG_KEY)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no configuration stored"))?;
    Ok((entry.revision, entry.value.to_vec()))
}

async fn ferry(url: &str, args: &[&str], cwd: &Path) -> Output {
    let (url, cwd) = (url.to_string(), cwd.to_path_buf());
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ferry_cli(&url, &args, &cwd)
    })
    .await
    .expect("the ferry CLI thread does not panic")
}

/// Every way `case` was handled wrongly by one `ferry apply` (text output).
fn text_problems(case: &Case, out: &Output) -> Vec<String> {
    let mut problems = Vec::new();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        problems.push(format!(
            "exited successfully: {}",
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    for expected in &case.expect {
        if !stderr.contains(expected.as_str()) {
            problems.push(format!("stderr lacks {expected:?}"));
        }
    }
    let count = format!(
        "configuration rejected ({} problem{}); nothing was changed",
        case.problems,
        if case.problems == 1 { "" } else { "s" }
    );
    if !stderr.contains(&count) {
        problems.push(format!("stderr lacks {count:?}"));
    }
    if !problems.is_empty() {
        problems.push(format!("stderr was:\n{stderr}"));
    }
    problems
}

/// Every way `case` was handled wrongly by one `ferry apply --json`.
fn json_problems(case: &Case, out: &Output) -> Vec<String> {
    let mut problems = Vec::new();
    if out.status.success() {
        problems.push("--json: exited successfully".to_string());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    match serde_json::from_str::<ApplyResponse>(&stdout) {
        Ok(ApplyResponse::Rejected { errors }) => {
            if errors.len() != case.problems {
                problems.push(format!(
                    "--json: {} errors, expected {}: {errors:#?}",
                    errors.len(),
                    case.problems
                ));
            }
            let shown = ferry_config::ConfigErrors(errors).to_string();
            for expected in &case.expect {
                // The count is only in the text summary; the JSON has the list itself.
                if !shown.contains(expected.as_str()) && !expected.contains(" problem") {
                    problems.push(format!("--json: errors lack {expected:?}: {shown}"));
                }
            }
        }
        Ok(other) => problems.push(format!("--json: not rejected: {other:?}")),
        Err(e) => problems.push(format!("--json: stdout is not an apply response ({e}): {stdout}")),
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_bad_configuration_is_rejected_clearly_and_changes_nothing() -> anyhow::Result<()> {
    let cases = cases()?;
    assert!(
        cases.len() >= 15,
        "at least 15 bad configurations, found {}",
        cases.len()
    );
    assert!(
        cases.iter().any(|c| c.problems >= 3),
        "one file has several mistakes, reported at once"
    );

    let nats = NatsServer::start()?;
    let url = nats.url();
    let node = Node::start(settings(&url)).await?;
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!(
            "{}\n[[task.schedule]]\ndaily_at = [\"06:30\"]\ntimezone = \"Europe/Berlin\"\n",
            local_task(
                "payroll",
                &dir.path().join("in"),
                &dir.path().join("out/[yyyy]"),
                "masks = \"*.csv\"",
                "overwrite = \"unique\""
            )
        ),
    )?;
    let good = good.to_string_lossy().into_owned();
    let applied = ferry(&url, &["apply", "-f", &good], dir.path()).await;
    assert!(
        applied.status.success(),
        "the valid configuration applies: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let first = stored(&node).await?;
    let mut before = first.clone();

    let mut failures = Vec::new();
    for case in &cases {
        let file = case.path.to_string_lossy().into_owned();
        let name = case.path.file_name().expect("a file").to_string_lossy();
        let mut problems = text_problems(case, &ferry(&url, &["apply", "-f", &file], dir.path()).await);
        if stored(&node).await? != before {
            problems.push("the stored configuration changed".into());
        }
        problems.extend(json_problems(
            case,
            &ferry(&url, &["--json", "apply", "-f", &file], dir.path()).await,
        ));
        if stored(&node).await? != before {
            problems.push("--json: the stored configuration changed".into());
        }
        // Judge the next file on its own, even after this one changed something.
        before = stored(&node).await?;
        if !problems.is_empty() {
            failures.push(format!("{name}:\n  {}", problems.join("\n  ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad configurations were mishandled:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // The node still holds, and answers with, the valid configuration.
    let again = ferry(&url, &["apply", "-f", &good], dir.path()).await;
    assert!(
        String::from_utf8_lossy(&again.stdout).contains(&format!("unchanged (revision {})", first.0)),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    node.shutdown().await;
    Ok(())
}

/// Write `text` to `file` in `dir`; its path.
fn write_in(dir: &Path, file: &str, text: String) -> anyhow::Result<String> {
    let path = dir.join(file);
    std::fs::write(&path, text)?;
    Ok(path.to_string_lossy().into_owned())
}

/// What a CLI run printed, stdout then stderr.
fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Applying a file with one task must not silently remove every other task: such an apply is
/// refused and names what it would remove; `--prune` removes them; every apply says what it adds
/// (`+`), changes (`~`) and removes (`-`), and `--dry-run` shows it without storing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_apply_that_would_remove_tasks_needs_prune_and_says_what_changes() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let url = nats.url();
    let node = Node::start(settings(&url)).await?;
    let dir = tempfile::tempdir()?;
    let task = |name: &str, extra: &str| {
        local_task(name, &dir.path().join(name), &dir.path().join("out"), extra, "")
    };
    let write = |file: &str, text: String| write_in(dir.path(), file, text);
    let both = write(
        "both.toml",
        format!("{}{}", task("payroll", ""), task("invoices", "")),
    )?;
    let out = ferry(&url, &["apply", "-f", &both], dir.path()).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("+ task invoices") && text(&out).contains("+ task payroll"),
        "{}",
        text(&out)
    );

    // One task changed, the other left out: refused, nothing stored, both named.
    let one = write("one.toml", task("payroll", "masks = \"*.csv\""))?;
    let before = stored(&node).await?;
    for args in [vec!["apply", "-f", &one], vec!["apply", "--dry-run", "-f", &one]] {
        let out = ferry(&url, &args, dir.path()).await;
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains("task \"invoices\": is stored but not in this file")
                && text(&out).contains("--prune"),
            "{args:?}: {}",
            text(&out)
        );
        assert_eq!(
            stored(&node).await?,
            before,
            "{args:?} changed the stored configuration"
        );
    }

    let dry = ferry(&url, &["apply", "--dry-run", "--prune", "-f", &one], dir.path()).await;
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(
        text(&dry).contains("~ task payroll") && text(&dry).contains("- task invoices"),
        "{}",
        text(&dry)
    );
    assert_eq!(stored(&node).await?, before, "--dry-run stored something");

    let pruned = ferry(&url, &["apply", "--prune", "-f", &one], dir.path()).await;
    assert!(pruned.status.success(), "{}", text(&pruned));
    assert!(text(&pruned).contains("- task invoices"), "{}", text(&pruned));
    let doc: ferry_wire::ConfigDocument = ferry_wire::decode(&stored(&node).await?.1)?;
    assert_eq!(doc.config.tasks.keys().collect::<Vec<_>>(), ["payroll"]);

    // The JSON answer carries the same changes.
    let again = ferry(&url, &["--json", "apply", "-f", &both], dir.path()).await;
    let response: ApplyResponse = serde_json::from_slice(&again.stdout)?;
    let ApplyResponse::Applied { changes, .. } = response else {
        panic!("{}", text(&again))
    };
    assert_eq!(changes.tasks.added, ["invoices"]);
    assert_eq!(changes.tasks.changed, ["payroll"]);
    assert!(changes.tasks.removed.is_empty());
    node.shutdown().await;
    Ok(())
}

/// `ferry config diff` shows every task, host and field a file changes (exit 1), nothing for the
/// stored file (exit 0), and refuses an invalid file (exit 2), storing nothing; `history` lists
/// each revision with who, from where and what changed; `rollback` stores an earlier revision
/// again, whole, as a new revision, and refuses one the bucket does not keep.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_diff_history_and_rollback() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let url = nats.url();
    let node = Node::start(settings(&url)).await?;
    let dir = tempfile::tempdir()?;
    let task = |name: &str, extra: &str| {
        local_task(name, &dir.path().join(name), &dir.path().join("out"), extra, "")
    };
    let write = |file: &str, text: String| write_in(dir.path(), file, text);
    let both = write(
        "both.toml",
        format!("{}{}", task("payroll", ""), task("invoices", "")),
    )?;
    let out = ferry(&url, &["apply", "-f", &both], dir.path()).await;
    assert!(out.status.success(), "{}", text(&out));
    let (first, first_doc) = stored(&node).await?;

    let same = ferry(&url, &["config", "diff", "-f", &both], dir.path()).await;
    assert_eq!(same.status.code(), Some(0), "{}", text(&same));
    assert!(
        text(&same).contains("(no task or host changes)"),
        "{}",
        text(&same)
    );

    let one = write("one.toml", task("payroll", "masks = \"*.csv\""))?;
    let diff = ferry(&url, &["config", "diff", "-f", &one], dir.path()).await;
    assert_eq!(diff.status.code(), Some(1), "{}", text(&diff));
    let shown = text(&diff);
    assert!(
        shown.contains("~ task payroll")
            && shown.contains("sources[0].masks: \"*.*\" -> \"*.csv\"")
            && shown.contains("\"*.csv\"")
            && shown.contains("- task invoices")
            && shown.contains("--prune"),
        "{shown}"
    );
    let bad = write("bad.toml", task("payroll", "masks = 7"))?;
    let refused = ferry(&url, &["config", "diff", "-f", &bad], dir.path()).await;
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert_eq!(
        stored(&node).await?,
        (first, first_doc.clone()),
        "diff stored something"
    );

    let out = ferry(&url, &["apply", "--prune", "-f", &one], dir.path()).await;
    assert!(out.status.success(), "{}", text(&out));
    let (second, _) = stored(&node).await?;

    let history = ferry(&url, &["config", "history"], dir.path()).await;
    assert!(history.status.success(), "{}", text(&history));
    let listed = text(&history);
    let at = |needle: &str| {
        listed
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in {listed}"))
    };
    assert!(at(&format!("revision {first} ")) < at("+ task invoices"));
    assert!(at(&format!("revision {second} ")) < at("- task invoices"));
    assert!(
        listed.contains("from ") && listed.contains("one.toml"),
        "{listed}"
    );

    let dry = ferry(
        &url,
        &["config", "rollback", &first.to_string(), "--dry-run"],
        dir.path(),
    )
    .await;
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(text(&dry).contains("+ task invoices"), "{}", text(&dry));
    assert_eq!(stored(&node).await?.0, second, "--dry-run stored something");

    let back = ferry(&url, &["config", "rollback", &first.to_string()], dir.path()).await;
    assert!(back.status.success(), "{}", text(&back));
    let (third, doc) = stored(&node).await?;
    assert!(third > second);
    let (was, now): (ferry_wire::ConfigDocument, ferry_wire::ConfigDocument) =
        (ferry_wire::decode(&first_doc)?, ferry_wire::decode(&doc)?);
    assert_eq!(
        now.config, was.config,
        "the rollback stores revision {first}'s configuration"
    );
    assert_eq!(
        now.source_name,
        format!("rollback to revision {first} ({})", was.source_name)
    );

    let gone = ferry(&url, &["config", "rollback", "9999"], dir.path()).await;
    assert!(!gone.status.success());
    assert!(
        text(&gone).contains("revision 9999") && text(&gone).contains("is not in the configuration history"),
        "{}",
        text(&gone)
    );
    assert_eq!(stored(&node).await?.0, third);
    node.shutdown().await;
    Ok(())
}
