//! Listing folders with `LIST` (vsftpd and many others have no `MLSD`): `ls -l` lines parsed by
//! suppaftp, folders walked one by one when the listing is recursive.
//!
//! `LIST -a` so hidden files (and Ferry's own `.ferry-…part` temps) are seen — most Unix servers
//! take `ls` options; a server that refuses them gets a plain `LIST`. The listing is of the
//! working folder (after `CWD`), never `LIST <path>`: a path would be read as options or globbed
//! by some servers, and `CWD` tells a missing folder apart (vsftpd lists one as empty).
//! Times in `LIST` are to the minute (to the day for files older than six months) in the
//! server's zone, UTC on vsftpd; asking `MDTM` per file would cost a round trip each, so only
//! `stat` does (whole seconds).

use std::time::UNIX_EPOCH;

use suppaftp::list::{File, ListParser};

use super::conn::Session;
use crate::{Entry, HostResult, path};

/// Files under `root` (absolute), sorted by relative path.
pub(super) async fn walk(s: &mut Session, root: &str, recursive: bool) -> HostResult<Vec<Entry>> {
    let mut found = Vec::new();
    let mut folders = vec![String::new()];
    while let Some(rel) = folders.pop() {
        let dir = path::join(root, &rel);
        match s
            .run(&format!("open folder {dir}"), async |ftp| ftp.cwd(&dir).await)
            .await
        {
            Ok(()) => {}
            // A subfolder removed while we walk is no longer there to list.
            Err(f) if f.is(550) && !rel.is_empty() => continue,
            Err(f) => return Err(f.error),
        }
        for line in list_here(s, &dir).await? {
            let Some(file) = parse(&line) else {
                tracing::debug!(host = %s.host, folder = %dir, line = %line, "unreadable LIST line skipped");
                continue;
            };
            let name = file.name();
            if name == "." || name == ".." || name.is_empty() {
                continue;
            }
            let rel_path = path::join(&rel, name);
            if file.is_directory() {
                if recursive {
                    folders.push(rel_path);
                }
            } else if file.is_file() {
                // Symlinks and other special entries are not files to transfer (as on local).
                found.push(Entry {
                    rel_path,
                    size: file.size() as u64,
                    mtime_ns: mtime_ns(&file),
                });
            }
        }
    }
    found.sort_by(|a, b| a.rel_path.cmp(&b.rel_path));
    Ok(found)
}

async fn list_here(s: &mut Session, dir: &str) -> HostResult<Vec<String>> {
    let what = format!("list {dir}");
    match s.run(&what, async |ftp| ftp.list(Some("-a")).await).await {
        Ok(lines) => Ok(lines),
        // No `ls` options here (500/501/502/504): a plain listing.
        Err(f) if f.code.is_some_and(|c| (500..=504).contains(&c)) => {
            Ok(s.run(&what, async |ftp| ftp.list(None).await).await?)
        }
        Err(f) => Err(f.error),
    }
}

/// One `LIST` line: Unix `ls -l` style, or the DOS style of IIS.
fn parse(line: &str) -> Option<File> {
    ListParser::parse_posix(line)
        .or_else(|_| ListParser::parse_dos(line))
        .ok()
}

fn mtime_ns(file: &File) -> i128 {
    match file.modified().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vsftpd_lines() {
        let f =
            parse("-rw-r--r--    1 1001     1001         5000 Dec 01 08:28 with space.csv").expect("parses");
        assert_eq!((f.name(), f.size(), f.is_file()), ("with space.csv", 5000, true));
        let f = parse("drwxr-xr-x    2 1001     0            4096 Jan 02  2024 sub").expect("parses");
        assert!(f.is_directory());
        let f =
            parse("lrwxrwxrwx    1 0        0               4 Dec 01 08:28 link -> file").expect("parses");
        assert!(!f.is_file() && !f.is_directory());
        let f = parse("-rw-------    1 1001     1001            3 Dec 01 08:28 .ferry-0123-0.part")
            .expect("parses");
        assert_eq!(f.name(), ".ferry-0123-0.part");
        let f =
            parse("-rw-r--r--    1 1001     1001           10 Dec 01 08:28 ümlaut-€.txt").expect("parses");
        assert_eq!(f.name(), "ümlaut-€.txt");
        let f = parse("-rw-r--r--    1 1001     1001           10 Jan 02  2024 old.txt").expect("parses");
        assert_eq!(mtime_ns(&f), 1_704_153_600 * 1_000_000_000);
        assert!(parse("total 12").is_none());
    }
}
