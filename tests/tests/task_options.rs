//! Task options an MFT administrator relies on: overwrite policies, delete after transfer,
//! max files per run, excludes, file name macros, no overlap of a task with itself, and the
//! node-wide limit of running tasks.

use std::time::Duration;

use ferry_tests::{NatsServer, Node, local_task, settings};
use ferry_wire::{Outcome, RunStatus};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overwrite_policies() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let node = Node::start(settings(&nats.url())).await?;
    let work = tempfile::tempdir()?;
    let src = work.path().join("in");
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join("r.csv"), "new")?;
    for policy in ["overwrite", "skip", "fail", "unique"] {
        let dst = work.path().join(policy);
        std::fs::create_dir_all(&dst)?;
        std::fs::write(dst.join("r.csv"), "old")?;
        let task = format!("p-{policy}");
        node.apply(&local_task(
            &task,
            &src,
            &dst,
            "new_files_only = false",
            &format!("overwrite = \"{policy}\""),
        ))
        .await?;
        let run = node.run_task(&task, Duration::from_secs(30)).await?;
        let file = &run.files[0];
        match policy {
            "overwrite" => {
                assert_eq!(run.status, RunStatus::Succeeded);
                assert_eq!(std::fs::read_to_string(dst.join("r.csv"))?, "new");
            }
            "skip" => {
                assert_eq!(run.status, RunStatus::Succeeded);
                assert_eq!(file.outcome, Outcome::Skipped);
                assert_eq!(std::fs::read_to_string(dst.join("r.csv"))?, "old");
            }
            "fail" => {
                assert_eq!(run.status, RunStatus::Failed);
                assert!(
                    file.error.as_deref().unwrap_or("").contains("exists"),
                    "{:?}",
                    file.error
                );
                assert_eq!(std::fs::read_to_string(dst.join("r.csv"))?, "old");
            }
            "unique" => {
                assert_eq!(run.status, RunStatus::Succeeded);
                assert_eq!(std::fs::read_to_string(dst.join("r.csv"))?, "old");
                assert_eq!(std::fs::read_to_string(dst.join("r (1).csv"))?, "new");
            }
            _ => unreachable!(),
        }
    }
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_after_max_files_exclude_and_macros() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let node = Node::start(settings(&nats.url())).await?;
    let work = tempfile::tempdir()?;
    let (src, dst) = (work.path().join("in"), work.path().join("out"));
    std::fs::create_dir_all(&src)?;
    for i in 0..5 {
        std::fs::write(src.join(format!("f{i}.csv")), format!("{i}"))?;
    }
    std::fs::write(src.join("f9.tmp"), "never")?;
    let toml = local_task(
        "options",
        &src,
        &dst,
        "masks = \"*.*\"\nexclude = \"*.tmp\"\ndelete_after = true\nmax_files = 3",
        "file_name = \"[TaskName]-[OrigBase]-[yyyy].[OrigExt]\"",
    );
    node.apply(&toml).await?;
    let first = node.run_task("options", Duration::from_secs(30)).await?;
    assert_eq!(first.files_delivered, 3, "max_files caps a run");
    let year = chrono::Local::now().format("%Y").to_string();
    assert!(dst.join(format!("options-f0-{year}.csv")).exists());
    let second = node.run_task("options", Duration::from_secs(30)).await?;
    assert_eq!(second.files_delivered, 2, "the rest wait for the next run");
    let left: Vec<String> = std::fs::read_dir(&src)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        ["f9.tmp"],
        "delivered sources are deleted; excluded ones stay"
    );
    let audit: Vec<ferry_wire::AuditRecord> = ferry_service::streams::read(
        &node.js,
        ferry_wire::topology::STREAM_AUDIT,
        &ferry_wire::subjects::audit_filter(Some("options")),
        None,
    )
    .await?;
    assert_eq!(audit.iter().filter(|r| r.action == "transfer").count(), 5);
    assert_eq!(audit.iter().filter(|r| r.action == "delete_source").count(), 5);
    for r in &audit {
        assert_eq!(r.node, "node1");
        assert!(r.epoch > 0);
        assert_eq!(r.sha256.as_ref().map(String::len), Some(64));
    }
    node.shutdown().await;
    Ok(())
}

/// Flattened subfolders (or a file name without `[OrigName]`) send two files of one run to one
/// path: the later must fail there and keep its source, never replace the earlier and have both
/// sources deleted; `unique` gives every file its own name.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_files_of_a_run_never_share_a_destination_path() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let node = Node::start(settings(&nats.url())).await?;
    let work = tempfile::tempdir()?;
    let (src, dst) = (work.path().join("in"), work.path().join("out"));
    for (rel, body) in [("a/x.csv", "from a"), ("b/x.csv", "from b"), ("b/y.csv", "y")] {
        let path = src.join(rel);
        std::fs::create_dir_all(path.parent().expect("nested"))?;
        std::fs::write(path, body)?;
    }
    let source = "subdirectories = true\ndelete_after = true\nnew_files_only = false\nsize_stable_ms = 0";
    node.apply(&local_task(
        "flat",
        &src,
        &dst,
        source,
        "relative_subdirs = false",
    ))
    .await?;
    let run = node.run_task("flat", Duration::from_secs(30)).await?;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.files_delivered, 2);
    assert_eq!(std::fs::read_to_string(dst.join("x.csv"))?, "from a");
    assert_eq!(std::fs::read_to_string(dst.join("y.csv"))?, "y");
    let failed: Vec<_> = run
        .files
        .iter()
        .filter(|f| f.outcome == Outcome::Failed)
        .collect();
    assert_eq!(failed.len(), 1, "{:?}", run.files);
    assert!(
        failed[0].source_path.ends_with("b/x.csv"),
        "{}",
        failed[0].source_path
    );
    let why = failed[0].destinations[0].error.as_deref().unwrap_or_default();
    assert!(
        why.contains("also where") && why.contains("a/x.csv") && why.contains("overwrite: unique"),
        "{why}"
    );
    assert_eq!(
        std::fs::read_to_string(src.join("b/x.csv"))?,
        "from b",
        "the refused file's source stays"
    );
    assert!(!src.join("a/x.csv").exists() && !src.join("b/y.csv").exists());

    // One fixed name for every file, `unique`: each gets its own, nothing is replaced, and
    // batches racing for one name count on from the rendered name (`report (2).csv`, never
    // `report (1) (1).csv`).
    let (src, dst) = (work.path().join("in2"), work.path().join("out2"));
    std::fs::create_dir_all(&src)?;
    for i in 0..16 {
        std::fs::write(src.join(format!("f{i}.csv")), format!("{i}"))?;
    }
    node.apply(&local_task(
        "one-name",
        &src,
        &dst,
        "delete_after = true\nnew_files_only = false\nsize_stable_ms = 0",
        "file_name = \"report.csv\"\noverwrite = \"unique\"",
    ))
    .await?;
    let run = node.run_task("one-name", Duration::from_secs(30)).await?;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.files);
    let mut names: Vec<String> = std::fs::read_dir(&dst)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    let mut expected: Vec<String> = (1..16).map(|k| format!("report ({k}).csv")).collect();
    expected.push("report.csv".into());
    expected.sort();
    assert_eq!(names, expected);
    let mut bodies: Vec<String> = names
        .iter()
        .map(|n| std::fs::read_to_string(dst.join(n)))
        .collect::<Result<_, _>>()?;
    let mut sent: Vec<String> = (0..16).map(|i| i.to_string()).collect();
    bodies.sort();
    sent.sort();
    assert_eq!(bodies, sent);
    node.shutdown().await;
    Ok(())
}

/// A slow task: many files with a fixed size, so a run takes a while.
fn slow_task(name: &str, work: &std::path::Path) -> anyhow::Result<String> {
    let src = work.join(format!("{name}-in"));
    std::fs::create_dir_all(&src)?;
    for i in 0..300 {
        std::fs::write(src.join(format!("f{i:03}.bin")), vec![0u8; 256 * 1024])?;
    }
    Ok(local_task(
        name,
        &src,
        &work.join(format!("{name}-out")),
        "new_files_only = false",
        "",
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_never_overlaps_itself() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let mut s = settings(&nats.url());
    s.transfer.concurrency = 2;
    let node = Node::start(s).await?;
    let work = tempfile::tempdir()?;
    node.apply(&slow_task("slow", work.path())?).await?;
    let first = node.request_run("slow").await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = node.request_run("slow").await?;
    let js = &node.js;
    let second = ferry_service::streams::wait_for_run(js, "slow", second, Duration::from_secs(60)).await?;
    assert_eq!(second.status, RunStatus::Skipped);
    assert!(
        second.error.as_deref().unwrap_or("").contains("already running"),
        "{:?}",
        second.error
    );
    let first = ferry_service::streams::wait_for_run(js, "slow", first, Duration::from_secs(120)).await?;
    assert_eq!(first.status, RunStatus::Succeeded);
    assert_eq!(first.files_delivered, 300);
    // Once the first run is over, the task runs again.
    let third = node.run_task("slow", Duration::from_secs(120)).await?;
    assert_eq!(third.status, RunStatus::Succeeded);
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_wide_limit_queues_runs_in_order() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let mut s = settings(&nats.url());
    s.file_collector.max_running_tasks = 1;
    s.transfer.concurrency = 2;
    let node = Node::start(s).await?;
    let work = tempfile::tempdir()?;
    let mut toml = String::new();
    for name in ["a", "b", "c"] {
        toml += &slow_task(name, work.path())?;
    }
    node.apply(&toml).await?;
    let mut ids = Vec::new();
    for name in ["a", "b", "c"] {
        ids.push((name, node.request_run(name).await?));
    }
    let mut runs = Vec::new();
    for (name, id) in ids {
        runs.push(ferry_service::streams::wait_for_run(&node.js, name, id, Duration::from_secs(180)).await?);
    }
    for pair in runs.windows(2) {
        assert!(
            pair[1].started_at >= pair[0].finished_at,
            "with max_running_tasks = 1, {} started before {} finished",
            pair[1].task,
            pair[0].task
        );
    }
    assert!(runs.iter().all(|r| r.status == RunStatus::Succeeded));
    node.shutdown().await;
    Ok(())
}
