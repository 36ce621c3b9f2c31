//! Where each file comes from and goes: the source path rebuilt from its folder and its listed
//! (confined) relative path, and destination folders and names rendered from the task's
//! templates. Paths are host paths (`/`-separated strings), the same for every host kind.

use ferry_config::{Destination, MacroContext, Overwrite};
use ferry_hosts::path;
use ferry_wire::FileItem;

/// Where one destination's file goes.
#[derive(Debug, Clone)]
pub struct Planned {
    pub dir: String,
    /// Final file name (rendered).
    pub name: String,
    pub temp_name: String,
    /// `dir/name`, or a `name (n)` variant once `unique` picked one.
    pub final_path: String,
    pub overwrite: Overwrite,
    pub create_dirs: bool,
}

impl Planned {
    pub fn temp_path(&self) -> String {
        path::join(&self.dir, &self.temp_name)
    }
}

/// The source file's path on its host: its folder and the listed relative path, which must stay
/// beneath the folder (a hostile server may list `../../x`).
pub fn source_path(item: &FileItem) -> Result<String, String> {
    let rel = path::confine(&item.source.rel_path).map_err(|e| format!("source file refused: {e}"))?;
    Ok(path::join(&item.source.folder, rel))
}

/// Render destination `index` of `item`.
pub fn plan(item: &FileItem, index: usize, dest: &Destination) -> Result<Planned, String> {
    let rel = path::confine(&item.source.rel_path).map_err(|e| format!("source file refused: {e}"))?;
    let orig_name = path::file_name(rel);
    let run_id = item.run_id.to_string();
    let ctx = MacroContext {
        orig_name,
        task: &item.task,
        run_id: &run_id,
        time: item.run_started_at.with_timezone(&chrono::Local),
    };
    let folder = dest.folder.render(&ctx);
    if folder.split('/').any(|part| part == "..") {
        return Err(format!(
            "destination folder template {:?} expands to {folder:?}, which leaves its folder",
            dest.folder.as_str()
        ));
    }
    let mut dir = folder;
    if dest.relative_subdirs {
        let parent = path::parent(rel);
        if !parent.is_empty() {
            dir = path::join(&dir, parent);
        }
    }
    let name = dest.file_name.render(&ctx);
    if name.is_empty() || name.contains(['/', '\\', '\0']) || name == "." || name == ".." {
        return Err(format!(
            "file name template {:?} expands to {name:?}",
            dest.file_name.as_str()
        ));
    }
    if name.len() > 255 {
        return Err(format!(
            "file name template {:?} expands to a name of {} bytes (at most 255)",
            dest.file_name.as_str(),
            name.len()
        ));
    }
    Ok(Planned {
        temp_name: path::temp_name(&item.item_id, index),
        final_path: path::join(&dir, &name),
        dir,
        name,
        overwrite: dest.overwrite,
        create_dirs: dest.create_dirs,
    })
}

/// `name.ext` → `name (n).ext`, in the same folder.
pub fn unique_candidate(final_path: &str, n: u32) -> String {
    let name = path::file_name(final_path);
    let (base, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    path::join(path::parent(final_path), &format!("{base} ({n}){ext}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_keep_the_extension() {
        assert_eq!(unique_candidate("/d/a.csv", 2), "/d/a (2).csv");
        assert_eq!(unique_candidate("/d/README", 1), "/d/README (1)");
        assert_eq!(unique_candidate("/d/.hidden", 1), "/d/.hidden (1)");
        assert_eq!(unique_candidate("a.csv", 1), "a (1).csv");
    }
}
