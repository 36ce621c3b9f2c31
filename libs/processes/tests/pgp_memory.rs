//! A 512 MiB PGP encrypt+sign then decrypt+verify round trip stays in bounded memory (issue 9:
//! under 128 MiB peak RSS; `make bench` holds the same bound on 3 GiB in a release build).
//!
//! The measurement is honest because it runs in a child process that does nothing else: this
//! test re-runs its own binary (filtered to this one test, with `FERRY_PGP_MEMORY_CHILD` set),
//! and the child reports its resident set before the round trip and its peak (`VmHWM` in
//! `/proc/self/status`) after it. The parent prepares keys and the input (so neither counts in
//! the child's peak), then times GnuPG on the same file for comparison.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::Gpg;
use ferry_processes::keys::{PgpSecretKey, Secret};
use ferry_processes::openpgp::{Decrypt, Encrypt};
use ferry_processes::{Context, File, MemoryKeys, Process, Scope};
use sha2::{Digest, Sha256};

const TEST: &str = "a_512_mib_round_trip_stays_under_128_mib_of_peak_rss";
const CHILD_ENV: &str = "FERRY_PGP_MEMORY_CHILD";
const SIZE: u64 = 512 * 1024 * 1024;

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

fn sha256_of(path: &Path) -> String {
    let mut f = std::fs::File::open(path).expect("open");
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Writes `SIZE` incompressible bytes, 1 MiB at a time.
fn generate(path: &Path) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..SIZE >> 20 {
        for b in chunk.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&chunk).expect("write");
    }
    f.flush().expect("flush");
}

/// The child: the round trip, then one line of figures on stdout.
fn child(dir: &Path) {
    let keys = MemoryKeys {
        public: vec![std::fs::read(dir.join("partner.pub")).expect("key")],
        secret: vec![PgpSecretKey {
            key: std::fs::read(dir.join("partner.sec")).expect("key"),
            passphrase: Secret::default(),
        }],
        ..Default::default()
    };
    let work = dir.join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    let ctx = Context {
        task: "t",
        run_id: "r",
        time: chrono::Local::now(),
        scope: Scope::PerFile,
        work_dir: &work,
        keys: &keys,
        cancel: None,
    };
    let baseline = status_kib("VmRSS:");
    let started = Instant::now();
    let enc = Encrypt {
        recipients: vec!["partner@example.com".into()],
        signer: Some("partner@example.com".into()),
        armor: false,
        name: None,
    };
    let input = File::borrowed(dir.join("big.bin"), "big.bin").expect("input");
    let encrypted = enc
        .run(vec![input], &ctx)
        .expect("encrypt")
        .files
        .pop()
        .expect("one");
    let encrypt_ms = started.elapsed().as_millis();
    let started = Instant::now();
    let dec = Decrypt {
        require_signer: Some("partner@example.com".into()),
        name: None,
        max_bytes: None,
    };
    let mut decrypted = dec
        .run(vec![encrypted], &ctx)
        .expect("decrypt")
        .files
        .pop()
        .expect("one");
    let decrypt_ms = started.elapsed().as_millis();
    let same = hex::encode(decrypted.sha256().expect("hash")) == sha256_of(&dir.join("big.bin"));
    println!(
        "FERRY_MEMORY baseline_kib={baseline} hwm_kib={} encrypt_ms={encrypt_ms} decrypt_ms={decrypt_ms} same={same}",
        status_kib("VmHWM:")
    );
}

fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} in {line:?}"))
}

fn timed(cmd: &mut Command) -> u128 {
    let started = Instant::now();
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed().as_millis()
}

#[test]
fn a_512_mib_round_trip_stays_under_128_mib_of_peak_rss() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }
    let gpg = Gpg::new();
    let partner = gpg.generate("Partner <partner@example.com>");
    let dir = tempfile::tempdir().expect("temp");
    std::fs::write(dir.path().join("partner.pub"), gpg.export_public(&partner)).expect("write");
    std::fs::write(dir.path().join("partner.sec"), gpg.export_secret(&partner)).expect("write");
    let big: PathBuf = dir.path().join("big.bin");
    generate(&big);

    let out = Command::new(std::env::current_exe().expect("this test binary"))
        .args([TEST, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, dir.path())
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.find("FERRY_MEMORY ").map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("no figures from the child: {stdout}"));
    let (baseline, hwm) = (field(line, "baseline_kib"), field(line, "hwm_kib"));
    let (enc_ms, dec_ms) = (field(line, "encrypt_ms"), field(line, "decrypt_ms"));
    assert!(
        line.ends_with("same=true"),
        "the round trip gave back the same bytes: {line}"
    );

    // GnuPG on the same file, same operations, no compression (Ferry does not compress).
    let p = |n: &str| dir.path().join(n).to_str().expect("utf8").to_string();
    let gpg_enc = timed(gpg.cmd().args([
        "-z",
        "0",
        "-o",
        &p("g.gpg"),
        "-r",
        &partner.fpr,
        "-u",
        &partner.fpr,
        "--encrypt",
        "--sign",
        &p("big.bin"),
    ]));
    // The input is no longer needed: keep the disk footprint at two copies.
    std::fs::remove_file(&big).expect("remove the input");
    let gpg_dec = timed(gpg.cmd().args(["-o", &p("g.out"), "--decrypt", &p("g.gpg")]));
    let mib = (SIZE >> 20) as f64;
    eprintln!(
        "pgp {} MiB: rss baseline {} MiB, peak {} MiB (growth {} MiB); ferry encrypt+sign {enc_ms} ms ({:.0} MiB/s), decrypt+verify {dec_ms} ms ({:.0} MiB/s); gpg {gpg_enc} ms / {gpg_dec} ms; ratio gpg/ferry {:.2} / {:.2}",
        SIZE >> 20,
        baseline / 1024,
        hwm / 1024,
        (hwm - baseline) / 1024,
        mib / (enc_ms as f64 / 1000.0),
        mib / (dec_ms as f64 / 1000.0),
        gpg_enc as f64 / enc_ms as f64,
        gpg_dec as f64 / dec_ms as f64,
    );
    assert!(hwm < 128 * 1024, "peak RSS {hwm} KiB is under 128 MiB");
    assert!(
        hwm - baseline < 64 * 1024,
        "peak RSS grew by {} KiB, under 64 MiB",
        hwm - baseline
    );
}
