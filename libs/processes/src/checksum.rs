//! Checksum: writes `<name>.sha256` beside each file, in `sha256sum` format
//! (`<64 hex digits>  <base name>\n`), so `sha256sum -c name.sha256` run in the destination
//! folder checks the file. The file itself passes through unchanged.

use std::io::Write;

use crate::error::Blame;
use crate::file::hex_sha256;
use crate::{Context, File, OutputFile, Process, ProcessError, StepOutput};

#[derive(Debug, Clone, Default)]
pub struct Checksum;

impl Process for Checksum {
    fn name(&self) -> &'static str {
        "checksum"
    }

    fn run(&self, inputs: Vec<File>, ctx: &Context<'_>) -> Result<StepOutput, ProcessError> {
        let mut files = Vec::with_capacity(inputs.len() * 2);
        for mut f in inputs {
            let blame = Blame::new(self.name(), f.name());
            if ctx.is_cancelled() {
                return Err(blame.internal("cancelled"));
            }
            let h = f.sha256().map_err(blame.io("hash the file"))?;
            let mut out = OutputFile::create(ctx.work_dir).map_err(blame.io("create the checksum file"))?;
            // sha256sum's text-mode line: two spaces, the name as it sits in the folder; a name
            // with a newline is escaped the way sha256sum does it (a leading backslash).
            let base = f.base_name();
            let line = if base.contains('\n') {
                format!("\\{}  {}", hex_sha256(&h), base.replace('\n', "\\n"))
            } else {
                format!("{}  {base}", hex_sha256(&h))
            };
            writeln!(out, "{line}").map_err(blame.io("write the checksum file"))?;
            let sum = out
                .finish(format!("{}.sha256", f.name()))
                .map_err(blame.io("finish the checksum file"))?;
            files.push(f);
            files.push(sum);
        }
        Ok(StepOutput {
            files,
            log: String::new(),
        })
    }
}
