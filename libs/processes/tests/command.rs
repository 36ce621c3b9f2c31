//! The custom command process against real programs (`/bin/sh`, `/bin/cat`, `/usr/bin/tr`).

use std::time::{Duration, Instant};

use ferry_processes::command::{Command, Io};
use ferry_processes::testing::Fixture;
use ferry_processes::{ErrorClass, NoKeys, Process, StepOutcome, run_steps};

fn sh(script: &str) -> Command {
    Command::new("/bin/sh", &["-c", script, "sh", "[InFile]", "[OutFile]"]).expect("valid")
}

/// Whether a process is gone (or a zombie nobody reaped yet, which runs no code).
fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn a_command_that_hangs_is_killed_at_the_timeout_with_its_children() {
    let fx = Fixture::new();
    let ctx = fx.ctx(&NoKeys);
    let pids = fx.src_path("pids");
    let mut cmd = Command::new(
        "/bin/sh",
        &[
            "-c",
            "sleep 100 & echo $! > \"$1\"; echo $$ >> \"$1\"; sleep 100",
            "sh",
            &pids.to_string_lossy(),
        ],
    )
    .expect("valid");
    cmd.timeout = Duration::from_secs(1);
    let started = Instant::now();
    let run = run_steps(&[&cmd], vec![fx.input("in.txt", b"x")], &ctx);
    let took = started.elapsed();
    let e = run.files.expect_err("timed out");
    assert_eq!(e.to_string(), "command \"in.txt\": timed out after 1s");
    assert_eq!(e.class(), ErrorClass::Timeout);
    assert!(took < Duration::from_secs(5), "stopped promptly: {took:?}");
    let pids: Vec<u32> = std::fs::read_to_string(&pids)
        .expect("the script wrote its pids")
        .lines()
        .map(|l| l.trim().parse().expect("a pid"))
        .collect();
    assert_eq!(pids.len(), 2);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pids.iter().all(|&p| is_dead(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in pids {
        assert!(
            is_dead(p),
            "process {p} (the command or its background child) was killed"
        );
    }
    assert!(fx.work_entries().is_empty(), "{:?}", fx.work_entries());
    assert!(matches!(
        run.reports[0].outcome,
        StepOutcome::Failed {
            class: ErrorClass::Timeout,
            ..
        }
    ));
}

#[test]
fn a_command_that_exits_3_fails_naming_the_code_and_its_stderr() {
    let fx = Fixture::new();
    let ctx = fx.ctx(&NoKeys);
    let cmd = sh("echo 'converter: bad record at line 7' >&2; echo partial > \"$2\"; exit 3");
    let e = cmd.run(vec![fx.input("in.txt", b"x")], &ctx).expect_err("exit 3");
    assert_eq!(
        e.to_string(),
        "command \"in.txt\": /bin/sh exited with code 3; stderr: converter: bad record at line 7"
    );
    assert_eq!(e.class(), ErrorClass::Failed);
    assert!(
        fx.work_entries().is_empty(),
        "the partial output was removed: {:?}",
        fx.work_entries()
    );
}

#[test]
fn a_command_writes_the_output_file_and_names_it() {
    let fx = Fixture::new();
    let ctx = fx.ctx(&NoKeys);
    let cmd = sh(
        "tr a-z A-Z < \"$1\" > \"$2\"; echo converted; echo FERRY_OUTPUT_NAME=\"${FERRY_ORIG_NAME%.txt}.upper\"",
    );
    let run = run_steps(&[&cmd], vec![fx.input("report.txt", b"hello\n")], &ctx);
    let files = run.files.expect("converted");
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].name(), "report.upper");
    assert_eq!(std::fs::read(files[0].path()).expect("read"), b"HELLO\n");
    let report = &run.reports[0];
    assert_eq!(report.outputs[0].name, "report.upper");
    assert!(report.log.contains("stdout:\nconverted\n"), "{}", report.log);
    assert!(fx.src_path("report.txt").exists(), "the source is kept");
}

#[test]
fn stdin_stdout_mode_and_macro_expanded_arguments_and_environment() {
    let fx = Fixture::new();
    let ctx = fx.ctx(&NoKeys);
    let mut cmd = Command::new(
        "/bin/sh",
        &[
            "-c",
            "tr a-z A-Z; echo \"$1 $GREETING ${HOME:-no-home}\"; echo FERRY_OUTPUT_NAME=out.txt >&2",
            "sh",
            "[TaskName]-[yyyy]-[OrigBase]",
        ],
    )
    .expect("valid")
    .env("GREETING", "run [RunID] of [OrigName]")
    .expect("valid");
    cmd.io = Io::Stdio;
    let run = run_steps(&[&cmd], vec![fx.input("in.txt", b"abc\n")], &ctx);
    let files = run.files.expect("ran");
    assert_eq!(files[0].name(), "out.txt");
    assert_eq!(
        std::fs::read_to_string(files[0].path()).expect("read"),
        // The environment was cleared: no HOME.
        "ABC\nt-2026-in run r1 of in.txt no-home\n"
    );
    assert_eq!(run.reports[0].outputs[0].bytes, 39);
}

#[test]
fn a_command_that_writes_no_output_passes_the_input_through() {
    let fx = Fixture::new();
    let ctx = fx.ctx(&NoKeys);
    let cmd = sh("test -s \"$1\"");
    let mut run = run_steps(&[&cmd], vec![fx.input("in.txt", b"data")], &ctx);
    let f = run.files.as_mut().expect("checked").pop().expect("one");
    assert_eq!(f.path(), fx.src_path("in.txt"), "the same file, not a copy");
    assert!(!f.is_owned());
}

#[test]
fn output_beyond_the_cap_is_counted_not_kept_and_never_blocks() {
    let fx = Fixture::new();
    let ctx = fx.ctx(&NoKeys);
    let mut cmd = sh("head -c 1000000 /dev/zero | tr '\\0' x; echo; echo FERRY_OUTPUT_NAME=ignored-past-cap");
    cmd.capture_bytes = 100;
    let run = run_steps(&[&cmd], vec![fx.input("in.txt", b"data")], &ctx);
    let files = run.files.expect("ran");
    assert_eq!(
        files[0].name(),
        "in.txt",
        "a name printed past the cap is not seen"
    );
    assert!(
        run.reports[0].log.contains("[… 999936 more bytes not kept]"),
        "{}",
        run.reports[0].log
    );
}

#[test]
fn bad_settings_are_refused_up_front() {
    assert_eq!(
        Command::new("sh", &[]).unwrap_err(),
        "command program \"sh\" is not an absolute path (no shell or PATH lookup is used)"
    );
    assert!(
        Command::new("/bin/sh", &["[Nope]"])
            .unwrap_err()
            .starts_with("command args[0] \"[Nope]\" uses unknown macro [Nope]")
    );
    let fx = Fixture::new();
    let ctx = fx.ctx(&NoKeys);
    let e = Command::new("/no/such/program", &[])
        .expect("valid")
        .run(vec![fx.input("a", b"")], &ctx)
        .expect_err("missing");
    assert!(
        e.to_string()
            .starts_with("command \"a\": could not start /no/such/program: "),
        "{e}"
    );
    let e = sh("echo FERRY_OUTPUT_NAME=../escape")
        .run(vec![fx.input("a", b"")], &ctx)
        .expect_err("bad name");
    assert_eq!(
        e.to_string(),
        "command \"a\": printed an unusable output name: \"../escape\" has a \"..\" component"
    );
}

#[test]
fn a_cancelled_run_stops_a_running_command_promptly_and_leaves_nothing() {
    let fx = Fixture::new();
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let mut ctx = fx.ctx(&NoKeys);
    ctx.cancel = Some(&cancel);
    let cmd = sh("echo partial > \"$2\"; sleep 100");
    let started = Instant::now();
    let e = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        run_steps(&[&cmd], vec![fx.input("in.txt", b"x")], &ctx)
            .files
            .expect_err("cancelled")
    });
    assert_eq!(e.to_string(), "command \"in.txt\": cancelled");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(fx.work_entries().is_empty(), "{:?}", fx.work_entries());
    // A run cancelled before a step starts does not start it.
    let e = run_steps(&[&cmd], vec![fx.input("in.txt", b"x")], &ctx)
        .files
        .expect_err("cancelled");
    assert_eq!(e.to_string(), "command \"in.txt\": cancelled");
}
