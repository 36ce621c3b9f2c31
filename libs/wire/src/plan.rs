//! Where each file comes from and goes: the source path rebuilt from its folder and its listed
//! (confined) relative path, and destination folders and names rendered from the task's
//! templates. Paths are host paths (`/`-separated strings), the same for every host kind.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use ferry_config::{Destination, MacroContext, Overwrite};
use ferry_hosts::path;

use crate::{FileItem, Refused};

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
    /// Permission bits the delivered file gets (`None`: the source's, or a new file's default).
    pub mode: Option<u32>,
}

impl Planned {
    pub fn temp_path(&self) -> String {
        path::join(&self.dir, &self.temp_name)
    }

    /// The names `unique` tries at the commit, in order: the planned final path (a free name the
    /// prepare step found), then `name (1)`, `name (2)`, … of the rendered name. Counting from the
    /// rendered name, not from the planned one, matters when batches race for one name: a batch
    /// that planned `a (1).csv` and lost it to another goes on with `a (2).csv`, never
    /// `a (1) (1).csv`.
    pub fn unique_candidates(&self) -> impl Iterator<Item = String> + '_ {
        let rendered = path::join(&self.dir, &self.name);
        std::iter::once(self.final_path.clone()).chain(
            (1..)
                .map(move |k| unique_candidate(&rendered, k))
                .filter(move |c| *c != self.final_path),
        )
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
        params: &ferry_config::NO_PARAMS,
        error: None,
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
    // The rendered name is one component that stays in its folder ([`path::confine`] also keeps
    // the escaped bytes of a source name that is not UTF-8, and measures it in bytes).
    if path::byte_len(&name) > 255 {
        return Err(format!(
            "file name template {:?} expands to a name of {} bytes (at most 255)",
            dest.file_name.as_str(),
            path::byte_len(&name)
        ));
    }
    if name.contains('/') || path::confine(&name).is_err() {
        return Err(format!(
            "file name template {:?} expands to {}",
            dest.file_name.as_str(),
            path::shown(&name)
        ));
    }
    Ok(Planned {
        temp_name: path::temp_name(&item.item_id, index),
        final_path: path::join(&dir, &name),
        dir,
        name,
        overwrite: dest.overwrite,
        create_dirs: dest.create_dirs,
        mode: dest.mode,
    })
}

/// Two files of one run must never go to one path: the later would replace the earlier, and with
/// `delete_after` both sources would be gone (flattened subfolders, two sources with the same
/// names, a file name template without `[OrigName]`). For every destination whose policy is not
/// `unique` (which gives each file its own name), the later file of a colliding pair, in listing
/// order, is refused there before any byte moves; its source stays for the operator.
/// `folds_case(host)` names hosts whose file names ignore case (Windows shares).
pub fn refuse_collisions(items: &mut [FileItem], folds_case: impl Fn(&str) -> bool) {
    let mut first: HashMap<(String, String), String> = HashMap::new();
    for item in items.iter_mut() {
        let Ok(source) = source_path(item) else { continue };
        let mut refused = Vec::new();
        for (i, dest) in item.destinations.iter().enumerate() {
            if dest.overwrite == Overwrite::Unique {
                continue;
            }
            let Ok(p) = plan(item, i, dest) else { continue };
            let key = if folds_case(&dest.host) {
                p.final_path.to_lowercase()
            } else {
                p.final_path.clone()
            };
            let here = format!("{}:{source}", item.source.host);
            match first.entry((dest.host.clone(), key)) {
                Entry::Vacant(slot) => {
                    slot.insert(here);
                }
                Entry::Occupied(earlier) => refused.push(Refused {
                    index: i,
                    why: format!(
                        "{}:{} is also where {} of this run goes; not replaced (keep subfolders, \
                         put [OrigName] in the file name, or use overwrite: unique)",
                        dest.host,
                        p.final_path,
                        earlier.get()
                    ),
                    path: p.final_path,
                }),
            }
        }
        item.refused = refused;
    }
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

/// A work batch's id: a hash of its items' ids in order (unique per run, as they are). A batch
/// result answers for exactly the planned items, in order, when its items' ids hash to it.
pub fn batch_id<'a>(item_ids: impl IntoIterator<Item = &'a str>) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for id in item_ids {
        hasher.update(id.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..16])
}

/// 128 bits of SHA-256, hex: the ids of items and the keys of new-files-only state.
pub fn short_hash(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(bytes)[..16])
}

/// The new-files-only state of one source of a task: every key starts `nfo.<this>.`.
pub fn state_source_key(task: &str, host: &str, folder: &str) -> String {
    short_hash(format!("{task}\0{host}\0{}", folder.trim_end_matches('/')).as_bytes())
}

/// The new-files-only state key of one file (by its path relative to the source folder). The
/// collector puts it in the work item; transfer writes the state under it only if it is this.
pub fn state_key(source_key: &str, rel_path: &str) -> String {
    format!("nfo.{source_key}.{}", short_hash(rel_path.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(source_host: &str, rel: &str, dests: &[(&str, Overwrite)]) -> FileItem {
        FileItem {
            run_id: uuid::Uuid::nil(),
            task: "t".into(),
            epoch: 1,
            item_id: rel.into(),
            source: crate::SourceFile {
                source_index: 0,
                host: source_host.into(),
                folder: "/in".into(),
                rel_path: rel.into(),
                size: 1,
                mtime_ns: 0,
                state_key: None,
                delete_after: true,
            },
            destinations: dests
                .iter()
                .map(|(host, overwrite)| Destination {
                    host: host.to_string(),
                    folder: ferry_config::Template::parse("/out").expect("valid"),
                    file_name: ferry_config::Template::parse("[OrigName]").expect("valid"),
                    relative_subdirs: false,
                    create_dirs: true,
                    overwrite: *overwrite,
                    mode: None,
                })
                .collect(),
            run_started_at: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
            refused: Vec::new(),
        }
    }

    #[test]
    fn a_later_file_for_a_taken_path_is_refused_per_destination() {
        let dests = [
            ("win", Overwrite::Overwrite),
            ("sftp", Overwrite::Overwrite),
            ("s3", Overwrite::Unique),
        ];
        let mut items = vec![
            item("local", "a/Report.csv", &dests),
            item("local", "b/report.csv", &dests),
            item("local", "c/Report.csv", &dests),
        ];
        refuse_collisions(&mut items, |host| host == "win");
        assert!(items[0].refused.is_empty());
        // On the Windows share the names differ only in case: taken. On SFTP they differ.
        assert_eq!(items[1].refused.iter().map(|r| r.index).collect::<Vec<_>>(), [0]);
        assert!(
            items[1].refused[0]
                .why
                .contains("win:/out/report.csv is also where local:/in/a/Report.csv"),
            "{:?}",
            items[1].refused
        );
        // `unique` never refuses: each file gets its own name there.
        assert_eq!(
            items[2].refused.iter().map(|r| r.index).collect::<Vec<_>>(),
            [0, 1]
        );
        assert_eq!(items[2].refused[1].path, "/out/Report.csv");
    }

    #[test]
    fn racing_batches_count_from_the_rendered_name() {
        let planned = Planned {
            dir: "/d".into(),
            name: "report.csv".into(),
            temp_name: "t".into(),
            final_path: "/d/report (1).csv".into(),
            overwrite: Overwrite::Unique,
            create_dirs: false,
            mode: None,
        };
        let tried: Vec<String> = planned.unique_candidates().take(3).collect();
        assert_eq!(
            tried,
            ["/d/report (1).csv", "/d/report (2).csv", "/d/report (3).csv"]
        );
    }

    #[test]
    fn unique_names_keep_the_extension() {
        assert_eq!(unique_candidate("/d/a.csv", 2), "/d/a (2).csv");
        assert_eq!(unique_candidate("/d/README", 1), "/d/README (1)");
        assert_eq!(unique_candidate("/d/.hidden", 1), "/d/.hidden (1)");
        assert_eq!(unique_candidate("a.csv", 1), "a (1).csv");
    }
}
