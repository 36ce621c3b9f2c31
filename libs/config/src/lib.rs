//! Ferry's configuration model: hosts and tasks as operators write them (TOML), validated into
//! runtime types.
//!
//! Flow: TOML text → [`parse_toml`] → [`RawConfig`] → [`RawConfig::validate`] → [`Config`].
//! Invariant: a [`Config`] only exists validated; every error names the task (or host), the field
//! and the offending value, and all errors of a file are reported at once.

pub mod actions;
pub mod hosts;
pub mod mask;
pub mod model;
pub mod params;
pub mod schedule;
pub mod steps;
pub mod template;

pub use hosts::{
    AzureSpec, FtpMode, FtpSpec, FtpTls, Host, HostKeyCheck, HostKind, HostOptions, HostSpec, S3Spec,
    SEALED_PREFIX, SECRET_FIELDS, Secret, SftpSpec, SmbEncryption, SmbSpec, Verify,
};
pub use mask::MaskList;
pub use model::*;
pub use params::{ParamValue, Parameters};
pub use steps::{Step, StepProcess, StepScope};
pub use template::{MacroContext, NO_PARAMS, Template};

/// Whether a task or node name can be used as one NATS subject token and KV key segment:
/// 1–64 characters of ASCII letters, digits, `-` and `_`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConfigError {
    /// `task "NAME"`, `host "NAME"`, or empty for top-level problems.
    pub scope: String,
    /// Path of the field inside its task or host, e.g. `destination[1].folder`.
    pub field: String,
    /// The offending value as written (empty when the field is missing).
    pub value: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.scope.is_empty() {
            write!(f, "{}: ", self.scope)?;
        }
        if self.value.is_empty() && self.field.is_empty() {
            write!(f, "{}", self.message)
        } else if self.value.is_empty() {
            write!(f, "{}: {}", self.field, self.message)
        } else {
            write!(f, "{}: {:?} {}", self.field, self.value, self.message)
        }
    }
}

/// All problems found in one configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "configuration rejected ({n} problem{}); nothing was changed:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_subject_tokens() {
        assert!(is_valid_name("payroll-daily_2"));
        for bad in ["", "a.b", "a b", "a*", "a>", &"x".repeat(65)] {
            assert!(!is_valid_name(bad), "{bad:?} must be refused");
        }
    }
}
