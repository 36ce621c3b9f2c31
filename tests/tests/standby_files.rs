//! File-based replication to a standby at another site (issue 12, mode 3), the part that ships:
//! on primary P a task without a source runs a `config-bundle` step and a `certs-backup` step
//! (the reference procedure's bundle of configuration, state and key rings, and its Certs
//! Backup) and delivers both over Ferry's own hosts — to a real sshd and to a real smbd share
//! (the reference's UNC share). Standby S, with its own NATS server, P's keymat and nothing
//! else, imports the delivered bundle with `ferry config import`, and `ferry config verify`
//! against P's NATS says identical.

mod remote;

use std::path::Path;
use std::time::Duration;

use ferry_tests::{NatsServer, Node, settings};
use ferry_wire::{Outcome, RunStatus};
use remote::Remote;

fn cli(url: &str, args: &[&str], dir: &Path) -> String {
    let (ok, text) = ferry_tests::ferry_as(url, None, args, &[("PFX_PW", "import-pw")], dir);
    assert!(ok, "ferry {args:?}: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bundle_shipped_over_sftp_and_smb_makes_the_standby_identical() -> anyhow::Result<()> {
    let (sftp, smb) = (Remote::sftp()?, Remote::smb()?);
    let work = tempfile::tempdir()?;
    let w = work.path();
    let (inbox, outbox) = (w.join("inbox"), w.join("outbox"));
    std::fs::create_dir_all(&inbox)?;
    std::fs::write(inbox.join("invoice-1.csv"), "1\n")?;

    let nats_p = NatsServer::start()?;
    let p = Node::start(settings(&nats_p.url())).await?;
    // P's state: a host secret, a secure parameter, a certificate, a PGP key, new-files-only
    // state of a delivered file.
    ferry_tests::openssl_self_signed(w, "me", "me", 30);
    ferry_tests::openssl_pfx(w, "me", "import-pw");
    cli(
        &nats_p.url(),
        &["certs", "import", "me.pfx", "--password-env", "PFX_PW"],
        w,
    );
    cli(
        &nats_p.url(),
        &["pgp", "generate", "--name", "Primary", "--email", "p@example.com"],
        w,
    );
    let config = format!(
        "{}{}\
         [[task]]\nname = \"invoices\"\n\
         [[task.source]]\nhost = \"local\"\nfolder = \"{}\"\nsize_stable_ms = 0\n\
         [[task.destination]]\nhost = \"local\"\nfolder = \"{}\"\n\
         [[task]]\nname = \"replicate\"\n\
         [task.parameters]\nCertsPassword = {{ secure = \"backup-pw\" }}\n\
         [[task.destination]]\nhost = \"standby-sftp\"\nfolder = \"{}\"\n\
         [[task.destination]]\nhost = \"standby-smb\"\nfolder = \"{}\"\n\
         [[task.steps]]\nprocess = \"config-bundle\"\n\
         [[task.steps]]\nprocess = \"certs-backup\"\npassword_param = \"CertsPassword\"\n",
        sftp.host("standby-sftp", true),
        smb.host("standby-smb", true),
        inbox.display(),
        outbox.display(),
        sftp.folder("standby"),
        smb.folder("standby"),
    );
    p.apply(&config).await?;
    let run = p.run_task("invoices", Duration::from_secs(30)).await?;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:#?}");
    let run = p.run_task("replicate", Duration::from_secs(60)).await?;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(run.files[0].outcome, Outcome::Delivered);
    assert_eq!(
        run.files[0].destinations.len(),
        6,
        "three files to two hosts: {run:#?}"
    );
    let processes: Vec<&str> = run.files[0].steps.iter().map(|s| s.process.as_str()).collect();
    assert_eq!(processes, ["config-bundle", "certs-backup"]);

    // S: its own NATS server, P's keymat (copied once, as the reference procedure says).
    let nats_s = NatsServer::start()?;
    let mut s_settings = settings(&nats_s.url());
    std::fs::create_dir_all(&s_settings.data_dir)?;
    std::fs::copy(p.settings.keymat_path(), s_settings.keymat_path())?;
    s_settings.failover_coordinator.initial_role = ferry_wire::Role::Standby;
    let s = Node::start(s_settings).await?;
    let (ok, text) = ferry_tests::ferry_as(
        &nats_s.url(),
        None,
        &["config", "verify", "--against", &nats_p.url()],
        &[],
        w,
    );
    assert!(
        !ok && text.contains("configuration: stored only there"),
        "an empty standby differs: {text}"
    );
    for shipped in [sftp.backing("standby"), smb.backing("standby")] {
        let shipped = shipped.expect("a local backing folder");
        assert!(
            shipped.join("CertsPersonal.pfx").exists(),
            "the Certs Backup travels beside it"
        );
        let bundle = shipped.join("FerryBundle.tar");
        cli(
            &nats_s.url(),
            &["config", "import", bundle.to_str().expect("utf-8")],
            w,
        );
        let text = cli(
            &nats_s.url(),
            &["config", "verify", "--against", &nats_p.url()],
            w,
        );
        assert!(text.starts_with("identical:"), "{text}");
    }
    let listed = cli(&nats_s.url(), &["certs", "list"], w);
    assert!(listed.contains("CN=me"), "S holds P's certificate: {listed}");
    p.shutdown().await;
    s.shutdown().await;
    Ok(())
}
