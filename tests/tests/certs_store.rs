//! The cert-handler's stores end to end (issue 9): a node on a NATS server with every service
//! and role as its own user (ADR 007); `ferry certs` / `ferry pgp` as the admin import an
//! openssl-made PFX and PEM certificate and gpg-made keys, list them with the fingerprints
//! openssl and gpg print, export them back to openssl and gpg, remove them; bad files change
//! nothing; the buckets hold no private key in clear; the node's transfer gets the keys through
//! `NatsKeys`; a viewer is refused what only the admin may do.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use ferry_processes::KeySource;
use ferry_processes::certs::CertSink;
use ferry_processes::remote_keys::NatsKeys;
use ferry_service::settings::NatsAuth;
use ferry_tests::{
    NatsServer, Node, Services, connect_as, free_port, http_get, metric_sum, nats_keys, settings,
};

/// The `ferry` CLI as the user whose seed is `nkey`, with `env` added.
fn ferry(url: &str, nkey: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    ferry_tests::ferry_as(url, Some(nkey), args, env, nkey.parent().expect("a folder"))
}

fn run(program: &str, args: &[&str], dir: &Path) -> Vec<u8> {
    ferry_tests::run_tool(program, args, dir)
}

/// `openssl x509 -fingerprint -sha256` of a PEM file, as Ferry writes fingerprints.
fn openssl_fingerprint(pem: &str, dir: &Path) -> String {
    let out = String::from_utf8(run(
        "openssl",
        &["x509", "-in", pem, "-noout", "-fingerprint", "-sha256"],
        dir,
    ))
    .expect("utf-8");
    out.trim()
        .rsplit('=')
        .next()
        .expect("a fingerprint")
        .replace(':', "")
        .to_ascii_lowercase()
}

/// GnuPG in its own home.
fn gpg(home: &Path, args: &[&str]) -> Vec<u8> {
    let mut all = vec![
        "--homedir",
        home.to_str().expect("utf-8"),
        "--batch",
        "--no-tty",
        "--yes",
        "--pinentry-mode",
        "loopback",
        "--passphrase",
        "",
    ];
    all.extend_from_slice(args);
    run("gpg", &all, home)
}

fn gpg_fingerprint(home: &Path, uid: &str) -> String {
    let listing = String::from_utf8(gpg(home, &["--with-colons", "--list-keys", uid])).expect("utf-8");
    listing
        .lines()
        .find(|l| l.starts_with("fpr:"))
        .and_then(|l| l.split(':').nth(9))
        .expect("a fingerprint")
        .to_string()
}

fn gpg_home(dir: &Path, name: &str) -> std::path::PathBuf {
    let home = dir.join(name);
    std::fs::create_dir_all(&home).expect("gpg home");
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod");
    home
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_and_pgp_keys_round_trip_through_the_stores_sealed_and_permissioned()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let keys = d.join("keys");
    let nats = NatsServer::start_with(&nats_keys(&keys, "node1")?)?;
    let url = nats.url();
    let mut s = settings(&url);
    s.nats = NatsAuth {
        nkey_seed_file: Some(format!("{}/{{node}}/{{service}}.nk", keys.display())),
        ..NatsAuth::default()
    };
    let metrics_port = free_port();
    s.cert_handler.metrics_addr = format!("127.0.0.1:{metrics_port}").parse()?;
    let none = Services {
        scheduler: false,
        collector: false,
        transfer: false,
    };
    let _node = Node::start_with(s, none).await?;
    let (admin, viewer) = (keys.join("admin.nk"), keys.join("viewer.nk"));

    // Fixtures made by the standard tools.
    ferry_tests::openssl_self_signed(d, "me", "ferry-personal", 30);
    ferry_tests::openssl_pfx(d, "me", "pfx-secret");
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "partner.key",
            "-out",
            "partner.pem",
            "-days",
            "10",
            "-subj",
            "/CN=partner-bank",
        ],
        d,
    );
    let pkcs8 = |file: &str| {
        run(
            "openssl",
            &["pkcs8", "-topk8", "-nocrypt", "-in", file, "-outform", "DER"],
            d,
        )
    };
    let key_der = pkcs8("me.key");
    let (me_fp, partner_fp) = (
        openssl_fingerprint("me.pem", d),
        openssl_fingerprint("partner.pem", d),
    );
    let src = gpg_home(d, "gpg-src");
    gpg(
        &src,
        &[
            "--quick-gen-key",
            "Partner <partner@example.com>",
            "future-default",
            "default",
            "never",
        ],
    );
    gpg(
        &src,
        &[
            "--quick-gen-key",
            "Ferry Ops <ops@example.com>",
            "future-default",
            "default",
            "never",
        ],
    );
    let (partner_pgp, ops_pgp) = (
        gpg_fingerprint(&src, "partner@example.com"),
        gpg_fingerprint(&src, "ops@example.com"),
    );
    std::fs::write(
        d.join("partner.asc"),
        gpg(&src, &["--armor", "--export", &partner_pgp]),
    )?;
    let ops_secret = gpg(&src, &["--export-secret-keys", &ops_pgp]);
    std::fs::write(d.join("ops.gpg"), &ops_secret)?;
    std::fs::write(d.join("corrupt.pfx"), b"\x30\x82\x01\x00 this is not a PFX")?;

    let path = |name: &str| d.join(name).to_string_lossy().into_owned();
    let list = |nkey: &Path| {
        let (ok, text) = ferry(&url, nkey, &["--json", "certs", "list"], &[]);
        assert!(ok, "{text}");
        json(&text)
    };

    // Bad input: a clear error, the store unchanged.
    let (ok, text) = ferry(
        &url,
        &admin,
        &["certs", "import", &path("me.pfx"), "--password-env", "PFX_PW"],
        &[("PFX_PW", "wrong")],
    );
    assert!(!ok && text.contains("wrong password"), "{text}");
    assert!(!text.contains("pfx-secret"), "{text}");
    let (ok, text) = ferry(
        &url,
        &admin,
        &[
            "certs",
            "import",
            &path("corrupt.pfx"),
            "--password-env",
            "PFX_PW",
        ],
        &[("PFX_PW", "pfx-secret")],
    );
    assert!(
        !ok && text.contains("is not a readable PEM, DER, PKCS#7 or PFX"),
        "{text}"
    );
    assert_eq!(list(&admin), serde_json::json!([]));

    // Imports, the second time "already present".
    for _ in 0..2 {
        let (ok, text) = ferry(
            &url,
            &admin,
            &["certs", "import", &path("me.pfx"), "--password-env", "PFX_PW"],
            &[("PFX_PW", "pfx-secret")],
        );
        assert!(ok && text.contains(&me_fp), "{text}");
    }
    let (ok, text) = ferry(&url, &admin, &["certs", "import", &path("partner.pem")], &[]);
    assert!(
        ok && text.contains(&format!("added: other {partner_fp}")),
        "{text}"
    );
    // A viewer lists, with the fingerprints openssl prints.
    let listed = list(&viewer);
    let by_fp = |fp: &str| {
        listed
            .as_array()
            .expect("a list")
            .iter()
            .find(|c| c["fingerprint"] == fp)
            .unwrap_or_else(|| panic!("{fp} listed: {listed}"))
            .clone()
    };
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    assert_eq!(by_fp(&me_fp)["store"], "personal");
    assert_eq!(by_fp(&me_fp)["subject"], "CN=ferry-personal");
    assert_eq!(by_fp(&partner_fp)["store"], "other");
    assert_eq!(by_fp(&partner_fp)["issuer"], "CN=partner-bank");

    // A file of several keys is refused whole, naming them, rather than half imported.
    std::fs::write(d.join("both.asc"), gpg(&src, &["--armor", "--export"]))?;
    let (ok, text) = ferry(&url, &admin, &["pgp", "import", &path("both.asc")], &[]);
    assert!(
        !ok && text.contains("holds 2 keys") && text.contains("nothing was imported"),
        "{text}"
    );
    // A secret key under a passphrase, imported with a wrong one: refused at import, not at
    // the first step that needs it.
    gpg(
        &src,
        &[
            "--passphrase",
            "right-pass",
            "--quick-gen-key",
            "Locked <locked@example.com>",
            "future-default",
            "default",
            "never",
        ],
    );
    let locked = gpg(
        &src,
        &[
            "--passphrase",
            "right-pass",
            "--export-secret-keys",
            "locked@example.com",
        ],
    );
    std::fs::write(d.join("locked.gpg"), &locked)?;
    let (ok, text) = ferry(
        &url,
        &admin,
        &["pgp", "import", &path("locked.gpg"), "--password-env", "PGP_PW"],
        &[("PGP_PW", "wrong-pass")],
    );
    assert!(
        !ok && text.contains("the passphrase does not unlock the secret key"),
        "{text}"
    );
    gpg(
        &src,
        &[
            "--delete-secret-and-public-keys",
            "--yes",
            &gpg_fingerprint(&src, "locked@example.com"),
        ],
    );
    let (_, text) = ferry(&url, &admin, &["--json", "pgp", "list"], &[]);
    assert_eq!(json(&text), serde_json::json!([]), "{text}");

    // PGP: a public key and a secret key made by gpg, and one generated by the node.
    let (ok, text) = ferry(&url, &admin, &["pgp", "import", &path("partner.asc")], &[]);
    assert!(ok, "{text}");
    let (ok, text) = ferry(&url, &admin, &["pgp", "import", &path("ops.gpg")], &[]);
    assert!(ok && text.contains(&ops_pgp), "{text}");
    let (ok, text) = ferry(
        &url,
        &admin,
        &[
            "pgp",
            "generate",
            "--name",
            "Ferry Node",
            "--email",
            "node@example.com",
        ],
        &[],
    );
    assert!(ok, "{text}");
    let (ok, text) = ferry(&url, &viewer, &["--json", "pgp", "list"], &[]);
    assert!(ok, "{text}");
    let rings = json(&text);
    let ring = |fp: &str| {
        rings
            .as_array()
            .expect("a list")
            .iter()
            .find(|k| k["fingerprint"] == fp)
            .unwrap_or_else(|| panic!("{fp} listed: {rings}"))
            .clone()
    };
    assert_eq!(ring(&partner_pgp)["has_secret"], false);
    assert_eq!(ring(&ops_pgp)["has_secret"], true);
    assert_eq!(
        ring(&ops_pgp)["user_ids"],
        serde_json::json!(["Ferry Ops <ops@example.com>"])
    );
    assert_eq!(rings.as_array().map(Vec::len), Some(3), "{rings}");

    // Export round trips: openssl reads the PFX, gpg imports the keys.
    let (ok, text) = ferry(
        &url,
        &admin,
        &[
            "certs",
            "export",
            &me_fp,
            "--out",
            &path("out.pfx"),
            "--pfx",
            "--password-env",
            "EXPORT_PW",
        ],
        &[("EXPORT_PW", "export-secret")],
    );
    assert!(ok, "{text}");
    run(
        "openssl",
        &[
            "pkcs12",
            "-in",
            "out.pfx",
            "-passin",
            "pass:export-secret",
            "-nokeys",
            "-clcerts",
            "-out",
            "out.pem",
        ],
        d,
    );
    assert_eq!(openssl_fingerprint("out.pem", d), me_fp);
    run(
        "openssl",
        &[
            "pkcs12",
            "-in",
            "out.pfx",
            "-passin",
            "pass:export-secret",
            "-nocerts",
            "-nodes",
            "-out",
            "out.key",
        ],
        d,
    );
    assert!(
        pkcs8("out.key") == key_der,
        "the exported private key is the imported one"
    );
    let (ok, text) = ferry(
        &url,
        &viewer,
        &["certs", "export", &partner_fp, "--out", &path("p.pem")],
        &[],
    );
    assert!(ok, "{text}");
    assert_eq!(openssl_fingerprint("p.pem", d), partner_fp);
    let dst = gpg_home(d, "gpg-dst");
    let (ok, text) = ferry(
        &url,
        &admin,
        &[
            "pgp",
            "export",
            "ops@example.com",
            "--secret",
            "--out",
            &path("ops-out.asc"),
        ],
        &[],
    );
    assert!(ok, "{text}");
    gpg(&dst, &["--import", &path("ops-out.asc")]);
    let secrets = String::from_utf8(gpg(&dst, &["--with-colons", "--list-secret-keys"]))?;
    assert!(
        secrets.contains(&ops_pgp),
        "gpg holds the exported secret key: {secrets}"
    );
    let node_key = ring_fingerprint(&rings, "node@example.com");
    let (ok, text) = ferry(&url, &viewer, &["pgp", "export", "node@example.com"], &[]);
    assert!(ok && text.contains("BEGIN PGP PUBLIC KEY BLOCK"), "{text}");
    std::fs::write(d.join("node.asc"), &text)?;
    gpg(&dst, &["--import", &path("node.asc")]);
    assert_eq!(gpg_fingerprint(&dst, "node@example.com"), node_key);

    // A viewer (and an operator) may not import, export private parts or remove.
    let operator = keys.join("operator.nk");
    let partner_pem = path("partner.pem");
    for (who, args) in [
        (&viewer, vec!["certs", "import", partner_pem.as_str()]),
        (&viewer, vec!["pgp", "export", "ops@example.com", "--secret"]),
        (&operator, vec!["certs", "remove", &partner_fp]),
    ] {
        let (ok, text) = ferry(&url, who, &args, &[]);
        assert!(!ok && text.contains("permission denied"), "{args:?}: {text}");
    }

    // Private material is sealed in the buckets: no key bytes in clear, in any encoding.
    let raw = connect_as(&keys.join("node1").join("cert-handler.nk"), url.as_str()).await?;
    let js = async_nats::jetstream::new(raw);
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut searched = 0;
    for bucket in [
        ferry_wire::topology::KV_CERTS_PERSONAL,
        ferry_wire::topology::KV_PGP_SECRET,
    ] {
        let kv = js.get_key_value(bucket).await?;
        let names: Vec<String> = futures::TryStreamExt::try_collect(kv.keys().await?).await?;
        for name in names {
            let value = kv.get(&name).await?.expect("a value");
            let text = String::from_utf8_lossy(&value);
            assert!(text.contains("ferry-sealed:v1:"), "{bucket}/{name} is sealed");
            for secret in [&key_der, &ops_secret] {
                // Any 32-byte window of the key, raw, base64 or hex, would show.
                let window = &secret[secret.len() / 2..secret.len() / 2 + 32];
                assert!(!contains(&value, window), "{bucket}/{name}: key bytes in clear");
                assert!(
                    !text.contains(&hex::encode(window)),
                    "{bucket}/{name}: key in hex"
                );
                assert!(
                    !text.contains(&b64.encode(secret)[40..80]),
                    "{bucket}/{name}: key in base64"
                );
            }
            assert!(!text.contains("PRIVATE KEY"), "{bucket}/{name}");
            searched += 1;
        }
    }
    assert_eq!(
        searched, 3,
        "one personal certificate and two secret keys were searched"
    );

    // The node's transfer gets the keys through NatsKeys; another user does not.
    let transfer = connect_as(&keys.join("node1").join("transfer.nk"), url.as_str()).await?;
    let source = NatsKeys::new(transfer, "node1", tokio::runtime::Handle::current());
    let (ops_pgp2, partner_pgp2, me_fp2, partner_fp2, key_der2) = (
        ops_pgp.clone(),
        partner_pgp.clone(),
        me_fp.clone(),
        partner_fp.clone(),
        key_der.clone(),
    );
    tokio::task::spawn_blocking(move || {
        let public = source
            .pgp_public_key("partner@example.com")
            .expect("partner's key");
        let ring = ferry_processes::openpgp::KeyRing::parse_public(&[public]).expect("a key");
        assert_eq!(ring.keys[0].fingerprints[0], partner_pgp2);
        let secret = source.pgp_secret_key(&ops_pgp2).expect("the ops secret key");
        let ring = ferry_processes::openpgp::KeyRing::parse_secret(&[secret.key]).expect("a secret key");
        assert_eq!(ring.keys[0].fingerprints[0], ops_pgp2);
        assert!(matches!(
            source.pgp_secret_key(&partner_pgp2),
            Err(ferry_processes::KeyError::NotFound { .. })
        ));
        let personal = source.personal_certs().expect("personal certificates");
        assert_eq!(personal.len(), 1);
        assert_eq!(ferry_processes::certs::fingerprint(&personal[0].chain[0]), me_fp2);
        assert!(
            personal[0].key_pkcs8 == key_der2,
            "the stored key is the imported one"
        );
        let other = source.other_certs().expect("other certificates");
        assert_eq!(
            other
                .iter()
                .map(|d| ferry_processes::certs::fingerprint(d))
                .collect::<Vec<_>>(),
            [partner_fp2]
        );
        // Certs Restore's side: adding what is there is idempotent.
        source.add_other(other[0].clone()).expect("add");
        source.add_personal(personal[0].clone()).expect("add");
        assert_eq!(source.other_fingerprints().expect("fingerprints").len(), 1);
        assert!(
            source
                .personal_fingerprints()
                .expect("fingerprints")
                .contains(&me_fp2)
        );
    })
    .await?;
    let viewer_client = connect_as(&viewer, url.as_str()).await?;
    let refused = NatsKeys::new(viewer_client, "node1", tokio::runtime::Handle::current());
    // The admin may ask any node: one without a cert-handler does not answer.
    let admin_client = connect_as(&admin, url.as_str()).await?;
    let silent = NatsKeys::new(admin_client, "node9", tokio::runtime::Handle::current())
        .with_timeout(Duration::from_secs(2));
    tokio::task::spawn_blocking(move || {
        match refused.pgp_secret_key("ops@example.com") {
            Err(ferry_processes::KeyError::Unavailable(text)) => {
                assert!(text.contains("permission denied"), "{text}")
            }
            other => panic!("a viewer got {other:?}"),
        }
        assert!(matches!(
            silent.other_certs(),
            Err(ferry_processes::KeyError::Unavailable(_))
        ));
    })
    .await?;

    // Hostile requests, even from the admin, are refused with the reason.
    let admin_client = connect_as(&admin, url.as_str()).await?;
    let import = ferry_wire::keys::api::in_group(
        ferry_wire::keys::api::admin::GROUP,
        ferry_wire::keys::api::admin::CERTS_IMPORT,
    );
    let handler = ferry_wire::subjects::service::CERT_HANDLER;
    let call = |body: serde_json::Value| {
        let (client, import) = (admin_client.clone(), import.clone());
        async move {
            ferry_service::api::call::<_, serde_json::Value>(&client, "node1", handler, &import, &body).await
        }
    };
    let e = call(serde_json::json!({ "file": 3 }))
        .await
        .expect_err("bad JSON");
    assert!(e.to_string().contains("bad request"), "{e}");
    let e = call(serde_json::json!({ "file": "MIIB not sealed" }))
        .await
        .expect_err("not sealed");
    assert!(e.to_string().contains("file:"), "{e}");
    let e = call(serde_json::json!({ "file": "x".repeat(900 * 1024) }))
        .await
        .expect_err("too large");
    assert!(e.to_string().contains("too large"), "{e}");

    // Expiry metric per stored certificate.
    let not_after =
        chrono::DateTime::parse_from_rfc3339(by_fp(&me_fp)["not_after"].as_str().expect("a time"))?;
    let (_, body) = http_get(metrics_port, "/metrics")?;
    let name = "ferry_cert_handler_certificate_expiry_timestamp_seconds";
    assert_eq!(
        metric_sum(&body, name, &[("source", "personal"), ("fingerprint", &me_fp)]),
        not_after.timestamp() as f64,
        "{body}"
    );
    assert!(
        metric_sum(&body, name, &[("source", "other"), ("fingerprint", &partner_fp)]) > 0.0,
        "{body}"
    );

    // Removal, and hostile fingerprints.
    let (ok, text) = ferry(&url, &admin, &["certs", "remove", &partner_fp], &[]);
    assert!(ok, "{text}");
    let (ok, text) = ferry(&url, &admin, &["certs", "remove", &partner_fp], &[]);
    assert!(!ok && text.contains("no certificate with fingerprint"), "{text}");
    let (ok, text) = ferry(&url, &admin, &["certs", "remove", "../../etc/passwd"], &[]);
    assert!(!ok && text.contains("is not a SHA-256 fingerprint"), "{text}");
    let (ok, text) = ferry(&url, &admin, &["pgp", "remove", "partner@example.com"], &[]);
    assert!(ok, "{text}");
    let remaining: Vec<String> = list(&admin)
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| c["fingerprint"].as_str().expect("text").to_string())
        .collect();
    assert_eq!(remaining, [me_fp]);
    let (_, text) = ferry(&url, &admin, &["--json", "pgp", "list"], &[]);
    assert!(!text.contains(&partner_pgp) && text.contains(&ops_pgp), "{text}");
    Ok(())
}

fn ring_fingerprint(rings: &serde_json::Value, email: &str) -> String {
    rings
        .as_array()
        .expect("a list")
        .iter()
        .find(|k| k["user_ids"].to_string().contains(email))
        .and_then(|k| k["fingerprint"].as_str())
        .unwrap_or_else(|| panic!("{email} listed: {rings}"))
        .to_string()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
