//! The audit trail is tamper-evident: the coordinator seals every record into a hash chain, and
//! `ferry audit verify` says "intact" for an untouched trail, names a record deleted after it was
//! sealed, and names a forged seal.

use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use ferry_tests::{NatsServer, Node, ferry_cli, local_task, settings};
use ferry_wire::seal::{self, Seal, Verdict};
use ferry_wire::{RunStatus, subjects, topology};

fn verify(url: &str, cwd: &std::path::Path) -> anyhow::Result<(bool, Verdict, String)> {
    let json = ferry_cli(url, &["--json", "audit", "verify"], cwd);
    let verdict: Verdict = serde_json::from_slice(&json.stdout)
        .map_err(|e| anyhow::anyhow!("{e}: {}", String::from_utf8_lossy(&json.stderr)))?;
    let text = ferry_cli(url, &["audit", "verify"], cwd);
    Ok((
        json.status.success(),
        verdict,
        String::from_utf8_lossy(&text.stdout).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_says_intact_then_names_a_deleted_record_and_a_forged_seal() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let url = nats.url();
    let node = Node::start(settings(&url)).await?;
    let dir = tempfile::tempdir()?;
    let (src, dst) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::create_dir_all(&src)?;
    for i in 0..30 {
        std::fs::write(src.join(format!("f{i:02}.txt")), format!("file {i}"))?;
    }
    node.apply(&local_task("ledger", &src, &dst, "", "")).await?;
    let run = node.run_task("ledger", Duration::from_secs(60)).await?;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);

    // Sealed within a few seconds: 30 file records and the role change, nothing left over.
    let mut last = None;
    for _ in 0..40 {
        let (ok, verdict, text) = verify(&url, dir.path())?;
        assert!(ok, "{text}");
        if verdict.records >= 31 && verdict.unsealed == 0 {
            assert!(
                text.contains("audit trail intact") && text.contains("head of the chain"),
                "{text}"
            );
            last = Some(verdict);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let intact = last.ok_or_else(|| anyhow::anyhow!("the trail was not sealed within 20 s"))?;
    assert_eq!(intact.broken, None);

    // Someone with rights on the stream deletes one record: verify names it.
    let audit = node.js.get_stream(topology::STREAM_AUDIT).await?;
    assert!(audit.delete_message(7).await?);
    let (ok, verdict, text) = verify(&url, dir.path())?;
    assert!(!ok, "{text}");
    assert!(
        verdict
            .broken
            .as_deref()
            .is_some_and(|b| b.starts_with("audit record 7 ") && b.contains("deleted after it was sealed")),
        "{verdict:?}"
    );
    assert!(text.contains("audit trail BROKEN: audit record 7 "), "{text}");

    // A forged seal appended after the real ones: its chain does not hold.
    let forged = Seal::new(seal::GENESIS, vec![(1, "00".repeat(16))], "attacker");
    node.js
        .send_publish(
            subjects::AUDIT_SEAL,
            PublishMessage::build().payload(ferry_wire::encode(&forged)),
        )
        .await?
        .await?;
    let (ok, verdict, _) = verify(&url, dir.path())?;
    assert!(!ok);
    assert!(
        verdict
            .broken
            .as_deref()
            .is_some_and(|b| b.contains("does not follow the seal before it")),
        "{verdict:?}"
    );
    node.shutdown().await;
    Ok(())
}
