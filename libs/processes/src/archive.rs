//! Zip and unzip.
//!
//! [`Zip`] packs its input files into one deflated archive (PER-TASK: every collected file into
//! one archive; PER-FILE: each file into its own). Entries keep the files' logical names (so
//! subfolders survive), their modification times, and mode 0644; files of 4 GiB and more are
//! written as Zip64.
//!
//! [`Unzip`] extracts an archive into one output file per entry, named by the entry's path. It
//! is zip-slip safe and bomb safe, and all-or-nothing:
//! - before anything is extracted, every entry name is checked ([`crate::file::check_name`], with
//!   `\` read as a folder separator as Info-ZIP does): an absolute path, a drive letter, a `..`
//!   component, a NUL, a symlink entry, an encrypted entry, or two entries with the same name
//!   (or a file where another entry needs a folder) fail the *whole archive*;
//! - the entry count is limited ([`UnzipLimits::max_entries`]), and so is the total expanded size
//!   ([`UnzipLimits::max_expanded_bytes`]) — counted on the bytes actually decompressed, not on
//!   the sizes the headers claim, so an archive that lies about its sizes is stopped at the limit
//!   with no more than the limit written;
//! - on any failure every entry already extracted is removed (they are unfinished outputs until
//!   the last entry is done).
//!
//! Folder entries are not outputs (a destination creates folders as files need them); an empty
//! folder in an archive is therefore not reproduced.

use std::collections::{BTreeSet, HashSet};
use std::io::{BufReader, Read, Write};

use ferry_config::Template;
use zip::CompressionMethod;
use zip::write::SimpleFileOptions;

use crate::error::Blame;
use crate::file::{BUF_SIZE, check_name, open_input};
use crate::{Cancellable, Context, File, OutputFile, Process, ProcessError, StepOutput};

/// Zip: the inputs into one archive.
#[derive(Debug, Clone)]
pub struct Zip {
    /// The archive's name, rendered with the first input's name as `[OrigName]`. Default
    /// `[OrigName].zip` for PER-FILE use; a PER-TASK step usually names it after the task
    /// (`[TaskName]_[yyyy][mm][dd].zip`).
    pub name: Template,
    /// Deflate level 0–9 (default 6, as `zip` uses).
    pub level: u8,
}

impl Default for Zip {
    fn default() -> Self {
        Self {
            name: Template::parse("[OrigName].zip").expect("a valid built-in template"),
            level: 6,
        }
    }
}

impl Zip {
    pub fn new(name: &str, level: u8) -> Result<Self, String> {
        if level > 9 {
            return Err(format!("zip level {level} is out of range 0..=9"));
        }
        Ok(Self {
            name: Template::parse(name).map_err(|e| format!("zip name {name:?} {e}"))?,
            level,
        })
    }
}

impl Process for Zip {
    fn name(&self) -> &'static str {
        "zip"
    }

    /// No input, no archive: an empty run hands nothing on (its "no files" next action decides).
    fn run(&self, inputs: Vec<File>, ctx: &Context<'_>) -> Result<StepOutput, ProcessError> {
        let Some(first) = inputs.first() else {
            return Ok(StepOutput::default());
        };
        let archive_name = self.name.render(&ctx.macros(first.base_name()));
        let blame = Blame::new(self.name(), archive_name.clone());
        check_name(&archive_name).map_err(|e| {
            blame.bad_input(format!(
                "name template {:?} gives an unusable name: {e}",
                self.name.as_str()
            ))
        })?;
        let mut seen = HashSet::new();
        for f in &inputs {
            if !seen.insert(f.name()) {
                return Err(blame.bad_input(format!("two input files are named {:?}", f.name())));
            }
        }

        let out = OutputFile::create(ctx.work_dir).map_err(blame.io("create the archive"))?;
        let mut zip = zip::ZipWriter::new(out);
        let mut buf = vec![0u8; BUF_SIZE];
        for f in &inputs {
            let fblame = Blame::new(self.name(), f.name());
            let src = open_input(f, &fblame)?;
            let mtime = src
                .metadata()
                .and_then(|m| m.modified())
                .map(chrono::DateTime::<chrono::Local>::from)
                .unwrap_or(ctx.time);
            let options = SimpleFileOptions::default()
                .compression_method(CompressionMethod::Deflated)
                .compression_level(Some(i64::from(self.level)))
                .unix_permissions(0o644)
                .last_modified_time(zip_time(mtime))
                .large_file(f.bytes() >= u64::from(u32::MAX));
            zip.start_file(f.name(), options)
                .map_err(|e| fblame.internal(format!("start the archive entry: {e}")))?;
            let mut src = Cancellable::new(src, ctx);
            loop {
                let n = src
                    .read(&mut buf)
                    .map_err(|e| fblame.internal(format!("read: {e}")))?;
                if n == 0 {
                    break;
                }
                zip.write_all(&buf[..n])
                    .map_err(|e| fblame.internal(format!("write the archive: {e}")))?;
            }
        }
        let out = zip
            .finish()
            .map_err(|e| blame.internal(format!("finish the archive: {e}")))?;
        let archive = out.finish(archive_name).map_err(blame.io("finish the archive"))?;
        let log = format!("{} files", inputs.len());
        Ok(StepOutput {
            files: vec![archive],
            log,
        })
    }
}

fn zip_time(t: chrono::DateTime<chrono::Local>) -> zip::DateTime {
    use chrono::{Datelike, Timelike};
    // Zip times cover 1980..=2107; a time outside falls back to the format's default.
    zip::DateTime::from_date_and_time(
        u16::try_from(t.year()).unwrap_or(1980),
        t.month() as u8,
        t.day() as u8,
        t.hour() as u8,
        t.minute() as u8,
        t.second() as u8,
    )
    .unwrap_or_default()
}

/// Limits an archive must stay within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnzipLimits {
    /// Most entries (files and folders) an archive may have.
    pub max_entries: u64,
    /// Most bytes all entries may expand to together, counted as they are decompressed.
    pub max_expanded_bytes: u64,
}

impl Default for UnzipLimits {
    /// 10 000 entries, 10 GiB.
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            max_expanded_bytes: 10 * 1024 * 1024 * 1024,
        }
    }
}

/// Unzip: each entry of each input archive becomes an output file.
#[derive(Debug, Clone, Default)]
pub struct Unzip {
    pub limits: UnzipLimits,
}

/// One entry to extract, after the checks.
struct Planned {
    index: usize,
    name: String,
}

impl Process for Unzip {
    fn name(&self) -> &'static str {
        "unzip"
    }

    fn run(&self, inputs: Vec<File>, ctx: &Context<'_>) -> Result<StepOutput, ProcessError> {
        let mut files = Vec::new();
        let mut log = String::new();
        for input in inputs {
            let blame = Blame::new(self.name(), input.name());
            let extracted = self.extract(&input, ctx, &blame)?;
            log.push_str(&format!("{}: {} files\n", input.name(), extracted.len()));
            files.extend(extracted);
        }
        Ok(StepOutput { files, log })
    }
}

impl Unzip {
    fn extract(&self, input: &File, ctx: &Context<'_>, blame: &Blame) -> Result<Vec<File>, ProcessError> {
        let src = open_input(input, blame)?;
        let mut archive = zip::ZipArchive::new(BufReader::with_capacity(BUF_SIZE, src))
            .map_err(|e| blame.bad_input(format!("is not a readable zip archive: {e}")))?;
        if archive.len() as u64 > self.limits.max_entries {
            return Err(blame.limit(format!(
                "has {} entries, over the limit of {}",
                archive.len(),
                self.limits.max_entries
            )));
        }
        // The reader keeps one entry per name, so duplicates are visible only as a count.
        if archive.has_duplicate_names() {
            return Err(blame.bad_input("has more than one entry with the same name; nothing was extracted"));
        }
        let plan = plan(&mut archive, blame)?;

        let mut out_files = Vec::with_capacity(plan.len());
        let mut total: u64 = 0;
        let limit = self.limits.max_expanded_bytes;
        let mut buf = vec![0u8; BUF_SIZE];
        for p in plan {
            let entry = archive
                .by_index(p.index)
                .map_err(|e| blame.bad_input(format!("entry {:?}: {e}", p.name)))?;
            let mut entry = Cancellable::new(entry, ctx);
            let mut out = OutputFile::create(ctx.work_dir).map_err(blame.io("create an extracted file"))?;
            loop {
                let n = entry
                    .read(&mut buf)
                    .map_err(|e| blame.bad_input(format!("entry {:?}: {e}", p.name)))?;
                if n == 0 {
                    break;
                }
                if total + n as u64 > limit {
                    // Stop before writing past the limit; `out` and every earlier entry are
                    // dropped (removed) on return.
                    return Err(blame.limit(format!(
                        "expands to more than the limit of {limit} bytes (stopped at entry {:?})",
                        p.name
                    )));
                }
                total += n as u64;
                out.write_all(&buf[..n])
                    .map_err(blame.io("write an extracted file"))?;
            }
            out_files.push(out.finish(p.name).map_err(blame.io("finish an extracted file"))?);
        }
        Ok(out_files)
    }
}

/// Checks every entry before anything is extracted; returns the file entries in archive order.
fn plan<R: Read + std::io::Seek>(
    archive: &mut zip::ZipArchive<R>,
    blame: &Blame,
) -> Result<Vec<Planned>, ProcessError> {
    let mut plan = Vec::new();
    let mut names = HashSet::new();
    let mut folders_needed = BTreeSet::new();
    for index in 0..archive.len() {
        let entry = archive
            .by_index_raw(index)
            .map_err(|e| blame.bad_input(format!("entry #{index}: {e}")))?;
        let raw = entry
            .name()
            .map_err(|e| blame.bad_input(format!("entry #{index} has an unreadable name: {e}")))?
            .into_owned();
        let refuse = |why: String| blame.bad_input(format!("entry {raw:?} {why}; nothing was extracted"));
        let normalized = raw.replace('\\', "/");
        let is_dir = entry.is_dir() || normalized.ends_with('/');
        let name = normalized.trim_end_matches('/').to_string();
        check_name(&name).map_err(|e| refuse(format!("is refused: {e}")))?;
        if entry.is_symlink() {
            return Err(refuse("is a symbolic link".into()));
        }
        if entry.encrypted() {
            return Err(refuse("is encrypted (not supported)".into()));
        }
        if !names.insert(name.clone()) {
            return Err(refuse("appears more than once".into()));
        }
        // Every folder above this entry must not also be a file entry.
        let mut parent = name.as_str();
        while let Some((up, _)) = parent.rsplit_once('/') {
            folders_needed.insert(up.to_string());
            parent = up;
        }
        if !is_dir {
            plan.push(Planned { index, name });
        }
    }
    for p in &plan {
        if folders_needed.contains(&p.name) {
            return Err(blame.bad_input(format!(
                "entry {:?} is a file but other entries lie under it; nothing was extracted",
                p.name
            )));
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::testing::Fixture;
    use crate::{ErrorClass, NoKeys, run_steps};

    type Entries<'a> = &'a [(&'a str, &'a [u8])];
    type Extracted = Result<Vec<(String, Vec<u8>)>, ProcessError>;

    /// An archive with these entries (a name ending in `/` is a folder; `@target` content makes a
    /// symlink).
    fn make_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
        for (name, content) in entries {
            if let Some(target) = content.strip_prefix(b"@") {
                w.add_symlink(*name, std::str::from_utf8(target).expect("utf8"), opts)
                    .expect("symlink");
            } else if name.ends_with('/') {
                w.add_directory(*name, opts).expect("dir");
            } else {
                w.start_file(*name, opts).expect("start");
                w.write_all(content).expect("write");
            }
        }
        w.finish().expect("finish").into_inner()
    }

    fn unzip(entries: &[(&str, &[u8])], limits: UnzipLimits) -> (Fixture, Extracted) {
        let fx = Fixture::new();
        let result = {
            let ctx = fx.ctx(&NoKeys);
            let input = fx.input("in.zip", &make_zip(entries));
            Unzip { limits }.run(vec![input], &ctx).map(|out| {
                out.files
                    .iter()
                    .map(|f| (f.name().to_string(), std::fs::read(f.path()).expect("read")))
                    .collect()
            })
        };
        (fx, result)
    }

    #[test]
    fn unzip_extracts_files_with_their_folders_and_skips_folder_entries() {
        let (fx, got) = unzip(
            &[
                ("a.txt", b"A"),
                ("sub/", b""),
                ("sub/b.txt", b"B"),
                ("win\\c.txt", b"C"),
            ],
            UnzipLimits::default(),
        );
        assert_eq!(
            got.expect("extracted"),
            [
                ("a.txt".to_string(), b"A".to_vec()),
                ("sub/b.txt".to_string(), b"B".to_vec()),
                ("win/c.txt".to_string(), b"C".to_vec())
            ]
        );
        assert!(fx.work_entries().is_empty(), "outputs were dropped: nothing left");
    }

    #[test]
    fn unsafe_archives_fail_whole_and_leave_nothing() {
        let cases: &[(Entries, &str)] = &[
            (
                &[("ok.txt", b"1"), ("../../x", b"2")],
                "unzip \"in.zip\": entry \"../../x\" is refused: \"../../x\" has a \"..\" component; nothing was extracted",
            ),
            (
                &[("/etc/x", b"1")],
                "entry \"/etc/x\" is refused: \"/etc/x\" is an absolute path",
            ),
            (
                &[("C:\\x", b"1")],
                "entry \"C:\\\\x\" is refused: \"C:/x\" starts with a drive letter",
            ),
            (&[("a\\..\\..\\x", b"1")], "has a \"..\" component"),
            (
                &[("ok.txt", b"1"), ("link", b"@/etc/passwd")],
                "entry \"link\" is a symbolic link",
            ),
            // (duplicate names: the zip crate will not write them; tests/archive_interop.rs
            // builds one with Python.)
            (
                &[("a.txt", b"1"), ("./a.txt", b"2")],
                "entry \"./a.txt\" is refused",
            ),
            (
                &[("a", b"1"), ("a/b", b"2")],
                "entry \"a\" is a file but other entries lie under it",
            ),
        ];
        for (entries, want) in cases {
            let (fx, got) = unzip(entries, UnzipLimits::default());
            let e = got.expect_err(want);
            assert_eq!(e.class(), ErrorClass::BadInput, "{e}");
            assert!(e.to_string().contains(want), "{e}\nwant: {want}");
            assert!(fx.work_entries().is_empty(), "{want}: {:?}", fx.work_entries());
        }
    }

    #[test]
    fn limits_count_entries_and_decompressed_bytes() {
        let limits = UnzipLimits {
            max_entries: 2,
            max_expanded_bytes: 1000,
        };
        let (_, got) = unzip(&[("a", b"1"), ("b", b"2"), ("c", b"3")], limits);
        assert_eq!(
            got.expect_err("too many").to_string(),
            "unzip \"in.zip\": has 3 entries, over the limit of 2"
        );
        let big = vec![0u8; 1001];
        let (fx, got) = unzip(&[("a", &big[..600]), ("b", &big[..401])], limits);
        let e = got.expect_err("too big");
        assert_eq!(e.class(), ErrorClass::LimitExceeded);
        assert_eq!(
            e.to_string(),
            "unzip \"in.zip\": expands to more than the limit of 1000 bytes (stopped at entry \"b\")"
        );
        assert!(fx.work_entries().is_empty());
        let (_, got) = unzip(&[("a", &big[..600]), ("b", &big[..400])], limits);
        assert_eq!(got.expect("exactly at the limit").len(), 2);
    }

    #[test]
    fn a_file_that_is_not_a_zip_is_bad_input() {
        let fx = Fixture::new();
        let ctx = fx.ctx(&NoKeys);
        let e = Unzip::default()
            .run(vec![fx.input("x.zip", b"not a zip at all")], &ctx)
            .expect_err("not a zip");
        assert!(
            e.to_string()
                .starts_with("unzip \"x.zip\": is not a readable zip archive: "),
            "{e}"
        );
    }

    #[test]
    fn zip_then_unzip_round_trips_names_and_bytes() {
        let fx = Fixture::new();
        let ctx = fx.ctx(&NoKeys);
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let z = Zip::new("[TaskName]_[yyyy][mm][dd].zip", 6).expect("valid");
        let run = run_steps(
            &[&z, &Unzip::default()],
            vec![
                fx.input("a.txt", b"hello"),
                fx.input("sub/big.bin", &big),
                fx.input("empty", b""),
            ],
            &ctx,
        );
        assert_eq!(run.reports[0].outputs[0].name, "t_20260304.zip");
        let files = run.files.expect("round trip");
        let got: Vec<(&str, Vec<u8>)> = files
            .iter()
            .map(|f| (f.name(), std::fs::read(f.path()).expect("read")))
            .collect();
        assert_eq!(
            got,
            [
                ("a.txt", b"hello".to_vec()),
                ("sub/big.bin", big),
                ("empty", Vec::new())
            ]
        );
        drop(files);
        assert!(
            fx.work_entries().is_empty(),
            "the intermediate archive was removed"
        );
    }

    #[test]
    fn two_archives_holding_the_same_name_fail_the_step_and_leave_nothing() {
        let fx = Fixture::new();
        let ctx = fx.ctx(&NoKeys);
        let a = fx.input("a.zip", &make_zip(&[("same.txt", b"1")]));
        let b = fx.input("b.zip", &make_zip(&[("same.txt", b"2")]));
        let run = run_steps(&[&Unzip::default()], vec![a, b], &ctx);
        assert_eq!(
            run.files.expect_err("a clash").to_string(),
            "unzip \"same.txt\": more than one output has this name"
        );
        assert!(fx.work_entries().is_empty());
    }

    #[test]
    fn zip_refuses_two_inputs_with_one_name_and_makes_nothing_of_no_input() {
        let fx = Fixture::new();
        let ctx = fx.ctx(&NoKeys);
        let e = Zip::default()
            .run(vec![fx.input("a", b"1"), fx.input("a", b"2")], &ctx)
            .expect_err("clash");
        assert_eq!(e.to_string(), "zip \"a.zip\": two input files are named \"a\"");
        assert!(
            Zip::default()
                .run(vec![], &ctx)
                .expect("nothing")
                .files
                .is_empty()
        );
        assert!(fx.work_entries().is_empty());
    }
}
