//! `/`-separated host paths, and the rule that keeps a listed name inside its folder.

/// `folder` + `rel` with exactly one `/` between them (an empty folder is the host's root or
/// login folder).
pub fn join(folder: &str, rel: &str) -> String {
    let rel = rel.trim_start_matches('/');
    let trimmed = folder.trim_end_matches('/');
    match (folder.is_empty(), trimmed.is_empty(), rel.is_empty()) {
        (true, _, _) => rel.to_string(),
        (false, true, _) => format!("/{rel}"),
        (false, false, true) => trimmed.to_string(),
        (false, false, false) => format!("{trimmed}/{rel}"),
    }
}

/// The temporary name a transfer writes destination `dest` of item `item_id` under, in the final
/// folder. Fixed length (a 255-byte final name still has a valid temp name), hidden, and the same
/// for every attempt at the same file of the same run, so a retry finds an earlier attempt's temp.
pub fn temp_name(item_id: &str, dest: usize) -> String {
    format!(".ferry-{}-{dest}.part", &item_id[..item_id.len().min(16)])
}

/// Whether `name` is a transfer's temporary file, which no source may ever pick up (also the
/// `.<name>.ferry-<id>.part` names of versions before 0.2).
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".part") && name.contains(".ferry-")
}

/// The folder part of a path (`""` for a bare name, `/` for a file in the root).
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) => "/",
        Some(i) => &path[..i],
        None => "",
    }
}

/// The last component of a path.
pub fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Check a relative path that came from a listing (or a message) before it is joined to a
/// configured folder: it must stay beneath the folder. Refused: empty paths, absolute paths,
/// empty, `.` and `..` components, NUL and backslashes (a separator on Windows shares), and
/// components longer than 255 bytes. The error says why, for the file's result.
pub fn confine(rel: &str) -> Result<&str, String> {
    if rel.is_empty() {
        return Err("empty file name".into());
    }
    if rel.starts_with('/') {
        return Err(format!(
            "{} is an absolute path, not a name inside the folder",
            shown(rel)
        ));
    }
    if rel.contains('\0') {
        return Err(format!("{} contains a NUL byte", shown(rel)));
    }
    if rel.contains('\\') {
        return Err(format!(
            "{} contains a backslash, which Windows shares read as a folder separator",
            shown(rel)
        ));
    }
    for part in rel.split('/') {
        match part {
            "" => return Err(format!("{} has an empty path component", shown(rel))),
            "." | ".." => return Err(format!("{} leaves its folder ({part:?})", shown(rel))),
            p if p.len() > 255 => {
                return Err(format!("{} has a component longer than 255 bytes", shown(rel)));
            }
            _ => {}
        }
    }
    Ok(rel)
}

/// A name from a listing or a message, as it may appear in an error or a log: quoted, control
/// characters escaped, at most 200 characters (a hostile name may be a megabyte).
pub fn shown(name: &str) -> String {
    const MAX: usize = 200;
    let mut out: String = name.chars().take(MAX).flat_map(char::escape_debug).collect();
    if name.chars().nth(MAX).is_some() {
        out.push('…');
    }
    format!("\"{out}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_and_splits() {
        assert_eq!(join("/in/", "a/b.csv"), "/in/a/b.csv");
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("out", ""), "out");
        assert_eq!(parent("/in/a.csv"), "/in");
        assert_eq!(parent("/a.csv"), "/");
        assert_eq!(parent("a.csv"), "");
        assert_eq!(file_name("/in/a.csv"), "a.csv");
    }

    #[test]
    fn listed_names_cannot_leave_their_folder() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a/.",
            "..",
            "a\\..\\x",
            "a\0b",
        ] {
            assert!(confine(bad).is_err(), "{bad:?} must be refused");
        }
        let long = "x".repeat(256);
        assert!(confine(&long).is_err());
        for good in ["a.csv", "sub/a.csv", "..a", "a..", ".hidden", &"x".repeat(255)] {
            assert_eq!(confine(good), Ok(good));
        }
    }
}
