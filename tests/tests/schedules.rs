//! Scheduled runs across scheduler restarts: a slot is never fired twice, whether the scheduler
//! is killed (SIGKILL) or stopped gracefully right at a slot, and with either missed-run policy.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_tests::{NatsServer, Node, ServiceProcess, Services, local_task, process_env, settings};
use ferry_wire::Trigger;

/// Sleep until `offset` after the next multiple of `period_secs` (UTC).
async fn at_period_offset(period_secs: i64, offset: Duration) {
    let now = Utc::now();
    let into_ms = (now.timestamp() % period_secs) * 1000 + now.timestamp_subsec_millis() as i64;
    let to_next = Duration::from_millis((period_secs * 1000 - into_ms) as u64);
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
    let node = Node::start_with(settings(&nats.url()), Services::NO_SCHEDULER).await?;
    let work = tempfile::tempdir()?;
    let (src, dst) = (work.path().join("in"), work.path().join("out"));
    std::fs::create_dir_all(&src)?;
    let toml = local_task("tick", &src, &dst, "", "") + "\n[[task.schedule]]\ncron = \"*/2 * * * * *\"\n";
    let mut env = process_env(&nats.url(), ferry_tests::NODE);
    env.insert("FERRY_SCHEDULER__MISSED_RUNS".into(), missed_runs.into());
    let mut scheduler = ServiceProcess::start("scheduler", &env, work.path())?;
    node.wait_ready(Services::ALL).await?;
    node.apply(&toml).await?;

    // Kill or stop the scheduler at and just after slot boundaries, restarting at once.
    let offsets_ms = [0u64, 3, 10, 30, 100, 400, 1, 50];
    for (i, ms) in offsets_ms.iter().enumerate() {
        at_period_offset(2, Duration::from_millis(*ms)).await;
        if i % 2 == 0 {
            scheduler.kill();
        } else {
            scheduler.terminate(Duration::from_secs(20))?;
        }
        scheduler = ServiceProcess::start("scheduler", &env, work.path())?;
        node.wait_ready(Services::ALL).await?;
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

/// Missed slots: with `skip` (the default) slots that passed while the scheduler was down are not
/// run afterwards; with `run_once` exactly one run makes up for them, at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missed_slots_follow_the_documented_policy() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let node = Node::start_with(settings(&nats.url()), Services::NO_SCHEDULER).await?;
    let work = tempfile::tempdir()?;
    let (src, dst) = (work.path().join("in"), work.path().join("out"));
    std::fs::create_dir_all(&src)?;
    let all = Services::ALL;
    // The configuration API lives in the scheduler: start one to apply, then stop it.
    let mut applier = ServiceProcess::start(
        "scheduler",
        &process_env(&nats.url(), ferry_tests::NODE),
        work.path(),
    )?;
    node.wait_ready(all).await?;
    node.apply(&(local_task("ten", &src, &dst, "", "") + "\n[[task.schedule]]\ncron = \"*/10 * * * * *\"\n"))
        .await?;
    applier.terminate(Duration::from_secs(20))?;
    for (policy, expected_makeups) in [("skip", 0usize), ("run_once", 1)] {
        let mut env = process_env(&nats.url(), ferry_tests::NODE);
        env.insert("FERRY_SCHEDULER__MISSED_RUNS".into(), policy.into());
        // Down from just after one slot until 1 s after the second next: two slots are missed.
        at_period_offset(10, Duration::from_millis(500)).await;
        let down_from = Utc::now();
        at_period_offset(10, Duration::ZERO).await;
        at_period_offset(10, Duration::from_secs(1)).await;
        let up_at = Utc::now();
        let mut scheduler = ServiceProcess::start("scheduler", &env, work.path())?;
        node.wait_ready(all).await?;
        // Long enough for a make-up run, short of the next regular slot (9 s away).
        tokio::time::sleep(Duration::from_secs(4)).await;
        scheduler.terminate(Duration::from_secs(20))?;
        let made_up: Vec<DateTime<Utc>> = slots_fired(&node, "ten")
            .await?
            .into_keys()
            .filter(|slot| *slot > down_from && *slot <= up_at)
            .collect();
        assert_eq!(
            made_up.len(),
            expected_makeups,
            "missed_runs = {policy}: {made_up:?}"
        );
        if let Some(slot) = made_up.first() {
            assert!(
                *slot > up_at - chrono::Duration::seconds(10),
                "run_once makes up the latest slot: {slot}"
            );
        }
    }
    node.shutdown().await;
    Ok(())
}
