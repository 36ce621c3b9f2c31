//! Bounded fuzzing of the two parsers every operator feeds: configuration files (`ferry apply`:
//! parse, resolve relative paths, validate — the scheduler runs the same validation) and node
//! settings (the loader every service runs). Seeds are the bad-input corpus, the example and a
//! full settings file; each case applies 1–4 TOML-aware mutations (a value replaced by a hostile
//! one, a table header inserted, lines deleted, duplicated or spliced from another seed, a
//! character replaced, the text cut). Nothing may panic. `FERRY_FUZZ_SECS` (default 10 per
//! parser) bounds the time, `FERRY_FUZZ_SEED` makes a run repeatable; a failing input is written
//! to `target/fuzz-failures/` and named in the failure.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const VALUES: &[&str] = &[
    "-1",
    "0",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "1e309",
    "nan",
    "-inf",
    "\"\"",
    "\"\\u0000\"",
    "\"../../etc\"",
    "\"/..\"",
    "\"[OrigName\"",
    "\"[yyyy]/../[mm]\"",
    "\"[OrigName][OrigName][OrigName]\"",
    "[]",
    "[[]]",
    "[1, \"a\", {}]",
    "{}",
    "{ a = 1 }",
    "true",
    "\"*\"",
    "\"a;;b\"",
    "\"\\\\\\\\server\\\\share\"",
    "1979-05-27T07:32:00Z",
    "'''multi\nline'''",
    "\"é\\u202e\\u0007\"",
    "\"env:\"",
    "\"file:/dev/zero\"",
    "\"SHA256:\"",
    "\"25:61\"",
    "\"* * * * * * *\"",
    "\"Mars/Olympus\"",
    "\"nats://u:p@10.0.0.1:4222\"",
    "\"localhost:99999\"",
];

const HEADERS: &[&str] = &[
    "[[task]]",
    "[[task.source]]",
    "[[task.destination]]",
    "[[task.schedule]]",
    "[[host]]",
    "[task]",
    "[host.options]",
    "[transfer]",
    "[nats]",
    "[scheduler]",
    "[failover_coordinator]",
    "[[transfer]]",
];

fn mutate(rng: &mut Rng, seeds: &[String]) -> String {
    let mut lines: Vec<String> = rng.pick(seeds).lines().map(str::to_string).collect();
    for _ in 0..1 + rng.below(4) {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let at = rng.below(lines.len());
        match rng.below(8) {
            0 | 1 => {
                if let Some(eq) = lines[at].find('=') {
                    let key = lines[at][..eq].to_string();
                    lines[at] = format!("{key}= {}", rng.pick(VALUES));
                } else {
                    lines[at] = format!(
                        "{} = {}",
                        rng.pick(&["name", "folder", "host", "masks", "concurrency"]),
                        rng.pick(VALUES)
                    );
                }
            }
            2 => lines.insert(at, rng.pick(HEADERS).to_string()),
            3 => {
                lines.remove(at);
            }
            4 => {
                let copy = lines[at].clone();
                lines.insert(at, copy);
            }
            5 => {
                let other: Vec<&str> = rng.pick(seeds).lines().collect();
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    let n = 1 + rng.below(5);
                    for (k, line) in other.iter().skip(from).take(n).enumerate() {
                        lines.insert((at + k).min(lines.len()), line.to_string());
                    }
                }
            }
            6 => {
                let chars: Vec<char> = lines[at].chars().collect();
                if !chars.is_empty() {
                    let i = rng.below(chars.len());
                    let c = *rng.pick(&['"', '\'', '[', ']', '=', '\\', '\n', '\u{0}', '#', '.', 'é', '{']);
                    lines[at] = chars[..i]
                        .iter()
                        .chain(std::iter::once(&c))
                        .chain(&chars[i + 1..])
                        .collect();
                }
            }
            _ => lines.truncate(at),
        }
    }
    if rng.below(50) == 0 {
        lines.push(format!("description = \"{}\"", "x".repeat(100_000)));
    }
    lines.join("\n")
}

fn seeds(dirs: &[&str], extra: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    for dir in dirs {
        out.extend(ferry_tests::corpus(dir)?.into_iter().map(|case| case.text));
    }
    Ok(out)
}

/// Run `check` on mutated inputs until the time is up; panics name the saved input.
fn fuzz(
    name: &str,
    seeds: &[String],
    check: impl Fn(&str, &Path) + std::panic::RefUnwindSafe,
) -> anyhow::Result<u64> {
    let secs: u64 = std::env::var("FERRY_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("FERRY_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f00d);
    let mut rng = Rng(seed | 1);
    let scratch = tempfile::tempdir()?;
    let file = scratch.path().join("input.toml");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut cases = 0u64;
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    while Instant::now() < deadline {
        let input = mutate(&mut rng, seeds);
        cases += 1;
        let outcome = std::panic::catch_unwind(|| check(&input, &file));
        if let Err(panic) = outcome {
            std::panic::set_hook(quiet);
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures");
            std::fs::create_dir_all(&dir)?;
            let saved = dir.join(format!("{name}-{cases}.toml"));
            std::fs::write(&saved, &input)?;
            panic!(
                "{name}: case {cases} (seed {seed}) panicked: {why}; input saved to {}",
                saved.display()
            );
        }
    }
    std::panic::set_hook(quiet);
    Ok(cases)
}

#[test]
fn configuration_files_never_panic_the_parser_or_the_validation() -> anyhow::Result<()> {
    let example = include_str!("../../examples/quickstart.toml");
    let seeds = seeds(&["bad-configs"], &[example])?;
    let cases = fuzz("config", &seeds, |text, _| {
        if let Ok(mut raw) = ferry_config::parse_toml(text) {
            raw.resolve_relative_paths(Path::new("/srv/ferry"));
            let _ = raw.validate();
        }
    })?;
    assert!(cases > 100, "only {cases} cases ran");
    eprintln!("configuration: {cases} mutated files, no panic");
    Ok(())
}

#[test]
fn settings_files_never_panic_the_loader() -> anyhow::Result<()> {
    let full = "node_id = \"node1\"\nnats_url = \"nats://127.0.0.1:4222\"\nreplicas = 1\n\
                data_dir = \"/var/lib/ferry\"\n[scheduler]\nmissed_runs = \"run_once\"\n\
                missed_runs_window_secs = 600\n[file_collector]\nmax_running_tasks = 4\n\
                [transfer]\nconcurrency = 16\nack_wait_secs = 15\nbuffer_bytes = 1048576\n\
                [failover_coordinator]\nmode = \"automatic\"\nlease_ttl_ms = 10000\n\
                fence_margin_ms = 2000\n[nats]\nnkey_seed_file = \"/etc/ferry/{node}/{service}.nk\"\n";
    let seeds = seeds(&["bad-settings"], &[full])?;
    let cases = fuzz("settings", &seeds, |text, file| {
        std::fs::write(file, text).expect("write the input");
        let _ = ferry_service::Settings::load(Some(file));
    })?;
    assert!(cases > 100, "only {cases} cases ran");
    eprintln!("settings: {cases} mutated files, no panic");
    Ok(())
}
