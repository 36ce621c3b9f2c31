//! The small requests several operations share (size, stat, delete, rename, folders), each on a
//! [`Session`] and with the reply codes read in the request's context. Paths are absolute
//! ([`Session::abs`]).

use crate::{ErrorKind, HostError, HostResult, Meta, path};

use super::conn::Session;

/// A file's size, `None` if nothing (or a folder) is there: `SIZE` answers 550 for both.
pub(super) async fn size(s: &mut Session, p: &str) -> HostResult<Option<u64>> {
    match s
        .run(&format!("size of {p}"), async |ftp| ftp.size(p).await)
        .await
    {
        Ok(n) => Ok(Some(n as u64)),
        Err(f) if f.is(550) => Ok(None),
        Err(f) => Err(f.error),
    }
}

/// Whether `p` is a folder (`CWD` into it succeeds).
pub(super) async fn is_dir(s: &mut Session, p: &str) -> HostResult<bool> {
    match s
        .run(&format!("open folder {p}"), async |ftp| ftp.cwd(p).await)
        .await
    {
        Ok(()) => Ok(true),
        Err(f) if f.is(550) => Ok(false),
        Err(f) => Err(f.error),
    }
}

pub(super) async fn stat(s: &mut Session, p: &str) -> HostResult<Option<Meta>> {
    let Some(size) = size(s, p).await? else {
        return Ok(is_dir(s, p).await?.then_some(Meta {
            size: 0,
            mtime_ns: 0,
            is_dir: true,
        }));
    };
    // MDTM is whole seconds in UTC (RFC 3659).
    let mtime = match s
        .run(&format!("modification time of {p}"), async |ftp| {
            ftp.mdtm(p).await
        })
        .await
    {
        Ok(t) => t.and_utc().timestamp() as i128 * 1_000_000_000,
        // Removed in between.
        Err(f) if f.is(550) => return Ok(None),
        Err(f) => return Err(f.error),
    };
    Ok(Some(Meta {
        size,
        mtime_ns: mtime,
        is_dir: false,
    }))
}

/// Delete a file; a missing one is fine.
pub(super) async fn delete(s: &mut Session, p: &str) -> HostResult<()> {
    match s.run(&format!("delete {p}"), async |ftp| ftp.rm(p).await).await {
        Ok(()) => Ok(()),
        // vsftpd answers 550 for a missing file and for a refusal alike: look.
        Err(f) if f.is(550) => match size(s, p).await? {
            None => Ok(()),
            Some(_) => Err(f.with_kind(ErrorKind::Permanent).error),
        },
        Err(f) => Err(f.error),
    }
}

/// `RNFR from` + `RNTO to` (a 550 means `from` is gone, or a refusal).
pub(super) async fn rename(s: &mut Session, from: &str, to: &str) -> HostResult<()> {
    s.run(&format!("rename {from} to {to}"), async |ftp| {
        ftp.rename(from, to).await
    })
    .await
    .map_err(HostError::from)
}

/// `mkdir -p`: find the deepest folder that exists, then create the rest one by one.
pub(super) async fn create_dir_all(s: &mut Session, p: &str) -> HostResult<()> {
    let mut missing = Vec::new();
    let mut cur = p.trim_end_matches('/').to_string();
    while !cur.is_empty() && cur != "/" && !is_dir(s, &cur).await? {
        let up = path::parent(&cur).to_string();
        missing.push(cur);
        cur = up;
    }
    for dir in missing.into_iter().rev() {
        match s
            .run(&format!("create folder {dir}"), async |ftp| ftp.mkdir(&dir).await)
            .await
        {
            Ok(()) => {}
            // Created by someone else meanwhile is fine; anything else is a refusal.
            Err(f) if f.code.is_some_and(|c| c >= 500) => {
                if !is_dir(s, &dir).await? {
                    return Err(f.with_kind(ErrorKind::Permanent).error);
                }
            }
            Err(f) => return Err(f.error),
        }
    }
    Ok(())
}
