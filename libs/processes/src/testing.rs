//! Helpers for this crate's tests and for the integration tests of callers: a work folder, a
//! source folder, a context over them.

use std::path::{Path, PathBuf};

use chrono::{Local, TimeZone};

use crate::{Context, File, KeySource, Scope};

/// A source folder (files the caller lends) and a work folder (where outputs go), both removed
/// on drop.
pub struct Fixture {
    pub src: tempfile::TempDir,
    pub work: tempfile::TempDir,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    pub fn new() -> Self {
        Self {
            src: tempfile::tempdir().expect("create a source temp dir"),
            work: tempfile::tempdir().expect("create a work temp dir"),
        }
    }

    /// A context for task `t`, run `r1`, at 2026-03-04 05:06:07 local time.
    pub fn ctx<'a>(&'a self, keys: &'a dyn KeySource) -> Context<'a> {
        Context {
            task: "t",
            run_id: "r1",
            time: Local
                .with_ymd_and_hms(2026, 3, 4, 5, 6, 7)
                .single()
                .expect("an unambiguous local time"),
            scope: Scope::PerFile,
            work_dir: self.work.path(),
            keys,
            cancel: None,
        }
    }

    /// Writes `content` as a source file and lends it under `name`.
    pub fn input(&self, name: &str, content: &[u8]) -> File {
        let path = self.src.path().join(name.replace('/', "_"));
        std::fs::write(&path, content).expect("write a source file");
        File::borrowed(path, name).expect("a valid name")
    }

    pub fn src_path(&self, name: &str) -> PathBuf {
        self.src.path().join(name)
    }

    /// Every entry left in the work folder (a test asserts it is empty after a failure).
    pub fn work_entries(&self) -> Vec<String> {
        entries(self.work.path())
    }
}

/// The names of a folder's entries, sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("list a folder")
        .map(|e| {
            e.expect("a folder entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}
