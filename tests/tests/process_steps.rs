//! Process steps in tasks (issue 9): a real node, local folders as source and destination.
//! PER-FILE checksum + rename, a PER-TASK zip read by `unzip`, and the bad-input cases: each
//! fails only its own file with a clear error in the run record, leaves no output at the
//! destination or in the spool, and keeps the source.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use ferry_tests::{NatsServer, Node, settings, sha256_file};
use ferry_wire::{FileResult, Outcome, RunFinished, RunStatus, StepOutcome};

/// A local task from `src` to `dst` with `steps` (TOML `[[task.steps]]` tables).
fn task(name: &str, src: &Path, dst: &Path, steps: &str) -> String {
    format!(
        "[[task]]\nname = \"{name}\"\n\
         [[task.source]]\nhost = \"local\"\nfolder = \"{}\"\nnew_files_only = false\nsize_stable_ms = 0\n\
         [[task.destination]]\nhost = \"local\"\nfolder = \"{}\"\n{steps}\n",
        src.display(),
        dst.display()
    )
}

fn names(dir: &Path) -> BTreeSet<String> {
    walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            e.path()
                .strip_prefix(dir)
                .expect("under dir")
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

fn file<'r>(run: &'r RunFinished, name: &str) -> &'r FileResult {
    run.files
        .iter()
        .find(|f| f.source_path.ends_with(&format!("/{name}")))
        .unwrap_or_else(|| panic!("no result for {name}: {:#?}", run.files))
}

/// The spool holds nothing once a run is over.
fn assert_spool_empty(node: &Node) {
    let spool = node.settings.data_dir.join("spool");
    let left = if spool.exists() {
        names(&spool)
    } else {
        BTreeSet::new()
    };
    assert!(left.is_empty(), "the spool keeps {left:?}");
}

/// A failed file: its error names `expected`, its failed step's record says so with `outcome`,
/// and it reached no destination.
fn assert_failed(run: &RunFinished, name: &str, outcome: StepOutcome, expected: &str) {
    let f = file(run, name);
    assert_eq!(f.outcome, Outcome::Failed, "{name}: {f:#?}");
    let error = f.error.as_deref().unwrap_or_default();
    assert!(
        error.contains(expected),
        "{name}: error {error:?} should say {expected:?}"
    );
    let step = f
        .steps
        .last()
        .unwrap_or_else(|| panic!("{name} has no step records"));
    assert_eq!(step.outcome, outcome, "{name}: {step:#?}");
    assert!(step.outputs.is_empty(), "{name}: a failed step hands nothing on");
    assert!(
        f.destinations.is_empty(),
        "{name} reached a destination: {:?}",
        f.destinations
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_file_checksum_and_rename() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let node = Node::start(settings(&nats.url())).await?;
    let work = tempfile::tempdir()?;
    let (src, dst) = (work.path().join("in"), work.path().join("out"));
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join("a.csv"), "alpha\n")?;
    std::fs::write(src.join("b.csv"), "bravo\n".repeat(1000))?;
    let steps = "[[task.steps]]\nprocess = \"checksum\"\n\
                 [[task.steps]]\nprocess = \"rename\"\nname = \"[TaskName]_[OrigName]\"\n";
    node.apply(&task("sums", &src, &dst, steps)).await?;
    let run = node.run_task("sums", Duration::from_secs(30)).await?;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(
        names(&dst),
        [
            "sums_a.csv",
            "sums_a.csv.sha256",
            "sums_b.csv",
            "sums_b.csv.sha256"
        ]
        .map(String::from)
        .into(),
    );
    for n in ["a.csv", "b.csv"] {
        let want = sha256_file(&src.join(n));
        assert_eq!(
            sha256_file(&dst.join(format!("sums_{n}"))),
            want,
            "content unchanged"
        );
        let line = std::fs::read_to_string(dst.join(format!("sums_{n}.sha256")))?;
        assert_eq!(line, format!("{want}  {n}\n"), "sha256sum format");
        let f = file(&run, n);
        assert_eq!(f.outcome, Outcome::Delivered);
        assert_eq!(f.destinations.len(), 2, "the file and its checksum");
        let processes: Vec<&str> = f.steps.iter().map(|s| s.process.as_str()).collect();
        assert_eq!(processes, ["checksum", "rename"]);
        let renamed = &f.steps[1].outputs;
        assert_eq!(renamed.len(), 2);
        assert_eq!(renamed[0].name, format!("sums_{n}"));
        assert_eq!(renamed[0].sha256, want, "the record names each output's SHA-256");
        assert!(src.join(n).exists(), "the source is kept");
    }
    let audit: Vec<ferry_wire::AuditRecord> = ferry_service::streams::read(
        &node.js,
        ferry_wire::topology::STREAM_AUDIT,
        &ferry_wire::subjects::audit_filter(Some("sums")),
        None,
    )
    .await?;
    assert_eq!(audit.len(), 4, "one per output and destination: {audit:#?}");
    assert!(
        audit.iter().all(|r| r.steps.len() == 2),
        "audit records carry the steps"
    );
    assert_spool_empty(&node);
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_task_zip_is_read_by_unzip() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let node = Node::start(settings(&nats.url())).await?;
    let work = tempfile::tempdir()?;
    let (src, dst) = (work.path().join("in"), work.path().join("out"));
    std::fs::create_dir_all(src.join("sub"))?;
    std::fs::write(src.join("one.txt"), "one\n")?;
    std::fs::write(src.join("two.bin"), vec![7u8; 300_000])?;
    std::fs::write(src.join("sub/three.txt"), "three\n")?;
    let toml = task(
        "pack",
        &src,
        &dst,
        "[[task.steps]]\nprocess = \"zip\"\nscope = \"per-task\"\nname = \"[TaskName].zip\"\n",
    )
    .replace(
        "size_stable_ms = 0\n",
        "size_stable_ms = 0\nsubdirectories = true\n",
    );
    node.apply(&toml).await?;
    let run = node.run_task("pack", Duration::from_secs(30)).await?;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(names(&dst), ["pack.zip".to_string()].into());
    let out = work.path().join("unzipped");
    let unzip = std::process::Command::new("unzip")
        .arg("-q")
        .arg(dst.join("pack.zip"))
        .arg("-d")
        .arg(&out)
        .output()?;
    assert!(
        unzip.status.success(),
        "unzip: {}",
        String::from_utf8_lossy(&unzip.stderr)
    );
    assert_eq!(
        ferry_tests::tree_hashes(&out),
        ferry_tests::tree_hashes(&src),
        "unzip gives back every file of the run"
    );
    assert_eq!(run.files.len(), 3);
    for f in &run.files {
        assert_eq!(f.outcome, Outcome::Delivered);
        let zip = f
            .steps
            .iter()
            .find(|s| s.process == "zip")
            .expect("zip step recorded");
        assert_eq!(zip.scope, "per-task");
        assert_eq!(zip.outputs[0].sha256, sha256_file(&dst.join("pack.zip")));
    }
    assert_spool_empty(&node);
    node.shutdown().await;
    Ok(())
}

fn write_zip(path: &Path, entries: &[(&str, &[u8])]) -> anyhow::Result<()> {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path)?);
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in entries {
        zip.start_file(*name, options)?;
        zip.write_all(bytes)?;
    }
    zip.finish()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_fails_only_its_file() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let node = Node::start(settings(&nats.url())).await?;
    let work = tempfile::tempdir()?;

    // Archives: a good one, a zip-slip entry, a bomb over the limit (1 MiB).
    let (zsrc, zdst) = (work.path().join("zin"), work.path().join("zout"));
    std::fs::create_dir_all(&zsrc)?;
    write_zip(&zsrc.join("good.zip"), &[("g/ok.txt", b"fine\n")])?;
    write_zip(
        &zsrc.join("slip.zip"),
        &[("fine.txt", b"x"), ("../../x", b"escaped")],
    )?;
    write_zip(&zsrc.join("bomb.zip"), &[("zeros", &vec![0u8; 4 << 20])])?;
    let unzip = "[[task.steps]]\nprocess = \"unzip\"\nmax_expanded_bytes = 1048576\n";

    // Commands: one passes the file on, one exits 3, one hangs past its timeout.
    let (csrc, cdst) = (work.path().join("cin"), work.path().join("cout"));
    std::fs::create_dir_all(&csrc)?;
    for n in ["ok.txt", "three.txt", "hang.txt"] {
        std::fs::write(csrc.join(n), n)?;
    }
    let command = r#"[[task.steps]]
process = "command"
program = "/bin/sh"
args = ["-c", 'case "$FERRY_ORIG_NAME" in three*) echo "bad record at line 7" >&2; exit 3;; hang*) sleep 60;; esac']
timeout_secs = 2
"#;
    let toml = format!(
        "{}{}",
        task("unpack", &zsrc, &zdst, unzip),
        task("convert", &csrc, &cdst, command)
    );
    node.apply(&toml).await?;

    let run = node.run_task("unpack", Duration::from_secs(30)).await?;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!((run.files_delivered, run.files_failed), (1, 2), "{run:#?}");
    assert_eq!(file(&run, "good.zip").outcome, Outcome::Delivered);
    assert_failed(
        &run,
        "slip.zip",
        StepOutcome::BadInput,
        r#""../../x" has a ".." component"#,
    );
    assert_failed(
        &run,
        "bomb.zip",
        StepOutcome::LimitExceeded,
        "more than the limit of 1048576 bytes",
    );
    assert_eq!(
        names(&zdst),
        ["ok.txt".to_string()].into(),
        "nothing of a bad archive is delivered"
    );
    assert!(!work.path().join("x").exists() && !zdst.join("fine.txt").exists());
    assert_eq!(names(&zsrc).len(), 3, "the sources are kept");

    let started = std::time::Instant::now();
    let run = node.run_task("convert", Duration::from_secs(30)).await?;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the hung command was killed at its timeout"
    );
    assert_eq!((run.files_delivered, run.files_failed), (1, 2), "{run:#?}");
    assert_failed(&run, "three.txt", StepOutcome::Failed, "exited with code 3");
    assert!(
        file(&run, "three.txt")
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("bad record at line 7"),
        "the command's stderr is in the record"
    );
    assert_failed(&run, "hang.txt", StepOutcome::Timeout, "timed out after 2s");
    assert_eq!(names(&cdst), ["ok.txt".to_string()].into());
    assert_eq!(names(&csrc).len(), 3, "the sources are kept");

    assert_spool_empty(&node);
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apply_refuses_bad_steps_naming_task_step_and_option() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let node = Node::start(settings(&nats.url())).await?;
    let work = tempfile::tempdir()?;
    let (src, dst) = (work.path().join("in"), work.path().join("out"));
    let steps = "[[task.steps]]\nprocess = \"command\"\nprogram = \"sh\"\n\
                 [[task.steps]]\nprocess = \"replace\"\nfind = \"(\"\nregex = true\n\
                 [[task.steps]]\nprocess = \"zip\"\nlevel = 12\n";
    let response = node.apply(&task("bad", &src, &dst, steps)).await?;
    let ferry_wire::ApplyResponse::Rejected { errors } = response else {
        panic!("applied: {response:?}");
    };
    let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
    for expected in [
        r#"task "bad": steps[0].program: "sh" (command step) command program "sh" is not an absolute path"#,
        r#"task "bad": steps[1].find: "(" (replace step) find-and-replace: pattern "(" is not a valid regular expression"#,
        r#"task "bad": steps[2].level: "12" (zip step) zip level 12 is out of range 0..=9"#,
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(expected)),
            "expected {expected:?} in {errors:#?}"
        );
    }
    node.shutdown().await;
    Ok(())
}

/// A PGP message for a key the node's ring does not hold fails its file, asking the node's
/// cert-handler (over NATS) for the key; nothing is delivered and the source stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pgp_message_for_a_key_not_in_the_ring() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let node = Node::start(settings(&nats.url())).await?;
    let work = tempfile::tempdir()?;
    let (src, dst, gnupg) = (
        work.path().join("in"),
        work.path().join("out"),
        work.path().join("gnupg"),
    );
    std::fs::create_dir_all(&src)?;
    std::fs::create_dir_all(&gnupg)?;
    std::fs::set_permissions(&gnupg, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    std::fs::write(work.path().join("plain.txt"), "for the partner only\n")?;
    let gpg = |args: &[&str]| -> anyhow::Result<()> {
        let out = std::process::Command::new("gpg")
            .env("GNUPGHOME", &gnupg)
            .args([
                "--batch",
                "--yes",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    gpg(&[
        "--quick-gen-key",
        "partner@example.com",
        "default",
        "default",
        "never",
    ])?;
    let encrypted = src.join("secret.txt.gpg");
    gpg(&[
        "--trust-model",
        "always",
        "-r",
        "partner@example.com",
        "-o",
        encrypted.to_str().expect("utf-8"),
        "-e",
        work.path().join("plain.txt").to_str().expect("utf-8"),
    ])?;
    node.apply(&task(
        "decrypt",
        &src,
        &dst,
        "[[task.steps]]\nprocess = \"pgp-decrypt\"\n",
    ))
    .await?;
    let run = node.run_task("decrypt", Duration::from_secs(30)).await?;
    assert_eq!(run.status, RunStatus::Failed);
    assert_failed(
        &run,
        "secret.txt.gpg",
        StepOutcome::BadInput,
        "which is not in the node's PGP key ring",
    );
    assert!(!dst.exists() || names(&dst).is_empty(), "nothing delivered");
    assert!(encrypted.exists(), "the source is kept");
    assert_spool_empty(&node);
    node.shutdown().await;
    Ok(())
}

/// Certs Restore: a PFX under another password and a corrupt PFX each fail only their own file
/// with the reason; a P7B beside them is restored into the node's stores over NATS.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certs_restore_refuses_a_wrong_password_and_a_corrupt_pfx() -> anyhow::Result<()> {
    // SAFETY: nextest runs each test in its own process; nothing else reads the environment yet.
    unsafe { std::env::set_var("FERRY_TEST_CERTS_PASSWORD", "not-the-password") };
    let nats = NatsServer::start()?;
    let node = Node::start(settings(&nats.url())).await?;
    let work = tempfile::tempdir()?;
    let (src, dst) = (work.path().join("in"), work.path().join("out"));
    std::fs::create_dir_all(&src)?;
    let openssl = |args: &[&str]| -> anyhow::Result<()> {
        let out = std::process::Command::new("openssl")
            .current_dir(work.path())
            .args(args)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "k.pem",
        "-out",
        "c.pem",
        "-subj",
        "/CN=partner",
        "-days",
        "2",
    ])?;
    openssl(&[
        "pkcs12",
        "-export",
        "-inkey",
        "k.pem",
        "-in",
        "c.pem",
        "-out",
        "in/CertsPersonal.pfx",
        "-passout",
        "pass:the-password",
    ])?;
    openssl(&[
        "crl2pkcs7",
        "-nocrl",
        "-certfile",
        "c.pem",
        "-out",
        "in/CertsOtherPeople.p7b",
        "-outform",
        "DER",
    ])?;
    std::fs::write(
        src.join("CertsBroken.pfx"),
        b"\x30\x82\x01\x00 this is not a PKCS#12 file",
    )?;
    let step = "[[task.steps]]\nprocess = \"certs-restore\"\npassword_env = \"FERRY_TEST_CERTS_PASSWORD\"\n";
    node.apply(&task("restore", &src, &dst, step)).await?;
    let run = node.run_task("restore", Duration::from_secs(30)).await?;
    assert_failed(&run, "CertsPersonal.pfx", StepOutcome::BadInput, "wrong password");
    assert_failed(
        &run,
        "CertsBroken.pfx",
        StepOutcome::BadInput,
        "is not a readable",
    );
    assert_eq!(
        file(&run, "CertsOtherPeople.p7b").outcome,
        Outcome::Delivered,
        "{run:#?}"
    );
    assert_eq!(names(&src).len(), 3, "the sources are kept");
    assert!(
        !names(&dst).iter().any(|n| n.ends_with(".pfx")),
        "nothing of a failed file is delivered"
    );
    let dump = format!("{run:?}");
    assert!(
        !dump.contains("not-the-password"),
        "the password is never in a run record"
    );
    assert_spool_empty(&node);
    node.shutdown().await;
    Ok(())
}

/// The reference procedure's Certs Backup / Certs Restore between two nodes that share nothing
/// but a folder: a task without a source backs up node P's certificate stores (a personal
/// certificate with its key, two of other people's) into a folder under a secure parameter's
/// password; a task on node Q (its own NATS server, empty stores) restores them from there.
/// Both stores end up the same (store, fingerprint, subject, issuer, serial, expiry, chain); a
/// second restore adds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certs_backup_on_one_node_is_restored_on_another() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let w = work.path();
    let (share, restored) = (w.join("share"), w.join("restored"));
    for (name, days) in [("me", 30), ("bank", 20), ("partner", 10)] {
        ferry_tests::openssl_self_signed(w, name, name, days);
    }
    ferry_tests::openssl_pfx(w, "me", "import-pw");

    let (nats_p, nats_q) = (NatsServer::start()?, NatsServer::start()?);
    let p = Node::start(settings(&nats_p.url())).await?;
    let q = Node::start(settings(&nats_q.url())).await?;
    let cli = |url: &str, args: &[&str]| {
        let (ok, text) = ferry_tests::ferry_as(url, None, args, &[("PFX_PW", "import-pw")], w);
        assert!(ok, "ferry {args:?}: {text}");
        text
    };
    cli(
        &nats_p.url(),
        &["certs", "import", "me.pfx", "--password-env", "PFX_PW"],
    );
    cli(&nats_p.url(), &["certs", "import", "bank.pem"]);
    cli(&nats_p.url(), &["certs", "import", "partner.pem"]);
    let stores = |url: &str| -> anyhow::Result<BTreeSet<String>> {
        let listed: serde_json::Value = serde_json::from_str(&cli(url, &["--json", "certs", "list"]))?;
        Ok(listed
            .as_array()
            .ok_or_else(|| anyhow::anyhow!("certs list --json is a list: {listed}"))?
            .iter()
            .map(|c| {
                format!(
                    "{} {} {} {} {} {} chain={}",
                    c["store"],
                    c["fingerprint"],
                    c["subject"],
                    c["issuer"],
                    c["serial"],
                    c["not_after"],
                    c["chain_len"]
                )
            })
            .collect())
    };
    let on_p = stores(&nats_p.url())?;
    assert_eq!(on_p.len(), 3, "{on_p:?}");
    assert!(stores(&nats_q.url())?.is_empty(), "Q starts empty");

    // A plain parameter is refused as a password at apply time.
    let password = "[task.parameters]\nCertsPassword = { secure = \"backup-pw-4711\" }\n";
    let backup = |password: &str| {
        format!(
            "[[task]]\nname = \"certs-backup\"\n{password}\
             [[task.destination]]\nhost = \"local\"\nfolder = \"{}\"\n\
             [[task.steps]]\nprocess = \"certs-backup\"\nscope = \"per-task\"\npassword_param = \"CertsPassword\"\n",
            share.display()
        )
    };
    let refused = p
        .apply(&backup("[task.parameters]\nCertsPassword = \"in-clear\"\n"))
        .await;
    let why = format!("{refused:?}");
    assert!(
        why.contains("Rejected") && why.contains("a password must be a secure one"),
        "{why}"
    );
    let applied = p.apply(&backup(password)).await?;
    assert!(
        matches!(applied, ferry_wire::ApplyResponse::Applied { .. }),
        "{applied:?}"
    );
    let run = p.run_task("certs-backup", Duration::from_secs(30)).await?;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(
        names(&share),
        ["CertsOtherPeople.p7b", "CertsPersonal.pfx"]
            .map(String::from)
            .into()
    );
    assert_eq!(run.files.len(), 1, "the run's one result: {run:#?}");
    let made = &run.files[0];
    assert_eq!(made.outcome, Outcome::Delivered);
    assert_eq!(made.source_path, ferry_wire::FileItem::SOURCELESS_PATH);
    assert_eq!(made.destinations.len(), 2, "both files delivered: {made:#?}");
    let backup_step = made.steps.last().expect("a step record");
    assert_eq!(backup_step.process, "certs-backup");
    assert_eq!(
        backup_step
            .outputs
            .iter()
            .map(|o| o.sha256.clone())
            .collect::<BTreeSet<_>>(),
        ["CertsOtherPeople.p7b", "CertsPersonal.pfx"]
            .map(|n| sha256_file(&share.join(n)))
            .into(),
        "the record names each output's SHA-256"
    );
    // openssl reads the PFX under the parameter's password.
    ferry_tests::run_tool(
        "openssl",
        &[
            "pkcs12",
            "-in",
            share.join("CertsPersonal.pfx").to_str().expect("utf-8"),
            "-passin",
            "pass:backup-pw-4711",
            "-nodes",
            "-out",
            "check.pem",
        ],
        w,
    );
    assert!(
        !format!("{run:?}").contains("backup-pw-4711"),
        "the password is in no record"
    );
    assert_spool_empty(&p);

    // Q: the same secure parameter (sealed under Q's own keymat), a task restoring from the folder.
    let restore = format!(
        "[[task]]\nname = \"certs-restore\"\n{password}\
         [[task.source]]\nhost = \"local\"\nfolder = \"{}\"\nmasks = \"Certs*.pfx;Certs*.p7b\"\n\
         new_files_only = false\nsize_stable_ms = 0\n\
         [[task.destination]]\nhost = \"local\"\nfolder = \"{}\"\n\
         [[task.steps]]\nprocess = \"certs-restore\"\npassword_param = \"CertsPassword\"\n",
        share.display(),
        restored.display()
    );
    let applied = q.apply(&restore).await?;
    assert!(
        matches!(applied, ferry_wire::ApplyResponse::Applied { .. }),
        "{applied:?}"
    );
    for round in 0..2 {
        let run = q.run_task("certs-restore", Duration::from_secs(30)).await?;
        assert_eq!(run.status, RunStatus::Succeeded, "round {round}: {run:#?}");
        assert_eq!(stores(&nats_q.url())?, on_p, "round {round}: Q's stores are P's");
    }
    assert_eq!(names(&share).len(), 2, "the backup files stay");
    assert_spool_empty(&q);
    p.shutdown().await;
    q.shutdown().await;
    Ok(())
}

/// PGP decryption that requires a signer (`require_signer`), end to end with GnuPG: the node's
/// own key (made by `ferry pgp generate`) is exported to gpg, the partner's and another
/// sender's public keys are imported into the node. A file gpg encrypted to the node and signed
/// by the partner is decrypted and delivered; one signed by the other sender (whose key the
/// node holds) and one not signed at all each fail only themselves, with why, deliver nothing
/// and stay at the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_or_missing_signature_fails_only_its_file_when_one_is_required() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let node = Node::start(settings(&nats.url())).await?;
    let work = tempfile::tempdir()?;
    let w = work.path();
    let (src, dst, gnupg) = (w.join("in"), w.join("out"), w.join("gnupg"));
    std::fs::create_dir_all(&src)?;
    std::fs::create_dir_all(&gnupg)?;
    std::fs::set_permissions(&gnupg, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let cli = |args: &[&str]| {
        let (ok, text) = ferry_tests::ferry_as(&nats.url(), None, args, &[], w);
        assert!(ok, "ferry {args:?}: {text}");
        text
    };
    let gpg = |args: &[&str]| -> anyhow::Result<Vec<u8>> {
        let out = std::process::Command::new("gpg")
            .env("GNUPGHOME", &gnupg)
            .args([
                "--batch",
                "--yes",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                "--trust-model",
                "always",
            ])
            .args(args)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out.stdout)
    };
    cli(&[
        "pgp",
        "generate",
        "--name",
        "Ferry Node",
        "--email",
        "node@example.com",
    ]);
    std::fs::write(w.join("node.asc"), cli(&["pgp", "export", "node@example.com"]))?;
    gpg(&["--import", w.join("node.asc").to_str().expect("utf-8")])?;
    for sender in ["partner@example.com", "other@example.com"] {
        gpg(&["--quick-gen-key", sender, "default", "default", "never"])?;
        let public = w.join(format!("{sender}.asc"));
        std::fs::write(&public, gpg(&["--armor", "--export", sender])?)?;
        cli(&["pgp", "import", public.to_str().expect("utf-8")]);
    }
    let plain = w.join("payroll.csv");
    std::fs::write(&plain, "name;amount\nada;4711\n")?;
    let encrypt = |name: &str, signer: Option<&str>| -> anyhow::Result<()> {
        let out = src.join(name);
        let mut args = vec!["-r", "node@example.com", "-o", out.to_str().expect("utf-8")];
        match signer {
            Some(s) => args.extend(["-u", s, "--sign", "--encrypt"]),
            None => args.push("--encrypt"),
        }
        args.push(plain.to_str().expect("utf-8"));
        gpg(&args).map(drop)
    };
    encrypt("good.csv.gpg", Some("partner@example.com"))?;
    encrypt("other.csv.gpg", Some("other@example.com"))?;
    encrypt("unsigned.csv.gpg", None)?;
    node.apply(&task(
        "decrypt",
        &src,
        &dst,
        "[[task.steps]]\nprocess = \"pgp-decrypt\"\nrequire_signer = \"partner@example.com\"\n",
    ))
    .await?;
    let run = node.run_task("decrypt", Duration::from_secs(30)).await?;
    assert_eq!(run.status, RunStatus::Failed, "{run:#?}");
    assert_eq!(file(&run, "good.csv.gpg").outcome, Outcome::Delivered, "{run:#?}");
    assert_eq!(
        names(&dst),
        ["good.csv".to_string()].into(),
        "only the good file arrives"
    );
    assert_eq!(sha256_file(&dst.join("good.csv")), sha256_file(&plain));
    assert_failed(
        &run,
        "other.csv.gpg",
        StepOutcome::BadInput,
        "has no valid signature from \"partner@example.com\"",
    );
    assert_failed(
        &run,
        "unsigned.csv.gpg",
        StepOutcome::BadInput,
        "is not signed, and a signature from \"partner@example.com\" is required",
    );
    assert_eq!(names(&src).len(), 3, "the sources are kept");
    assert_spool_empty(&node);
    node.shutdown().await;
    Ok(())
}
