//! `config-bundle` (PER-TASK): writes the node's configuration bundle — what `ferry config
//! export` writes (issue 12) — as one output file, so a task ships it to a standby's folder over
//! any of Ferry's hosts. The bundle itself is made by the service running the step (it reads the
//! node's stores over NATS); this process only names it and hands it on.
//!
//! Invariants: the output is a whole bundle or nothing (the step fails and delivers nothing);
//! files collected by the task, if any, go on beside it.

use std::io::Write;
use std::sync::Arc;

use crate::error::Blame;
use crate::file::{File, OutputFile};
use crate::{Context, Process, ProcessError, StepOutput};

/// Makes the bundle's bytes; `Err` says why not.
pub type MakeBundle = Arc<dyn Fn() -> Result<Vec<u8>, String> + Send + Sync>;

pub struct ConfigBundle {
    /// The output's file name.
    pub name: String,
    pub make: MakeBundle,
}

impl std::fmt::Debug for ConfigBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigBundle")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Process for ConfigBundle {
    fn name(&self) -> &'static str {
        "config-bundle"
    }

    fn run(&self, inputs: Vec<File>, ctx: &Context<'_>) -> Result<StepOutput, ProcessError> {
        let blame = Blame::new(self.name(), self.name.clone());
        let bytes = (self.make)().map_err(|e| blame.failed(format!("the bundle cannot be made: {e}")))?;
        let mut out = OutputFile::create(ctx.work_dir).map_err(blame.io("create the bundle"))?;
        out.write_all(&bytes).map_err(blame.io("write the bundle"))?;
        let bundle = out.finish(&self.name).map_err(blame.io("finish the bundle"))?;
        let mut files = inputs;
        files.push(bundle);
        Ok(StepOutput {
            files,
            log: format!("bundle of {} bytes\n", bytes.len()),
        })
    }
}
