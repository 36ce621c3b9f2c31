//! Rename: gives each file a new logical name from a macro template (`[OrigBase]_[yyyy][mm][dd].[OrigExt]`).
//! Nothing is copied: the bytes stay where they are, only the name the destinations will use
//! changes.
//!
//! The template is the configuration crate's [`Template`] (the same macros a destination's file
//! name uses), rendered with the file's base name as `[OrigName]`. A file in a subfolder (from
//! an archive) keeps its folder. Two files renamed to the same name in one step are refused: one
//! would silently replace the other at the destination.

use std::collections::HashSet;

use ferry_config::Template;

use crate::error::Blame;
use crate::file::check_name;
use crate::{Context, File, Process, ProcessError, StepOutput};

#[derive(Debug, Clone)]
pub struct Rename {
    pub template: Template,
}

impl Rename {
    /// Parses the template; an error names it and says what is wrong.
    pub fn new(template: &str) -> Result<Self, String> {
        Ok(Self {
            template: Template::parse(template).map_err(|e| format!("rename template {template:?} {e}"))?,
        })
    }
}

impl Process for Rename {
    fn name(&self) -> &'static str {
        "rename"
    }

    fn run(&self, inputs: Vec<File>, ctx: &Context<'_>) -> Result<StepOutput, ProcessError> {
        let mut seen = HashSet::new();
        let mut files = Vec::with_capacity(inputs.len());
        let mut log = String::new();
        for f in inputs {
            let blame = Blame::new(self.name(), f.name());
            let rendered = self.template.render(&ctx.macros(f.base_name()));
            let name = match f.name().rsplit_once('/') {
                Some((folder, _)) => format!("{folder}/{rendered}"),
                None => rendered,
            };
            check_name(&name).map_err(|e| {
                blame.bad_input(format!(
                    "template {:?} gives an unusable name: {e}",
                    self.template.as_str()
                ))
            })?;
            if !seen.insert(name.clone()) {
                return Err(blame.bad_input(format!(
                    "template {:?} gives {name:?} to more than one file",
                    self.template.as_str()
                )));
            }
            log.push_str(&format!("{} -> {name}\n", f.name()));
            files.push(f.renamed(name));
        }
        Ok(StepOutput { files, log })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Fixture;
    use crate::{NoKeys, run_steps};

    #[test]
    fn renames_with_macros_keeping_bytes_hash_and_folder() {
        let fx = Fixture::new();
        let ctx = fx.ctx(&NoKeys);
        let r = Rename::new("[OrigBase]_[yyyy][mm][dd].[OrigExt]").expect("valid");
        let run = run_steps(
            &[&r],
            vec![fx.input("report.csv", b"a,b\n"), fx.input("sub/x.txt", b"x")],
            &ctx,
        );
        let files = run.files.expect("renamed");
        let names: Vec<&str> = files.iter().map(|f| f.name()).collect();
        assert_eq!(names, ["report_20260304.csv", "sub/x_20260304.txt"]);
        assert_eq!(std::fs::read(files[0].path()).expect("read"), b"a,b\n");
        assert_eq!(run.reports[0].outputs[0].name, "report_20260304.csv");
        assert_eq!(
            run.reports[0].outputs[0].sha256,
            crate::file::hex_sha256(&crate::file::sha256_file(files[0].path()).expect("hash"))
        );
        assert!(fx.work_entries().is_empty(), "a rename writes nothing");
    }

    #[test]
    fn a_name_clash_or_an_unusable_name_is_refused() {
        let fx = Fixture::new();
        let ctx = fx.ctx(&NoKeys);
        let r = Rename::new("fixed.txt").expect("valid");
        let e = r
            .run(vec![fx.input("a", b"1"), fx.input("b", b"2")], &ctx)
            .expect_err("a clash");
        assert_eq!(
            e.to_string(),
            "rename \"b\": template \"fixed.txt\" gives \"fixed.txt\" to more than one file"
        );
        let r = Rename::new("../[OrigName]").expect("valid");
        let e = r.run(vec![fx.input("a", b"1")], &ctx).expect_err("escapes");
        assert_eq!(
            e.to_string(),
            "rename \"a\": template \"../[OrigName]\" gives an unusable name: \"../a\" has a \"..\" component"
        );
        assert!(
            Rename::new("[Nope]")
                .unwrap_err()
                .contains("unknown macro [Nope]")
        );
    }
}
