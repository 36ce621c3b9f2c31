//! Two transfer service instances share one run's files (a JetStream queue): both do work and
//! no file is delivered twice.

use std::time::Duration;

use ferry_tests::{
    NatsServer, Node, ServiceProcess, Services, free_port, http_get, local_task, metric_sum, process_env,
    settings, tree_hashes,
};
use ferry_wire::RunStatus;

const FILES: usize = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_transfer_instances_share_a_run_without_duplicates() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let node = Node::start_with(settings(&nats.url()), Services::NO_TRANSFER).await?;
    let work = tempfile::tempdir()?;
    let (src, dst) = (work.path().join("in"), work.path().join("out"));
    std::fs::create_dir_all(&src)?;
    for i in 0..FILES {
        std::fs::write(
            src.join(format!("f{i:03}.txt")),
            vec![b'a' + (i % 26) as u8; 64 * 1024],
        )?;
    }
    // `unique` turns any second delivery into a visible `name (1).txt`.
    node.apply(&local_task("shared", &src, &dst, "", "overwrite = \"unique\""))
        .await?;

    let ports = [free_port(), free_port()];
    let instances: Vec<ServiceProcess> = ports
        .iter()
        .map(|port| {
            let mut env = process_env(&nats.url(), ferry_tests::NODE);
            env.insert("FERRY_TRANSFER__METRICS_ADDR".into(), format!("127.0.0.1:{port}"));
            ServiceProcess::start("transfer", &env, work.path())
        })
        .collect::<anyhow::Result<_>>()?;
    for port in ports {
        ferry_tests::eventually(Duration::from_secs(30), "transfer metrics", || async move {
            http_get(port, "/healthz").ok().filter(|(s, _)| *s == 200)
        })
        .await?;
    }

    let finished = node.run_task("shared", Duration::from_secs(120)).await?;
    assert_eq!(finished.status, RunStatus::Succeeded, "{:?}", finished.error);
    assert_eq!(finished.files_delivered as usize, FILES);
    assert_eq!(
        tree_hashes(&dst),
        tree_hashes(&src),
        "each file exactly once, intact"
    );

    let per_instance: Vec<f64> = ports
        .iter()
        .map(|port| {
            let (_, body) = http_get(*port, "/metrics").expect("metrics answer");
            metric_sum(
                &body,
                "ferry_transfer_files_total",
                &[("task", "shared"), ("outcome", "delivered")],
            )
        })
        .collect();
    assert_eq!(
        per_instance.iter().sum::<f64>() as usize,
        FILES,
        "{per_instance:?}"
    );
    assert!(
        per_instance.iter().all(|n| *n > 0.0),
        "both instances moved files: {per_instance:?}"
    );
    eprintln!("files per instance: {per_instance:?}");
    drop(instances);
    node.shutdown().await;
    Ok(())
}
