//! The configuration bundle (issue 12): a primary P and a standby S on separate NATS servers,
//! every service and the admin as their own NATS users (ADR 007), S holding P's keymat
//! (`ferry keymat export` / `import`). `ferry config export` on P → `ferry config import` on S →
//! `ferry config verify` against P's NATS and against the bundle both say identical, and S shows
//! P's task; a change on P makes verify list exactly that change. Bad bundles — truncated, a part
//! that fails its SHA-256, another Ferry version, another keymat, hostile manifests — and an
//! import on the active node without `--force` are refused with a clear message and change
//! nothing (every bucket's content and revision compared before and after).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferry_tests::pair::{NodeSetup, ProcNode};
use ferry_tests::{NatsServer, bin_path, connect_as, eventually, nats_keys};
use ferry_wire::bundle::{self, Part};

const HOST_PASSWORD: &str = "host-pw-Zq81vX";
const TOKEN: &str = "secure-token-Lm40aP";
const KEYMAT_PW: &str = "keymat export pw 7";

struct Site {
    node: ProcNode,
    _nats: NatsServer,
    url: String,
}

/// The `ferry` CLI as the admin on `site`'s node: success and stdout + stderr.
fn ferry(site: &Site, admin: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin_path("ferry"))
        .args(["--nats-url", &site.url, "--node", site.node.id(), "--nats-nkey"])
        .arg(admin)
        .args(args)
        .output()
        .expect("run ferry");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `ferry keymat export|import` on a node's data dir (no bus).
fn keymat(data_dir: &Path, args: &[&str]) {
    let out = Command::new(bin_path("ferry"))
        .args(["keymat"])
        .args(args)
        .args(["--password-env", "FERRY_TEST_KEYMAT_PW"])
        .env("FERRY_KEYMAT", data_dir.join("keymat"))
        .env("FERRY_TEST_KEYMAT_PW", KEYMAT_PW)
        .output()
        .expect("run ferry keymat");
    assert!(
        out.status.success(),
        "ferry keymat {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn setup(id: &str, url: &str, data_dir: PathBuf, role: &'static str, keys: &Path) -> NodeSetup {
    NodeSetup {
        id: id.into(),
        nats_url: url.into(),
        data_dir,
        ledger: None,
        mode: "manual",
        initial_role: role,
        lease_ttl_ms: 6_000,
        fence_margin_ms: 1_500,
        replicas: 1,
        start_with_scheduler_disabled: false,
        keymat: None,
        nats_keys: Some(keys.to_path_buf()),
    }
}

fn start_site(id: &str, role: &'static str, auth: &str, dir: &Path, keys: &Path) -> Site {
    let nats = NatsServer::start_with(auth).expect("nats-server");
    let url = nats.url();
    let node = ProcNode::start(
        setup(id, &url, dir.join(id), role, keys),
        None,
        &dir.join(format!("{id}-logs")),
    )
    .expect("start node");
    Site {
        node,
        _nats: nats,
        url,
    }
}

async fn wait_for_role(site: &Site, admin: &Path, role: &str) {
    let wanted = format!("\"role\":\"{role}\"");
    let ready = eventually(Duration::from_secs(60), "node role", || async {
        let (ok, text) = ferry(site, admin, &["--json", "failover", "status"]);
        let scheduler = ferry(site, admin, &["scheduler", "status"]).0;
        (ok && scheduler && text.replace(' ', "").contains(&wanted)).then_some(())
    })
    .await;
    if ready.is_err() {
        panic!(
            "node {} did not become {role}:\n{}",
            site.node.id(),
            site.node.log_tails(40)
        );
    }
}

fn config(src: &Path, dst: &Path, site_name: &str) -> String {
    format!(
        r#"
[parameters]
site = "{site_name}"
token = {{ secure = "{TOKEN}" }}

[[host]]
name = "partner"
kind = "sftp"
address = "127.0.0.1"
port = 9
user = "ferry"
password = "{HOST_PASSWORD}"
insecure_accept_any_host_key = true

[[task]]
name = "copy"
[[task.source]]
host = "local"
folder = "{}"
new_files_only = true
[[task.destination]]
host = "local"
folder = "{}"
"#,
        src.display(),
        dst.display()
    )
}

/// Every part a bundle holds, with its revision, as `site`'s NATS has it.
async fn buckets(site: &Site, admin: &Path) -> BTreeMap<String, Part> {
    let client = connect_as(admin, site.url.as_str()).await.expect("connect");
    ferry_service::bundle::snapshot(&async_nats::jetstream::new(client))
        .await
        .expect("read buckets")
}

/// `ferry config import FILE` on `site` is refused with `expected` in its message, and no
/// bucket of `site` changes.
async fn refused(site: &Site, admin: &Path, file: &Path, expected: &str) {
    let before = buckets(site, admin).await;
    let (ok, text) = ferry(site, admin, &["config", "import", file.to_str().expect("utf-8")]);
    assert!(!ok, "import of {} was not refused: {text}", file.display());
    assert!(
        text.contains(expected),
        "import of {}: expected {expected:?} in: {text}",
        file.display()
    );
    assert_eq!(
        buckets(site, admin).await,
        before,
        "a refused import of {} changed the node",
        file.display()
    );
}

fn run(program: &str, args: &[&str], dir: &Path) {
    ferry_tests::run_tool(program, args, dir);
}

/// The bundle `good` unpacked with GNU tar, its manifest changed by `change`, packed again.
fn repacked(good: &Path, dir: &Path, name: &str, change: impl Fn(&mut serde_json::Value, &Path)) -> PathBuf {
    let work = dir.join(format!("{name}.d"));
    std::fs::create_dir_all(&work).expect("mkdir");
    run("tar", &["xf", good.to_str().expect("utf-8")], &work);
    let path = work.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("manifest")).expect("json");
    change(&mut manifest, &work);
    let parts: Vec<String> = manifest["parts"]
        .as_array()
        .expect("parts")
        .iter()
        .map(|p| format!("parts/{}.jsonl", p["name"].as_str().expect("name")))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    std::fs::write(&path, serde_json::to_vec(&manifest).expect("json")).expect("write");
    let out = dir.join(name);
    let mut args = vec![
        "cf".to_string(),
        out.display().to_string(),
        "--format=ustar".into(),
    ];
    args.extend(parts);
    args.push("manifest.json".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run("tar", &args, &work);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_made_from_a_bundle_is_identical_and_bad_bundles_change_nothing() {
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let keys = d.join("keys");
    let auth = nats_keys(&keys, "p,s").expect("ferry nats setup");
    let admin = keys.join("admin.nk");

    // P, then P's keymat exported and imported into S's data dir before S first starts.
    let p = start_site("p", "active", &auth, d, &keys);
    wait_for_role(&p, &admin, "active").await;
    let export = d.join("keymat.export");
    keymat(
        &d.join("p"),
        &["export", "--out", export.to_str().expect("utf-8")],
    );
    std::fs::create_dir_all(d.join("s")).expect("mkdir");
    keymat(&d.join("s"), &["import", export.to_str().expect("utf-8")]);
    let s = start_site("s", "standby", &auth, d, &keys);

    // P: a task, a host with a secret, a secure parameter, a PGP key, a certificate, and
    // new-files-only state from one run.
    let (src, dst) = (d.join("in"), d.join("out"));
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::create_dir_all(&dst).expect("mkdir");
    for i in 0..3 {
        std::fs::write(src.join(format!("file{i}.csv")), format!("row {i}\n")).expect("write");
    }
    let tasks = d.join("tasks.toml");
    std::fs::write(&tasks, config(&src, &dst, "Leeds")).expect("write");
    let (ok, text) = ferry(&p, &admin, &["apply", "-f", tasks.to_str().expect("utf-8")]);
    assert!(ok, "apply on P: {text}");
    let (ok, text) = ferry(&p, &admin, &["task", "run", "copy", "--wait", "--timeout", "60s"]);
    assert!(ok, "run on P: {text}");
    assert_eq!(std::fs::read_dir(&dst).expect("list").count(), 3);
    let (ok, text) = ferry(
        &p,
        &admin,
        &["pgp", "generate", "--name", "Ferry P", "--email", "p@example.com"],
    );
    assert!(ok, "pgp generate: {text}");
    ferry_tests::openssl_self_signed(d, "me", "ferry-bundle", 30);
    ferry_tests::openssl_pfx(d, "me", "pfx-pw");
    std::fs::write(d.join("pfx.pw"), "pfx-pw\n").expect("write");
    let (ok, text) = ferry(
        &p,
        &admin,
        &[
            "certs",
            "import",
            d.join("me.pfx").to_str().expect("utf-8"),
            "--password-file",
            d.join("pfx.pw").to_str().expect("utf-8"),
        ],
    );
    assert!(ok, "certs import: {text}");

    // The last fired slot of the task, as P's scheduler records one (written here: the task has
    // no schedule, so P never fires it).
    let p_js = async_nats::jetstream::new(connect_as(&admin, p.url.as_str()).await.expect("connect"));
    let sched = p_js
        .get_key_value(ferry_wire::topology::KV_SCHED)
        .await
        .expect("schedule bucket");
    sched
        .put("last.copy", "2026-12-02T06:00:00+00:00".into())
        .await
        .expect("record a fired slot");

    // Export on P: every part there, the keymat's secret nowhere in it.
    let bundle_path = d.join("p.bundle");
    let (ok, text) = ferry(
        &p,
        &admin,
        &["config", "export", "--out", bundle_path.to_str().expect("utf-8")],
    );
    assert!(ok, "export: {text}");
    let bytes = std::fs::read(&bundle_path).expect("bundle");
    let read = bundle::verify(&bytes).expect("a valid bundle");
    let entries = |bucket: &str| read.parts[bucket].entries.len();
    assert_eq!(read.manifest.source_node, "p");
    assert_eq!(read.manifest.ferry_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(entries(ferry_wire::topology::KV_STATE), 3, "{text}");
    assert_eq!(entries(ferry_wire::topology::KV_CERTS_PERSONAL), 1, "{text}");
    assert_eq!(entries(ferry_wire::topology::KV_PGP_SECRET), 1, "{text}");
    assert_eq!(entries(ferry_wire::topology::KV_SCHED), 1, "{text}");
    let keymat_file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("p").join("keymat")).expect("P's keymat"))
            .expect("json");
    let private_b64 = keymat_file["private_key"].as_str().expect("private_key");
    assert_eq!(
        read.manifest.keymat_id,
        keymat_file["key_id"].as_str().expect("key id")
    );
    use base64::Engine;
    let private = base64::engine::general_purpose::STANDARD
        .decode(private_b64)
        .expect("base64");
    let found = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(
        !found(private_b64.as_bytes()) && !found(&private),
        "the keymat is in the bundle"
    );
    for secret in [HOST_PASSWORD, TOKEN, "pfx-pw"] {
        assert!(!found(secret.as_bytes()), "{secret:?} is in the bundle in clear");
    }
    let stored_text = String::from_utf8_lossy(&bytes);
    assert!(
        !stored_text.contains("PRIVATE KEY"),
        "a private key in clear in the bundle"
    );

    // Import on the standby S; S then matches P and the bundle, and shows P's task.
    wait_for_role(&s, &admin, "standby").await;
    let (ok, text) = ferry(&s, &admin, &["task", "show", "copy"]);
    assert!(!ok, "S knew the task before the import: {text}");
    let bundle_arg = bundle_path.to_str().expect("utf-8");
    let (ok, text) = ferry(&s, &admin, &["config", "import", bundle_arg]);
    assert!(ok, "import on S: {text}");
    eprintln!("ferry config import on S:\n{text}");
    assert!(
        text.contains("ferry_state") && text.contains("3 written"),
        "{text}"
    );
    let against_p = ["config", "verify", "--against", &p.url, "--against-nats-nkey"];
    let verify_p = |site: &Site| {
        let mut args: Vec<&str> = against_p.to_vec();
        args.push(admin.to_str().expect("utf-8"));
        ferry(site, &admin, &args)
    };
    let (ok, text) = verify_p(&s);
    assert!(ok && text.starts_with("identical"), "verify against P: {text}");
    assert!(
        text.contains("1 tasks") && text.contains("3 new-files-only") && text.contains("1 schedule states"),
        "{text}"
    );
    let (ok, text) = ferry(&s, &admin, &["config", "verify", "--against", bundle_arg]);
    assert!(
        ok && text.starts_with("identical"),
        "verify against the bundle: {text}"
    );
    let (ok, text) = ferry(&s, &admin, &["task", "show", "copy"]);
    assert!(
        ok && text.contains(&src.display().to_string()),
        "task show on S: {text}"
    );
    // S's cert-handler serves P's certificate and key, and opens the private key (sealed under
    // the shared keymat) to export it as a PFX that openssl reads.
    let fingerprint = read.parts[ferry_wire::topology::KV_CERTS_PERSONAL]
        .entries
        .keys()
        .next()
        .expect("a personal certificate")
        .clone();
    let (ok, text) = ferry(&s, &admin, &["certs", "list"]);
    assert!(ok && text.contains(&fingerprint), "certs list on S: {text}");
    let pgp_fingerprint = read.parts[ferry_wire::topology::KV_PGP_SECRET]
        .entries
        .keys()
        .next()
        .expect("a PGP key")
        .clone();
    let (ok, text) = ferry(&s, &admin, &["pgp", "list"]);
    assert!(ok && text.contains(&pgp_fingerprint), "pgp list on S: {text}");
    let exported = d.join("from-s.pfx");
    let (ok, text) = ferry(
        &s,
        &admin,
        &[
            "certs",
            "export",
            &fingerprint,
            "--pfx",
            "--out",
            exported.to_str().expect("utf-8"),
            "--password-file",
            d.join("pfx.pw").to_str().expect("utf-8"),
        ],
    );
    assert!(ok, "certs export --pfx on S: {text}");
    run(
        "openssl",
        &[
            "pkcs12",
            "-in",
            "from-s.pfx",
            "-passin",
            "pass:pfx-pw",
            "-nodes",
            "-out",
            "from-s.pem",
        ],
        d,
    );
    let pem = std::fs::read_to_string(d.join("from-s.pem")).expect("openssl output");
    assert!(
        pem.contains("PRIVATE KEY") && (pem.contains("CN=ferry-bundle") || pem.contains("CN = ferry-bundle")),
        "{pem}"
    );

    // Importing the same bundle again changes nothing.
    let before = buckets(&s, &admin).await;
    let (ok, text) = ferry(&s, &admin, &["config", "import", bundle_arg]);
    assert!(
        ok && text.contains("0 written, 0 deleted"),
        "second import: {text}"
    );
    assert_eq!(buckets(&s, &admin).await, before, "a second import changed S");

    // A change on P: verify lists exactly it, and never a secret.
    std::fs::write(&tasks, config(&src, &dst, "Bradford")).expect("write");
    let (ok, text) = ferry(&p, &admin, &["apply", "-f", tasks.to_str().expect("utf-8")]);
    assert!(ok, "apply the change on P: {text}");
    let (ok, text) = verify_p(&s);
    assert!(!ok, "verify missed the change: {text}");
    eprintln!("ferry config verify after a change on P:\n{text}");
    assert!(
        text.starts_with("1 difference(s)")
            && text.contains("parameter \"site\": different: here \"Leeds\", there \"Bradford\""),
        "{text}"
    );
    let (ok, json) = {
        let mut args = vec!["--json"];
        args.extend(against_p);
        args.push(admin.to_str().expect("utf-8"));
        ferry(&s, &admin, &args)
    };
    assert!(!ok);
    let verdict: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(verdict["identical"], false);
    assert_eq!(verdict["differences"].as_array().map(Vec::len), Some(1), "{json}");
    for secret in [HOST_PASSWORD, TOKEN] {
        assert!(
            !text.contains(secret) && !json.contains(secret),
            "verify showed a secret"
        );
    }

    // Bad bundles, each refused naming the reason, S unchanged.
    for (name, len) in [("half", bytes.len() / 2), ("end-marker", bytes.len() - 700)] {
        let truncated = d.join(format!("truncated-{name}.bundle"));
        std::fs::write(&truncated, &bytes[..len]).expect("write");
        refused(&s, &admin, &truncated, "truncated").await;
    }
    let damaged = d.join("damaged.bundle");
    let mut changed = bytes.clone();
    changed[512 + 40] ^= 0x01;
    std::fs::write(&damaged, &changed).expect("write");
    refused(&s, &admin, &damaged, "SHA-256").await;
    let parts: Vec<Part> = read.parts.values().cloned().collect();
    let other_version = d.join("other-version.bundle");
    bundle::write(&other_version, "p", "0.0.9", &read.manifest.keymat_id, &parts).expect("write");
    refused(
        &s,
        &admin,
        &other_version,
        &format!("made by Ferry 0.0.9, this is Ferry {}", env!("CARGO_PKG_VERSION")),
    )
    .await;
    let other_keymat = d.join("other-keymat.bundle");
    bundle::write(&other_keymat, "p", env!("CARGO_PKG_VERSION"), "kmOTHER", &parts).expect("write");
    refused(
        &s,
        &admin,
        &other_keymat,
        &format!(
            "made under keymat kmOTHER, this node's is {}: `ferry keymat import` the primary's keymat first",
            read.manifest.keymat_id
        ),
    )
    .await;
    // Hostile manifests, packed by GNU tar.
    let twice = repacked(&bundle_path, d, "twice.bundle", |m, _| {
        let first = m["parts"][0].clone();
        m["parts"].as_array_mut().expect("parts").push(first);
    });
    refused(&s, &admin, &twice, "names part \"ferry_state\" twice").await;
    let absurd = repacked(&bundle_path, d, "absurd.bundle", |m, _| {
        m["parts"][1]["bytes"] = serde_json::json!(u64::MAX);
        m["parts"][1]["entries"] = serde_json::json!(u64::MAX);
    });
    refused(&s, &admin, &absurd, "at most").await;
    let lease = repacked(&bundle_path, d, "lease.bundle", |m, work| {
        std::fs::write(
            work.join("parts/ferry_lease.jsonl"),
            "{\"key\":\"active\",\"value\":\"e30=\"}\n",
        )
        .expect("write");
        let mut part = m["parts"][0].clone();
        part["name"] = serde_json::json!("ferry_lease");
        m["parts"].as_array_mut().expect("parts").push(part);
    });
    refused(
        &s,
        &admin,
        &lease,
        "\"ferry_lease\", which is not a bucket a bundle may hold",
    )
    .await;
    // The genuine bundle, repacked by GNU tar with nothing changed, is accepted by verify.
    let same = repacked(&bundle_path, d, "same.bundle", |_, _| {});
    let (ok, text) = ferry(
        &s,
        &admin,
        &["config", "verify", "--against", same.to_str().expect("utf-8")],
    );
    assert!(ok, "a GNU-tar copy of the bundle: {text}");

    // Only the admin reads and writes what a bundle holds.
    let viewer = keys.join("viewer.nk");
    let by_viewer = d.join("viewer.bundle");
    let (ok, text) = ferry(
        &p,
        &viewer,
        &["config", "export", "--out", by_viewer.to_str().expect("utf-8")],
    );
    assert!(
        !ok && !by_viewer.exists() && text.contains("permission denied"),
        "a viewer exported a bundle: {text}"
    );
    let operator = keys.join("operator.nk");
    let before = buckets(&s, &admin).await;
    let (ok, text) = ferry(&s, &operator, &["config", "import", bundle_arg]);
    assert!(
        !ok && text.contains("permission denied") && text.contains("nothing was changed"),
        "an operator imported a bundle: {text}"
    );
    assert_eq!(
        buckets(&s, &admin).await,
        before,
        "an operator's import changed S"
    );

    // On the active node: refused without --force (P unchanged), done with it (P back to the
    // bundle, so S and P are identical again).
    refused(&p, &admin, &bundle_path, "node p is active").await;
    let (ok, text) = ferry(&p, &admin, &["config", "import", bundle_arg, "--force"]);
    assert!(ok, "import --force on P: {text}");
    let (ok, text) = verify_p(&s);
    assert!(
        ok && text.starts_with("identical"),
        "after the forced import: {text}"
    );
    eprintln!("config bundle suite: {:?}", started.elapsed());
}
