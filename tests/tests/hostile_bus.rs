//! A hostile bus: a client holding the stolen NATS keys of the services (so it passes
//! authentication and may publish where they publish) sends, on every subject a service
//! consumes, malformed JSON, paths that climb out of their folder, work for folders and
//! destinations nobody configured, a forged new-files-only key, a million-byte name, the maximum
//! epoch and forged results. Afterwards every service still answers, no file outside the
//! configured folders was read, written or deleted, and real work completes.

use std::time::Duration;

use async_nats::jetstream;
use chrono::Utc;
use ferry_service::settings::NatsAuth;
use ferry_tests::{NatsServer, Node, connect_as, local_task, nats_keys, settings};
use ferry_wire::{
    BatchResult, FileItem, FileResult, Outcome, RunRequested, RunStatus, SourceFile, Trigger, WorkBatch,
    subjects, topology,
};
use uuid::Uuid;

/// Publish `payload` on `subject` into its stream and wait for the stream's ack.
async fn put(js: &jetstream::Context, subject: String, payload: Vec<u8>) -> anyhow::Result<()> {
    js.publish(subject, payload.into()).await?.await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_messages_on_every_consumed_subject_change_nothing_and_work_goes_on() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let keys = dir.path().join("keys");
    let nats = NatsServer::start_with(&nats_keys(&keys, "node1")?)?;
    let mut node_settings = settings(&nats.url());
    node_settings.nats = NatsAuth {
        nkey_seed_file: Some(format!("{}/{{node}}/{{service}}.nk", keys.display())),
        ..NatsAuth::default()
    };
    let node = Node::start(node_settings).await?;
    let (src, dst) = (dir.path().join("in"), dir.path().join("out"));
    let outside = dir.path().join("outside");
    let escape = dir.path().join("escape");
    std::fs::create_dir_all(&src)?;
    std::fs::create_dir_all(&outside)?;
    std::fs::write(outside.join("secret.txt"), "not for you")?;
    std::fs::write(src.join("a.txt"), "a")?;
    let toml = local_task("victim", &src, &dst, "new_files_only = true", "");
    node.apply(&toml).await?;
    let task = ferry_tests::validated(&toml)?.tasks["victim"].clone();
    let epoch = node.current_epoch().await?;

    let as_ = |service: &str| keys.join("node1").join(format!("{service}.nk"));
    let scheduler = jetstream::new(connect_as(&as_("scheduler"), nats.url()).await?);
    let collector = jetstream::new(connect_as(&as_("file-collector"), nats.url()).await?);
    let transfer = jetstream::new(connect_as(&as_("transfer"), nats.url()).await?);

    // Run requests (the scheduler's subject): garbage, the maximum epoch, names that are not
    // names (a million bytes, a wildcard).
    let request = |task: &str, run_id: Uuid, epoch: u64| RunRequested {
        task: task.into(),
        run_id,
        epoch,
        node: "node1".into(),
        trigger: Trigger::Manual {
            by: "attacker".into(),
        },
        requested_at: Utc::now(),
        parameters: Default::default(),
    };
    put(&scheduler, subjects::run_request("victim"), b"{not json".to_vec()).await?;
    let forged_run = Uuid::now_v7();
    put(
        &scheduler,
        subjects::run_request("victim"),
        ferry_wire::encode(&request("victim", forged_run, u64::MAX)).to_vec(),
    )
    .await?;
    for name in ["x".repeat(1_000_000), ">".to_string(), "victim.x".to_string()] {
        put(
            &scheduler,
            subjects::run_request("victim"),
            ferry_wire::encode(&request(&name, Uuid::now_v7(), epoch)).to_vec(),
        )
        .await?;
    }

    // Work batches (the collector's subject).
    let item = |rel: &str| FileItem {
        run_id: Uuid::now_v7(),
        task: "victim".into(),
        epoch,
        item_id: format!("{:032x}", rand_id()),
        source: SourceFile {
            source_index: 0,
            host: "local".into(),
            folder: src.to_string_lossy().into_owned(),
            rel_path: rel.into(),
            size: 1,
            mtime_ns: 0,
            state_key: Some(ferry_wire::plan::state_key(
                &ferry_wire::plan::state_source_key("victim", "local", &src.to_string_lossy()),
                rel,
            )),
            delete_after: false,
        },
        destinations: task.destinations.clone(),
        run_started_at: Utc::now(),
        refused: Vec::new(),
    };
    let mut hostile: Vec<(&str, FileItem)> = Vec::new();
    hostile.push(("climbs out of its folder", item("../outside/secret.txt")));
    hostile.push(("absolute", item(&format!("{}/secret.txt", outside.display()))));
    let mut other_folder = item("secret.txt");
    other_folder.source.folder = outside.to_string_lossy().into_owned();
    hostile.push(("a folder nobody configured", other_folder));
    let mut other_destination = item("a.txt");
    other_destination.destinations[0].folder =
        ferry_config::Template::parse(&escape.to_string_lossy()).map_err(|e| anyhow::anyhow!("{e}"))?;
    hostile.push(("a destination nobody configured", other_destination));
    let mut deletes = item("a.txt");
    deletes.source.delete_after = true;
    hostile.push(("a move where the task copies", deletes));
    let mut forged_state = item("a.txt");
    forged_state.source.state_key = Some("nfo.forged.key".into());
    hostile.push(("a forged new-files-only key", forged_state));
    hostile.push(("a million-byte name", item(&"n".repeat(1_000_000))));
    hostile.push((
        "a run without source files for a task that has sources",
        FileItem::sourceless(
            Uuid::now_v7(),
            "victim",
            epoch,
            task.destinations.clone(),
            Utc::now(),
        ),
    ));
    let mut max_epoch = item("a.txt");
    max_epoch.epoch = u64::MAX;
    hostile.push(("the maximum epoch", max_epoch));
    let mut results_of = Vec::new();
    for (what, item) in hostile {
        let run_id = item.run_id;
        let batch = WorkBatch {
            batch_id: format!("{:032x}", rand_id()),
            items: vec![item],
        };
        results_of.push((what, run_id, batch.batch_id.clone()));
        put(
            &collector,
            subjects::file_batch(run_id, &batch.batch_id),
            ferry_wire::encode(&batch).to_vec(),
        )
        .await?;
    }
    put(
        &collector,
        subjects::file_batch(Uuid::now_v7(), "garbage"),
        b"\x00\xff".to_vec(),
    )
    .await?;
    let mut bad_ids = item("a.txt");
    bad_ids.item_id = "not a name".into();
    let bad_batch = WorkBatch {
        batch_id: "*".into(),
        items: vec![bad_ids],
    };
    put(
        &collector,
        subjects::file_batch(Uuid::now_v7(), "x"),
        ferry_wire::encode(&bad_batch).to_vec(),
    )
    .await?;

    // Each hostile batch is answered, failed, with why.
    for (what, run_id, batch_id) in &results_of {
        let result = result_of(&node, *run_id, batch_id).await?;
        assert_eq!(result.outcome, Outcome::Failed, "{what}: {result:?}");
        assert!(
            result.error.as_deref().unwrap_or("").contains("refused"),
            "{what}: {:?}",
            result.error
        );
    }

    // A link swapped in for a listed file after the listing, with the listed size and mtime of
    // what it points to: never followed, nothing written.
    std::os::unix::fs::symlink(outside.join("secret.txt"), src.join("link.txt"))?;
    let mut swapped = item("link.txt");
    swapped.source.size = "not for you".len() as u64;
    swapped.source.mtime_ns = ferry_tests::mtime_ns(&outside.join("secret.txt"));
    let (run_id, batch_id) = (swapped.run_id, format!("{:032x}", rand_id()));
    let batch = WorkBatch {
        batch_id: batch_id.clone(),
        items: vec![swapped],
    };
    put(
        &collector,
        subjects::file_batch(run_id, &batch_id),
        ferry_wire::encode(&batch).to_vec(),
    )
    .await?;
    let result = result_of(&node, run_id, &batch_id).await?;
    assert_eq!(result.outcome, Outcome::Failed, "{result:?}");
    assert!(
        result.error.as_deref().unwrap_or("").contains("symbolic link"),
        "{:?}",
        result.error
    );
    assert!(!dst.join("link.txt").exists(), "the link was not followed");
    std::fs::remove_file(src.join("link.txt"))?;

    // Results (transfer's subject) for a run that then really runs: garbage and a result for a
    // batch the run never planned must not wedge it.
    let run_id = Uuid::now_v7();
    put(
        &transfer,
        subjects::batch_result(run_id, "nope"),
        b"garbage".to_vec(),
    )
    .await?;
    let forged = BatchResult {
        batch_id: "nope".into(),
        results: Vec::new(),
    };
    put(
        &transfer,
        subjects::batch_result(run_id, "nope"),
        ferry_wire::encode(&forged).to_vec(),
    )
    .await?;
    put(
        &scheduler,
        subjects::run_request("victim"),
        ferry_wire::encode(&request("victim", run_id, epoch)).to_vec(),
    )
    .await?;
    let run =
        ferry_service::streams::wait_for_run(&node.js, "victim", run_id, Duration::from_secs(60)).await?;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(run.files_delivered, 1);

    // The forged run was refused, not run.
    let refused =
        ferry_service::streams::wait_for_run(&node.js, "victim", forged_run, Duration::from_secs(30)).await?;
    assert_eq!(refused.status, RunStatus::Skipped);

    // Every service still answers; nothing outside the configured folders changed.
    for service in ferry_wire::permissions::SERVICES {
        let _: serde_json::Value = node.call(service, subjects::api::STATUS, &()).await?;
    }
    assert_eq!(
        std::fs::read_to_string(outside.join("secret.txt"))?,
        "not for you"
    );
    assert_eq!(std::fs::read_dir(&outside)?.count(), 1);
    assert!(!escape.exists(), "nothing was written where nobody configured");
    let delivered: Vec<String> = std::fs::read_dir(&dst)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    assert_eq!(delivered, vec!["a.txt".to_string()]);
    assert!(src.join("a.txt").exists(), "the task copies: its source stays");

    // Real work goes on.
    std::fs::write(src.join("b.txt"), "b")?;
    let last = node.run_task("victim", Duration::from_secs(60)).await?;
    assert_eq!(last.status, RunStatus::Succeeded, "{:?}", last.error);
    assert_eq!(last.files_delivered, 1);
    assert!(dst.join("b.txt").exists());
    node.shutdown().await;
    Ok(())
}

/// The one result transfer publishes for batch `batch_id` of run `run_id`.
async fn result_of(node: &Node, run_id: Uuid, batch_id: &str) -> anyhow::Result<FileResult> {
    use futures::StreamExt;
    let stream = node.js.get_stream(topology::STREAM_RESULTS).await?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: subjects::batch_result(run_id, batch_id),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
        .await
        .map_err(|_| anyhow::anyhow!("no result for batch {batch_id} within 30 s"))?
        .expect("a result")?;
    let mut batch: BatchResult = ferry_wire::decode(&message.payload)?;
    anyhow::ensure!(batch.results.len() == 1, "{batch:?}");
    Ok(batch.results.remove(0))
}

fn rand_id() -> u128 {
    Uuid::new_v4().as_u128()
}
