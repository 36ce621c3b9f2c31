//! Scheduled runs across scheduler restarts: a slot is never fired twice, whether the scheduler
//! is killed (SIGKILL) or stopped gracefully right at a slot, and with either missed-run policy.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use ferry_tests::{NatsServer, Node, ServiceProcess, Services, local_task, process_env, settings};
use ferry_wire::Trigger;

/// Sleep until `offset` after the next even second (the task fires every 2 s).
async fn at_slot_offset(offset: Duration) {
    let now = Utc::now();
    let into = Duration::from_nanos(now.nanosecond() as u64 % 1_000_000_000)
        + Duration::from_secs(now.second() as u64 % 2);
    let to_next = Duration::from_secs(2).saturating_sub(into);
    tokio::time::sleep(to_next + offset).await;
}

async fn slots_fired(node: &Node, task: &str) -> anyhow::Result<BTreeMap<DateTime<Utc>, usize>> {
    let mut slots = BTreeMap::new();
    for run in node.finished_runs(Some(task)).await? {
        if let Trigger::Schedule { slot } = run.trigger {
            *slots.entry(slot).or_insert(0) += 1;
        }
    }
    Ok(slots)
}

async fn restarts_never_double_fire(missed_runs: &str) -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let node = Node::start_with(
        settings(&nats.url()),
        Services {
            scheduler: false,
            collector: true,
            transfer: true,
        },
    )
    .await?;
    let work = tempfile::tempdir()?;
    let (src, dst) = (work.path().join("in"), work.path().join("out"));
    std::fs::create_dir_all(&src)?;
    let toml = local_task("tick", &src, &dst, "", "") + "\n[[task.schedule]]\ncron = \"*/2 * * * * *\"\n";
    let mut env = process_env(&nats.url(), ferry_tests::NODE);
    env.insert("FERRY_SCHEDULER__MISSED_RUNS".into(), missed_runs.into());
    let mut scheduler = ServiceProcess::start("scheduler", &env, work.path())?;
    node.wait_ready(Services {
        scheduler: true,
        collector: true,
        transfer: true,
    })
    .await?;
    node.apply(&toml).await?;

    // Kill or stop the scheduler at and just after slot boundaries, restarting at once.
    let offsets_ms = [0u64, 3, 10, 30, 100, 400, 1, 50];
    for (i, ms) in offsets_ms.iter().enumerate() {
        at_slot_offset(Duration::from_millis(*ms)).await;
        if i % 2 == 0 {
            scheduler.kill();
        } else {
            scheduler.terminate(Duration::from_secs(20))?;
        }
        scheduler = ServiceProcess::start("scheduler", &env, work.path())?;
        node.wait_ready(Services {
            scheduler: true,
            collector: true,
            transfer: true,
        })
        .await?;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    scheduler.terminate(Duration::from_secs(20))?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let slots = slots_fired(&node, "tick").await?;
    let doubles: Vec<_> = slots.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubles.is_empty(),
        "slots fired more than once ({missed_runs}): {doubles:?}"
    );
    assert!(
        slots.len() >= 6,
        "the schedule kept firing across restarts: {slots:?}"
    );
    for slot in slots.keys() {
        assert_eq!(slot.timestamp() % 2, 0, "slots are the schedule's own instants");
    }
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_inside_a_slot_does_not_fire_it_twice_with_run_once() -> anyhow::Result<()> {
    restarts_never_double_fire("run_once").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_inside_a_slot_does_not_fire_it_twice_with_skip() -> anyhow::Result<()> {
    restarts_never_double_fire("skip").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduler_stop_and_start_with_disabled_setting() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let mut s = settings(&nats.url());
    s.scheduler.start_with_scheduler_disabled = true;
    let node = Node::start(s).await?;
    let work = tempfile::tempdir()?;
    let (src, dst) = (work.path().join("in"), work.path().join("out"));
    std::fs::create_dir_all(&src)?;
    node.apply(&(local_task("tick", &src, &dst, "", "") + "\n[[task.schedule]]\ncron = \"* * * * * *\"\n"))
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        slots_fired(&node, "tick").await?.is_empty(),
        "a disabled scheduler fires nothing"
    );
    // Manual runs still work while schedules are stopped.
    let manual = node.run_task("tick", Duration::from_secs(30)).await?;
    assert_eq!(manual.status, ferry_wire::RunStatus::Succeeded);

    let status: ferry_wire::SchedulerStatus = node
        .call(
            ferry_wire::subjects::service::SCHEDULER,
            ferry_wire::subjects::api::START,
            &(),
        )
        .await?;
    assert!(status.enabled);
    ferry_tests::eventually(Duration::from_secs(10), "a scheduled run", || async {
        slots_fired(&node, "tick").await.ok().filter(|s| !s.is_empty())
    })
    .await?;
    let status: ferry_wire::SchedulerStatus = node
        .call(
            ferry_wire::subjects::service::SCHEDULER,
            ferry_wire::subjects::api::STOP,
            &(),
        )
        .await?;
    assert!(!status.enabled);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = slots_fired(&node, "tick").await?.len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        slots_fired(&node, "tick").await?.len(),
        before,
        "stopped means stopped"
    );
    node.shutdown().await;
    Ok(())
}
