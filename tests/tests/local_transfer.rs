//! Local → local end to end against a real nats-server: relative subdirectories, hashes,
//! new-files-only, and changed files moving again.

use std::time::Duration;

use ferry_tests::{NatsServer, Node, local_task, settings, tree_hashes};
use ferry_wire::{Outcome, RunStatus};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_nested_files_move_once_and_changed_ones_again() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let node = Node::start(settings(&nats.url())).await?;
    let dir = tempfile::tempdir()?;
    let (src, dst) = (dir.path().join("in"), dir.path().join("out"));
    for i in 0..1000 {
        let sub = src.join(format!("d{}/e{}", i % 10, i % 7));
        std::fs::create_dir_all(&sub)?;
        std::fs::write(
            sub.join(format!("f{i:04}.dat")),
            format!("file {i} ").repeat(i % 50 + 1),
        )?;
    }
    // Payroll-like files keep their narrow permission bits (a new file's default is wider).
    for (i, mode) in [(1, 0o600), (2, 0o640)] {
        let path = src.join(format!("d{}/e{}/f{i:04}.dat", i % 10, i % 7));
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    }
    let toml = local_task(
        "nested",
        &src,
        &dst,
        "subdirectories = true\nmasks = \"*.dat\"",
        "relative_subdirs = true",
    );
    node.apply(&toml).await?;

    let first = node.run_task("nested", Duration::from_secs(120)).await?;
    assert_eq!(first.status, RunStatus::Succeeded, "{:?}", first.error);
    assert_eq!(first.files_delivered, 1000);
    let source_tree = tree_hashes(&src);
    assert_eq!(source_tree.len(), 1000);
    assert_eq!(
        tree_hashes(&dst),
        source_tree,
        "every destination file matches its source"
    );
    for f in &first.files {
        assert_eq!(f.outcome, Outcome::Delivered);
        let rel = f
            .source_path
            .strip_prefix(&format!("{}/", src.display()))
            .expect("under source");
        assert_eq!(
            f.sha256.as_deref(),
            Some(source_tree[rel].as_str()),
            "reported hash of {rel}"
        );
    }

    let mode = |path: &std::path::Path| -> std::io::Result<u32> {
        Ok(std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path)?.permissions()) & 0o777)
    };
    for i in 1..=3 {
        let rel = format!("d{}/e{}/f{i:04}.dat", i % 10, i % 7);
        assert_eq!(mode(&dst.join(&rel))?, mode(&src.join(&rel))?, "{rel}");
    }
    assert_eq!(mode(&dst.join("d1/e1/f0001.dat"))?, 0o600);

    let second = node.run_task("nested", Duration::from_secs(60)).await?;
    assert_eq!(second.status, RunStatus::Succeeded);
    assert_eq!(
        second.files.len(),
        0,
        "new-files-only: nothing moves the second time"
    );

    // Change one file's content: exactly that file moves again.
    let changed = src.join("d3/e6/f0083.dat");
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&changed, "new content")?;
    let third = node.run_task("nested", Duration::from_secs(60)).await?;
    assert_eq!(third.files_delivered, 1);
    assert_eq!(third.files[0].source_path, changed.to_string_lossy());
    assert_eq!(
        std::fs::read_to_string(dst.join("d3/e6/f0083.dat"))?,
        "new content"
    );

    // Editing the mask does not re-send what was delivered (state is per source and file).
    let toml = toml.replace("masks = \"*.dat\"", "masks = \"*.dat;*.txt\"");
    node.apply(&toml).await?;
    let fourth = node.run_task("nested", Duration::from_secs(60)).await?;
    assert_eq!(fourth.files.len(), 0);
    node.shutdown().await;
    Ok(())
}

/// A run larger than the JetStream client's window of unacknowledged publishes (5,000) completes:
/// the collector awaits its item acks in windows instead of all at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_of_more_than_five_thousand_files_completes() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let mut s = settings(&nats.url());
    s.transfer.concurrency = 32;
    let node = Node::start(s).await?;
    let dir = tempfile::tempdir()?;
    let (src, dst) = (dir.path().join("in"), dir.path().join("out"));
    for i in 0..5200 {
        let sub = src.join(format!("d{}", i % 20));
        std::fs::create_dir_all(&sub)?;
        std::fs::write(sub.join(format!("{i}.txt")), i.to_string())?;
    }
    node.apply(&local_task(
        "many",
        &src,
        &dst,
        "subdirectories = true",
        "relative_subdirs = true",
    ))
    .await?;
    let run = node.run_task("many", Duration::from_secs(300)).await?;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(run.files_delivered, 5200);
    assert_eq!(tree_hashes(&dst).len(), 5200);
    node.shutdown().await;
    Ok(())
}
