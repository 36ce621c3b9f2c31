//! `/`-separated host paths, and the rule that keeps a listed name inside its folder.
//!
//! Paths travel as `str`, but a POSIX file name is bytes and need not be UTF-8. Such a name is
//! carried losslessly: each byte of an invalid sequence is written as NUL and two lowercase hex
//! digits (`caf\xe9.csv` → `"caf\0e9.csv"`). No real file name contains NUL, so an escaped name
//! never collides with a real one; [`bytes`] and [`os`] give the name back, [`from_bytes`]
//! makes it, and hosts whose names are strings (every kind but `local`) refuse it by name
//! ([`crate::Capabilities::byte_names`]).

use std::borrow::Cow;
use std::path::PathBuf;

/// The `str` form of a name or path that may not be UTF-8 (see the module's doc).
pub fn from_bytes(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push('\0');
            out.push_str(&format!("{b:02x}"));
        }
    }
    out
}

/// The bytes of a name or path in its `str` form (undoing [`from_bytes`]). A NUL that does not
/// start an escape stays a NUL (which [`confine`] refuses).
pub fn bytes(name: &str) -> Cow<'_, [u8]> {
    if !name.contains('\0') {
        return Cow::Borrowed(name.as_bytes());
    }
    let mut out = Vec::with_capacity(name.len());
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        match escaped_byte(c, &chars) {
            Some(b) => {
                out.push(b);
                chars.nth(1);
            }
            None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    Cow::Owned(out)
}

/// A host path as a local file-system path (its bytes, escapes undone).
pub fn os(path: &str) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(&bytes(path)))
}

/// Whether a name is UTF-8 as it stands (holds no escaped bytes).
pub fn is_utf8(name: &str) -> bool {
    !name.contains('\0')
}

/// Whether every NUL in `name` starts an escape that [`from_bytes`] itself would have written:
/// one name, one spelling (`é` cannot also arrive as its two escaped bytes).
/// (A NUL byte itself is no file name's.)
fn escapes_canonical(name: &str) -> bool {
    if is_utf8(name) {
        return true;
    }
    let raw = bytes(name);
    !raw.contains(&0) && from_bytes(&raw) == name
}

/// A name's length on a file system: its bytes, escapes undone.
pub fn byte_len(name: &str) -> usize {
    bytes(name).len()
}

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
/// empty, `.` and `..` components, NUL (other than [`from_bytes`]'s escapes) and backslashes (a
/// separator on Windows shares), and components longer than 255 bytes. The error says why, for
/// the file's result.
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
    if !escapes_canonical(rel) {
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
            p if byte_len(p) > 255 => {
                return Err(format!("{} has a component longer than 255 bytes", shown(rel)));
            }
            _ => {}
        }
    }
    Ok(rel)
}

/// A name from a listing or a message, as it may appear in an error or a log: quoted, escaped as
/// Rust's `Debug` escapes it (control characters, quotes, backslashes), the bytes of a name that
/// is not UTF-8 as `\xNN`, at most 200 characters (a hostile name may be a megabyte).
pub fn shown(name: &str) -> String {
    const MAX: usize = 200;
    let mut out = String::new();
    let mut chars = name.chars();
    let mut taken = 0;
    while let Some(c) = chars.next() {
        if taken == MAX {
            out.push('…');
            break;
        }
        taken += 1;
        if let Some(b) = escaped_byte(c, &chars) {
            out.push_str(&format!("\\x{b:02x}"));
            chars.nth(1);
            continue;
        }
        out.extend(c.escape_debug());
    }
    format!("\"{out}\"")
}

/// The byte a [`from_bytes`] escape stands for, when `c` (followed by `rest`) starts one.
fn escaped_byte(c: char, rest: &std::str::Chars<'_>) -> Option<u8> {
    if c != '\0' {
        return None;
    }
    let hex = rest.as_str().get(..2)?;
    hex.bytes()
        .all(|h| h.is_ascii_digit() || (b'a'..=b'f').contains(&h))
        .then(|| u8::from_str_radix(hex, 16).ok())
        .flatten()
}

/// Text from a listing, a message or the store as a terminal or a log line gets it: control
/// characters and bidirectional overrides (which could fake or hide what follows) escaped, the
/// bytes of a name that is not UTF-8 as `\xNN`, everything else as is.
pub fn printable(text: &str) -> String {
    let hidden = |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(hidden) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if let Some(b) = escaped_byte(c, &chars) {
            out.push_str(&format!("\\x{b:02x}"));
            chars.nth(1);
            continue;
        }
        if hidden(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
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
            "a\0zz",
            // `é` spelled as escaped bytes: one name has one spelling.
            "caf\0c3\0a9",
            "a\0",
        ] {
            assert!(confine(bad).is_err(), "{bad:?} must be refused");
        }
        let long = "x".repeat(256);
        assert!(confine(&long).is_err());
        for good in ["a.csv", "sub/a.csv", "..a", "a..", ".hidden", &"x".repeat(255)] {
            assert_eq!(confine(good), Ok(good));
        }
    }

    #[test]
    fn names_that_are_not_utf8_round_trip_and_are_shown_as_bytes() {
        let raw: &[u8] = b"caf\xe9/\xff\xfe-\xc3(.csv";
        let name = from_bytes(raw);
        assert_eq!(name, "caf\0e9/\0ff\0fe-\0c3(.csv");
        assert_eq!(&*bytes(&name), raw);
        assert_eq!(confine(&name), Ok(name.as_str()));
        assert!(!is_utf8(&name));
        assert_eq!(shown(&name), r#""caf\xe9/\xff\xfe-\xc3(.csv""#);
        assert_eq!(from_bytes("é.csv".as_bytes()), "é.csv");
        // 255 bytes that are not UTF-8 are a valid name (765 characters escaped); 256 are not.
        let long = from_bytes(&[0xff; 255]);
        assert_eq!(byte_len(&long), 255);
        assert_eq!(confine(&long), Ok(long.as_str()));
        assert!(confine(&from_bytes(&[0xff; 256])).is_err());
        assert_eq!(os(&name).as_os_str().len(), raw.len());
        assert_eq!(shown("a\0b"), r#""a\0b""#);
        assert_eq!(
            printable("red\u{1b}[31m\nx\u{202e}y"),
            r"red\u{1b}[31m\nx\u{202e}y"
        );
        assert_eq!(printable("plain é"), "plain é");
        assert_eq!(shown(&"é".repeat(300)).chars().count(), 203);
        assert_eq!(printable("caf\0e9"), r"caf\xe9");
    }
}
