//! Crash safety: SIGKILL the transfer service in the middle of a run of 200 × 1 MiB files and
//! restart it. Every file must end up delivered exactly once and intact, and no partial file may
//! ever stand under a final name — a watcher scans the destination throughout the run.
//!
//! `FERRY_TRIALS` (default 1) repeats the experiment with a different kill point each time.
//!
//! Also: a run whose file-collector stopped while it was sending the run's work batches finishes
//! with the files that were sent, and fails the others with a reason (nothing of them written).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry_tests::{
    NatsServer, Node, ServiceProcess, Services, eventually, local_task, process_env, settings, tree_hashes,
};
use ferry_wire::{Outcome, RunStatus};

const FILES: usize = 200;
const SIZE: usize = 1 << 20;

fn trials() -> usize {
    std::env::var("FERRY_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// Pseudo-random bytes, different per file, cheap to make.
fn content(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..SIZE / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

/// Scans `dir` until stopped; returns every final-named file ever seen with a wrong size.
fn watch(dir: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut violations = Vec::new();
        let mut scans = 0u64;
        while !stop.load(Ordering::SeqCst) {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.ends_with(".part") {
                        continue;
                    }
                    // Size through the open handle: a file renamed into place is already whole.
                    if let Ok(meta) = e.metadata()
                        && meta.len() != SIZE as u64
                    {
                        violations.push(format!("{name}: {} bytes under its final name", meta.len()));
                    }
                }
            }
            scans += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(scans > 10, "the watcher must actually have watched");
        violations
    })
}

fn count_final(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().ends_with(".part"))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_transfer_mid_run_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    sigkill_of_transfer_mid_run(None).await
}

/// The same to an SFTP server: the commit point is the server's rename (create-new by hard link
/// for `unique`), and the killed transfer's half-written temp files are on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_transfer_mid_run_to_sftp_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let sshd = ferry_testkit::peers::sshd::Sshd::start(ferry_testkit::peers::sshd::SshdAuth::Password)?;
    sigkill_of_transfer_mid_run(Some(&sshd)).await
}

async fn sigkill_of_transfer_mid_run(sftp: Option<&ferry_testkit::peers::sshd::Sshd>) -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let node = Node::start_with(settings(&nats.url()), Services::NO_TRANSFER).await?;
    let work = tempfile::tempdir()?;
    let src = work.path().join("in");
    std::fs::create_dir_all(&src)?;
    for i in 0..FILES {
        std::fs::write(src.join(format!("f{i:03}.bin")), content(i as u64))?;
    }
    let expected = tree_hashes(&src);
    let mut env = process_env(&nats.url(), ferry_tests::NODE);
    // The transfer processes open the host's secrets with the node's keymat.
    env.insert(
        "FERRY_KEYMAT".into(),
        node.settings.keymat_path().to_string_lossy().into_owned(),
    );

    for trial in 0..trials() {
        let dst = match sftp {
            Some(sshd) => sshd.folder(&format!("out-{trial}"))?,
            None => work.path().join(format!("out-{trial}")),
        };
        std::fs::create_dir_all(&dst)?;
        let task = format!("crash{trial}");
        // `unique` makes a second delivery visible as `name (1).bin`; new-files-only off so every
        // trial moves all files again.
        let mut config = local_task(
            &task,
            &src,
            &dst,
            "new_files_only = false",
            "overwrite = \"unique\"",
        );
        if let Some(sshd) = sftp {
            config = format!(
                "[[host]]\nname = \"sftp\"\nkind = \"sftp\"\naddress = \"127.0.0.1\"\nport = {}\nuser = \"{}\"\n\
                 password = \"{}\"\nhost_key_sha256 = [\"{}\"]\n\n{}",
                sshd.port(),
                ferry_testkit::peers::TEST_USER,
                ferry_testkit::peers::TEST_PASSWORD,
                sshd.host_key_sha256(),
                config.replacen(
                    "[[task.destination]]\nhost = \"local\"",
                    "[[task.destination]]\nhost = \"sftp\"",
                    1
                )
            );
        }
        node.apply(&config).await?;
        let mut transfer = ServiceProcess::start("transfer", &env, work.path())?;
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = watch(dst.clone(), stop.clone());

        let run_id = node.request_run(&task).await?;
        // Kill at a different point each trial: after 1..=150 files are in place.
        let kill_after = 1 + (trial * 37 + 11) % 150;
        eventually(Duration::from_secs(60), "files to start arriving", || async {
            (count_final(&dst) >= kill_after).then_some(())
        })
        .await?;
        transfer.kill();
        let at_kill = count_final(&dst);
        let _restarted = ServiceProcess::start("transfer", &env, work.path())?;

        let finished =
            ferry_service::streams::wait_for_run(&node.js, &task, run_id, Duration::from_secs(180)).await?;
        stop.store(true, Ordering::SeqCst);
        let violations = watcher.join().expect("watcher thread");
        assert!(
            violations.is_empty(),
            "partial files under final names: {violations:?}"
        );
        assert_eq!(
            finished.status,
            RunStatus::Succeeded,
            "trial {trial}: {:?}",
            finished.error
        );
        assert_eq!(finished.files_delivered as usize, FILES, "trial {trial}");
        assert!(finished.files.iter().all(|f| f.outcome == Outcome::Delivered));
        let delivered = tree_hashes(&dst);
        let leftovers: Vec<_> = std::fs::read_dir(&dst)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".part"))
            .collect();
        assert!(leftovers.is_empty(), "temp files left behind: {leftovers:?}");
        assert_eq!(
            delivered.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "trial {trial}: exactly the source files, no duplicates (killed at {at_kill} delivered)"
        );
        let wrong: BTreeMap<_, _> = delivered.iter().filter(|(k, v)| expected[*k] != **v).collect();
        assert!(wrong.is_empty(), "corrupted files: {wrong:?}");
        eprintln!(
            "trial {trial}: killed transfer with {at_kill} of {FILES} files in place; all delivered once, intact"
        );
    }
    node.shutdown().await;
    Ok(())
}

/// The file-collector stores a run's batch plan before it sends the first batch. If it stops
/// while sending, the resumed run waits for the batches that were sent and fails, with a reason,
/// the files of the batches that were not; those files were never written, and the next run
/// delivers them. Here the state a collector leaves when it dies after the first of two batches
/// is made by hand, then the run is requested again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_whose_collector_stopped_while_sending_finishes_with_what_was_sent() -> anyhow::Result<()> {
    use async_nats::jetstream::message::PublishMessage;
    use ferry_wire::{FileItem, PlannedBatch, RunRecord, RunRequested, SourceFile, Trigger, WorkBatch};

    let nats = NatsServer::start()?;
    let node = Node::start(settings(&nats.url())).await?;
    let work = tempfile::tempdir()?;
    let (src, dst) = (work.path().join("in"), work.path().join("out"));
    std::fs::create_dir_all(&src)?;
    for name in ["a.txt", "b.txt", "c.txt"] {
        std::fs::write(src.join(name), name)?;
    }
    let task_toml = local_task("resume", &src, &dst, "", "");
    node.apply(&task_toml).await?;
    let config = ferry_tests::validated(&task_toml)?;
    let epoch = node.current_epoch().await?;

    let run_id = uuid::Uuid::now_v7();
    let started_at = chrono::Utc::now();
    let item = |name: &str| FileItem {
        run_id,
        task: "resume".into(),
        epoch,
        item_id: format!("item-{}", name.trim_end_matches(".txt")),
        source: SourceFile {
            source_index: 0,
            host: "local".into(),
            folder: src.to_string_lossy().into_owned(),
            rel_path: name.into(),
            size: name.len() as u64,
            // As listed: transfer refuses a source whose size or mtime differs from its listing.
            mtime_ns: ferry_tests::mtime_ns(&src.join(name)),
            // New-files-only is on by default: the key the collector would give it.
            state_key: Some(ferry_wire::plan::state_key(
                &ferry_wire::plan::state_source_key("resume", "local", &src.to_string_lossy()),
                name,
            )),
            delete_after: false,
        },
        destinations: config.tasks["resume"].destinations.clone(),
        run_started_at: started_at,
        refused: Vec::new(),
    };
    let sent = WorkBatch {
        batch_id: ferry_wire::plan::batch_id(["item-a", "item-b"]),
        items: vec![item("a.txt"), item("b.txt")],
    };
    let record = RunRecord {
        started_at,
        batches: vec![
            PlannedBatch {
                batch_id: sent.batch_id.clone(),
                items: 2,
            },
            PlannedBatch {
                batch_id: ferry_wire::plan::batch_id(["item-c"]),
                items: 1,
            },
        ],
        published: false,
        max_run_secs: None,
    };
    node.js
        .get_key_value(ferry_wire::topology::KV_RUNS)
        .await?
        .put(format!("run.{run_id}"), ferry_wire::encode(&record))
        .await?;
    node.js
        .send_publish(
            ferry_wire::subjects::file_batch(run_id, &sent.batch_id),
            PublishMessage::build()
                .payload(ferry_wire::encode(&sent))
                .message_id(&sent.batch_id),
        )
        .await?
        .await?;
    let request = RunRequested {
        task: "resume".into(),
        run_id,
        epoch,
        node: "node1".into(),
        trigger: Trigger::Manual { by: "test".into() },
        requested_at: started_at,
        parameters: Default::default(),
    };
    node.js
        .send_publish(
            ferry_wire::subjects::run_request("resume"),
            PublishMessage::build().payload(ferry_wire::encode(&request)),
        )
        .await?
        .await?;
    let finished =
        ferry_service::streams::wait_for_run(&node.js, "resume", run_id, Duration::from_secs(60)).await?;
    assert_eq!(finished.status, RunStatus::Failed);
    assert_eq!((finished.files_delivered, finished.files_failed), (2, 1));
    let ids: Vec<&str> = finished.files.iter().map(|f| f.item_id.as_str()).collect();
    assert_eq!(
        ids,
        ["item-a", "item-b"],
        "listing order; a file never sent has no outcome of its own"
    );
    assert!(
        finished
            .error
            .as_deref()
            .unwrap_or("")
            .contains("1 file(s) were not sent"),
        "{:?}",
        finished.error
    );
    assert!(dst.join("a.txt").exists() && dst.join("b.txt").exists());
    assert!(!dst.join("c.txt").exists(), "a batch never sent writes nothing");

    // The next run delivers what was not sent.
    let next = node.run_task("resume", Duration::from_secs(60)).await?;
    assert_eq!(next.status, RunStatus::Succeeded, "{:?}", next.error);
    assert_eq!(std::fs::read_to_string(dst.join("c.txt"))?, "c.txt");
    node.shutdown().await;
    Ok(())
}

/// Take each delivery of `consumer`'s one message and hand it straight back (a worker that
/// crashes on it every time), until JetStream stops delivering it.
async fn hand_back_every_delivery(
    consumer: &async_nats::jetstream::consumer::PullConsumer,
) -> anyhow::Result<()> {
    let mut messages = consumer.messages().await?;
    for _ in 0..ferry_wire::topology::MAX_DELIVER {
        let message = tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut messages))
            .await?
            .ok_or_else(|| anyhow::anyhow!("the queue ended"))??;
        message
            .ack_with(async_nats::jetstream::AckKind::Nak(None))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}

/// A work batch every transfer worker takes and never finishes (here: a worker that gives each
/// delivery back at once) is dead-lettered after `MAX_DELIVER` deliveries: the run finishes
/// instead of waiting for good, its files fail with why, their sources stay, the batch leaves the
/// queue, and `ferry runs show` says it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_no_transfer_finishes_is_dead_lettered_and_the_run_finishes() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let node = Node::start_with(settings(&nats.url()), Services::NO_TRANSFER).await?;
    let work = tempfile::tempdir()?;
    let (src, dst) = (work.path().join("in"), work.path().join("out"));
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join("poison.csv"), "takes every worker down")?;
    node.apply(&local_task("poison", &src, &dst, "delete_after = true", ""))
        .await?;
    // The consumer exactly as transfer makes it; a "worker" that hands every delivery back.
    let consumer = ferry_transfer::file_queue_consumer(&node.js, Duration::from_secs(5)).await?;
    let run_id = node.request_run("poison").await?;
    hand_back_every_delivery(&consumer).await?;
    let finished =
        ferry_service::streams::wait_for_run(&node.js, "poison", run_id, Duration::from_secs(30)).await?;
    assert_eq!(finished.status, RunStatus::Failed);
    assert_eq!((finished.files_delivered, finished.files_failed), (0, 1));
    let why = finished.files[0].error.as_deref().unwrap_or_default();
    assert!(
        why.starts_with("dead-lettered: transfer took this file's work batch 10 times"),
        "{why}"
    );
    assert!(src.join("poison.csv").exists(), "the source stays");
    assert!(!dst.join("poison.csv").exists());
    let queue = node.js.get_stream(ferry_wire::topology::STREAM_FILEQ).await?;
    assert_eq!(
        queue.clone().info().await?.state.messages,
        0,
        "the batch left the queue"
    );
    let shown = ferry_tests::ferry_cli(&nats.url(), &["runs", "show", &run_id.to_string()], work.path());
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("dead-lettered"), "{text}");
    node.shutdown().await;
    Ok(())
}

/// A run request no collector finishes (here: a "collector" that hands every delivery back; in
/// life one that crashes or stalls on it each time) is dead-lettered after `MAX_DELIVER`
/// deliveries — even while no collector is there to hear it — and once one is: the run ends as failed with why, its task lock is freed, the request leaves the
/// queue, the source stays, and `ferry runs show` says it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_request_no_collector_finishes_is_dead_lettered_and_frees_its_task() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let no_collector = Services {
        collector: false,
        ..Services::ALL
    };
    let node = Node::start_with(settings(&nats.url()), no_collector).await?;
    let work = tempfile::tempdir()?;
    let (src, dst) = (work.path().join("in"), work.path().join("out"));
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join("poison.csv"), "takes every collector down")?;
    node.apply(&local_task("poison", &src, &dst, "delete_after = true", ""))
        .await?;
    // The consumer exactly as the collector makes it, and a "collector" that took the task lock
    // and then hands every delivery back.
    let consumer = ferry_file_collector::run_queue_consumer(&node.js, 4).await?;
    let run_id = node.request_run("poison").await?;
    let runs = node.js.get_key_value(ferry_wire::topology::KV_RUNS).await?;
    let lock = ferry_wire::TaskLock { run_id, epoch: 1 };
    runs.put("lock.poison", ferry_wire::encode(&lock)).await?;
    hand_back_every_delivery(&consumer).await?;
    // JetStream gave up on it while nothing followed the dead letters (the advisory is a plain
    // NATS message): the dead-letter stream keeps it for the collector that starts later.
    let dead_letters = node
        .js
        .get_stream(ferry_wire::topology::STREAM_DEADLETTER)
        .await?;
    eventually(Duration::from_secs(10), "the advisory kept", || {
        let mut dead_letters = dead_letters.clone();
        async move { (dead_letters.info().await.ok()?.state.messages == 1).then_some(()) }
    })
    .await?;
    // What a collector does besides taking requests: answer the dead letters.
    let stop = tokio_util::sync::CancellationToken::new();
    let follower = tokio::spawn(ferry_file_collector::dead_letter::follow(
        node.js.clone(),
        "node1".into(),
        stop.clone(),
    ));
    let finished =
        ferry_service::streams::wait_for_run(&node.js, "poison", run_id, Duration::from_secs(30)).await?;
    assert_eq!(finished.status, RunStatus::Failed);
    let why = finished.error.as_deref().unwrap_or_default();
    assert!(
        why.starts_with("dead-lettered: the file-collector took this run request 10 times"),
        "{why}"
    );
    assert!(src.join("poison.csv").exists(), "the source stays");
    assert!(!dst.join("poison.csv").exists());
    eventually(Duration::from_secs(10), "the task lock freed", || async {
        let entry = runs.entry("lock.poison").await.ok()?;
        entry
            .is_none_or(|e| e.operation != async_nats::jetstream::kv::Operation::Put)
            .then_some(())
    })
    .await?;
    let queue = node.js.get_stream(ferry_wire::topology::STREAM_RUNQ).await?;
    assert_eq!(
        queue.clone().info().await?.state.messages,
        0,
        "the request left the queue"
    );
    eventually(Duration::from_secs(10), "the advisory answered", || {
        let mut dead_letters = dead_letters.clone();
        async move { (dead_letters.info().await.ok()?.state.messages == 0).then_some(()) }
    })
    .await?;
    let shown = ferry_tests::ferry_cli(&nats.url(), &["runs", "show", &run_id.to_string()], work.path());
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("dead-lettered"), "{text}");
    stop.cancel();
    let _ = follower.await;
    node.shutdown().await;
    Ok(())
}

/// A node without transfer (its lost-batch check every second) and three files a.csv, b.csv and
/// c.csv in `<work>/in`, for a task to `<work>/out`.
async fn no_transfer_and_three_files(
    nats: &NatsServer,
    work: &Path,
) -> anyhow::Result<(Node, PathBuf, PathBuf)> {
    let mut s = settings(&nats.url());
    s.file_collector.lost_batch_check_secs = 1;
    let node = Node::start_with(s, Services::NO_TRANSFER).await?;
    let (src, dst) = (work.join("in"), work.join("out"));
    std::fs::create_dir_all(&src)?;
    for name in ["a.csv", "b.csv", "c.csv"] {
        std::fs::write(src.join(name), name)?;
    }
    Ok((node, src, dst))
}

/// The run failed all three files, not before `at_least`, with a run error starting `why`; their
/// sources stay.
fn all_three_failed_and_kept(
    finished: &ferry_wire::RunFinished,
    took: Duration,
    at_least: Duration,
    why: &str,
    src: &Path,
) {
    assert!(took >= at_least, "took {took:?}, not before {at_least:?}");
    assert_eq!(finished.status, RunStatus::Failed);
    assert_eq!((finished.files_delivered, finished.files_failed), (0, 3));
    let error = finished.error.as_deref().unwrap_or_default();
    assert!(error.starts_with(why), "{error}");
    for name in ["a.csv", "b.csv", "c.csv"] {
        assert!(src.join(name).exists(), "the source of {name} stays");
    }
}

/// Once a transfer runs, the task's next run delivers the three files.
async fn next_run_delivers_all_three(node: &mut Node, task: &str, dst: &Path) -> anyhow::Result<()> {
    node.spawn("transfer", |s, t| Box::pin(ferry_transfer::run(s, t)));
    let again = node.run_task(task, Duration::from_secs(60)).await?;
    assert_eq!(
        (again.status, again.files_delivered),
        (RunStatus::Succeeded, 3),
        "{:?}",
        again.error
    );
    for name in ["a.csv", "b.csv", "c.csv"] {
        assert_eq!(std::fs::read_to_string(dst.join(name))?, name);
    }
    Ok(())
}

/// A work batch that leaves the file queue without a result (here purged by hand; in life also
/// deleted, or expired after the queue's 7 days while no transfer ran) no longer holds its run
/// and its task for good: after two checks (`lost_batch_check_secs`) the run finishes, its files
/// fail with why, their sources stay, and once a transfer runs the next run delivers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_gone_from_the_queue_without_a_result_ends_its_run_and_frees_the_task() -> anyhow::Result<()>
{
    let nats = NatsServer::start()?;
    let work = tempfile::tempdir()?;
    let (mut node, src, dst) = no_transfer_and_three_files(&nats, work.path()).await?;
    node.apply(&local_task("lost", &src, &dst, "delete_after = true", ""))
        .await?;
    let run_id = node.request_run("lost").await?;
    let queue = node.js.get_stream(ferry_wire::topology::STREAM_FILEQ).await?;
    eventually(Duration::from_secs(30), "the run's batch in the queue", || {
        let mut queue = queue.clone();
        async move {
            queue
                .info()
                .await
                .ok()
                .filter(|i| i.state.messages > 0)
                .map(|_| ())
        }
    })
    .await?;
    queue.purge().await?;
    let started = std::time::Instant::now();
    let finished =
        ferry_service::streams::wait_for_run(&node.js, "lost", run_id, Duration::from_secs(30)).await?;
    // Missing at two checks a whole interval apart, not at one.
    all_three_failed_and_kept(
        &finished,
        started.elapsed(),
        Duration::from_secs(1),
        "3 file(s) have no result: their work batches left the file queue unanswered",
        &src,
    );
    // The task is free again, and its files were never marked as delivered.
    next_run_delivers_all_three(&mut node, "lost", &dst).await?;
    node.shutdown().await;
    Ok(())
}

/// A run past its deadline (`max_run_secs`) gives up the batches no transfer has started (here no
/// transfer runs at all): it ends instead of waiting up to the queue's 7 days, those files fail
/// with why and stay in their sources, their batches are claimed done and leave the queue (so a
/// transfer that starts later moves nothing of that run), and the next run delivers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_past_its_deadline_gives_up_the_files_no_transfer_started() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let work = tempfile::tempdir()?;
    let (mut node, src, dst) = no_transfer_and_three_files(&nats, work.path()).await?;
    let task = local_task("late", &src, &dst, "delete_after = true", "")
        .replace("name = \"late\"\n", "name = \"late\"\nmax_run_secs = 3\n");
    node.apply(&task).await?;
    let started = std::time::Instant::now();
    let run_id = node.request_run("late").await?;
    let finished =
        ferry_service::streams::wait_for_run(&node.js, "late", run_id, Duration::from_secs(30)).await?;
    all_three_failed_and_kept(
        &finished,
        started.elapsed(),
        Duration::from_secs(3),
        "3 file(s) were given up: the run passed its deadline (3 s, max_run_secs)",
        &src,
    );
    let why = finished.files[0].error.as_deref().unwrap_or_default();
    assert!(
        why.starts_with(
            "the run passed its deadline (3 s, max_run_secs) before a transfer started this file"
        ),
        "{why}"
    );
    let queue = node.js.get_stream(ferry_wire::topology::STREAM_FILEQ).await?;
    assert_eq!(
        queue.clone().info().await?.state.messages,
        0,
        "its batches left the queue"
    );

    // A transfer that starts now finds nothing of that run; the next run delivers the files.
    next_run_delivers_all_three(&mut node, "late", &dst).await?;
    let shown = ferry_tests::ferry_cli(&nats.url(), &["task", "show", "late"], work.path());
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("max run        3 s"), "{text}");
    node.shutdown().await;
    Ok(())
}
