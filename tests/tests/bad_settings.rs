//! Bad node settings are refused before anything starts: every file in `tests/bad-settings` is
//! loaded the way each service loads its settings. Each must be refused with an error holding the
//! substrings of its `# expect:` line (the setting, the value, the rule), and no error may echo a
//! credential. A service started with one exits non-zero with the same words and binds nothing.
//! Adding a file adds a case.

use std::path::{Path, PathBuf};

use ferry_tests::bin_path;

fn cases() -> anyhow::Result<Vec<(PathBuf, Vec<String>)>> {
    Ok(ferry_tests::corpus("bad-settings")?
        .into_iter()
        .map(|case| (case.path, case.expect))
        .collect())
}

#[test]
fn every_bad_settings_file_is_refused_with_its_setting_value_and_rule() -> anyhow::Result<()> {
    let cases = cases()?;
    assert!(cases.len() >= 25, "{} cases", cases.len());
    let mut problems = Vec::new();
    for (path, expect) in &cases {
        let name = path.file_name().expect("a file").to_string_lossy();
        let error = match ferry_service::Settings::load(Some(path)) {
            Ok(_) => {
                problems.push(format!("{name}: accepted"));
                continue;
            }
            Err(e) => format!("{e:#}"),
        };
        for part in expect {
            if !error.contains(part.as_str()) {
                problems.push(format!("{name}: error lacks {part:?}: {error}"));
            }
        }
        if error.contains("hunter2") {
            problems.push(format!("{name}: the error echoes a credential: {error}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

#[test]
fn a_service_with_bad_settings_exits_with_the_error() -> anyhow::Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bad-settings/07-tiny-copy-buffer.toml");
    let mut child = std::process::Command::new(bin_path("ferry-transfer"))
        .arg("--config")
        .arg(&path)
        .env_remove("FERRY_NATS_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait()?.is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("ferry-transfer started with a 10-byte copy buffer instead of refusing it");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("transfer.buffer_bytes: 10 is out of range (4096 to 67108864 bytes)"),
        "{stderr}"
    );
    Ok(())
}

/// `docs/bad-input.md` lists every configuration and settings case with its expected words.
#[test]
fn the_bad_input_table_lists_every_case() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("../docs/bad-input.md"))?;
    let mut missing = Vec::new();
    let mut count = 0;
    for dir in ["bad-configs", "bad-settings"] {
        for case in ferry_tests::corpus(dir)? {
            count += 1;
            let name = case
                .path
                .file_name()
                .expect("a file")
                .to_string_lossy()
                .into_owned();
            let expect = case.expect.join(" · ");
            let row = doc.lines().find(|l| l.contains(&format!("`{name}`")));
            match row {
                Some(row) if row.contains(&expect) => {}
                _ => missing.push(format!("{dir}/{name}: {expect}")),
            }
        }
    }
    assert!(
        missing.is_empty(),
        "rows missing or stale in docs/bad-input.md:\n{}",
        missing.join("\n")
    );
    let rows = doc
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| kind"))
        .count();
    assert!(rows >= 50 && count >= 50, "{rows} rows, {count} corpus files");
    Ok(())
}
