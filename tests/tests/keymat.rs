//! The keymat: secrets are sealed before they leave the CLI and stored sealed; `ferry keymat
//! export` / `import` carry the key to a standby under a password; a wrong password is refused;
//! a configuration sealed under another keymat is refused by `apply` and, once stored, runs
//! nothing on a node with another keymat — each time naming both key ids.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ferry_tests::{NatsServer, Node, bin_path, settings};
use ferry_wire::{ApplyResponse, ConfigDocument, RunStatus, topology};

const PASSWORD: &str = "sftp-secret-Kx7q";

fn config(src: &Path, dst: &Path) -> String {
    format!(
        r#"
[[host]]
name = "partner"
kind = "sftp"
address = "127.0.0.1"
port = 9
user = "ferry"
password = "{PASSWORD}"
insecure_accept_any_host_key = true

[[task]]
name = "local-only"
[[task.source]]
host = "local"
folder = "{}"
[[task.destination]]
host = "local"
folder = "{}"
"#,
        src.display(),
        dst.display()
    )
}

/// The `ferry` CLI for `node`, with its keymat path from `FERRY_KEYMAT`.
fn ferry(node: &Node, keymat: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin_path("ferry"))
        .args([
            "--nats-url",
            &node.settings.nats_url,
            "--node",
            &node.settings.node_id,
        ])
        .args(args)
        .env("FERRY_KEYMAT", keymat)
        .env("FERRY_TEST_KEYMAT_PW", "export password 1")
        .env("FERRY_TEST_WRONG_PW", "not the password")
        .output()
        .expect("run ferry")
}

async fn stored(node: &Node) -> ConfigDocument {
    let kv = node
        .js
        .get_key_value(topology::KV_CONFIG)
        .await
        .expect("config bucket");
    let bytes = kv.get(topology::CONFIG_KEY).await.expect("read").expect("stored");
    ferry_wire::decode(&bytes).expect("decodes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_are_sealed_and_the_keymat_travels_only_under_a_password() {
    let nats = NatsServer::start().expect("nats");
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, dst) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::create_dir_all(&src).expect("mkdir");
    let node = Node::start(settings(&nats.url())).await.expect("node");
    let keymat_path = node.settings.keymat_path();
    let ours = ferry_keymat::Keymat::load(&keymat_path).expect("the node made its keymat");

    // Apply seals the password; the stored document holds it sealed, under this node's keymat.
    let applied = node.apply(&config(&src, &dst)).await.expect("apply");
    assert!(matches!(applied, ApplyResponse::Applied { .. }), "{applied:?}");
    // The same file again is sealed again (a fresh nonce), and still changes nothing.
    let again = node.apply(&config(&src, &dst)).await.expect("apply again");
    assert!(
        matches!(&again, ApplyResponse::Applied { unchanged: true, changes, .. } if changes.hosts.changed.is_empty()),
        "{again:?}"
    );
    let doc = stored(&node).await;
    assert_eq!(doc.keymat_id.as_deref(), Some(ours.key_id()));
    let raw = serde_json::to_string(&doc).expect("serializes");
    assert!(
        !raw.contains(PASSWORD),
        "the stored configuration holds the password in the clear"
    );
    let secret = doc.config.hosts["partner"].spec.secrets()[0].1.clone();
    assert_eq!(
        &*ours.open("host/partner/password", &secret).expect("opens"),
        PASSWORD
    );

    // `ferry task show`-style output and `--json` never show it.
    let shown = ferry(&node, &keymat_path, &["--json", "tasks", "list"]);
    assert!(!String::from_utf8_lossy(&shown.stdout).contains(PASSWORD));

    // `ferry keymat status`: this node's key id, matching the configuration.
    let status = ferry(&node, &keymat_path, &["keymat", "status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert!(text.contains(&format!("keymat {}", ours.key_id())), "{text}");

    // Export under a password, import on a "standby" (another keymat file): same key id.
    let export = dir.path().join("keymat.export");
    let out = ferry(
        &node,
        &keymat_path,
        &[
            "keymat",
            "export",
            "--out",
            export.to_str().expect("utf-8"),
            "--password-env",
            "FERRY_TEST_KEYMAT_PW",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let exported = std::fs::read_to_string(&export).expect("written");
    assert!(exported.contains(ours.key_id()) && !exported.contains(PASSWORD));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&export).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the export is private");
    }
    let standby = dir.path().join("standby-keymat");
    let wrong = ferry(
        &node,
        &standby,
        &[
            "keymat",
            "import",
            export.to_str().expect("utf-8"),
            "--password-env",
            "FERRY_TEST_WRONG_PW",
        ],
    );
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("wrong password"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    assert!(!standby.exists(), "a refused import changes nothing");
    let imported = ferry(
        &node,
        &standby,
        &[
            "keymat",
            "import",
            export.to_str().expect("utf-8"),
            "--password-env",
            "FERRY_TEST_KEYMAT_PW",
        ],
    );
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    assert_eq!(
        ferry_keymat::Keymat::load(&standby).expect("installed").key_id(),
        ours.key_id()
    );
    // A node that has another keymat does not have it replaced by accident.
    let other = dir.path().join("other-keymat");
    ferry_keymat::Keymat::generate().install(&other).expect("install");
    let refused = ferry(
        &node,
        &other,
        &[
            "keymat",
            "import",
            export.to_str().expect("utf-8"),
            "--password-env",
            "FERRY_TEST_KEYMAT_PW",
        ],
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));

    // A secret sealed under another keymat is refused by apply, naming both key ids.
    let foreign = ferry_keymat::Keymat::generate();
    let sealed = ferry_keymat::seal(&foreign.public(), "host/partner/password", PASSWORD).expect("seals");
    let text = config(&src, &dst).replace(&format!("\"{PASSWORD}\""), &format!("\"{}\"", sealed.sealed()));
    let refused = node.apply(&text).await;
    let message = format!("{refused:?}");
    assert!(
        message.contains(foreign.key_id()) && message.contains(ours.key_id()),
        "{message}"
    );

    // The stored configuration's keymat is not this node's any more (the standby whose keymat
    // was never imported): it runs nothing, and says why with both ids.
    let replacement = ferry_keymat::Keymat::generate();
    replacement
        .install(&keymat_path)
        .expect("replace the node's keymat");
    std::fs::write(src.join("a.txt"), "a").expect("write");
    let run = node
        .run_task("local-only", Duration::from_secs(30))
        .await
        .expect("run finishes");
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.unwrap_or_default();
    assert!(
        error.contains(ours.key_id())
            && error.contains(replacement.key_id())
            && error.contains("ferry keymat import"),
        "{error}"
    );
    assert!(!dst.join("a.txt").exists(), "nothing was moved");
    node.shutdown().await;
}
