//! Remote hosts end to end, through a whole node and real servers: for each kind, as a
//! destination and as a source — 500 files in nested folders with matching SHA-256, a large file
//! with its hash checked, a wrong password (a clear error, nothing moved, the source intact), a
//! file still growing on the source (not taken until stable), and the server killed in the middle
//! of a transfer (the retry completes, resuming where the kind can, and nothing partial ever
//! stands under a final name).
//!
//! `FERRY_BIG_FILE_MIB` sets the large file's size (default 1024).

mod remote;

use std::time::Duration;

use remote::{Remote, big_file_mib};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ftps_500_nested_files_both_ways_a_wrong_password_and_a_growing_file() {
    let remote = Remote::ftps().expect("vsftpd");
    remote::nested_files_both_ways(&remote).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plain_ftp_large_file_both_ways() {
    let remote = Remote::plain_ftp().expect("vsftpd");
    remote::large_file_both_ways(&remote, big_file_mib()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ftps_server_killed_mid_upload_the_retry_resumes() {
    let mut remote = Remote::ftps().expect("vsftpd");
    remote::server_killed_mid_upload(&mut remote, Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_500_nested_files_both_ways_and_a_wrong_secret() {
    let remote = Remote::s3().expect("moto");
    remote::nested_files_both_ways(&remote).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_large_file_both_ways() {
    let remote = Remote::s3().expect("moto");
    remote::large_file_both_ways(&remote, big_file_mib()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_server_killed_mid_upload_the_retry_completes() {
    let mut remote = Remote::s3_open().expect("moto");
    remote::server_killed_mid_upload(&mut remote, Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn azure_500_nested_files_both_ways_and_a_wrong_key() {
    let remote = Remote::azure().expect("azurite");
    remote::nested_files_both_ways(&remote).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn azure_large_file_both_ways() {
    let remote = Remote::azure().expect("azurite");
    remote::large_file_both_ways(&remote, big_file_mib()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn azure_server_killed_mid_upload_the_retry_completes() {
    let mut remote = Remote::azure().expect("azurite");
    remote::server_killed_mid_upload(&mut remote, Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ftp_hostile_names_cannot_escape() {
    let remote = Remote::plain_ftp().expect("vsftpd");
    remote::hostile_names_cannot_escape(&remote).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_hostile_keys_cannot_escape() {
    let remote = Remote::s3_open().expect("moto");
    remote::hostile_keys_cannot_escape(&remote).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sftp_500_nested_files_both_ways_a_wrong_password_and_a_growing_file() {
    let remote = Remote::sftp().expect("sshd");
    remote::nested_files_both_ways(&remote).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sftp_large_file_both_ways() {
    let remote = Remote::sftp().expect("sshd");
    remote::large_file_both_ways(&remote, big_file_mib()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sftp_server_killed_mid_upload_the_retry_resumes() {
    let mut remote = Remote::sftp().expect("sshd");
    remote::server_killed_mid_upload(&mut remote, Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sftp_task_retries_replace_the_hosts_for_listings_and_files() {
    let mut remote = Remote::sftp().expect("sshd");
    remote::a_task_sets_its_own_retries(&mut remote).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sftp_behind_a_trickling_link_is_cut_off_by_min_rate() {
    let remote = Remote::sftp().expect("sshd");
    remote::a_trickling_server_is_cut_off(&remote).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sftp_download_gets_the_configured_mode() {
    let remote = Remote::sftp().expect("sshd");
    remote::a_download_gets_the_configured_mode(&remote).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sftp_upload_gets_the_configured_mode() {
    let remote = Remote::sftp().expect("sshd");
    remote::an_upload_gets_the_configured_mode(&remote).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sftp_hostile_names_cannot_escape() {
    let remote = Remote::sftp().expect("sshd");
    remote::hostile_names_cannot_escape(&remote).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sftp_refuses_a_name_that_is_not_utf8_naming_it() {
    let remote = Remote::sftp().expect("sshd");
    remote::a_name_that_is_not_utf8(&remote).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn host_test_shows_the_sftp_key_and_the_ftps_certificate_or_the_error() {
    let sftp = Remote::sftp().expect("sshd");
    let (good, _) = remote::host_test_reports(&sftp).await;
    assert_eq!(good.host_key_sha256.as_deref(), sftp.host_key(), "{good:?}");
    assert!(
        good.server.as_deref().unwrap_or_default().contains("OpenSSH"),
        "{good:?}"
    );
    let ftps = Remote::ftps().expect("vsftpd");
    let (good, _) = remote::host_test_reports(&ftps).await;
    assert!(
        good.tls_subject
            .as_deref()
            .unwrap_or_default()
            .contains("127.0.0.1"),
        "{good:?}"
    );
    assert!(good.tls_not_after.is_some(), "{good:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn smb_500_nested_files_both_ways_a_wrong_password_and_a_growing_file() {
    let remote = Remote::smb().expect("smbd");
    remote::nested_files_both_ways(&remote).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn smb_large_file_both_ways() {
    let remote = Remote::smb().expect("smbd");
    remote::large_file_both_ways(&remote, big_file_mib()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn smb_server_killed_mid_upload_the_retry_resumes() {
    let mut remote = Remote::smb().expect("smbd");
    remote::server_killed_mid_upload(&mut remote, Duration::from_millis(300)).await;
}

/// One task, one source, several kinds of destination: from an SFTP server to a Windows share
/// and an S3 bucket; `ferry audit` shows each delivery with its hosts and the file's SHA-256.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_task_from_sftp_to_smb_and_s3_and_the_audit_names_the_hosts() {
    let (sftp, smb, s3) = (
        Remote::sftp().expect("sshd"),
        Remote::smb().expect("smbd"),
        Remote::s3().expect("moto"),
    );
    let (nats, node) = remote::node().await;
    let src = sftp.make_folder("outgoing").await.expect("a server of files");
    let mut want = std::collections::BTreeMap::new();
    for i in 0..12 {
        let name = format!("statement-{i:02}.csv");
        let data = format!("account;amount\n{i};{}\n", i * 100).repeat(i + 1);
        std::fs::write(src.join(&name), &data).expect("write");
        use sha2::Digest;
        want.insert(name, hex::encode(sha2::Sha256::digest(data.as_bytes())));
    }
    smb.make_folder("incoming").await;
    s3.make_folder("archive").await;
    let config = format!(
        "{}\n{}\n{}\n[[task]]\nname = \"fan-out\"\n[[task.source]]\nhost = \"bank\"\nfolder = \"{}\"\n\
         [[task.destination]]\nhost = \"share\"\nfolder = \"{}\"\n[[task.destination]]\nhost = \"lake\"\nfolder = \"{}\"\n",
        sftp.host("bank", true),
        smb.host("share", true),
        s3.host("lake", true),
        sftp.folder("outgoing"),
        smb.folder("incoming"),
        s3.folder("archive"),
    );
    node.apply(&config).await.expect("apply");
    let run = remote::run(&node, "fan-out").await;
    assert_eq!(run.files_delivered, 12, "{run:?}");
    assert_eq!(smb.hashes("incoming").await, want, "the share's copies");
    assert_eq!(s3.hashes("archive").await, want, "the bucket's copies");

    let out = std::process::Command::new(ferry_tests::bin_path("ferry"))
        .args(["audit", "--run", &run.run_id.to_string()])
        .env("FERRY_NATS_URL", nats.url())
        .env("FERRY_NODE_ID", ferry_tests::NODE)
        .output()
        .expect("ferry audit");
    let audit = String::from_utf8_lossy(&out.stdout);
    for (name, sha) in &want {
        for dest in [
            format!("share:{}", ferry_hosts::path::join(&smb.folder("incoming"), name)),
            format!("lake:{}", ferry_hosts::path::join(&s3.folder("archive"), name)),
        ] {
            let line = audit
                .lines()
                .find(|l| l.contains(&format!("-> {dest} ")))
                .unwrap_or_else(|| panic!("no audit line for {dest}:\n{audit}"));
            assert!(
                line.contains("delivered")
                    && line.contains(&format!(
                        "bank:{}",
                        ferry_hosts::path::join(&sftp.folder("outgoing"), name)
                    ))
                    && line.contains(&format!("sha256={sha}")),
                "{line}"
            );
        }
    }
    node.shutdown().await;
}
