//! Find and replace in text files, line by line (streaming: a file of any size, memory bounded
//! by the longest line, itself limited by [`FindReplace::max_line_bytes`]).
//!
//! Matching works on bytes, so any ASCII-compatible encoding (UTF-8, Latin-1, Windows-1252) is
//! edited without being decoded; a file with a NUL byte is binary (or UTF-16) and is refused, as
//! `grep` and `git` decide. Line endings (`\n`, `\r\n`, none at the end) are kept as they were;
//! a pattern sees the line without its ending, so `$` matches at the end of the text.
//!
//! Literal mode replaces the text as written; regex mode uses the `regex` crate's syntax, and
//! the replacement may refer to groups as `$1` or `${name}`.

use std::io::{BufRead, BufReader, Write};

use regex::bytes::{Regex, RegexBuilder};

use crate::error::Blame;
use crate::file::{BUF_SIZE, open_input};
use crate::{Cancellable, Context, File, OutputFile, Process, ProcessError, StepOutput};

#[derive(Debug, Clone)]
pub struct FindReplace {
    regex: Regex,
    replacement: String,
    /// Whether `replacement` may use `$1` / `${name}` (regex mode).
    expand: bool,
    /// Longest line accepted (default 16 MiB); a longer one fails the file as
    /// [`ProcessError::LimitExceeded`].
    pub max_line_bytes: usize,
}

impl FindReplace {
    /// Replaces every occurrence of `find` with `replace`, as written.
    pub fn literal(find: &str, replace: &str, ignore_case: bool) -> Result<Self, String> {
        if find.is_empty() {
            return Err("find-and-replace: the text to find is empty".into());
        }
        Self::build(&regex::escape(find), replace, ignore_case, false)
    }

    /// Replaces every match of the regular expression `pattern`.
    pub fn regex(pattern: &str, replace: &str, ignore_case: bool) -> Result<Self, String> {
        Self::build(pattern, replace, ignore_case, true)
    }

    fn build(pattern: &str, replace: &str, ignore_case: bool, expand: bool) -> Result<Self, String> {
        let regex = RegexBuilder::new(pattern)
            .case_insensitive(ignore_case)
            .build()
            .map_err(|e| {
                format!("find-and-replace: pattern {pattern:?} is not a valid regular expression: {e}")
            })?;
        Ok(Self {
            regex,
            replacement: replace.to_string(),
            expand,
            max_line_bytes: 16 * 1024 * 1024,
        })
    }

    /// Replaces in one line's text, appending to `out`; returns the count.
    fn replace_line(&self, text: &[u8], out: &mut Vec<u8>) -> u64 {
        let mut last = 0;
        let mut count = 0;
        for caps in self.regex.captures_iter(text) {
            let m = caps.get(0).expect("group 0 is the whole match");
            out.extend_from_slice(&text[last..m.start()]);
            if self.expand {
                caps.expand(self.replacement.as_bytes(), out);
            } else {
                out.extend_from_slice(self.replacement.as_bytes());
            }
            last = m.end();
            count += 1;
        }
        out.extend_from_slice(&text[last..]);
        count
    }
}

impl Process for FindReplace {
    fn name(&self) -> &'static str {
        "find-replace"
    }

    fn run(&self, inputs: Vec<File>, ctx: &Context<'_>) -> Result<StepOutput, ProcessError> {
        let mut files = Vec::with_capacity(inputs.len());
        let mut log = String::new();
        for f in inputs {
            let blame = Blame::new(self.name(), f.name());
            let src = open_input(&f, &blame)?;
            let mut reader = BufReader::with_capacity(BUF_SIZE, Cancellable::new(src, ctx));
            let mut out = OutputFile::create(ctx.work_dir).map_err(blame.io("create the output"))?;
            let mut line = Vec::new();
            let mut edited = Vec::new();
            let mut offset: u64 = 0;
            let mut count: u64 = 0;
            loop {
                line.clear();
                let n = read_line(&mut reader, &mut line, self.max_line_bytes).map_err(|e| match e {
                    LineError::TooLong => blame.limit(format!(
                        "has a line longer than {} bytes at byte {offset}",
                        self.max_line_bytes
                    )),
                    LineError::Io(e) => blame.internal(format!("read: {e}")),
                })?;
                if n == 0 {
                    break;
                }
                if let Some(i) = memchr_nul(&line) {
                    return Err(blame.bad_input(format!(
                        "is not a text file (a NUL byte at byte {}); find-and-replace edits text only",
                        offset + i as u64
                    )));
                }
                offset += n as u64;
                let ending = if line.ends_with(b"\r\n") {
                    2
                } else if line.ends_with(b"\n") {
                    1
                } else {
                    0
                };
                let (text, end) = line.split_at(line.len() - ending);
                edited.clear();
                count += self.replace_line(text, &mut edited);
                edited.extend_from_slice(end);
                out.write_all(&edited).map_err(blame.io("write the output"))?;
            }
            log.push_str(&format!("{}: {count} replacements\n", f.name()));
            let name = f.name().to_string();
            files.push(out.finish(name).map_err(blame.io("finish the output"))?);
        }
        Ok(StepOutput { files, log })
    }
}

enum LineError {
    TooLong,
    Io(std::io::Error),
}

/// Reads one line (with its `\n`) into `line`, failing once it passes `max` bytes without a
/// newline instead of growing without bound. Returns the bytes read (0 at the end).
fn read_line(r: &mut impl BufRead, line: &mut Vec<u8>, max: usize) -> Result<usize, LineError> {
    let mut total = 0;
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(LineError::Io(e)),
        };
        if buf.is_empty() {
            return Ok(total);
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > max + usize::from(done) {
            return Err(LineError::TooLong);
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        total += take;
        if done {
            return Ok(total);
        }
    }
}

fn memchr_nul(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Fixture;
    use crate::{NoKeys, run_steps};

    fn edit(p: &FindReplace, content: &[u8]) -> Result<(Vec<u8>, String), ProcessError> {
        let fx = Fixture::new();
        let ctx = fx.ctx(&NoKeys);
        let mut out = p.run(vec![fx.input("in.txt", content)], &ctx)?;
        let f = out.files.pop().expect("one output");
        assert_eq!(f.name(), "in.txt");
        Ok((std::fs::read(f.path()).expect("read"), out.log))
    }

    #[test]
    fn literal_replaces_text_as_written_keeping_line_endings() {
        let p = FindReplace::literal("a.b", "$1", false).expect("valid");
        let (out, log) = edit(&p, b"a.b axb\r\nA.B a.b\nend a.b").expect("edited");
        assert_eq!(out, b"$1 axb\r\nA.B $1\nend $1");
        assert_eq!(log, "in.txt: 3 replacements\n");
        let p = FindReplace::literal("a.b", "X", true).expect("valid");
        assert_eq!(edit(&p, b"A.B\n").expect("edited").0, b"X\n");
    }

    #[test]
    fn regex_uses_groups_and_anchors_see_the_line_without_its_ending() {
        let p = FindReplace::regex(r"(\d{4})-(\d{2})-(\d{2})$", "$3.$2.$1", false).expect("valid");
        let (out, _) = edit(&p, b"d 2026-03-04\r\nx 2026-03-04 y\n").expect("edited");
        assert_eq!(out, b"d 04.03.2026\r\nx 2026-03-04 y\n");
        // Latin-1 bytes pass through untouched.
        let p = FindReplace::literal("caf", "CAF", false).expect("valid");
        assert_eq!(edit(&p, b"caf\xe9\n").expect("edited").0, b"CAF\xe9\n");
        assert!(
            FindReplace::regex("(", "", false)
                .unwrap_err()
                .starts_with("find-and-replace: pattern \"(\" is not a valid regular expression")
        );
    }

    #[test]
    fn binary_input_and_an_endless_line_are_refused_and_leave_nothing() {
        let fx = Fixture::new();
        let ctx = fx.ctx(&NoKeys);
        let p = FindReplace::literal("a", "b", false).expect("valid");
        let run = run_steps(&[&p], vec![fx.input("x.bin", b"line one\nab\0cd\n")], &ctx);
        let e = run.files.expect_err("binary");
        assert_eq!(
            e.to_string(),
            "find-replace \"x.bin\": is not a text file (a NUL byte at byte 11); find-and-replace edits text only"
        );
        assert_eq!(e.class(), crate::ErrorClass::BadInput);
        assert!(fx.work_entries().is_empty(), "{:?}", fx.work_entries());

        let mut p = FindReplace::literal("a", "b", false).expect("valid");
        p.max_line_bytes = 10;
        let e = p
            .run(
                vec![fx.input("long.txt", b"short\n0123456789\n0123456789A\n")],
                &ctx,
            )
            .expect_err("too long");
        assert_eq!(
            e.to_string(),
            "find-replace \"long.txt\": has a line longer than 10 bytes at byte 17"
        );
        assert!(fx.work_entries().is_empty());
    }

    #[test]
    fn a_file_larger_than_the_buffer_is_streamed() {
        let mut content = Vec::new();
        for i in 0..100_000 {
            content.extend_from_slice(format!("row {i} old value\n").as_bytes());
        }
        let p = FindReplace::literal("old", "new", false).expect("valid");
        let (out, log) = edit(&p, &content).expect("edited");
        assert_eq!(
            out,
            String::from_utf8(content)
                .expect("utf8")
                .replace("old", "new")
                .as_bytes()
        );
        assert_eq!(log, "in.txt: 100000 replacements\n");
    }
}
