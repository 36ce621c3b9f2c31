//! The one error type every process returns, classified so the caller can branch.

use std::time::Duration;

/// Why a process step failed. Every variant names the process, the file (its logical name, as
/// the source listed it or an earlier step named it) and the reason, so the message alone is a
/// useful line in a run record: `unzip "evil.zip": entry "../../x" leaves the output folder`.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The file (or a setting applied to it) is wrong: a corrupt archive, a zip-slip entry, a
    /// message for a key the node does not hold, a bad signature, binary input to a text process.
    /// Retrying the same file cannot help.
    #[error("{process} {file:?}: {reason}")]
    BadInput {
        process: &'static str,
        file: String,
        reason: String,
    },
    /// A configured limit was reached (expanded size, entry count, line length): the process
    /// stopped as soon as it was reached, not after writing the rest.
    #[error("{process} {file:?}: {reason}")]
    LimitExceeded {
        process: &'static str,
        file: String,
        reason: String,
    },
    /// The step ran longer than its timeout and was stopped (a command: its whole process group
    /// killed).
    #[error("{process} {file:?}: timed out after {}", humantime_secs(*.after))]
    Timeout {
        process: &'static str,
        file: String,
        after: Duration,
    },
    /// The step ran and reported failure (a custom command's exit code).
    #[error("{process} {file:?}: {reason}")]
    Failed {
        process: &'static str,
        file: String,
        reason: String,
    },
    /// The key source could not answer (the cert-handler did not reply): worth retrying later,
    /// unlike a key that is not in the ring (that is [`ProcessError::BadInput`]).
    #[error("{process} {file:?}: {reason}")]
    KeysUnavailable {
        process: &'static str,
        file: String,
        reason: String,
    },
    /// Ferry's own side failed: the spool folder could not be written, a thread panicked.
    #[error("{process} {file:?}: {reason}")]
    Internal {
        process: &'static str,
        file: String,
        reason: String,
    },
}

/// How a caller treats a [`ProcessError`] (and how a run record shows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    BadInput,
    LimitExceeded,
    Timeout,
    Failed,
    KeysUnavailable,
    Internal,
}

impl ProcessError {
    pub fn class(&self) -> ErrorClass {
        match self {
            ProcessError::BadInput { .. } => ErrorClass::BadInput,
            ProcessError::LimitExceeded { .. } => ErrorClass::LimitExceeded,
            ProcessError::Timeout { .. } => ErrorClass::Timeout,
            ProcessError::Failed { .. } => ErrorClass::Failed,
            ProcessError::KeysUnavailable { .. } => ErrorClass::KeysUnavailable,
            ProcessError::Internal { .. } => ErrorClass::Internal,
        }
    }

    /// Whether running the same step on the same file again may succeed: only when the key
    /// source did not answer or Ferry's own side failed. Bad input stays bad.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProcessError::KeysUnavailable { .. } | ProcessError::Internal { .. }
        )
    }

    /// The file the error names.
    pub fn file(&self) -> &str {
        match self {
            ProcessError::BadInput { file, .. }
            | ProcessError::LimitExceeded { file, .. }
            | ProcessError::Timeout { file, .. }
            | ProcessError::Failed { file, .. }
            | ProcessError::KeysUnavailable { file, .. }
            | ProcessError::Internal { file, .. } => file,
        }
    }
}

fn humantime_secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Builds errors for one process and one file, so each call site states only the reason.
#[derive(Debug, Clone)]
pub(crate) struct Blame {
    pub process: &'static str,
    pub file: String,
}

impl Blame {
    pub fn new(process: &'static str, file: impl Into<String>) -> Self {
        Self {
            process,
            file: file.into(),
        }
    }
    pub fn bad_input(&self, reason: impl std::fmt::Display) -> ProcessError {
        ProcessError::BadInput {
            process: self.process,
            file: self.file.clone(),
            reason: reason.to_string(),
        }
    }
    pub fn limit(&self, reason: impl std::fmt::Display) -> ProcessError {
        ProcessError::LimitExceeded {
            process: self.process,
            file: self.file.clone(),
            reason: reason.to_string(),
        }
    }
    pub fn timeout(&self, after: Duration) -> ProcessError {
        ProcessError::Timeout {
            process: self.process,
            file: self.file.clone(),
            after,
        }
    }
    pub fn failed(&self, reason: impl std::fmt::Display) -> ProcessError {
        ProcessError::Failed {
            process: self.process,
            file: self.file.clone(),
            reason: reason.to_string(),
        }
    }
    pub fn internal(&self, reason: impl std::fmt::Display) -> ProcessError {
        ProcessError::Internal {
            process: self.process,
            file: self.file.clone(),
            reason: reason.to_string(),
        }
    }
    /// An I/O error while `doing` something with Ferry's own files (spool, temp outputs).
    pub fn io<'a>(&'a self, doing: &'a str) -> impl FnOnce(std::io::Error) -> ProcessError + 'a {
        move |e| self.internal(format!("{doing}: {e}"))
    }
    /// A key-source error: "not found" is bad input (the message names a key the ring does not
    /// hold), "unavailable" is worth a retry.
    pub fn key(&self, e: crate::keys::KeyError) -> ProcessError {
        match e {
            crate::keys::KeyError::Unavailable(reason) => ProcessError::KeysUnavailable {
                process: self.process,
                file: self.file.clone(),
                reason: format!("the key source did not answer: {reason}"),
            },
            other => self.bad_input(other),
        }
    }
}
