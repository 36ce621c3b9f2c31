//! Crash safety: SIGKILL the transfer service in the middle of a run of 200 × 1 MiB files and
//! restart it. Every file must end up delivered exactly once and intact, and no partial file may
//! ever stand under a final name — a watcher scans the destination throughout the run.
//!
//! `FERRY_TRIALS` (default 1) repeats the experiment with a different kill point each time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry_tests::{
    NatsServer, Node, ServiceProcess, Services, eventually, local_task, process_env, settings, tree_hashes,
};
use ferry_wire::{Outcome, RunStatus};

const FILES: usize = 200;
const SIZE: usize = 1 << 20;

fn trials() -> usize {
    std::env::var("FERRY_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// Pseudo-random bytes, different per file, cheap to make.
fn content(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..SIZE / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

/// Scans `dir` until stopped; returns every final-named file ever seen with a wrong size.
fn watch(dir: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut violations = Vec::new();
        let mut scans = 0u64;
        while !stop.load(Ordering::SeqCst) {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.ends_with(".part") {
                        continue;
                    }
                    // Size through the open handle: a file renamed into place is already whole.
                    if let Ok(meta) = e.metadata()
                        && meta.len() != SIZE as u64
                    {
                        violations.push(format!("{name}: {} bytes under its final name", meta.len()));
                    }
                }
            }
            scans += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(scans > 10, "the watcher must actually have watched");
        violations
    })
}

fn count_final(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().ends_with(".part"))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_transfer_mid_run_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let node = Node::start_with(settings(&nats.url()), Services::NO_TRANSFER).await?;
    let work = tempfile::tempdir()?;
    let src = work.path().join("in");
    std::fs::create_dir_all(&src)?;
    for i in 0..FILES {
        std::fs::write(src.join(format!("f{i:03}.bin")), content(i as u64))?;
    }
    let expected = tree_hashes(&src);
    let env = process_env(&nats.url(), ferry_tests::NODE);

    for trial in 0..trials() {
        let dst = work.path().join(format!("out-{trial}"));
        std::fs::create_dir_all(&dst)?;
        let task = format!("crash{trial}");
        // `unique` makes a second delivery visible as `name (1).bin`; new-files-only off so every
        // trial moves all files again.
        node.apply(&local_task(
            &task,
            &src,
            &dst,
            "new_files_only = false",
            "overwrite = \"unique\"",
        ))
        .await?;
        let mut transfer = ServiceProcess::start("transfer", &env, work.path())?;
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = watch(dst.clone(), stop.clone());

        let run_id = node.request_run(&task).await?;
        // Kill at a different point each trial: after 1..=150 files are in place.
        let kill_after = 1 + (trial * 37 + 11) % 150;
        eventually(Duration::from_secs(60), "files to start arriving", || async {
            (count_final(&dst) >= kill_after).then_some(())
        })
        .await?;
        transfer.kill();
        let at_kill = count_final(&dst);
        let _restarted = ServiceProcess::start("transfer", &env, work.path())?;

        let finished =
            ferry_service::streams::wait_for_run(&node.js, &task, run_id, Duration::from_secs(180)).await?;
        stop.store(true, Ordering::SeqCst);
        let violations = watcher.join().expect("watcher thread");
        assert!(
            violations.is_empty(),
            "partial files under final names: {violations:?}"
        );
        assert_eq!(
            finished.status,
            RunStatus::Succeeded,
            "trial {trial}: {:?}",
            finished.error
        );
        assert_eq!(finished.files_delivered as usize, FILES, "trial {trial}");
        assert!(finished.files.iter().all(|f| f.outcome == Outcome::Delivered));
        let delivered = tree_hashes(&dst);
        let leftovers: Vec<_> = std::fs::read_dir(&dst)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".part"))
            .collect();
        assert!(leftovers.is_empty(), "temp files left behind: {leftovers:?}");
        assert_eq!(
            delivered.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "trial {trial}: exactly the source files, no duplicates (killed at {at_kill} delivered)"
        );
        let wrong: BTreeMap<_, _> = delivered.iter().filter(|(k, v)| expected[*k] != **v).collect();
        assert!(wrong.is_empty(), "corrupted files: {wrong:?}");
        eprintln!(
            "trial {trial}: killed transfer with {at_kill} of {FILES} files in place; all delivered once, intact"
        );
    }
    node.shutdown().await;
    Ok(())
}
