//! Local → local end to end against a real nats-server: relative subdirectories, hashes,
//! new-files-only, and changed files moving again.

use std::time::Duration;

use ferry_tests::{NatsServer, Node, local_task, settings, tree_hashes};
use ferry_wire::{Outcome, RunStatus};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_nested_files_move_once_and_changed_ones_again() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let node = Node::start(settings(&nats.url())).await?;
    let dir = tempfile::tempdir()?;
    let (src, dst) = (dir.path().join("in"), dir.path().join("out"));
    for i in 0..1000 {
        let sub = src.join(format!("d{}/e{}", i % 10, i % 7));
        std::fs::create_dir_all(&sub)?;
        std::fs::write(
            sub.join(format!("f{i:04}.dat")),
            format!("file {i} ").repeat(i % 50 + 1),
        )?;
    }
    // Payroll-like files keep their narrow permission bits (a new file's default is wider).
    for (i, mode) in [(1, 0o600), (2, 0o640)] {
        let path = src.join(format!("d{}/e{}/f{i:04}.dat", i % 10, i % 7));
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    }
    let toml = local_task(
        "nested",
        &src,
        &dst,
        "subdirectories = true\nmasks = \"*.dat\"",
        "relative_subdirs = true",
    );
    node.apply(&toml).await?;

    let first = node.run_task("nested", Duration::from_secs(120)).await?;
    assert_eq!(first.status, RunStatus::Succeeded, "{:?}", first.error);
    assert_eq!(first.files_delivered, 1000);
    let source_tree = tree_hashes(&src);
    assert_eq!(source_tree.len(), 1000);
    assert_eq!(
        tree_hashes(&dst),
        source_tree,
        "every destination file matches its source"
    );
    for f in &first.files {
        assert_eq!(f.outcome, Outcome::Delivered);
        let rel = f
            .source_path
            .strip_prefix(&format!("{}/", src.display()))
            .expect("under source");
        assert_eq!(
            f.sha256.as_deref(),
            Some(source_tree[rel].as_str()),
            "reported hash of {rel}"
        );
    }

    let mode = |path: &std::path::Path| -> std::io::Result<u32> {
        Ok(std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path)?.permissions()) & 0o777)
    };
    for i in 1..=3 {
        let rel = format!("d{}/e{}/f{i:04}.dat", i % 10, i % 7);
        assert_eq!(mode(&dst.join(&rel))?, mode(&src.join(&rel))?, "{rel}");
    }
    assert_eq!(mode(&dst.join("d1/e1/f0001.dat"))?, 0o600);

    let second = node.run_task("nested", Duration::from_secs(60)).await?;
    assert_eq!(second.status, RunStatus::Succeeded);
    assert_eq!(
        second.files.len(),
        0,
        "new-files-only: nothing moves the second time"
    );

    // Change one file's content: exactly that file moves again.
    let changed = src.join("d3/e6/f0083.dat");
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&changed, "new content")?;
    let third = node.run_task("nested", Duration::from_secs(60)).await?;
    assert_eq!(third.files_delivered, 1);
    assert_eq!(third.files[0].source_path, changed.to_string_lossy());
    assert_eq!(
        std::fs::read_to_string(dst.join("d3/e6/f0083.dat"))?,
        "new content"
    );

    // Editing the mask does not re-send what was delivered (state is per source and file).
    let toml = toml.replace("masks = \"*.dat\"", "masks = \"*.dat;*.txt\"");
    node.apply(&toml).await?;
    let fourth = node.run_task("nested", Duration::from_secs(60)).await?;
    assert_eq!(fourth.files.len(), 0);
    node.shutdown().await;
    Ok(())
}

/// A run of any size finishes as one summary: 100,000 empty files (`FERRY_BIG_RUN_FILES`; a
/// million in `make bench`) go through, `RunFinished` carries the counts but not the per-file
/// outcomes (which would pass NATS's `max_payload` from about 20,000 files on), the run record
/// stays small, `ferry runs show` reads every file's outcome from the batch results, and the
/// next run finds nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_of_a_hundred_thousand_files_finishes_as_one_summary() -> anyhow::Result<()> {
    let files: usize = std::env::var("FERRY_BIG_RUN_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let nats = NatsServer::start()?;
    let mut s = settings(&nats.url());
    s.transfer.concurrency = 32;
    let node = Node::start(s).await?;
    let dir = tempfile::tempdir()?;
    let (src, dst) = (dir.path().join("in"), dir.path().join("out"));
    for i in 0..files {
        let sub = src.join(format!("d{}", i % 20));
        if i < 20 {
            std::fs::create_dir_all(&sub)?;
        }
        std::fs::File::create(sub.join(format!("{i}.txt")))?;
    }
    node.apply(&local_task(
        "many",
        &src,
        &dst,
        "subdirectories = true",
        "relative_subdirs = true",
    ))
    .await?;
    let started = std::time::Instant::now();
    let run = node.run_task("many", Duration::from_secs(1800)).await?;
    eprintln!("{files} files in {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(
        (run.files_delivered, run.files_failed, run.files_skipped),
        (files as u64, 0, 0)
    );
    assert!(run.files.is_empty() && run.files_in_results, "a summary");
    let size = ferry_wire::encode(&run).len();
    assert!(size < 4096, "RunFinished is {size} bytes");
    let record = node
        .js
        .get_key_value(ferry_wire::topology::KV_RUNS)
        .await?
        .get(format!("run.{}", run.run_id))
        .await?
        .expect("the run record");
    assert!(
        record.len() < 70 * files / 64 + 4096,
        "the run record is {} bytes",
        record.len()
    );
    let mut delivered = 0;
    for d in std::fs::read_dir(&dst)? {
        delivered += std::fs::read_dir(d?.path())?.count();
    }
    assert_eq!(delivered, files);

    // Every file's outcome, from the batch results.
    let shown = ferry_tests::ferry_cli(
        &nats.url(),
        &["runs", "show", &run.run_id.to_string(), "--json"],
        dir.path(),
    );
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let shown: ferry_wire::RunFinished = serde_json::from_slice(&shown.stdout)?;
    assert_eq!(shown.files.len(), files);
    assert!(shown.files.iter().all(|f| f.outcome == Outcome::Delivered));
    let names: std::collections::HashSet<&str> = shown.files.iter().map(|f| f.source_path.as_str()).collect();
    assert_eq!(names.len(), files, "each file once");

    let again = node.run_task("many", Duration::from_secs(600)).await?;
    assert_eq!(again.status, RunStatus::Succeeded, "{:?}", again.error);
    assert_eq!(again.files_delivered + again.files_failed, 0, "nothing new");
    node.shutdown().await;
    Ok(())
}

/// New-files-only state does not pile up: a moved file (its source deleted) leaves none, and the
/// state of a file no longer listed is forgotten at the next run — so a file that comes back, even
/// with its old size and modification time, is a new file and moves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_files_only_state_is_forgotten_for_moved_and_vanished_files() -> anyhow::Result<()> {
    use futures::TryStreamExt;
    let nats = NatsServer::start()?;
    let node = Node::start(settings(&nats.url())).await?;
    let dir = tempfile::tempdir()?;
    let (copies, moves, dst) = (
        dir.path().join("copies"),
        dir.path().join("moves"),
        dir.path().join("out"),
    );
    std::fs::create_dir_all(&copies)?;
    std::fs::create_dir_all(&moves)?;
    for name in ["a.txt", "b.txt", "c.txt"] {
        std::fs::write(copies.join(name), name)?;
        std::fs::write(moves.join(name), name)?;
    }
    let toml = format!(
        "{}{}",
        local_task("copies", &copies, &dst.join("c"), "", ""),
        local_task("moves", &moves, &dst.join("m"), "delete_after = true", "")
    );
    node.apply(&toml).await?;
    let kv = node.js.get_key_value(ferry_wire::topology::KV_STATE).await?;
    let state_of = |task: &str, folder: &std::path::Path| {
        let prefix = format!(
            "nfo.{}.",
            ferry_wire::plan::state_source_key(task, "local", &folder.to_string_lossy())
        );
        let kv = kv.clone();
        async move {
            let keys: Vec<String> = kv.keys().await?.try_collect().await?;
            anyhow::Ok(keys.into_iter().filter(|k| k.starts_with(&prefix)).count())
        }
    };

    let moved = node.run_task("moves", Duration::from_secs(60)).await?;
    assert_eq!(
        (moved.status, moved.files_delivered),
        (RunStatus::Succeeded, 3),
        "{:?}",
        moved.error
    );
    assert_eq!(std::fs::read_dir(&moves)?.count(), 0, "moved");
    assert_eq!(
        state_of("moves", &moves).await?,
        0,
        "a moved file leaves no state"
    );

    let first = node.run_task("copies", Duration::from_secs(60)).await?;
    assert_eq!(first.files_delivered, 3, "{:?}", first.error);
    assert_eq!(state_of("copies", &copies).await?, 3);
    let b = copies.join("b.txt");
    let b_mtime = std::fs::metadata(&b)?.modified()?;
    std::fs::remove_file(&b)?;
    let second = node.run_task("copies", Duration::from_secs(60)).await?;
    assert_eq!(second.files_delivered, 0);
    assert_eq!(
        state_of("copies", &copies).await?,
        2,
        "b.txt is no longer listed: forgotten"
    );

    std::fs::write(&b, "b.txt")?;
    std::fs::File::options()
        .write(true)
        .open(&b)?
        .set_modified(b_mtime)?;
    let third = node.run_task("copies", Duration::from_secs(60)).await?;
    let names: Vec<&str> = third.files.iter().map(|f| f.source_path.as_str()).collect();
    assert_eq!(names, [b.to_string_lossy()], "b.txt came back: a new file");
    assert_eq!(third.files_delivered, 1);
    assert_eq!(state_of("copies", &copies).await?, 3);
    node.shutdown().await;
    Ok(())
}

/// File names are bytes: a name that is not UTF-8 (Latin-1 `café`, a folder named `\xff`), one
/// of 255 bytes (the most a Linux name may have; the temp name stays short), names with line
/// breaks and escape characters, and a real `U+FFFD` name beside the Latin-1 one it would be
/// confused with if names were decoded lossily — each moves to exactly its own name with its own
/// bytes, and its source is deleted only then.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn names_that_are_not_utf8_or_255_bytes_long_move_byte_for_byte() -> anyhow::Result<()> {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let nats = NatsServer::start()?;
    let node = Node::start(settings(&nats.url())).await?;
    let dir = tempfile::tempdir()?;
    let (src, dst) = (dir.path().join("in"), dir.path().join("out"));
    let names: Vec<Vec<u8>> = vec![
        b"caf\xe9.csv".to_vec(),
        "caf\u{fffd}.csv".as_bytes().to_vec(),
        b"d\xff/inner \xc3(.csv".to_vec(),
        [&[0xffu8; 251][..], b".csv"].concat(),
        "é".repeat(125)
            .into_bytes()
            .into_iter()
            .chain(*b".csv\x01")
            .collect(),
        b"line\nbreak\tand \x1b[31mred.csv".to_vec(),
    ];
    for (i, name) in names.iter().enumerate() {
        assert!(name.rsplit(|b| *b == b'/').next().expect("name").len() <= 255);
        let path = src.join(OsStr::from_bytes(name));
        std::fs::create_dir_all(path.parent().expect("parent"))?;
        std::fs::write(&path, format!("file {i}"))?;
    }
    assert_eq!(names[3].len(), 255);
    assert_eq!(names[4].len(), 255);
    node.apply(&local_task(
        "odd",
        &src,
        &dst,
        "subdirectories = true\ndelete_after = true",
        "relative_subdirs = true",
    ))
    .await?;
    let run = node.run_task("odd", Duration::from_secs(60)).await?;
    assert_eq!(
        (run.status, run.files_delivered, run.files_failed),
        (RunStatus::Succeeded, names.len() as u64, 0),
        "{:?} {:#?}",
        run.error,
        run.files
    );
    let arrived = |root: &std::path::Path| -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut all: Vec<(Vec<u8>, Vec<u8>)> = walkdir::WalkDir::new(root)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                let rel = e.path().strip_prefix(root).expect("under root");
                (
                    rel.as_os_str().as_bytes().to_vec(),
                    std::fs::read(e.path()).expect("read"),
                )
            })
            .collect();
        all.sort();
        all
    };
    let mut want: Vec<(Vec<u8>, Vec<u8>)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), format!("file {i}").into_bytes()))
        .collect();
    want.sort();
    assert_eq!(
        arrived(&dst),
        want,
        "each file under its own name, with its own bytes"
    );
    assert!(arrived(&src).is_empty(), "every source was moved");
    // Results and logs show the bytes, not a lossy guess: `\xe9`, escaped control characters.
    let latin1 = run
        .files
        .iter()
        .find(|f| f.source_path.ends_with("caf\0e9.csv"))
        .expect("the Latin-1 name's result");
    assert_eq!(latin1.outcome, Outcome::Delivered);
    assert_eq!(
        ferry_hosts::path::shown(ferry_hosts::path::file_name(&latin1.source_path)),
        r#""caf\xe9.csv""#
    );
    node.shutdown().await;
    Ok(())
}

/// Delivered files get the source's permission bits, or a destination's `mode`: exactly, also
/// bits without the owner's write (set after the copy was verified), for a lone large file (the
/// pipelined copy) as for a batch of small ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivered_files_get_the_sources_bits_or_the_destinations_mode() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let nats = NatsServer::start()?;
    let node = Node::start(settings(&nats.url())).await?;
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("in");
    let outs: Vec<std::path::PathBuf> = ["same", "private", "read-only"]
        .iter()
        .map(|d| dir.path().join(d))
        .collect();
    std::fs::create_dir_all(&src)?;
    for (name, len) in [("a.csv", 10), ("b.csv", 20), ("big.bin", 3 << 20)] {
        std::fs::write(src.join(name), vec![7u8; len])?;
        std::fs::set_permissions(src.join(name), std::fs::Permissions::from_mode(0o664))?;
    }
    let destination = |out: &std::path::Path, mode: &str| {
        format!(
            "\n[[task.destination]]\nhost = \"local\"\nfolder = \"{}\"\n{mode}\n",
            out.display()
        )
    };
    let config = local_task("modes", &src, &outs[0], "", "")
        + &destination(&outs[1], "mode = \"0600\"")
        + &destination(&outs[2], "mode = \"440\"");
    node.apply(&config).await?;
    let run = node.run_task("modes", Duration::from_secs(60)).await?;
    assert_eq!(
        (run.status, run.files_delivered),
        (RunStatus::Succeeded, 3),
        "{run:?}"
    );
    let mode = |p: std::path::PathBuf| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o7777);
    for name in ["a.csv", "b.csv", "big.bin"] {
        assert_eq!(mode(outs[0].join(name))?, 0o664, "{name}: the source's bits");
        assert_eq!(mode(outs[1].join(name))?, 0o600, "{name}: mode 0600");
        assert_eq!(mode(outs[2].join(name))?, 0o440, "{name}: mode 440");
    }
    let shown = ferry_tests::ferry_cli(&nats.url(), &["task", "show", "modes"], dir.path());
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("mode=0600") && text.contains("mode=0440"), "{text}");
    node.shutdown().await;
    Ok(())
}
