//! The checksum process's `.sha256` files are accepted by `sha256sum -c`; a pipeline's reports
//! carry each output's SHA-256.

use std::process::Command;

use ferry_processes::checksum::Checksum;
use ferry_processes::rename::Rename;
use ferry_processes::testing::Fixture;
use ferry_processes::{NoKeys, StepOutcome, run_steps};

#[test]
fn sha256sum_accepts_the_checksum_file_and_rejects_it_after_a_change() {
    let fx = Fixture::new();
    let ctx = fx.ctx(&NoKeys);
    let content: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    let rename = Rename::new("[OrigBase] [yyyy].[OrigExt]").expect("valid");
    let run = run_steps(
        &[&rename, &Checksum],
        vec![fx.input("sub/data.bin", &content)],
        &ctx,
    );
    let files = run.files.expect("checksummed");
    let names: Vec<&str> = files.iter().map(|f| f.name()).collect();
    assert_eq!(names, ["sub/data 2026.bin", "sub/data 2026.bin.sha256"]);

    // Deliver both into one folder, as a destination would, and check there.
    let dest = tempfile::tempdir().expect("temp");
    for f in &files {
        std::fs::copy(
            f.path(),
            dest.path().join(f.name().rsplit('/').next().expect("base")),
        )
        .expect("copy");
    }
    let check = |expect_ok: bool| {
        let out = Command::new("sha256sum")
            .args(["-c", "data 2026.bin.sha256"])
            .current_dir(dest.path())
            .output()
            .expect("run sha256sum");
        assert_eq!(
            out.status.success(),
            expect_ok,
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(check(true), "data 2026.bin: OK\n");
    std::fs::write(dest.path().join("data 2026.bin"), b"changed").expect("write");
    assert_eq!(check(false), "data 2026.bin: FAILED\n");

    // The report of the checksum step names both outputs with their hashes.
    let report = &run.reports[1];
    assert_eq!(report.outcome, StepOutcome::Succeeded);
    assert_eq!(report.inputs, ["sub/data 2026.bin"]);
    let sum_line = std::fs::read_to_string(files[1].path()).expect("read");
    assert_eq!(sum_line, format!("{}  data 2026.bin\n", report.outputs[0].sha256));
    let json = serde_json::to_value(report).expect("serialize");
    assert_eq!(json["outcome"], "succeeded");
    assert_eq!(json["outputs"][1]["name"], "sub/data 2026.bin.sha256");
}
