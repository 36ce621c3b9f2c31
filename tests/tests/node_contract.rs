//! Node-level contract: epoch fencing in every consuming service, NATS micro-service discovery,
//! and event triggers.

use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use chrono::Utc;
use ferry_tests::{NatsServer, Node, eventually, local_task, settings};
use ferry_wire::{
    BatchResult, FileItem, Lease, Outcome, RunRequested, RunStatus, SourceFile, Trigger, WorkBatch, subjects,
    topology,
};
use futures::StreamExt;
use uuid::Uuid;

/// Another activation happens (a newer lease revision): work stamped with the old epoch is refused
/// by the file-collector and by transfer, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn work_stamped_with_an_older_epoch_is_refused() -> anyhow::Result<()> {
    let (_nats, node, _work, src, dst) = node_with_task("fenced").await?;

    let lease_kv = node.js.get_key_value(topology::KV_LEASE).await?;
    let old = lease_kv
        .entry(topology::LEASE_KEY)
        .await?
        .expect("the coordinator holds the lease");
    let old_epoch = ferry_wire::decode::<Lease>(&old.value)?.epoch_at(old.revision);
    // Another node takes the lease over (as if this node's had lapsed): a new epoch.
    let newer = Lease {
        node: "node2".into(),
        acquired_at: Utc::now(),
        epoch: 0,
        mode: "manual".into(),
        instance: String::new(),
    };
    let new_epoch = lease_kv
        .update(topology::LEASE_KEY, ferry_wire::encode(&newer), old.revision)
        .await?;
    assert!(new_epoch > old.revision);

    // Every service learns the new epoch from the lease watch.
    for service in [
        subjects::service::SCHEDULER,
        subjects::service::FILE_COLLECTOR,
        subjects::service::TRANSFER,
    ] {
        eventually(
            Duration::from_secs(10),
            &format!("{service} to see epoch {new_epoch}"),
            || async {
                let status: serde_json::Value = node.call(service, subjects::api::STATUS, &()).await.ok()?;
                (status["epoch"].as_u64() == Some(new_epoch)).then_some(())
            },
        )
        .await?;
    }
    // This node's coordinator finds the lease taken and steps down: the scheduler refuses.
    let err = eventually(
        Duration::from_secs(15),
        "the scheduler to refuse runs",
        || async { node.request_run("fenced").await.err().map(|e| e.to_string()) },
    )
    .await?;
    assert!(err.contains("not active") || err.contains("fenced"), "{err}");

    // A run request stamped with the old epoch is refused by the collector.
    let finished = run_stamped(&node, "fenced", old_epoch).await?;
    assert_eq!(finished.status, RunStatus::Skipped);
    assert!(
        finished.error.as_deref().unwrap_or("").contains("epoch"),
        "{:?}",
        finished.error
    );

    // A work batch stamped with the old epoch is refused by transfer.
    let result = batch_stamped(&node, "fenced", &src, &dst, old_epoch).await?;
    assert_eq!(result.outcome, Outcome::Failed);
    assert!(
        result.error.as_deref().unwrap_or("").contains("fenced"),
        "{:?}",
        result.error
    );
    assert!(!dst.join("a.txt").exists(), "a fenced batch writes nothing");
    node.shutdown().await;
    Ok(())
}

/// One message stamped with the maximum epoch used to raise every service's gate for good, so
/// all later work was refused as fenced. A stamp proves nothing: it is refused as forged, and
/// real work goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_stamped_with_the_maximum_epoch_is_refused_and_work_goes_on() -> anyhow::Result<()> {
    let (_nats, node, _work, src, dst) = node_with_task("target").await?;

    let forged = run_stamped(&node, "target", u64::MAX).await?;
    assert_eq!(forged.status, RunStatus::Skipped);
    assert!(
        forged.error.as_deref().unwrap_or("").contains("forged"),
        "{:?}",
        forged.error
    );
    let result = batch_stamped(&node, "target", &src, &dst, u64::MAX).await?;
    assert_eq!(result.outcome, Outcome::Failed);
    assert!(
        result.error.as_deref().unwrap_or("").contains("forged"),
        "{:?}",
        result.error
    );
    assert!(!dst.join("a.txt").exists(), "a forged batch writes nothing");

    let real = node.run_task("target", Duration::from_secs(30)).await?;
    assert_eq!(real.status, RunStatus::Succeeded, "{:?}", real.error);
    assert_eq!(std::fs::read_to_string(dst.join("a.txt"))?, "payload");
    node.shutdown().await;
    Ok(())
}

/// A second process started with a `node_id` that is already running would take the node's lease
/// for its own: its coordinator refuses to start, naming the other, and the running node stays
/// active.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_coordinator_with_the_same_node_id_refuses_to_start() -> anyhow::Result<()> {
    let (nats, node, work, _src, _dst) = node_with_task("still").await?;

    let mut twin = ferry_tests::ServiceProcess::start(
        "failover-coordinator",
        &ferry_tests::process_env(&nats.url(), "node1"),
        work.path(),
    )?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while twin.is_running() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the twin coordinator is still running"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(&twin.log)?;
    assert!(
        log.contains("another failover coordinator is running as node_id")
            && log.contains("node1")
            && log.contains("give every node its own node_id"),
        "{log}"
    );
    let run = node.run_task("still", Duration::from_secs(30)).await?;
    assert_eq!(
        run.status,
        RunStatus::Succeeded,
        "the running node stays active: {:?}",
        run.error
    );
    node.shutdown().await;
    Ok(())
}

/// A node on a fresh server with one local task moving `in/a.txt` ("payload") to `out`.
async fn node_with_task(
    task: &str,
) -> anyhow::Result<(
    NatsServer,
    Node,
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
)> {
    let nats = NatsServer::start()?;
    let node = Node::start(settings(&nats.url())).await?;
    let work = tempfile::tempdir()?;
    let (src, dst) = (work.path().join("in"), work.path().join("out"));
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join("a.txt"), "payload")?;
    node.apply(&local_task(task, &src, &dst, "", "")).await?;
    Ok((nats, node, work, src, dst))
}

/// Publish a run request for `task` stamped with `epoch`, as any client on the bus could, and
/// wait for its `RunFinished`.
async fn run_stamped(node: &Node, task: &str, epoch: u64) -> anyhow::Result<ferry_wire::RunFinished> {
    let run_id = Uuid::now_v7();
    let request = RunRequested {
        task: task.into(),
        run_id,
        epoch,
        node: "node1".into(),
        trigger: Trigger::Manual { by: "test".into() },
        requested_at: Utc::now(),
        parameters: Default::default(),
    };
    node.js
        .send_publish(
            subjects::run_request(task),
            PublishMessage::build().payload(ferry_wire::encode(&request)),
        )
        .await?
        .await?;
    ferry_service::streams::wait_for_run(&node.js, task, run_id, Duration::from_secs(30)).await
}

/// Publish a work batch moving `src/a.txt` for `task` stamped with `epoch`, and wait for its
/// one result.
async fn batch_stamped(
    node: &Node,
    task: &str,
    src: &std::path::Path,
    dst: &std::path::Path,
    epoch: u64,
) -> anyhow::Result<ferry_wire::FileResult> {
    let config = ferry_tests::validated(&local_task(task, src, dst, "", ""))?;
    let item_run = Uuid::now_v7();
    let item = FileItem {
        run_id: item_run,
        task: task.into(),
        epoch,
        item_id: format!("{:032x}", 7),
        source: SourceFile {
            source_index: 0,
            host: "local".into(),
            folder: src.to_string_lossy().into_owned(),
            rel_path: "a.txt".into(),
            size: 7,
            mtime_ns: 0,
            // What the collector would send: the item is refused for its epoch alone.
            state_key: Some(ferry_wire::plan::state_key(
                &ferry_wire::plan::state_source_key(task, "local", &src.to_string_lossy()),
                "a.txt",
            )),
            delete_after: false,
        },
        destinations: config.tasks[task].destinations.clone(),
        run_started_at: Utc::now(),
        refused: Vec::new(),
    };
    let results = node.js.get_stream(topology::STREAM_RESULTS).await?;
    let reader = results
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: subjects::run_results(item_run),
            ..Default::default()
        })
        .await?;
    let mut messages = reader.messages().await?;
    let batch = WorkBatch {
        batch_id: format!("{:032x}", 8),
        items: vec![item],
    };
    node.js
        .publish(
            subjects::file_batch(item_run, &batch.batch_id),
            ferry_wire::encode(&batch),
        )
        .await?
        .await?;
    let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
        .await?
        .expect("a result")?;
    let mut batch: BatchResult = ferry_wire::decode(&message.payload)?;
    anyhow::ensure!(batch.results.len() == 1, "one result: {:?}", batch.results);
    Ok(batch.results.remove(0))
}

/// Standard NATS tooling finds every service: `$SRV.PING` answers for all five.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_service_registers_as_a_nats_micro_service() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let node = Node::start(settings(&nats.url())).await?;
    let inbox = node.client.new_inbox();
    let mut replies = node.client.subscribe(inbox.clone()).await?;
    node.client
        .publish_with_reply("$SRV.PING", inbox, "".into())
        .await?;
    let mut names = std::collections::BTreeSet::new();
    while let Ok(Some(reply)) = tokio::time::timeout(Duration::from_secs(1), replies.next()).await {
        let v: serde_json::Value = serde_json::from_slice(&reply.payload)?;
        names.insert(v["name"].as_str().unwrap_or_default().to_string());
        assert_eq!(v["metadata"]["node"], "node1");
    }
    let expected: std::collections::BTreeSet<String> = [
        "ferry-scheduler",
        "ferry-file-collector",
        "ferry-transfer",
        "ferry-cert-handler",
        "ferry-failover-coordinator",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(names, expected);
    node.shutdown().await;
    Ok(())
}

/// Any message on `ferry.trigger.<task>` runs the task; the run records the trigger.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nats_event_triggers_a_run() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let node = Node::start(settings(&nats.url())).await?;
    let work = tempfile::tempdir()?;
    let (src, dst) = (work.path().join("in"), work.path().join("out"));
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join("event.csv"), "x")?;
    node.apply(&local_task("on-event", &src, &dst, "", "")).await?;
    let reply = node
        .client
        .request(subjects::trigger("on-event"), "{}".into())
        .await?;
    let v: serde_json::Value = serde_json::from_slice(&reply.payload)?;
    let run_id: Uuid = v["run_id"].as_str().expect("run id").parse()?;
    let finished =
        ferry_service::streams::wait_for_run(&node.js, "on-event", run_id, Duration::from_secs(30)).await?;
    assert_eq!(finished.status, RunStatus::Succeeded);
    assert!(matches!(finished.trigger, Trigger::Event { .. }));
    eventually(Duration::from_secs(5), "the file", || async {
        dst.join("event.csv").exists().then_some(())
    })
    .await?;
    // Unknown tasks are answered with an error, not silence.
    let reply = node
        .client
        .request(subjects::trigger("nope"), "{}".into())
        .await?;
    assert!(String::from_utf8_lossy(&reply.payload).contains("unknown task"));
    node.shutdown().await;
    Ok(())
}
