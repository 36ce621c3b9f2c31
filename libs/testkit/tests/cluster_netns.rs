//! The testkit's own peers: a three-server JetStream cluster that survives losing a server, and
//! a network namespace that reaches the cluster until it is cut off.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::kv;
use ferry_testkit::{NatsCluster, Netns, eventually, netns_available};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_keeps_writing_without_one_server() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut cluster = tokio::task::block_in_place(|| NatsCluster::start("127.0.0.1"))?;
    let formed = started.elapsed();

    let client = async_nats::connect(cluster.url_list("127.0.0.1")).await?;
    let js = async_nats::jetstream::new(client);
    // The first write is retried, as services retry theirs: on a starved CI machine a re-election
    // right after forming can leave a request unanswered (seen once: a 5 s timeout).
    let store = eventually(Duration::from_secs(30), "the first R3 bucket", || {
        let js = js.clone();
        async move {
            js.create_key_value(kv::Config {
                bucket: "cluster-test".to_string(),
                history: 1,
                num_replicas: 3,
                ..Default::default()
            })
            .await
            .ok()
        }
    })
    .await?;
    store.put("before", "1".into()).await?;

    // Kill the bucket's stream leader: the hardest case, a new leader must be elected.
    let mut stream = js.get_stream("KV_cluster-test").await?;
    let info = stream.info().await?;
    let cluster_info = info.cluster.as_ref().context("stream info without cluster")?;
    assert_eq!(cluster_info.replicas.len(), 2, "R3: a leader and two replicas");
    let leader = cluster_info.leader.clone().context("stream without leader")?;
    let victim = cluster.index_of(&leader).context("leader is one of n1..n3")?;
    cluster.kill(victim);
    let killed = Instant::now();

    eventually(
        Duration::from_secs(15),
        "a KV write with one server killed",
        || {
            let store = store.clone();
            async move { store.put("during", "2".into()).await.ok() }
        },
    )
    .await?;
    let failover = killed.elapsed();

    let restarting = Instant::now();
    tokio::task::block_in_place(|| cluster.start_again(victim))?;
    let restart = restarting.elapsed();
    assert!(cluster.is_running(victim));
    store.put("after", "3".into()).await?;
    // Read through the stream leader: a KV `get` is a direct get that any replica may answer,
    // and the server just restarted may not have caught up yet (CI saw "after is missing").
    let stream = js.get_stream("KV_cluster-test").await?;
    for (key, value) in [("before", "1"), ("during", "2"), ("after", "3")] {
        let got = stream
            .get_last_raw_message_by_subject(&format!("$KV.cluster-test.{key}"))
            .await
            .with_context(|| format!("{key} is missing"))?;
        assert_eq!(got.payload, value.as_bytes(), "{key}");
    }
    eprintln!(
        "cluster formed in {formed:?}; killed stream leader {leader}; write succeeded after {failover:?}; \
         restart healthy in {restart:?}"
    );
    Ok(())
}

#[test]
fn netns_reaches_cluster_until_cut() -> anyhow::Result<()> {
    assert!(
        netns_available(),
        "this test needs root and a working `ip netns` (see /work/shared/TEST-PEERS.md)"
    );
    let cluster = NatsCluster::start("0.0.0.0")?;
    let ns = Netns::create(1)?;
    let host = ns.host_addr();
    let port = cluster.client_ports()[0];
    let probe = Duration::from_secs(2);

    // Every server is reachable from inside via the root side of the veth, and speaks NATS.
    for p in cluster.client_ports() {
        assert!(ns.tcp_connects(host, p, probe), "{host}:{p} from inside");
    }
    let greeting = ns
        .command("timeout")
        .args([
            "2",
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{host}/{port} && head -c 4 <&3"),
        ])
        .output()?;
    assert_eq!(String::from_utf8_lossy(&greeting.stdout), "INFO");
    // Nothing else is routed: no default route inside.
    let outside = ns.command("ip").args(["route", "get", "192.0.2.1"]).output()?;
    assert!(
        !outside.status.success(),
        "the namespace must not route beyond its veth"
    );

    ns.cut()?;
    let cut = Instant::now();
    assert!(!ns.tcp_connects(host, port, probe), "connected through a cut");
    assert!(
        cut.elapsed() >= Duration::from_millis(1500),
        "the probe timed out rather than failed fast"
    );

    ns.heal()?;
    assert!(ns.tcp_connects(host, port, probe), "no connection after heal");
    // Cut and heal again: heal is repeatable.
    ns.cut()?;
    assert!(!ns.tcp_connects(host, port, Duration::from_millis(500)));
    ns.heal()?;
    assert!(ns.tcp_connects(host, port, probe));

    // `ip netns exec` execs the program, so killing the child kills the program itself.
    let mut child = ns.command("sleep").arg("30").stdout(Stdio::null()).spawn()?;
    let pid = child.id();
    let comm = eventually_sync(|| {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == "sleep").then_some(comm)
    })
    .context("the child's pid becomes `sleep`")?;
    assert_eq!(comm.trim(), "sleep");
    child.kill()?;
    let status = child.wait()?;
    assert!(!status.success());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());

    let name = ns.name().to_string();
    drop(ns);
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()?;
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&name),
        "{name} deleted on drop"
    );
    Ok(())
}

/// Poll `check` every 10 ms for up to 2 s.
fn eventually_sync<T>(mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
