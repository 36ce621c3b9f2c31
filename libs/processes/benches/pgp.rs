//! `make bench`'s PGP comparison (issue 9): a large random file encrypted and signed, then
//! decrypted and verified, by Ferry's processes and by GnuPG on the same file with the same keys
//! and algorithms, side by side; Ferry's peak RSS is measured on the same runs.
//!
//! ```text
//! cargo bench -p ferry-processes --bench pgp -- [--out FILE] [--mib N] [--reps N] [--dir DIR] [--warm]
//! ```
//!
//! How it measures:
//! - each Ferry operation runs in a child process of its own (this binary re-run with
//!   `--child`), through [`run_steps`] with a [`MemoryKeys`] key source, as the transfer runs a
//!   step; the child reports its peak resident set (`VmHWM`) at the end, so the figure is the
//!   round trip's alone. GnuPG runs as `gpg` does for an operator. Both are timed from spawn to
//!   exit and both write their output to a file in the same folder;
//! - like for like: one ed25519 / cv25519 key (GnuPG's `future-default`) signs and receives
//!   both messages; both write SEIPDv1 (MDC) with AES-256, sign with SHA-256 and do not compress
//!   (`gpg -z 0`: the input is random, Ferry never compresses); both check the signature when
//!   decrypting (Ferry requires it, GnuPG must report `GOODSIG`);
//! - before every measurement: `sync` and, when permitted (root), the page cache is dropped, so
//!   every input is read from disk (`--warm` skips the drop);
//! - Ferry and GnuPG alternate within each repetition (who goes first alternates too); the
//!   median of the repetitions is reported, ratios are of medians;
//! - every decrypted output's SHA-256 is compared with the input's.
//!
//! With `--out FILE` the results replace the lines of FILE from `<!-- pgp:begin -->` to
//! `<!-- pgp:end -->` (appended when absent); the rest of FILE is kept.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use common::{Gpg, Key};
use ferry_processes::keys::{PgpSecretKey, Secret};
use ferry_processes::openpgp::{Decrypt, Encrypt};
use ferry_processes::{Context, File, MemoryKeys, Process, Scope, run_steps};
use sha2::{Digest, Sha256};

const BEGIN: &str = "<!-- pgp:begin -->";
const END: &str = "<!-- pgp:end -->";
const USAGE: &str = "usage: pgp [--out FILE] [--mib N] [--reps N] [--dir DIR] [--warm]

  --out FILE  replace the lines of FILE from <!-- pgp:begin --> to <!-- pgp:end --> with the
              results (append them if absent); without it, print them only
  --mib N     size of the random input file in MiB (default 3072: 3 GiB)
  --reps N    repetitions, Ferry and gpg alternating, rounded up to an even number (default 4)
  --dir DIR   where the input and outputs go (default target/bench-tmp/pgp; needs 4 x the size)
  --warm      do not drop the page cache before each measurement (needs root otherwise)";
/// The acceptance bound of issue 9 on the round trip's peak RSS.
const RSS_LIMIT_MIB: f64 = 128.0;
/// The throughput target against GnuPG.
const TARGET_RATIO: f64 = 1.0;

struct Args {
    out: Option<PathBuf>,
    mib: u64,
    reps: usize,
    dir: PathBuf,
    warm: bool,
    command: String,
}

/// `target/bench-tmp/pgp` of the target folder this binary was built in (`cargo bench` runs it
/// from the package's folder, so a relative default would land in `libs/processes`).
fn default_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("bench-tmp/pgp")))
        .unwrap_or_else(|| std::env::temp_dir().join("ferry-pgp-bench"))
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        out: None,
        mib: 3072,
        reps: 4,
        dir: default_dir(),
        warm: false,
        command: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value\n{USAGE}"));
        match a.as_str() {
            // `cargo bench` passes this to every bench target.
            "--bench" => continue,
            "--out" => args.out = Some(PathBuf::from(value("--out")?)),
            "--mib" => {
                args.mib = value("--mib")?.parse().map_err(|e| format!("--mib: {e}"))?;
                if args.mib == 0 {
                    return Err("--mib must be at least 1".into());
                }
            }
            "--reps" => {
                args.reps = value("--reps")?.parse().map_err(|e| format!("--reps: {e}"))?;
                if args.reps == 0 {
                    return Err("--reps must be at least 1".into());
                }
                // Each side goes first as often as the other.
                args.reps = args.reps.div_ceil(2) * 2;
            }
            "--dir" => args.dir = PathBuf::from(value("--dir")?),
            "--warm" => args.warm = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    // Paths inside the workspace are shown relative to it, as `make bench` is run from there.
    let root = format!(
        "{}/",
        env!("CARGO_MANIFEST_DIR").trim_end_matches("/libs/processes")
    );
    args.command = format!(
        "cargo bench -p ferry-processes --bench pgp --{}",
        std::env::args()
            .skip(1)
            .filter(|a| a != "--bench")
            .map(|a| format!(" {}", a.strip_prefix(&root).unwrap_or(&a)))
            .collect::<String>()
    );
    // cargo runs a bench in its package's folder: a relative --out or --dir is the workspace's,
    // so that the command shown above works where `make bench` runs it.
    if let Some(out) = args.out.take() {
        args.out = Some(if out.is_relative() {
            Path::new(&root).join(out)
        } else {
            out
        });
    }
    if args.dir.is_relative() {
        args.dir = Path::new(&root).join(&args.dir);
    }
    Ok(args)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--child") {
        return match child(&argv[2..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pgp bench child: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgp bench: {e}");
            ExitCode::FAILURE
        }
    }
}

// --- the child: one Ferry operation in a process of its own --------------------------------------

fn status_kib(field: &str) -> Result<u64, String> {
    let status =
        fs::read_to_string("/proc/self/status").map_err(|e| format!("read /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no {field} in /proc/self/status"))
}

/// `--child encrypt|decrypt DIR INPUT OUTPUT`: runs the step on INPUT with the keys in DIR and
/// moves its output to OUTPUT; prints `FERRY_CHILD hwm_kib=N`.
fn child(argv: &[String]) -> Result<(), String> {
    let [op, dir, input, output] = argv else {
        return Err("usage: --child encrypt|decrypt DIR INPUT OUTPUT".into());
    };
    let dir = Path::new(dir);
    let read = |name: &str| fs::read(dir.join(name)).map_err(|e| format!("read {name}: {e}"));
    let keys = MemoryKeys {
        public: vec![read("partner.pub")?],
        secret: vec![PgpSecretKey {
            key: read("partner.sec")?,
            passphrase: Secret::default(),
        }],
        ..Default::default()
    };
    let work = dir.join("work");
    fs::create_dir_all(&work).map_err(|e| format!("create {}: {e}", work.display()))?;
    let ctx = Context {
        task: "pgp-bench",
        run_id: "r1",
        time: chrono::Local::now(),
        scope: Scope::PerFile,
        work_dir: &work,
        keys: &keys,
        cancel: None,
    };
    let signer = "partner@example.com".to_string();
    let step: Box<dyn Process> = match op.as_str() {
        "encrypt" => Box::new(Encrypt {
            recipients: vec![signer.clone()],
            signer: Some(signer),
            armor: false,
            name: None,
        }),
        "decrypt" => Box::new(Decrypt {
            require_signer: Some(signer),
            name: None,
            max_bytes: None,
        }),
        other => return Err(format!("unknown operation {other:?}")),
    };
    let file = File::borrowed(input, "input.bin.pgp").map_err(|e| format!("{input}: {e}"))?;
    let run = run_steps(&[step.as_ref()], vec![file], &ctx);
    let mut files = run.files.map_err(|e| e.to_string())?;
    let out = files.pop().ok_or("the step handed back no file")?;
    let (_, path) = out.keep().map_err(|e| format!("keep the output: {e}"))?;
    fs::rename(&path, output).map_err(|e| format!("move the output to {output}: {e}"))?;
    println!("FERRY_CHILD hwm_kib={}", status_kib("VmHWM:")?);
    Ok(())
}

// --- the parent ---------------------------------------------------------------------------------

/// Flushes dirty pages (so no run pays for an earlier writer) and drops the page cache.
/// Before every measurement: `sync`, the page cache dropped (unless `warm`), and a scratch file
/// of the output's size written and removed in `dir`. On a virtual machine that hands freed
/// memory back to its host, pages freed long ago cost far more system time to use again than
/// pages just freed (measured here: a 2 GiB file to /dev/shm took 2.2 s of system time, the same
/// file written again right after removing it 1.0 s); without the scratch file, whoever wrote
/// its output first in a pair paid for both.
fn settle(warm: bool, dir: &Path, mib: u64) -> Result<(), String> {
    let scratch = dir.join("scratch.tmp");
    let err = |e: std::io::Error| format!("write {}: {e}", scratch.display());
    let mut f = fs::File::create(&scratch).map_err(err)?;
    let zeros = vec![0u8; 1024 * 1024];
    for _ in 0..mib {
        f.write_all(&zeros).map_err(err)?;
    }
    drop(f);
    fs::remove_file(&scratch).map_err(err)?;
    let ok = Command::new("sync")
        .status()
        .map_err(|e| format!("run sync: {e}"))?
        .success();
    if !ok {
        return Err("sync failed".into());
    }
    if !warm {
        fs::write("/proc/sys/vm/drop_caches", "3").map_err(|e| format!("drop the page cache: {e}"))?;
    }
    Ok(())
}

fn can_drop_caches() -> bool {
    fs::OpenOptions::new()
        .write(true)
        .open("/proc/sys/vm/drop_caches")
        .is_ok()
}

/// Writes `mib` MiB of pseudo-random (incompressible) bytes and fsyncs them.
fn generate(path: &Path, mib: u64) -> Result<(), String> {
    let err = |e: std::io::Error| format!("write {}: {e}", path.display());
    let mut f = fs::File::create(path).map_err(err)?;
    let mut x: u64 = rand_seed();
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for b in chunk.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&chunk).map_err(err)?;
    }
    f.sync_all().map_err(err)
}

fn rand_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    t | 1
}

fn sha256_of(path: &Path) -> Result<String, String> {
    let err = |e: std::io::Error| format!("hash {}: {e}", path.display());
    let mut f = fs::File::open(path).map_err(err)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(err)?;
        if n == 0 {
            return Ok(hex::encode(h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("the bench's paths are UTF-8")
}

/// Wall and CPU (user + system) seconds of one run.
#[derive(Clone, Copy)]
struct Took {
    wall: f64,
    cpu: f64,
}

/// User CPU seconds of this process so far.
fn own_user_cpu() -> f64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .map(|u| u.user_time().tv_sec() as f64 + u.user_time().tv_usec() as f64 / 1e6)
        .unwrap_or(0.0)
}

/// CPU seconds of every child process waited for so far.
fn children_cpu() -> f64 {
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .map(|u| secs(u.user_time()) + secs(u.system_time()))
        .unwrap_or(0.0)
}

/// Runs a command to its end; returns what it took and its stdout.
fn timed(cmd: &mut Command) -> Result<(Took, String), String> {
    let cpu = children_cpu();
    let started = Instant::now();
    let out = cmd.output().map_err(|e| format!("run {cmd:?}: {e}"))?;
    let took = Took {
        wall: started.elapsed().as_secs_f64(),
        cpu: children_cpu() - cpu,
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok((took, stdout))
}

/// One Ferry operation in a child process: what it took and its peak RSS in KiB.
fn ferry(op: &str, dir: &Path, input: &Path, output: &Path) -> Result<(Took, u64), String> {
    let exe = std::env::current_exe().map_err(|e| format!("this binary: {e}"))?;
    let (took, stdout) = timed(Command::new(exe).args(["--child", op, s(dir), s(input), s(output)]))?;
    let hwm = stdout
        .lines()
        .find_map(|l| l.strip_prefix("FERRY_CHILD hwm_kib="))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("the {op} child reported no peak RSS: {stdout}"))?;
    Ok((took, hwm))
}

fn gpg_encrypt(gpg: &Gpg, key: &Key, input: &Path, output: &Path) -> Result<Took, String> {
    let (took, _) = timed(gpg.cmd().args([
        "--trust-model",
        "always",
        "-z",
        "0",
        "--cipher-algo",
        "AES256",
        "--digest-algo",
        "SHA256",
        "-r",
        &key.fpr,
        "-u",
        &key.fpr,
        "-o",
        s(output),
        "--encrypt",
        "--sign",
        s(input),
    ]))?;
    Ok(took)
}

fn gpg_decrypt(gpg: &Gpg, key: &Key, input: &Path, output: &Path) -> Result<Took, String> {
    let (took, status) = timed(gpg.cmd().args([
        "--trust-model",
        "always",
        "--status-fd",
        "1",
        "-o",
        s(output),
        "--decrypt",
        s(input),
    ]))?;
    let good = status
        .lines()
        .any(|l| l.starts_with("[GNUPG:] GOODSIG ") && l.contains(&key.fpr[24..]));
    if !good || !status.contains("[GNUPG:] DECRYPTION_OKAY") {
        return Err(format!(
            "gpg did not report a good signature and decryption: {status}"
        ));
    }
    Ok(took)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[derive(Default)]
struct Samples {
    ferry_enc: Vec<Took>,
    gpg_enc: Vec<Took>,
    ferry_dec: Vec<Took>,
    gpg_dec: Vec<Took>,
    /// Ferry's peak RSS per operation, KiB.
    hwm: Vec<u64>,
    /// User CPU seconds of one SHA-256 pass over Ferry's decrypted output (in this process, from
    /// the page cache): what the step report's hash of an output costs Ferry, which GnuPG does
    /// not compute.
    hash_cpu: Vec<f64>,
}

fn say(line: &str) {
    eprintln!("[pgp bench {}] {line}", chrono::Utc::now().format("%H:%M:%S"));
}

fn run(args: &Args) -> Result<(), String> {
    if Command::new("gpg").arg("--version").output().is_err() {
        return Err("gpg is not installed (make test's scripts/install-deps.sh installs it)".into());
    }
    let load_at_start = load_average();
    let cold = !args.warm && can_drop_caches();
    if !args.warm && !cold {
        say("cannot drop the page cache (not root): every run reads warm");
    }
    let warm = !cold;
    fs::create_dir_all(&args.dir).map_err(|e| format!("create {}: {e}", args.dir.display()))?;
    let dir = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&args.dir)
        .map_err(|e| format!("create a folder in {}: {e}", args.dir.display()))?;
    let d = dir.path();

    let gpg = Gpg::new();
    let key = gpg.generate("Partner <partner@example.com>");
    fs::write(d.join("partner.pub"), gpg.export_public(&key)).map_err(|e| format!("write key: {e}"))?;
    fs::write(d.join("partner.sec"), gpg.export_secret(&key)).map_err(|e| format!("write key: {e}"))?;

    let input = d.join("input.bin");
    say(&format!(
        "writing {} MiB of random bytes to {}",
        args.mib,
        input.display()
    ));
    generate(&input, args.mib)?;
    let want = sha256_of(&input)?;

    let (f_enc, g_enc) = (d.join("ferry.pgp"), d.join("gpg.gpg"));
    let (f_out, g_out) = (d.join("ferry.out"), d.join("gpg.out"));
    let mut sm = Samples::default();
    let remove = |p: &Path| match fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("remove {}: {e}", p.display())),
        _ => Ok(()),
    };
    for rep in 0..args.reps {
        let ferry_first = rep % 2 == 0;
        // Encrypt + sign, each to a file that does not exist yet.
        remove(&f_enc)?;
        remove(&g_enc)?;
        for ferry_turn in [ferry_first, !ferry_first] {
            settle(warm, d, args.mib)?;
            if ferry_turn {
                let (took, hwm) = ferry("encrypt", d, &input, &f_enc)?;
                say(&format!(
                    "rep {rep}: ferry encrypt+sign {:.2} s ({:.2} s CPU), peak RSS {hwm} KiB",
                    took.wall, took.cpu
                ));
                sm.ferry_enc.push(took);
                sm.hwm.push(hwm);
            } else {
                let took = gpg_encrypt(&gpg, &key, &input, &g_enc)?;
                say(&format!(
                    "rep {rep}: gpg encrypt+sign {:.2} s ({:.2} s CPU)",
                    took.wall, took.cpu
                ));
                sm.gpg_enc.push(took);
            }
        }
        // Decrypt + verify, each its own message; each output is checked and removed before the
        // next measurement (whose page cache is dropped), so neither side inherits the other's.
        for ferry_turn in [ferry_first, !ferry_first] {
            settle(warm, d, args.mib)?;
            let out = if ferry_turn {
                let (took, hwm) = ferry("decrypt", d, &f_enc, &f_out)?;
                say(&format!(
                    "rep {rep}: ferry decrypt+verify {:.2} s ({:.2} s CPU), peak RSS {hwm} KiB",
                    took.wall, took.cpu
                ));
                sm.ferry_dec.push(took);
                sm.hwm.push(hwm);
                &f_out
            } else {
                let took = gpg_decrypt(&gpg, &key, &g_enc, &g_out)?;
                say(&format!(
                    "rep {rep}: gpg decrypt+verify {:.2} s ({:.2} s CPU)",
                    took.wall, took.cpu
                ));
                sm.gpg_dec.push(took);
                &g_out
            };
            let cpu = own_user_cpu();
            let got = sha256_of(out)?;
            if ferry_turn {
                sm.hash_cpu.push(own_user_cpu() - cpu);
            }
            if got != want {
                return Err(format!(
                    "{} does not round trip: SHA-256 {got}, the input's {want}",
                    out.display()
                ));
            }
            remove(out)?;
        }
    }
    let load = (load_at_start, load_average());
    let report = render(args, cold, &sm, &load);
    print!("{report}");
    if let Some(out) = &args.out {
        let doc = fs::read_to_string(out).unwrap_or_default();
        let new = splice(&doc, &report)?;
        fs::write(out, new).map_err(|e| format!("write {}: {e}", out.display()))?;
        say(&format!("wrote the PGP section of {}", out.display()));
    }
    let ok = sm.hwm.iter().all(|&h| (h as f64 / 1024.0) < RSS_LIMIT_MIB);
    if !ok {
        return Err(format!("Ferry's peak RSS reached {RSS_LIMIT_MIB} MiB"));
    }
    Ok(())
}

fn gpg_version() -> String {
    Command::new("gpg")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|v| v.lines().take(2).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|| "gpg (version unknown)".into())
}

fn pass(ok: bool) -> &'static str {
    if ok { "**PASS**" } else { "**FAIL**" }
}

/// MiB per second of wall time and per CPU second, from the medians of `v`.
fn rates(mib: f64, v: &[Took]) -> (f64, f64) {
    let mut wall: Vec<f64> = v.iter().map(|t| t.wall).collect();
    let mut cpu: Vec<f64> = v.iter().map(|t| t.cpu).collect();
    (mib / median(&mut wall), mib / median(&mut cpu))
}

fn list(v: &[Took]) -> String {
    v.iter()
        .map(|t| format!("{:.2} ({:.2} CPU)", t.wall, t.cpu))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The first three fields of `/proc/loadavg`.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn render(args: &Args, cold: bool, sm: &Samples, load: &(String, String)) -> String {
    let mib = args.mib as f64;
    let peak = sm.hwm.iter().copied().max().unwrap_or(0) as f64 / 1024.0;
    let size = if args.mib.is_multiple_of(1024) {
        format!("{} GiB", args.mib / 1024)
    } else {
        format!("{} MiB", args.mib)
    };
    let mut t = String::new();
    t.push_str(BEGIN);
    t.push('\n');
    t.push_str("## PGP: Ferry against GnuPG\n\n");
    t.push_str(&format!(
        "Written by `{}` on {} (`make bench` runs it after the transfer benchmarks); medians of {} \
         alternating repetitions.\n\n",
        args.command,
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        args.reps
    ));
    t.push_str(
        "| Operation | Size | gpg | Ferry | Ratio | Target | Result | gpg per CPU second | Ferry per CPU second | CPU ratio | CPU ratio without the output's SHA-256 |\n",
    );
    t.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    let mut hash_cpu = sm.hash_cpu.clone();
    let hash_cpu = median(&mut hash_cpu);
    for (what, ferry, gpg) in [
        ("encrypt + sign", &sm.ferry_enc, &sm.gpg_enc),
        ("decrypt + verify", &sm.ferry_dec, &sm.gpg_dec),
    ] {
        let ((fw, fc), (gw, gc)) = (rates(mib, ferry), rates(mib, gpg));
        // The output is the input's size give or take the packet framing (0.01 %).
        let fc_less_hash = mib / (mib / fc - hash_cpu);
        t.push_str(&format!(
            "| {what} | {size} | {gw:.0} MiB/s | {fw:.0} MiB/s | {:.2}× | ≥ {TARGET_RATIO:.1}× | {} | {gc:.0} MiB/s | {fc:.0} MiB/s | {:.2}× | {:.2}× |\n",
            fw / gw,
            pass(fw / gw >= TARGET_RATIO),
            fc / gc,
            fc_less_hash / gc,
        ));
    }
    t.push_str(&format!(
        "\nFerry's peak RSS over the round trip (encrypt + sign, then decrypt + verify of {size}): **{peak:.1} MiB** \
         (target < {RSS_LIMIT_MIB:.0} MiB: {}).\n\n",
        pass(peak < RSS_LIMIT_MIB)
    ));
    t.push_str(&format!(
        "- **What runs**: Ferry's `pgp-encrypt` (with a signer) and `pgp-decrypt` (requiring that \
         signer) through `run_steps` with a key source, each in a process of its own (this binary \
         re-run); GnuPG ({}) as `gpg -z 0 --cipher-algo AES256 --digest-algo SHA256 -r KEY -u KEY \
         -o OUT --encrypt --sign IN` and `gpg -o OUT --decrypt IN`, which must report `GOODSIG` and \
         `DECRYPTION_OKAY`. Each side decrypts the message it wrote.\n",
        gpg_version()
    ));
    t.push_str(&format!(
        "- **Like for like**: one ed25519 / cv25519 key (GnuPG's `future-default`); both write \
         SEIPDv1 (MDC, SHA-1) with AES-256 in partial-length packets, sign with SHA-256, and do not \
         compress (the input is random); both write to a new file in the same folder and neither \
         calls fsync. Ferry also hashes every output with SHA-256 for the step report (one more \
         pass over the data than GnuPG): the last column takes off what one such pass costs, \
         measured on Ferry's decrypted output (median {hash_cpu:.2} CPU s). GnuPG runs on one \
         thread; Ferry's encrypt on three (reading and framing, cipher, writing: \
         `openpgp/seal.rs`), its decrypt on four (reading; AES and the MDC: `openpgp/open.rs`; \
         parsing, the signature's hash and the output's; writing: `openpgp/pipe.rs`), so its wall \
         time can beat GnuPG's while it spends more CPU.\n",
    ));
    t.push_str(&format!(
        "- **Timing**: spawn to exit for both; CPU seconds are the child's user + system time \
         (`getrusage`). {}; before every measurement a scratch file of the output's size is \
         written and removed, so both sides write into memory just freed (on this virtual \
         machine memory freed long ago costs about twice the system time to use again, and \
         whoever went first paid for it). Ferry and GnuPG alternate, who goes first alternates \
         too, each as often. Every decrypted output's SHA-256 equals the input's.\n",
        if cold {
            "`sync` and the page cache dropped before every measurement, so every input is read from disk"
        } else {
            "`sync` before every measurement, page cache warm (`--warm`)"
        }
    ));
    t.push_str(&format!(
        "- **Machine**: `nproc` = {}; load average {} at the start, {} at the end (a shared \
         machine: other work running beside the bench slows both sides and blurs the ratios; the \
         CPU columns are the steadier comparison).\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.0,
        load.1
    ));
    t.push_str(&format!(
        "- **Peak RSS**: `VmHWM` of the process that ran the step, reported by it at its end; the \
         highest of the {} runs.\n",
        sm.hwm.len()
    ));
    t.push_str(&format!(
        "- Samples, seconds: Ferry encrypt {}; gpg encrypt {}; Ferry decrypt {}; gpg decrypt {}.\n",
        list(&sm.ferry_enc),
        list(&sm.gpg_enc),
        list(&sm.ferry_dec),
        list(&sm.gpg_dec)
    ));
    t.push_str(END);
    t.push('\n');
    t
}

/// `doc` with the lines from [`BEGIN`] to [`END`] replaced by `block`, or `block` appended.
fn splice(doc: &str, block: &str) -> Result<String, String> {
    let begin = doc.find(&format!("{BEGIN}\n"));
    let end = doc.find(&format!("{END}\n"));
    match (begin, end) {
        (Some(b), Some(e)) if b < e => Ok(format!("{}{block}{}", &doc[..b], &doc[e + END.len() + 1..])),
        (None, None) => {
            let mut out = doc.to_string();
            if !out.is_empty() && !out.ends_with("\n\n") {
                out.push_str(if out.ends_with('\n') { "\n" } else { "\n\n" });
            }
            out.push_str(block);
            Ok(out)
        }
        _ => Err(format!(
            "the report has an unmatched {BEGIN} / {END}; fix it by hand first"
        )),
    }
}
