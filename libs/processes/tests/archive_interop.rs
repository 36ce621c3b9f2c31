//! Zip interoperability with Info-ZIP's `zip` / `unzip`, and archives built to attack an
//! extractor (zip-slip, zip bombs) by Python's `zipfile`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ferry_processes::archive::{Unzip, UnzipLimits, Zip};
use ferry_processes::testing::{Fixture, entries};
use ferry_processes::{ErrorClass, NoKeys, Process, run_steps};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn python(script: &str, arg: &Path) {
    run(Command::new("python3").arg("-c").arg(script).arg(arg));
}

/// Total bytes of the regular files under `dir` (recursively).
fn bytes_under(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => bytes_under(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Polls `dir` until stopped, keeping the largest total size seen.
struct Watcher {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(dir: &Path) -> Watcher {
        let (stop, max) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (s, m, d) = (stop.clone(), max.clone(), dir.to_path_buf());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                m.fetch_max(bytes_under(&d), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        Watcher {
            stop,
            max,
            thread: Some(thread),
        }
    }
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().expect("started").join().expect("watcher");
        self.max.load(Ordering::Relaxed)
    }
}

#[test]
fn a_zip_ferry_writes_is_tested_and_extracted_identically_by_unzip() {
    let fx = Fixture::new();
    let ctx = fx.ctx(&NoKeys);
    let big: Vec<u8> = (0..5_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let inputs = vec![
        fx.input("readme.txt", b"hello from ferry\n"),
        fx.input("data/big.bin", &big),
        fx.input("data/deeper/empty.csv", b""),
    ];
    let z = Zip::new("[TaskName].zip", 6).expect("valid");
    let archive = run_steps(&[&z], inputs, &ctx)
        .files
        .expect("zipped")
        .pop()
        .expect("one archive");
    assert_eq!(archive.name(), "t.zip");

    let out = run(Command::new("unzip").arg("-t").arg(archive.path()));
    assert!(out.contains("No errors detected"), "{out}");
    let dest = tempfile::tempdir().expect("temp");
    run(Command::new("unzip")
        .arg("-q")
        .arg(archive.path())
        .arg("-d")
        .arg(dest.path()));
    assert_eq!(
        std::fs::read(dest.path().join("readme.txt")).expect("read"),
        b"hello from ferry\n"
    );
    assert_eq!(
        std::fs::read(dest.path().join("data/big.bin")).expect("read"),
        big
    );
    assert_eq!(
        std::fs::read(dest.path().join("data/deeper/empty.csv")).expect("read"),
        b""
    );
    let listing = run(Command::new("unzip").arg("-Z").arg("-l").arg(archive.path()));
    assert!(listing.contains("defN"), "entries are deflated: {listing}");
}

#[test]
fn a_zip_made_by_info_zip_with_a_subfolder_is_read() {
    let tree = tempfile::tempdir().expect("temp");
    std::fs::create_dir_all(tree.path().join("sub/inner")).expect("mkdir");
    std::fs::write(tree.path().join("top.txt"), b"top\n").expect("write");
    std::fs::write(tree.path().join("sub/a.csv"), b"a,b\n1,2\n").expect("write");
    std::fs::write(tree.path().join("sub/inner/z.bin"), vec![7u8; 300_000]).expect("write");
    let fx = Fixture::new();
    let zip_path = fx.src_path("made-by-zip.zip");
    run(Command::new("zip")
        .arg("-q")
        .arg("-r")
        .arg(&zip_path)
        .arg(".")
        .current_dir(tree.path()));

    let ctx = fx.ctx(&NoKeys);
    let input = ferry_processes::File::borrowed(&zip_path, "made-by-zip.zip").expect("file");
    let run = run_steps(&[&Unzip::default()], vec![input], &ctx);
    let mut got: Vec<(String, Vec<u8>)> = run
        .files
        .expect("extracted")
        .iter()
        .map(|f| (f.name().to_string(), std::fs::read(f.path()).expect("read")))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("sub/a.csv".to_string(), b"a,b\n1,2\n".to_vec()),
            ("sub/inner/z.bin".to_string(), vec![7u8; 300_000]),
            ("top.txt".to_string(), b"top\n".to_vec()),
        ]
    );
    assert!(zip_path.exists(), "the source archive is kept");
    assert_eq!(run.reports[0].outputs.len(), 3);
}

#[test]
fn a_zip_slip_archive_is_refused_with_nothing_written() {
    let fx = Fixture::new();
    let evil = fx.src_path("evil.zip");
    python(
        "import sys, zipfile\n\
         with zipfile.ZipFile(sys.argv[1], 'w') as z:\n\
         \x20   z.writestr('fine.txt', 'fine')\n\
         \x20   z.writestr('../../x', 'escaped')\n",
        &evil,
    );
    let ctx = fx.ctx(&NoKeys);
    let input = ferry_processes::File::borrowed(&evil, "evil.zip").expect("file");
    let run = run_steps(&[&Unzip::default()], vec![input], &ctx);
    let e = run.files.expect_err("zip slip");
    assert_eq!(
        e.to_string(),
        "unzip \"evil.zip\": entry \"../../x\" is refused: \"../../x\" has a \"..\" component; nothing was extracted"
    );
    assert_eq!(e.class(), ErrorClass::BadInput);
    assert!(fx.work_entries().is_empty(), "{:?}", fx.work_entries());
    for dir in [fx.work.path(), fx.work.path().parent().expect("parent")] {
        assert!(!dir.join("x").exists() && !dir.join("../x").exists());
    }
    assert!(evil.exists(), "the source is kept");
}

/// 200 MiB of zeros, deflated (about 200 KiB); `lie` rewrites the headers to claim 1000 bytes.
fn bomb(path: &Path, lie: bool) {
    python(
        &format!(
            "import sys, zipfile, struct\n\
             p = sys.argv[1]\n\
             with zipfile.ZipFile(p, 'w', zipfile.ZIP_DEFLATED) as z:\n\
             \x20   with z.open('zeros.bin', 'w') as f:\n\
             \x20       chunk = bytes(1 << 20)\n\
             \x20       for _ in range(200): f.write(chunk)\n\
             if {lie}:\n\
             \x20   b = bytearray(open(p, 'rb').read())\n\
             \x20   assert b[0:4] == b'PK\\x03\\x04'\n\
             \x20   struct.pack_into('<I', b, 22, 1000)\n\
             \x20   c = b.rfind(b'PK\\x01\\x02')\n\
             \x20   struct.pack_into('<I', b, c + 24, 1000)\n\
             \x20   open(p, 'wb').write(bytes(b))\n",
            lie = if lie { "True" } else { "False" }
        ),
        path,
    );
}

fn assert_bomb_stopped(lie: bool) {
    let fx = Fixture::new();
    let path = fx.src_path("bomb.zip");
    bomb(&path, lie);
    assert!(std::fs::metadata(&path).expect("bomb").len() < 1024 * 1024);
    let limit = 10 * 1024 * 1024;
    let unzip = Unzip {
        limits: UnzipLimits {
            max_entries: 100,
            max_expanded_bytes: limit,
        },
    };
    let ctx = fx.ctx(&NoKeys);
    let watcher = Watcher::start(fx.work.path());
    let input = ferry_processes::File::borrowed(&path, "bomb.zip").expect("file");
    let e = unzip.run(vec![input], &ctx).expect_err("a bomb");
    let most = watcher.stop();
    if lie {
        // The reader may notice the lie (a size or CRC mismatch) before the limit: refused either way.
        assert!(
            matches!(e.class(), ErrorClass::LimitExceeded | ErrorClass::BadInput),
            "{e}"
        );
    } else {
        assert_eq!(
            e.to_string(),
            "unzip \"bomb.zip\": expands to more than the limit of 10485760 bytes (stopped at entry \"zeros.bin\")"
        );
    }
    assert!(most <= limit, "at most the limit was ever on disk: {most}");
    assert!(
        entries(fx.work.path()).is_empty(),
        "cleaned up: {:?}",
        fx.work_entries()
    );
    eprintln!("lie={lie}: {e}; most on disk {most} bytes");
}

#[test]
fn a_zip_bomb_is_stopped_at_the_limit_and_cleaned_up() {
    assert_bomb_stopped(false);
}

#[test]
fn a_zip_bomb_that_lies_in_its_headers_is_stopped_too() {
    assert_bomb_stopped(true);
}

#[test]
fn an_archive_with_a_duplicate_name_is_refused_with_nothing_written() {
    let fx = Fixture::new();
    let dup = fx.src_path("dup.zip");
    python(
        "import sys, zipfile, warnings\n\
         warnings.simplefilter('ignore')\n\
         with zipfile.ZipFile(sys.argv[1], 'w') as z:\n\
         \x20   z.writestr('a.txt', 'first')\n\
         \x20   z.writestr('a.txt', 'second')\n",
        &dup,
    );
    let ctx = fx.ctx(&NoKeys);
    let input = ferry_processes::File::borrowed(&dup, "dup.zip").expect("file");
    let e = Unzip::default().run(vec![input], &ctx).expect_err("duplicate");
    assert_eq!(e.class(), ErrorClass::BadInput, "{e}");
    assert_eq!(
        e.to_string(),
        "unzip \"dup.zip\": has more than one entry with the same name; nothing was extracted"
    );
    assert!(fx.work_entries().is_empty());
}
