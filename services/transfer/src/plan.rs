//! Where each file goes: destination folders and names rendered from the task's templates.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ferry_config::{Destination, MacroContext, Overwrite};
use ferry_wire::FileItem;

/// Where one destination's file goes.
#[derive(Debug, Clone)]
pub struct Planned {
    pub dir: PathBuf,
    pub final_path: PathBuf,
    pub temp_path: PathBuf,
    pub overwrite: Overwrite,
}

pub fn source_path(item: &FileItem) -> PathBuf {
    Path::new(&item.source.folder).join(&item.source.rel_path)
}

/// Render the destination folder and file name for `item`.
pub fn plan(item: &FileItem, index: usize, dest: &Destination) -> Result<Planned, String> {
    let orig_name = Path::new(&item.source.rel_path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let run_id = item.run_id.to_string();
    let ctx = MacroContext {
        orig_name: &orig_name,
        task: &item.task,
        run_id: &run_id,
        time: item.run_started_at.with_timezone(&chrono::Local),
    };
    let mut dir = PathBuf::from(dest.folder.render(&ctx));
    if dest.relative_subdirs
        && let Some(parent) = Path::new(&item.source.rel_path).parent()
    {
        dir.push(parent);
    }
    let name = dest.file_name.render(&ctx);
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(format!(
            "file name template {:?} expands to {name:?}",
            dest.file_name.as_str()
        ));
    }
    let temp_name = ferry_hosts::path::temp_name(&item.item_id, index);
    Ok(Planned {
        final_path: dir.join(&name),
        temp_path: dir.join(temp_name),
        dir,
        overwrite: dest.overwrite,
    })
}

/// Make sure the destination folder exists (creating it when allowed).
pub fn prepare_dir(planned: &Planned, create: bool) -> Result<(), String> {
    match fs::metadata(&planned.dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!(
            "destination folder {} is not a directory",
            planned.dir.display()
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound && create => fs::create_dir_all(&planned.dir)
            .map_err(|e| format!("create destination folder {}: {e}", planned.dir.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(format!(
            "destination folder {} does not exist (create_dirs = false)",
            planned.dir.display()
        )),
        Err(e) => Err(format!("destination folder {}: {e}", planned.dir.display())),
    }
}
