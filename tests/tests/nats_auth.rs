//! Zero trust on the bus (ADR 007): a nats-server configured with `ferry nats setup`'s
//! `authorization` block. Each service runs as its own nkey user and a task runs end to end; each
//! service is refused one thing outside its permissions; each CLI role is refused the next role's
//! verbs with a clear message; an unauthenticated client is refused. The node is also a
//! file-based standby (`import_folder`): its promotion imports a bundle within the
//! coordinator's permissions.

use std::path::Path;
use std::time::Duration;

use ferry_service::settings::NatsAuth;
use ferry_tests::{NatsServer, Node, local_task, nats_keys, settings};
use ferry_wire::RunStatus;

/// The settings of node1 with every process using `<keys>/node1/<service>.nk`.
fn authed_settings(url: &str, keys: &Path) -> ferry_service::Settings {
    let mut s = settings(url);
    s.nats = NatsAuth {
        nkey_seed_file: Some(format!("{}/{{node}}/{{service}}.nk", keys.display())),
        ..NatsAuth::default()
    };
    s
}

/// The `ferry` CLI as the user whose seed is `nkey` (none: no credentials at all).
fn cli(url: &str, nkey: Option<&Path>, args: &[&str], cwd: &Path) -> (bool, String) {
    ferry_tests::ferry_as(url, nkey, args, &[], cwd)
}

/// Connect as `service` of node1 and try `op`; the server's refusal text, or an error when
/// nothing was refused within 5 s.
async fn refused(settings: &ferry_service::Settings, service: &str, op: Op<'_>) -> anyhow::Result<String> {
    let mut denials = ferry_service::nats::denials();
    let client = ferry_service::nats::connect_options(settings, service)
        .await?
        .connect(settings.nats_url.as_str())
        .await?;
    let (subject, _subscription) = match op {
        Op::Publish(subject) => {
            client.publish(subject.to_string(), "{}".into()).await?;
            (subject, None)
        }
        Op::Subscribe(subject) => (subject, Some(client.subscribe(subject.to_string()).await?)),
    };
    client.flush().await?;
    let quoted = format!("\"{subject}\"");
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let text = denials.recv().await?;
            if text.contains(&quoted) {
                return anyhow::Ok(text);
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("{service} was not refused {subject}"))?
}

enum Op<'a> {
    Publish(&'a str),
    Subscribe(&'a str),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_service_runs_as_its_own_user_and_each_role_is_refused_the_next_roles_verbs()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let keys = dir.path().join("keys");
    let nats = NatsServer::start_with(&nats_keys(&keys, "node1")?)?;
    let url = nats.url();

    // No credentials: NATS refuses the connection, and the CLI says what to do.
    let anonymous = async_nats::ConnectOptions::new().connect(url.as_str()).await;
    assert!(
        matches!(&anonymous, Err(e) if e.kind() == async_nats::ConnectErrorKind::AuthorizationViolation),
        "an unauthenticated client is refused: {:?}",
        anonymous.err()
    );
    let (ok, text) = cli(&url, None, &["failover", "status"], dir.path());
    assert!(!ok && text.contains("refused these credentials"), "{text}");

    // Every service as its own user; the test's own client is the node's `cli` user (admin).
    let mut node_settings = authed_settings(&url, &keys);
    let import = dir.path().join("import");
    std::fs::create_dir_all(&import)?;
    node_settings.failover_coordinator.import_folder = Some(import.clone());
    let node = Node::start(node_settings.clone()).await?;
    let (src, dst) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::create_dir_all(&src)?;
    for i in 0..20 {
        std::fs::write(src.join(format!("f{i}.txt")), format!("file {i}"))?;
    }
    let config = dir.path().join("demo.toml");
    std::fs::write(&config, local_task("demo", &src, &dst, "", ""))?;
    let admin = keys.join("admin.nk");
    let (ok, text) = cli(
        &url,
        Some(&admin),
        &["apply", "-f", config.to_str().expect("utf-8")],
        dir.path(),
    );
    assert!(ok, "admin applies: {text}");
    let run = node.run_task("demo", Duration::from_secs(60)).await?;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(run.files_delivered, 20);
    assert_eq!(std::fs::read_dir(&dst)?.count(), 20);
    // The coordinator seals the audit trail within its permissions; a viewer verifies it.
    let viewer = keys.join("viewer.nk");
    let mut unsealed = String::new();
    for _ in 0..40 {
        let (ok, text) = cli(&url, Some(&viewer), &["audit", "verify"], dir.path());
        assert!(ok, "a viewer verifies the audit trail: {text}");
        unsealed = text;
        if unsealed.contains(" 0 newer record(s)") && !unsealed.contains("intact: 0 record(s)") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(unsealed.contains(" 0 newer record(s)"), "{unsealed}");
    let log = nats.log();
    let violations: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
    assert!(
        violations.is_empty(),
        "the services did their work within their permissions: {violations:#?}"
    );

    // Each service is refused something outside its work.
    let outside = [
        (
            "scheduler",
            Op::Subscribe("ferry.api.node1.failover-coordinator.lease"),
        ),
        ("file-collector", Op::Publish("$KV.ferry_config.current")),
        ("transfer", Op::Publish("$KV.ferry_lease.active")),
        ("cert-handler", Op::Publish("$JS.API.CONSUMER.CREATE.FERRY_FILEQ")),
        (
            "failover-coordinator",
            Op::Publish("$JS.API.STREAM.PURGE.FERRY_FILEQ"),
        ),
    ];
    for (service, op) in outside {
        let text = refused(&node_settings, service, op).await?;
        assert!(text.contains("Permissions Violation"), "{service}: {text}");
    }

    // Roles: viewer reads, operator also runs, admin also applies and changes roles.
    let viewer = keys.join("viewer.nk");
    let operator = keys.join("operator.nk");
    let run_id = run.run_id.to_string();
    for args in [
        &["tasks", "list"][..],
        &["task", "show", "demo"],
        &["runs", "list"],
        &["runs", "show", &run_id],
        &["audit"],
        &["failover", "status"],
        &["failover", "history"],
        &["scheduler", "status"],
        &["keymat", "status"],
    ] {
        let (ok, text) = cli(&url, Some(&viewer), args, dir.path());
        assert!(ok, "viewer may {args:?}: {text}");
    }
    let (ok, text) = cli(&url, Some(&viewer), &["task", "run", "demo"], dir.path());
    assert!(
        !ok && text.contains("permission denied") && text.contains("run of ferry-scheduler"),
        "viewer may not run a task: {text}"
    );
    std::fs::write(src.join("late.txt"), "late")?;
    for args in [
        &["task", "run", "demo", "--wait"][..],
        &["scheduler", "stop"],
        &["scheduler", "start"],
    ] {
        let (ok, text) = cli(&url, Some(&operator), args, dir.path());
        assert!(ok, "operator may {args:?}: {text}");
    }
    assert!(dst.join("late.txt").exists());
    for (args, verb) in [
        (&["apply", "-f", config.to_str().expect("utf-8")][..], "apply"),
        (&["failover", "demote"], "demote"),
        (&["shutdown"], "shutdown"),
    ] {
        let (ok, text) = cli(&url, Some(&operator), args, dir.path());
        assert!(
            !ok && text.contains("permission denied") && text.contains(verb),
            "operator may not {args:?}: {text}"
        );
    }
    // The admin exports a bundle into the import folder, then adds a task; the promotion
    // imports the bundle, which takes the task away again.
    let bundle = import.join("FerryBundle.tar");
    let (ok, text) = cli(
        &url,
        Some(&admin),
        &["config", "export", "--out", bundle.to_str().expect("utf-8")],
        dir.path(),
    );
    assert!(ok, "{text}");
    let extra = dir.path().join("extra.toml");
    std::fs::write(
        &extra,
        format!(
            "{}{}",
            local_task("demo", &src, &dst, "", ""),
            local_task("extra", &src, &dst, "", "")
        ),
    )?;
    let (ok, text) = cli(
        &url,
        Some(&admin),
        &["apply", "-f", extra.to_str().expect("utf-8")],
        dir.path(),
    );
    assert!(ok, "{text}");
    for args in [
        &["failover", "demote", "--drain-timeout", "10s"][..],
        &["failover", "promote"],
    ] {
        let (ok, text) = cli(&url, Some(&admin), args, dir.path());
        assert!(ok, "admin may {args:?}: {text}");
    }
    let (ok, text) = cli(&url, Some(&viewer), &["--json", "standby", "status"], dir.path());
    assert!(ok, "{text}");
    let status: ferry_wire::standby::StandbyStatus = serde_json::from_str(&text)?;
    assert!(
        status.imported.as_ref().is_some_and(|i| i.written == 1),
        "promotion imported the bundle, writing the configuration: {status:?}"
    );
    let (ok, text) = cli(&url, Some(&viewer), &["tasks", "list"], dir.path());
    assert!(ok && !text.contains("extra"), "{text}");
    std::fs::write(src.join("after.txt"), "after the role change")?;
    let again = node.run_task("demo", Duration::from_secs(60)).await?;
    assert_eq!(again.files_delivered, 1, "{:?}", again.error);

    // The server refused exactly what was tried on purpose: the five services' and the
    // operator's and viewer's attempts above, nothing the node did in its own work.
    let log = nats.log();
    let violations: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
    assert_eq!(violations.len(), 5 + 1 + 3, "{violations:#?}");
    node.shutdown().await;
    Ok(())
}

/// The other ways to authenticate: a token from a private file, a user with a password from an
/// environment variable. A wrong one is refused by the server; the secret is never printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_and_a_password_variable_work_and_wrong_ones_are_refused() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "nats-token-5tq\n")?;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))?;
    let connect = |url: String, nats: NatsAuth| async move {
        let mut s = settings(&url);
        s.nats = nats;
        s.validate()?;
        ferry_service::nats::connect_options(&s, "cli")
            .await?
            .connect(url.as_str())
            .await
            .map_err(anyhow::Error::from)
    };

    let by_token = NatsServer::start_with("authorization { token: \"nats-token-5tq\" }")?;
    let client = connect(
        by_token.url(),
        NatsAuth {
            token_file: Some(token_file.display().to_string()),
            ..NatsAuth::default()
        },
    )
    .await?;
    client.flush().await?;
    std::fs::write(&token_file, "not-the-token")?;
    let wrong = connect(
        by_token.url(),
        NatsAuth {
            token_file: Some(token_file.display().to_string()),
            ..NatsAuth::default()
        },
    )
    .await;
    assert!(wrong.is_err(), "a wrong token is refused");

    let by_user = NatsServer::start_with(
        "authorization { users = [ { user: \"ferry\", password: \"nats-password-8wz\" } ] }",
    )?;
    // SAFETY: set before any other thread of this test reads the environment.
    unsafe { std::env::set_var("FERRY_TEST_NATS_PASSWORD", "nats-password-8wz") };
    let with_password = |var: &str| NatsAuth {
        user: Some("ferry".into()),
        password_env: Some(var.into()),
        ..NatsAuth::default()
    };
    let client = connect(by_user.url(), with_password("FERRY_TEST_NATS_PASSWORD")).await?;
    client.flush().await?;
    let missing = connect(by_user.url(), with_password("FERRY_TEST_NO_SUCH_VARIABLE"))
        .await
        .expect_err("an unset variable is an error");
    assert!(
        missing
            .to_string()
            .contains("FERRY_TEST_NO_SUCH_VARIABLE is not set"),
        "{missing}"
    );
    unsafe { std::env::set_var("FERRY_TEST_NATS_PASSWORD", "not-the-password") };
    let wrong = connect(by_user.url(), with_password("FERRY_TEST_NATS_PASSWORD")).await;
    assert!(wrong.is_err(), "a wrong password is refused");
    Ok(())
}

/// NATS over mutual TLS: with `ca_file`, `cert_file` and `key_file` a whole node moves a file and
/// the CLI (`--nats-ca`, `--nats-cert`, `--nats-key`) reads the configuration; a client that does
/// not trust the server's CA, one without a client certificate and one speaking plain text are
/// refused; a client key that others may read is refused before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutual_tls_carries_a_node_and_the_cli_and_refuses_clients_it_cannot_verify() -> anyhow::Result<()> {
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let pki_dir = dir.path().join("pki");
    std::fs::create_dir_all(&pki_dir)?;
    let pki = ferry_testkit::peers::vsftpd::TestPki::generate(&pki_dir)?;
    std::fs::set_permissions(&pki.client_key, std::fs::Permissions::from_mode(0o600))?;
    let nats = NatsServer::start_with(&format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  timeout: 2\n}}",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca_cert.display()
    ))?;
    let url = format!("tls://127.0.0.1:{}", nats.port());
    let shown = |p: &Path| p.display().to_string();
    let mutual = NatsAuth {
        ca_file: Some(shown(&pki.ca_cert)),
        cert_file: Some(shown(&pki.client_cert)),
        key_file: Some(shown(&pki.client_key)),
        ..NatsAuth::default()
    };
    let mut s = settings(&url);
    s.nats = mutual.clone();
    s.validate()?;
    let node = Node::start(s).await?;
    let (src, dst) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join("a.csv"), "over mutual TLS")?;
    node.apply(&local_task("tls", &src, &dst, "", "")).await?;
    let run = node.run_task("tls", Duration::from_secs(60)).await?;
    assert_eq!(
        (run.status, run.files_delivered),
        (RunStatus::Succeeded, 1),
        "{:?}",
        run.error
    );
    assert_eq!(std::fs::read_to_string(dst.join("a.csv"))?, "over mutual TLS");
    let (ca, cert, key) = (
        shown(&pki.ca_cert),
        shown(&pki.client_cert),
        shown(&pki.client_key),
    );
    let tls_flags = ["--nats-ca", &ca, "--nats-cert", &cert, "--nats-key", &key];
    let (ok, text) = cli(
        &url,
        None,
        &[&tls_flags[..], &["tasks", "list"]].concat(),
        dir.path(),
    );
    assert!(ok && text.contains("tls"), "the CLI over mutual TLS: {text}");
    let (ok, text) = cli(
        &url,
        None,
        &[&tls_flags[..2], &["tasks", "list"]].concat(),
        dir.path(),
    );
    assert!(!ok, "the CLI without a client certificate is refused: {text}");

    let connect = |auth: NatsAuth, url: String| async move {
        let mut s = settings(&url);
        s.nats = auth;
        s.validate()?;
        let options = ferry_service::nats::connect_options(&s, "cli").await?;
        tokio::time::timeout(Duration::from_secs(10), options.connect(url.as_str()))
            .await
            .map_err(|_| anyhow::anyhow!("no answer within 10 s"))?
            .map_err(anyhow::Error::from)
    };
    let no_ca = NatsAuth {
        ca_file: None,
        ..mutual.clone()
    };
    assert!(
        connect(no_ca, url.clone()).await.is_err(),
        "a client that does not trust the test CA is refused"
    );
    let no_cert = NatsAuth {
        cert_file: None,
        key_file: None,
        ..mutual.clone()
    };
    assert!(
        connect(no_cert, url.clone()).await.is_err(),
        "a client without a certificate is refused"
    );
    let readable_key = dir.path().join("readable.key");
    std::fs::copy(&pki.client_key, &readable_key)?;
    std::fs::set_permissions(&readable_key, std::fs::Permissions::from_mode(0o644))?;
    let error = connect(
        NatsAuth {
            key_file: Some(shown(&readable_key)),
            ..mutual.clone()
        },
        url.clone(),
    )
    .await
    .expect_err("a key file others may read is refused");
    assert!(error.to_string().contains("may be read by others"), "{error}");

    // Plain text gets the server's INFO and nothing more: no PONG without a TLS handshake.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", nats.port()))?;
    raw.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut info = [0u8; 4096];
    let n = raw.read(&mut info)?;
    assert!(String::from_utf8_lossy(&info[..n]).contains("\"tls_required\":true"));
    let _ = raw.write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n");
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("PONG"),
        "plain text was answered: {:?}",
        String::from_utf8_lossy(&answer)
    );
    node.shutdown().await;
    Ok(())
}
