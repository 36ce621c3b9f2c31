//! Processes from the configuration: each `[[task.steps]]` table (a [`Step`] of the
//! configuration crate, which cannot depend on this one) built through its process's own
//! constructor. [`check`] is what the scheduler runs at `ferry apply`
//! ([`ferry_config::RawConfig::validate_with`]); [`build`] is what the transfer service runs
//! for each batch, with the node's certificate store and environment.

use std::sync::Arc;
use std::time::Duration;

use ferry_config::steps::{CertsOptions, CommandIo, StepProblem, StepProcess, StepScope};
use ferry_config::{Step, Template};

use crate::archive::{Unzip, UnzipLimits, Zip};
use crate::bundle::{ConfigBundle, MakeBundle};
use crate::certs::{CertSink, CertsBackup, CertsRestore};
use crate::checksum::Checksum;
use crate::command::{Command, Io};
use crate::keys::Secret;
use crate::openpgp::{Decrypt, Encrypt, Sign, Verify};
use crate::rename::Rename;
use crate::replace::FindReplace;
use crate::{Process, Scope};

/// What building a step may need from the node running it.
pub struct Node<'a> {
    /// The node's certificate stores, for Certs Restore (`None`: not available here).
    pub certs: Option<Arc<dyn CertSink>>,
    /// Looks up an environment variable of the running service (Certs passwords).
    pub env: &'a (dyn Fn(&str) -> Option<String> + Sync),
    /// Looks up a parameter of the task's run, a secure one opened (Certs passwords); `Err`
    /// says why it has no value here.
    pub param: &'a (dyn Fn(&str) -> Result<String, String> + Sync),
    /// Makes the node's configuration bundle (`config-bundle`; `None`: not available here).
    pub bundle: Option<MakeBundle>,
}

/// Whether `step` can be built: everything its process's constructor checks. Secrets that live
/// on the node (a password's environment variable) are not looked up here.
pub fn check(step: &Step) -> Result<(), StepProblem> {
    let node = Node {
        certs: Some(Arc::new(crate::certs::MemoryCertStore::default())),
        env: &|_| Some("checked-at-apply".into()),
        param: &|_| Ok("checked-at-apply".into()),
        bundle: Some(Arc::new(|| Ok(Vec::new()))),
    };
    build(step, &node).map(drop)
}

/// The step's scope as this crate names it.
pub fn scope(step: &Step) -> Scope {
    match step.scope {
        StepScope::PerFile => Scope::PerFile,
        StepScope::PerTask => Scope::PerTask,
    }
}

fn problem(option: &str, value: impl Into<String>, message: impl Into<String>) -> StepProblem {
    StepProblem {
        option: option.into(),
        value: value.into(),
        message: message.into(),
    }
}

fn template(t: &Option<Template>) -> Option<Template> {
    t.clone()
}

/// Builds the process of `step`. Errors name the option and its value.
pub fn build(step: &Step, node: &Node<'_>) -> Result<Box<dyn Process>, StepProblem> {
    Ok(match &step.process {
        StepProcess::Zip(o) => Box::new(
            Zip::new(o.name.as_str(), o.level).map_err(|e| problem("level", o.level.to_string(), e))?,
        ),
        StepProcess::Unzip(o) => {
            if o.max_entries == 0 {
                return Err(problem("max_entries", "0", "must be at least 1"));
            }
            if o.max_expanded_bytes == 0 {
                return Err(problem("max_expanded_bytes", "0", "must be at least 1"));
            }
            Box::new(Unzip {
                limits: UnzipLimits {
                    max_entries: o.max_entries,
                    max_expanded_bytes: o.max_expanded_bytes,
                },
            })
        }
        StepProcess::Rename(o) => {
            Box::new(Rename::new(o.name.as_str()).map_err(|e| problem("name", o.name.as_str(), e))?)
        }
        StepProcess::Checksum(_) => Box::new(Checksum),
        StepProcess::Replace(o) => {
            let mut r = if o.regex {
                FindReplace::regex(&o.find, &o.replace, o.ignore_case)
            } else {
                FindReplace::literal(&o.find, &o.replace, o.ignore_case)
            }
            .map_err(|e| problem("find", &o.find, e))?;
            if o.max_line_bytes == 0 {
                return Err(problem("max_line_bytes", "0", "must be at least 1"));
            }
            r.max_line_bytes = usize::try_from(o.max_line_bytes).unwrap_or(usize::MAX);
            Box::new(r)
        }
        StepProcess::Command(o) => {
            let args: Vec<&str> = o.args.iter().map(String::as_str).collect();
            let mut c = Command::new(&o.program, &args).map_err(|e| {
                let field = if e.contains("args[") { "args" } else { "program" };
                problem(field, &o.program, e)
            })?;
            for (name, value) in &o.env {
                c = c
                    .env(name, value)
                    .map_err(|e| problem(&format!("env.{name}"), value, e))?;
            }
            c.inherit_env = o.inherit_env;
            c.io = match o.io {
                CommandIo::Path => Io::Path,
                CommandIo::Stdio => Io::Stdio,
            };
            c.timeout = Duration::from_secs(o.timeout_secs);
            c.capture_bytes = usize::try_from(o.capture_bytes).unwrap_or(usize::MAX);
            Box::new(c)
        }
        StepProcess::PgpEncrypt(o) => {
            if o.recipients.is_empty() || o.recipients.iter().any(|r| r.trim().is_empty()) {
                return Err(problem(
                    "recipients",
                    format!("{:?}", o.recipients),
                    "needs at least one key selector, none blank",
                ));
            }
            Box::new(Encrypt {
                recipients: o.recipients.clone(),
                signer: o.signer.clone(),
                armor: o.armor,
                name: template(&o.name),
            })
        }
        StepProcess::PgpDecrypt(o) => Box::new(Decrypt {
            require_signer: o.require_signer.clone(),
            name: template(&o.name),
            max_bytes: o.max_bytes,
        }),
        StepProcess::PgpSign(o) => {
            if o.signer.trim().is_empty() {
                return Err(problem(
                    "signer",
                    &o.signer,
                    "is blank: name the secret key to sign with",
                ));
            }
            Box::new(Sign {
                signer: o.signer.clone(),
                armor: o.armor,
                detached: o.detached,
                name: template(&o.name),
            })
        }
        StepProcess::PgpVerify(o) => Box::new(Verify {
            signer: o.signer.clone(),
            name: template(&o.name),
            max_bytes: o.max_bytes,
        }),
        StepProcess::CertsBackup(o) => {
            let (option, value, password) = password(o, node)?;
            let mut b = CertsBackup::new(password).map_err(|e| problem(option, value, e))?;
            for (option, name) in [("personal_name", &o.personal_name), ("other_name", &o.other_name)] {
                crate::file::check_name(name).map_err(|e| problem(option, name, e))?;
            }
            b.personal_name = o.personal_name.clone();
            b.other_name = o.other_name.clone();
            Box::new(b)
        }
        StepProcess::ConfigBundle(o) => {
            crate::file::check_name(&o.name).map_err(|e| problem("name", &o.name, e))?;
            let Some(make) = node.bundle.clone() else {
                return Err(problem("", "", "this node cannot make a configuration bundle"));
            };
            Box::new(ConfigBundle {
                name: o.name.clone(),
                make,
            })
        }
        StepProcess::CertsRestore(o) => {
            let (.., password) = password(o, node)?;
            let Some(sink) = node.certs.clone() else {
                return Err(problem(
                    "",
                    "",
                    "this node has no certificate store to restore into",
                ));
            };
            Box::new(CertsRestore { password, sink })
        }
    })
}

/// A Certs step's password, with the option it came from: a parameter (`password_param`) or
/// an environment variable of the service (`password_env`), exactly one of them.
fn password<'o>(
    o: &'o CertsOptions,
    node: &Node<'_>,
) -> Result<(&'static str, &'o str, Secret), StepProblem> {
    let found = match (&o.password_param, &o.password_env) {
        (Some(name), None) => (
            "password_param",
            name.as_str(),
            (node.param)(name).map_err(|why| problem("password_param", name, why))?,
        ),
        (None, Some(var)) => {
            if var.is_empty() || var.contains('=') || var.contains('\0') {
                return Err(problem(
                    "password_env",
                    var,
                    "is not a valid environment variable name",
                ));
            }
            let value = (node.env)(var).unwrap_or_default();
            ("password_env", var.as_str(), value)
        }
        _ => {
            return Err(problem(
                "password_param",
                "",
                "set exactly one of password_param (a secure parameter) and password_env",
            ));
        }
    };
    let (option, value, password) = found;
    if password.is_empty() {
        return Err(problem(
            option,
            value,
            match option {
                "password_env" => "is not set (or empty) in the transfer service's environment",
                _ => "is empty",
            },
        ));
    }
    Ok((option, value, Secret::new(password)))
}
