//! A full disk: a destination on a small file system (a tmpfs mounted by the test; needs root)
//! runs out of space in the middle of a file. That destination fails with the system's words, no
//! partial file stands under a final name, no temp file is left behind, the source is kept — and
//! a second destination on a healthy host still gets the file.

mod remote;

use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_wire::{Outcome, RunStatus};
use remote::{Remote, big_file, node, run, task};

/// A tmpfs of `mib` MiB at a fresh folder, unmounted on drop.
struct SmallDisk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u64) -> SmallDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk");
        std::fs::create_dir_all(&path).expect("mkdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("run mount (this test needs root)");
        assert!(status.success(), "mount a {mib} MiB tmpfs (this test needs root)");
        SmallDisk { path, _dir: dir }
    }

    fn files(&self) -> Vec<String> {
        walkdir::WalkDir::new(&self.path)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_local_disk_fails_the_file_cleanly_and_keeps_the_source() {
    let disk = SmallDisk::mount(8);
    let (_nats, node) = node().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    let sha = big_file(&src.join("big.bin"), 24);
    let config = task(
        "to-full",
        ("local", &s(&src)),
        ("local", &s(&disk.path)),
        "delete_after = true",
    );
    node.apply(&config).await.expect("apply");
    let finished = run(&node, "to-full").await;
    assert_eq!(finished.status, RunStatus::Failed);
    let error = finished.files[0].error.clone().unwrap_or_default();
    assert!(error.contains("No space left on device"), "{error}");
    assert!(
        disk.files().is_empty(),
        "left on the full disk: {:?}",
        disk.files()
    );
    assert_eq!(
        ferry_tests::sha256_file(&src.join("big.bin")),
        sha,
        "the source is kept"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_destination_fails_alone_and_the_other_destination_gets_the_file() {
    let disk = SmallDisk::mount(8);
    let sftp = Remote::sftp().expect("sshd");
    let (_nats, node) = node().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    let sha = big_file(&src.join("big.bin"), 24);
    sftp.make_folder("in").await;
    let config = format!(
        "{}\n{}[[task.destination]]\nhost = \"local\"\nfolder = \"{}\"\n",
        sftp.host("partner", true),
        task(
            "fan-out",
            ("local", &s(&src)),
            ("partner", &sftp.folder("in")),
            "delete_after = true"
        ),
        s(&disk.path)
    );
    node.apply(&config).await.expect("apply");
    let finished = run(&node, "fan-out").await;
    let file = &finished.files[0];
    assert_eq!(file.outcome, Outcome::Failed, "{file:?}");
    assert_eq!(file.destinations[0].outcome, Outcome::Delivered, "{file:?}");
    assert_eq!(file.destinations[1].outcome, Outcome::Failed, "{file:?}");
    let error = file.destinations[1].error.clone().unwrap_or_default();
    assert!(error.contains("No space left on device"), "{error}");
    assert_eq!(sftp.hash_of("in", "big.bin").await.as_deref(), Some(sha.as_str()));
    assert!(
        disk.files().is_empty(),
        "left on the full disk: {:?}",
        disk.files()
    );
    assert!(
        src.join("big.bin").exists(),
        "a move keeps its source until every destination has it"
    );
    node.shutdown().await;
}
