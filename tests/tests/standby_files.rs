//! File-based replication to a standby at another site (issue 12, mode 3), the part that ships:
//! on primary P a task without a source runs a `config-bundle` step and a `certs-backup` step
//! (the reference procedure's bundle of configuration, state and key rings, and its Certs
//! Backup) and delivers both over Ferry's own hosts — to a real sshd and to a real smbd share
//! (the reference's UNC share). Standby S, with its own NATS server, P's keymat and nothing
//! else, imports the delivered bundle with `ferry config import`, and `ferry config verify`
//! against P's NATS says identical.
//!
//! Then the whole reference procedure in this mode, once over an SMB share and once over SFTP
//! (`reference_procedure_*`): `ferry standby setup` writes P's replication and Certs Restore
//! tasks into P's configuration file and applies it; P's scheduled new-files-only task delivers
//! files to an SFTP destination; replication runs; more files arrive; P is stopped with
//! `ferry shutdown`; S (its own NATS, P's keymat, `import_folder`, manual mode, scheduler
//! disabled) is promoted, which imports the newest complete bundle (a newer damaged file beside
//! it is passed over); Certs Restore runs; `ferry config verify --against` the bundle says
//! identical; `ferry scheduler start`; S delivers the late files once and re-sends none of P's.
//! And the refusals: no bundle, or only one this node may not import, refuses the promotion and
//! changes nothing; `--skip-import` promotes anyway.

mod remote;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_tests::{NatsServer, Node, eventually, settings};
use ferry_wire::standby::{ReplicationMode, StandbyStatus};
use ferry_wire::{FailoverStatus, Outcome, Role, RunStatus, SchedulerStatus};
use remote::Remote;

fn cli(url: &str, args: &[&str], dir: &Path) -> String {
    let (ok, text) = ferry_tests::ferry_as(url, None, args, &[("PFX_PW", "import-pw")], dir);
    assert!(ok, "ferry {args:?}: {text}");
    text
}

/// Primary P on its own NATS, holding a personal certificate `CN=<cn>` (imported from an
/// openssl-made PFX) and a generated PGP key.
async fn primary_with_keys(w: &Path, cn: &str) -> anyhow::Result<(NatsServer, Node)> {
    let nats_p = NatsServer::start()?;
    let p = Node::start(settings(&nats_p.url())).await?;
    ferry_tests::openssl_self_signed(w, cn, cn, 30);
    ferry_tests::openssl_pfx(w, cn, "import-pw");
    let pfx = format!("{cn}.pfx");
    cli(
        &nats_p.url(),
        &["certs", "import", &pfx, "--password-env", "PFX_PW"],
        w,
    );
    cli(
        &nats_p.url(),
        &["pgp", "generate", "--name", "Primary", "--email", "p@example.com"],
        w,
    );
    Ok((nats_p, p))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bundle_shipped_over_sftp_and_smb_makes_the_standby_identical() -> anyhow::Result<()> {
    let (sftp, smb) = (Remote::sftp()?, Remote::smb()?);
    let work = tempfile::tempdir()?;
    let w = work.path();
    let (inbox, outbox) = (w.join("inbox"), w.join("outbox"));
    std::fs::create_dir_all(&inbox)?;
    std::fs::write(inbox.join("invoice-1.csv"), "1\n")?;

    // P's state: a host secret, a secure parameter, a certificate, a PGP key, new-files-only
    // state of a delivered file.
    let (nats_p, p) = primary_with_keys(w, "me").await?;
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

fn json<T: serde::de::DeserializeOwned>(url: &str, args: &[&str], dir: &Path) -> T {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let text = cli(url, &all, dir);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("ferry {args:?}: {e}: {text}"))
}

fn refused(url: &str, args: &[&str], dir: &Path) -> String {
    let (ok, text) = ferry_tests::ferry_as(url, None, args, &[], dir);
    assert!(!ok, "ferry {args:?} must be refused: {text}");
    text
}

/// How the bundles travel to the standby.
enum Via {
    Smb,
    Sftp,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reference_procedure_over_an_smb_share() -> anyhow::Result<()> {
    reference_procedure(Via::Smb).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reference_procedure_over_sftp() -> anyhow::Result<()> {
    reference_procedure(Via::Sftp).await
}

async fn reference_procedure(via: Via) -> anyhow::Result<()> {
    let dest = Remote::sftp()?;
    let replication = match via {
        Via::Smb => Remote::smb()?,
        Via::Sftp => Remote::sftp()?,
    };
    let work = tempfile::tempdir()?;
    let w = work.path();
    let inbox = w.join("inbox");
    std::fs::create_dir_all(&inbox)?;
    std::fs::write(w.join("certs-pw"), "backup-pw\n")?;
    let import_folder: PathBuf = replication
        .make_folder("import")
        .await
        .expect("a local backing folder");

    // P: its own NATS, a certificate and a PGP key, and its configuration file.
    let (nats_p, p) = primary_with_keys(w, "partner").await?;
    let config = w.join("primary.toml");
    std::fs::write(
        &config,
        format!(
            "{}{}\
             [[task]]\nname = \"invoices\"\n\
             [[task.source]]\nhost = \"local\"\nfolder = \"{}\"\nnew_files_only = true\nsize_stable_ms = 0\n\
             [[task.destination]]\nhost = \"partner\"\nfolder = \"{}\"\n\
             [[task.schedule]]\ncron = \"*/2 * * * * *\"\n",
            dest.host("partner", true),
            replication.host("standby", true),
            inbox.display(),
            dest.folder("out"),
        ),
    )?;
    let every = ["--every", "1m"];
    let setup = |dry: bool| {
        let config = config.to_str().expect("utf-8").to_string();
        let folder = replication.folder("import");
        let import = import_folder.to_str().expect("utf-8").to_string();
        let pw = format!("file:{}", w.join("certs-pw").display());
        let mut args: Vec<String> = [
            "standby",
            "setup",
            &config,
            "--host",
            "standby",
            "--folder",
            &folder,
            "--import-folder",
            &import,
            "--certs-password",
            &pw,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(every.iter().map(|s| s.to_string()));
        if dry {
            args.push("--dry-run".into());
        }
        args
    };
    // A refused setup leaves the file as it was; a dry run changes nothing.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640))?;
    let before = std::fs::read_to_string(&config)?;
    let text = refused(
        &nats_p.url(),
        &[
            "standby",
            "setup",
            config.to_str().expect("utf-8"),
            "--host",
            "standby",
            "--folder",
            "/x",
            "--import-folder",
            "/x",
            "--certs-password",
            "plain-password",
        ],
        w,
    );
    assert!(text.contains("env:VAR") && text.contains("file:PATH"), "{text}");
    let dry: Vec<String> = setup(true);
    let text = cli(
        &nats_p.url(),
        &dry.iter().map(String::as_str).collect::<Vec<_>>(),
        w,
    );
    assert!(text.contains("dry run"), "{text}");
    assert_eq!(
        std::fs::read_to_string(&config)?,
        before,
        "a dry run changes nothing"
    );
    // Setup twice: one block, applied.
    for _ in 0..2 {
        let args: Vec<String> = setup(false);
        let text = cli(
            &nats_p.url(),
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            w,
        );
        assert!(text.contains("written and applied"), "{text}");
    }
    let written = std::fs::read_to_string(&config)?;
    assert!(
        written.starts_with(&before),
        "setup keeps the operator's text: {written}"
    );
    assert_eq!(
        written.matches("ferry standby setup: generated").count(),
        1,
        "{written}"
    );
    assert!(
        !written.contains("backup-pw"),
        "no password in the file: {written}"
    );
    let mode = std::fs::metadata(&config)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "setup keeps the file's permissions");

    // P's scheduler delivers the first files.
    for name in ["a1.csv", "a2.csv"] {
        std::fs::write(inbox.join(name), format!("{name} from before the failure\n"))?;
    }
    eventually(Duration::from_secs(30), "P to deliver a1 and a2", || async {
        let got = dest.hashes("out").await;
        (got.len() == 2).then_some(())
    })
    .await?;
    // The last replication, after which P delivers nothing more (its scheduler stopped first,
    // so that what follows is certain: b1 arrives after the last replication).
    cli(&nats_p.url(), &["scheduler", "stop"], w);
    // (Its schedule fires at each minute: a run by hand at that moment is skipped, so ask
    // again.)
    let mut shipped = p.run_task("standby-replicate", Duration::from_secs(60)).await?;
    while shipped.status == RunStatus::Skipped {
        tokio::time::sleep(Duration::from_millis(500)).await;
        shipped = p.run_task("standby-replicate", Duration::from_secs(60)).await?;
    }
    assert_eq!(shipped.status, RunStatus::Succeeded, "{shipped:#?}");
    let bundle = import_folder.join("FerryBundle.tar");
    assert!(bundle.exists() && import_folder.join("CertsPersonal.pfx").exists());
    std::fs::write(inbox.join("b1.csv"), "b1 arrived after the last replication\n")?;
    let p_runs = p.finished_runs(Some("invoices")).await?;
    let p_settings = p.settings.clone();
    let p_keymat = p.settings.keymat_path();
    // Over SMB the reference's "stop the service and set it to disabled" (`--disable`): P, started
    // again later, must stay out of the way. Over SFTP a plain shutdown.
    let disable = matches!(via, Via::Smb);
    let mut shutdown = vec!["shutdown", "--drain-timeout", "10s"];
    if disable {
        shutdown.push("--disable");
    }
    cli(&nats_p.url(), &shutdown, w);
    assert!(
        p.current_epoch().await.is_err(),
        "P released its lease when it shut down"
    );
    p.shutdown().await;

    // A newer file in the folder that is not a whole bundle (a copy cut short) is passed over.
    let bytes = std::fs::read(&bundle)?;
    std::fs::write(
        import_folder.join("FerryBundle-partial.tar"),
        &bytes[..bytes.len() / 2],
    )?;

    // S: its own NATS, P's keymat, the import folder; manual mode, scheduler disabled.
    let nats_s = NatsServer::start()?;
    let mut s_settings = settings(&nats_s.url());
    std::fs::create_dir_all(&s_settings.data_dir)?;
    std::fs::copy(&p_keymat, s_settings.keymat_path())?;
    s_settings.failover_coordinator.initial_role = Role::Standby;
    s_settings.failover_coordinator.import_folder = Some(import_folder.clone());
    s_settings.scheduler.start_with_scheduler_disabled = true;
    let metrics_port = ferry_tests::free_port();
    s_settings.failover_coordinator.metrics_addr = format!("127.0.0.1:{metrics_port}").parse()?;
    let s = Node::start(s_settings).await?;
    // The bundle's age, for the dashboard: seconds, from node1.
    let age = eventually(Duration::from_secs(15), "the bundle age metric", || async {
        let (_, body) = ferry_tests::http_get(metrics_port, "/metrics").ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix("ferry_standby_bundle_age_seconds{source_node=\"node1\"} "))
            .and_then(|v| v.parse::<f64>().ok())
    })
    .await?;
    assert!((0.0..120.0).contains(&age), "{age}");
    let status: StandbyStatus = json(&nats_s.url(), &["standby", "status"], w);
    assert_eq!(status.mode, ReplicationMode::Files, "{status:?}");
    let newest = status.newest_bundle.as_ref().expect("a bundle is there");
    assert!(
        newest.file.ends_with("FerryBundle.tar") && newest.refused.is_none(),
        "{status:?}"
    );
    assert!(
        status
            .unusable_bundles
            .iter()
            .any(|u| u.contains("FerryBundle-partial.tar") && u.contains("truncated")),
        "{status:?}"
    );
    let promoted: FailoverStatus = json(&nats_s.url(), &["failover", "promote"], w);
    assert_eq!(promoted.role, Role::Active, "{promoted:?}");
    let status: StandbyStatus = json(&nats_s.url(), &["standby", "status"], w);
    let imported = status.imported.expect("the import is on record");
    assert!(
        imported.file.ends_with("FerryBundle.tar") && imported.written > 0,
        "{imported:?}"
    );
    let scheduler: SchedulerStatus = json(&nats_s.url(), &["scheduler", "status"], w);
    assert!(
        !scheduler.enabled,
        "S starts with its scheduler disabled: {scheduler:?}"
    );

    // Certs Restore, then "confirm that the secondary server's configuration is identical".
    let restore = s
        .run_task("standby-certs-restore", Duration::from_secs(60))
        .await?;
    assert_eq!(restore.status, RunStatus::Succeeded, "{restore:#?}");
    assert_eq!(restore.files_delivered, 2, "the PFX and the P7B: {restore:#?}");
    let listed = cli(&nats_s.url(), &["certs", "list"], w);
    assert!(listed.contains("CN=partner"), "{listed}");
    let text = cli(
        &nats_s.url(),
        &["config", "verify", "--against", bundle.to_str().expect("utf-8")],
        w,
    );
    assert!(text.starts_with("identical:"), "{text}");

    // The scheduler on S: b1 once, nothing P delivered again.
    cli(&nats_s.url(), &["scheduler", "start"], w);
    eventually(Duration::from_secs(30), "S to deliver b1", || async {
        let got = dest.hashes("out").await;
        (got.len() == 3).then_some(())
    })
    .await?;
    // Two more slots: a re-send would show now.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s_runs = s.finished_runs(Some("invoices")).await?;
    let (on_p, on_s) = (ferry_tests::deliveries(&p_runs), ferry_tests::deliveries(&s_runs));
    let b1 = "b1.csv".to_string();
    assert_eq!(
        on_s,
        BTreeMap::from([(b1.clone(), 1)]),
        "S delivered b1 once and nothing else"
    );
    assert_eq!(on_p.len(), 2, "{on_p:?}");
    assert!(
        on_p.values().all(|n| *n == 1) && !on_p.contains_key(&b1),
        "{on_p:?}"
    );
    let got = dest.hashes("out").await;
    assert_eq!(
        got.keys().map(String::as_str).collect::<Vec<_>>(),
        ["a1.csv", "a2.csv", "b1.csv"]
    );
    if disable {
        // P comes back (its site recovered, someone starts the service): disabled, it sends
        // nothing — b1, which S delivered, is new to P's state and would go again.
        let p = Node::start(p_settings).await?;
        let status: FailoverStatus = json(&nats_p.url(), &["failover", "status"], w);
        assert_eq!(status.role, Role::Disabled, "{status:?}");
        let text = refused(&nats_p.url(), &["task", "run", "invoices"], w);
        assert!(text.contains("not active"), "{text}");
        let before = p.finished_runs(Some("invoices")).await?.len();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let after = p.finished_runs(Some("invoices")).await?;
        assert_eq!(after.len(), before, "a disabled P runs nothing: {after:#?}");
        p.shutdown().await;
    }
    s.shutdown().await;
    Ok(())
}

/// Promotion of a file-based standby is refused, changing nothing, when its import folder holds
/// no bundle, or only one it may not import (made under another keymat); `--skip-import`
/// promotes with what the node holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_based_standby_refuses_promotion_without_a_bundle_it_may_import() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let w = work.path();
    let folder = w.join("import");
    std::fs::create_dir_all(&folder)?;
    let nats = NatsServer::start()?;
    let mut s_settings = settings(&nats.url());
    s_settings.failover_coordinator.initial_role = Role::Standby;
    s_settings.failover_coordinator.import_folder = Some(folder.clone());
    let s = Node::start(s_settings).await?;
    let url = nats.url();
    let text = refused(&url, &["failover", "promote"], w);
    assert!(text.contains("no complete configuration bundle"), "{text}");
    // Junk named like a bundle is passed over, naming why; a hidden file is not looked at.
    let junk: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(folder.join("junk.tar"), &junk)?;
    std::fs::write(folder.join(".upload-in-progress.tar"), &junk)?;
    let text = refused(&url, &["failover", "promote"], w);
    assert!(
        text.contains("no complete configuration bundle")
            && text.contains("junk.tar")
            && !text.contains("upload-in-progress"),
        "{text}"
    );
    // A bundle from a node under another keymat (another node's own export).
    let other_nats = NatsServer::start()?;
    let other = Node::start(settings(&other_nats.url())).await?;
    cli(
        &other_nats.url(),
        &[
            "config",
            "export",
            "--out",
            folder.join("other.tar").to_str().expect("utf-8"),
        ],
        w,
    );
    other.shutdown().await;
    let text = refused(&url, &["failover", "promote"], w);
    assert!(
        text.contains("may not be imported here") && text.contains("made under keymat"),
        "{text}"
    );
    let status: FailoverStatus = json(&url, &["failover", "status"], w);
    assert_eq!(status.role, Role::Standby, "{status:?}");
    let status: StandbyStatus = json(&url, &["standby", "status"], w);
    assert!(status.imported.is_none(), "{status:?}");
    assert!(
        status
            .newest_bundle
            .as_ref()
            .and_then(|b| b.refused.as_ref())
            .is_some(),
        "{status:?}"
    );
    let promoted: FailoverStatus = json(&url, &["failover", "promote", "--skip-import"], w);
    assert_eq!(promoted.role, Role::Active, "{promoted:?}");
    s.shutdown().await;
    Ok(())
}
