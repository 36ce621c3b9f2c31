//! The azure host against Azurite (`ferry_testkit::peers::azurite`): the conformance suite with
//! an account key and with a SAS token (read-back staging), and what a user sees when the key
//! is wrong, the container is missing, or the server dies mid-upload, and a 40 MiB round trip
//! in blocks.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_hosts::{DynHost, ErrorKind, conformance};
use ferry_testkit::peers::azurite::{ACCOUNT, ACCOUNT_KEY, AzuriteServer, CONTAINER};

mod common;
use common::{expect_err, sealed, sha, stored_sha, target};

const PART: u64 = 5 << 20;

/// A host named `blobs` on Azurite, built the way the services build it (sealed secret).
/// `credential` is the TOML line with the key or SAS token; `settings` are extra lines.
fn host_with(
    azurite: &AzuriteServer,
    container: &str,
    credential: &str,
    settings: &str,
) -> (DynHost, tempfile::TempDir) {
    let toml = format!(
        "[[host]]\nname = \"blobs\"\nkind = \"azure\"\naccount = \"{ACCOUNT}\"\ncontainer = \"{container}\"\n\
         endpoint = \"{}\"\nallow_http = true\n{credential}\nconnect_timeout_secs = 5\n\
         operation_timeout_secs = 10\n{settings}\n",
        azurite.endpoint()
    );
    sealed(&toml, "blobs")
}

fn host(azurite: &AzuriteServer, settings: &str) -> (DynHost, tempfile::TempDir) {
    host_with(
        azurite,
        CONTAINER,
        &format!("access_key = \"{ACCOUNT_KEY}\""),
        settings,
    )
}

#[tokio::test]
async fn conformance_with_an_account_key() {
    let azurite = AzuriteServer::start().expect("azurite");
    // 5 MiB blocks: the suite's 9 MiB file goes up as a block list, the rest in one put each.
    let (host, _keys) = host(&azurite, &format!("part_bytes = {PART}"));
    host.create_dir_all("suite").await.expect("folder");
    conformance::run(&host, "suite").await.expect("conformance");
    let probe = host.probe("suite").await.expect("probe");
    assert!(
        probe
            .server
            .as_deref()
            .is_some_and(|s| s.starts_with("Azurite-Blob")),
        "{probe:?}"
    );
    assert!(!probe.capabilities.server_sha256 && !probe.capabilities.rename_noreplace);
}

#[tokio::test]
async fn conformance_with_a_sas_token_and_read_back() {
    let azurite = AzuriteServer::start().expect("azurite");
    let sas = azurite.account_sas().expect("sas");
    let (host, _keys) = host_with(
        &azurite,
        CONTAINER,
        &format!("sas_token = \"{sas}\""),
        &format!("part_bytes = {PART}\nverify = \"read_back\""),
    );
    host.create_dir_all("/suite").await.expect("folder");
    conformance::run(&host, "/suite").await.expect("conformance");
}

#[tokio::test]
async fn a_wrong_key_is_refused_with_the_servers_code() {
    let azurite = AzuriteServer::start().expect("azurite");
    // A well-formed key of the right length that is not the account's.
    let wrong = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXlXcm9uZ0tleQ==";
    let (host, _keys) = host_with(&azurite, CONTAINER, &format!("access_key = \"{wrong}\""), "");
    let e = expect_err("list", host.list("", false).await);
    assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
    let text = e.to_string();
    assert!(text.starts_with("host \"blobs\": list"), "{text}");
    // Azure says AuthenticationFailed; Azurite says AuthorizationFailure.
    assert!(
        text.contains("authentication failed (403 AuthorizationFailure: Server failed to authenticate"),
        "{text}"
    );
    assert!(
        !text.contains(wrong) && !format!("{e:?}").contains(wrong),
        "{text}"
    );
    let e = expect_err("put", conformance::put(&host, "in", "a.csv", b"abc", true).await);
    assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
    assert!(
        e.message
            .contains("authentication failed (403 AuthorizationFailure")
            && !e.message.contains(wrong),
        "{e}"
    );
    let e = expect_err("create folder", host.create_dir_all("in").await);
    assert!(
        e.message
            .contains("authentication failed (403 AuthorizationFailure"),
        "{e}"
    );
}

#[tokio::test]
async fn a_missing_container_is_a_clear_permanent_error() {
    let azurite = AzuriteServer::start().expect("azurite");
    let (host, _keys) = host_with(
        &azurite,
        "no-such-container",
        &format!("access_key = \"{ACCOUNT_KEY}\""),
        "",
    );
    for e in [
        expect_err("list", host.list("in", false).await),
        expect_err("probe", host.probe("in").await),
        expect_err("stat", host.stat("in/a.csv").await),
        expect_err("create folder", host.create_dir_all("in").await),
        expect_err("put", conformance::put(&host, "in", "a.csv", b"abc", false).await),
    ] {
        assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
        assert!(
            e.message
                .contains("container \"no-such-container\" does not exist (404 ContainerNotFound"),
            "{e}"
        );
    }
}

#[tokio::test]
async fn forty_mib_go_up_in_blocks_and_read_back_identical() {
    let azurite = AzuriteServer::start().expect("azurite");
    let (host, _keys) = host(&azurite, &format!("part_bytes = {PART}"));
    host.create_dir_all("big").await.expect("folder");
    let data = conformance::content(40 << 20, 11);
    assert!(
        conformance::put(&host, "big", "forty.bin", &data, false)
            .await
            .expect("put")
    );
    assert_eq!(
        stored_sha(&host, "big/forty.bin").await,
        (data.len() as u64, sha(&data))
    );
    let listed = host.list("big", true).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].rel_path.as_str(), listed[0].size),
        ("forty.bin", 40 << 20)
    );
    let tail = conformance::get(&host, "big/forty.bin", (40 << 20) - 7)
        .await
        .expect("tail");
    assert_eq!(tail, data[data.len() - 7..]);
    let other = conformance::content(12 << 20, 12);
    assert!(
        !conformance::put(&host, "big", "forty.bin", &other, false)
            .await
            .expect("put again")
    );
    assert_eq!(stored_sha(&host, "big/forty.bin").await.1, sha(&data));
}

#[tokio::test]
async fn a_server_killed_mid_upload_is_transient_and_a_retry_completes() {
    let mut azurite = AzuriteServer::start().expect("azurite");
    let (host, _keys) = host(&azurite, &format!("part_bytes = {PART}"));
    host.create_dir_all("in").await.expect("folder");
    let data = conformance::content(40 << 20, 21);
    let t = target("in", "killed.bin", data.len() as u64);
    let mut upload = host.write(&t).await.expect("write");
    let mut chunks = data.chunks(256 << 10);
    for chunk in chunks.by_ref().take(80) {
        upload
            .write(Bytes::copy_from_slice(chunk))
            .await
            .expect("write before the kill");
    }
    assert!(
        host.stat(&t.final_path()).await.expect("stat").is_none(),
        "the final name is visible while blocks go up"
    );
    azurite.kill();
    let started = Instant::now();
    let mut failed = None;
    for chunk in chunks {
        if let Err(e) = upload.write(Bytes::copy_from_slice(chunk)).await {
            failed = Some(e);
            break;
        }
    }
    let e = match failed {
        Some(e) => e,
        None => expect_err("finish", upload.finish().await.map(|_| ())),
    };
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    azurite.restart().expect("restart");
    assert!(host.stat(&t.final_path()).await.expect("stat").is_none());
    // Azurite may lose its last seconds of metadata to SIGKILL, the folder marker among them.
    match host.list("in", true).await {
        Ok(listed) => assert!(listed.is_empty(), "an interrupted upload left {listed:?}"),
        Err(e) => assert_eq!(e.kind, ErrorKind::NotFound, "{e}"),
    }
    assert!(
        conformance::put(&host, "in", "killed.bin", &data, true)
            .await
            .expect("retry")
    );
    assert_eq!(stored_sha(&host, &t.final_path()).await.1, sha(&data));
}
