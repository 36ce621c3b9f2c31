//! Classifying what the `smb` crate and the server report: NTSTATUS codes by number (the
//! crate's own table is partial and mislabels a few), transport failures as transient.
//!
//! The crate flattens errors of reads, writes and flushes into `std::io::Error::other(text)`;
//! for those the status is recovered from the text (`… status: Access Denied (0xc0000022).`),
//! which is the only place its number survives.

use crate::ErrorKind;

/// One NTSTATUS the host knows by name: its number, its name as servers log it, and what a
/// caller should do about it.
struct Known {
    code: u32,
    name: &'static str,
    kind: ErrorKind,
}

const fn known(code: u32, name: &'static str, kind: ErrorKind) -> Known {
    Known { code, name, kind }
}

use ErrorKind::{NotFound, Permanent, Transient};

/// NTSTATUS values (MS-ERREF 2.3.1) an SMB file server answers with.
const KNOWN: &[Known] = &[
    known(0xC000_006D, "STATUS_LOGON_FAILURE", Permanent),
    known(0xC000_0022, "STATUS_ACCESS_DENIED", Permanent),
    known(0xC000_006E, "STATUS_ACCOUNT_RESTRICTION", Permanent),
    known(0xC000_006F, "STATUS_INVALID_LOGON_HOURS", Permanent),
    known(0xC000_0070, "STATUS_INVALID_WORKSTATION", Permanent),
    known(0xC000_0071, "STATUS_PASSWORD_EXPIRED", Permanent),
    known(0xC000_0072, "STATUS_ACCOUNT_DISABLED", Permanent),
    known(0xC000_0064, "STATUS_NO_SUCH_USER", Permanent),
    known(0xC000_0193, "STATUS_ACCOUNT_EXPIRED", Permanent),
    known(0xC000_0224, "STATUS_PASSWORD_MUST_CHANGE", Permanent),
    known(0xC000_0234, "STATUS_ACCOUNT_LOCKED_OUT", Permanent),
    known(0xC000_0061, "STATUS_PRIVILEGE_NOT_HELD", Permanent),
    known(0xC000_A000, "STATUS_INVALID_SIGNATURE", Permanent),
    known(0xC000_0034, "STATUS_OBJECT_NAME_NOT_FOUND", NotFound),
    known(0xC000_003A, "STATUS_OBJECT_PATH_NOT_FOUND", NotFound),
    known(0xC000_000F, "STATUS_NO_SUCH_FILE", NotFound),
    known(0xC000_00CC, "STATUS_BAD_NETWORK_NAME", NotFound),
    known(0xC000_007F, "STATUS_DISK_FULL", Permanent),
    known(0xC000_0044, "STATUS_QUOTA_EXCEEDED", Permanent),
    known(0xC000_00A2, "STATUS_MEDIA_WRITE_PROTECTED", Permanent),
    known(0xC000_0035, "STATUS_OBJECT_NAME_COLLISION", Permanent),
    known(0xC000_0033, "STATUS_OBJECT_NAME_INVALID", Permanent),
    known(0xC000_003B, "STATUS_OBJECT_PATH_SYNTAX_BAD", Permanent),
    known(0xC000_0103, "STATUS_NOT_A_DIRECTORY", Permanent),
    known(0xC000_00BA, "STATUS_FILE_IS_A_DIRECTORY", Permanent),
    known(0xC000_0101, "STATUS_DIRECTORY_NOT_EMPTY", Permanent),
    known(0xC000_0011, "STATUS_END_OF_FILE", Permanent),
    known(0xC000_00BB, "STATUS_NOT_SUPPORTED", Permanent),
    known(0xC000_0002, "STATUS_NOT_IMPLEMENTED", Permanent),
    known(0xC000_000D, "STATUS_INVALID_PARAMETER", Permanent),
    known(0xC000_0001, "STATUS_UNSUCCESSFUL", Permanent),
    known(0xC000_0257, "STATUS_PATH_NOT_COVERED", Permanent),
    known(0xC000_0043, "STATUS_SHARING_VIOLATION", Transient),
    known(0xC000_0054, "STATUS_FILE_LOCK_CONFLICT", Transient),
    known(0xC000_0056, "STATUS_DELETE_PENDING", Transient),
    known(0xC000_009A, "STATUS_INSUFFICIENT_RESOURCES", Transient),
    known(0xC000_00B5, "STATUS_IO_TIMEOUT", Transient),
    known(0xC000_00C9, "STATUS_NETWORK_NAME_DELETED", Transient),
    known(0xC000_00D0, "STATUS_REQUEST_NOT_ACCEPTED", Transient),
    known(0xC000_0120, "STATUS_CANCELLED", Transient),
    known(0xC000_0203, "STATUS_USER_SESSION_DELETED", Transient),
    known(0xC000_020C, "STATUS_CONNECTION_DISCONNECTED", Transient),
    known(0xC000_020D, "STATUS_CONNECTION_RESET", Transient),
    known(0xC000_035C, "STATUS_NETWORK_SESSION_EXPIRED", Transient),
];

pub const LOGON_FAILURE: u32 = 0xC000_006D;
pub const ACCESS_DENIED: u32 = 0xC000_0022;
pub const OBJECT_NAME_NOT_FOUND: u32 = 0xC000_0034;
pub const OBJECT_PATH_NOT_FOUND: u32 = 0xC000_003A;
pub const NO_SUCH_FILE: u32 = 0xC000_000F;
pub const BAD_NETWORK_NAME: u32 = 0xC000_00CC;
pub const OBJECT_NAME_COLLISION: u32 = 0xC000_0035;
pub const NOT_A_DIRECTORY: u32 = 0xC000_0103;
pub const FILE_IS_A_DIRECTORY: u32 = 0xC000_00BA;

/// What went wrong, as far as the host can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: ErrorKind,
    /// The NTSTATUS the server answered with, if it answered.
    pub status: Option<u32>,
    /// The server's (or the transport's) own words.
    pub text: String,
}

impl Failure {
    pub fn is(&self, status: u32) -> bool {
        self.status == Some(status)
    }

    pub fn is_not_found(&self) -> bool {
        matches!(
            self.status,
            Some(OBJECT_NAME_NOT_FOUND | OBJECT_PATH_NOT_FOUND | NO_SUCH_FILE)
        )
    }

    /// A failure of the connection rather than of one file: the connection must not be used
    /// again.
    pub fn breaks_connection(&self) -> bool {
        self.kind == Transient
            && !matches!(
                self.status,
                // File-level conditions on a healthy connection.
                Some(0xC000_0043 | 0xC000_0054 | 0xC000_0056)
            )
    }

    pub fn timeout(secs: u64) -> Failure {
        Failure {
            kind: Transient,
            status: None,
            text: format!("no answer within {secs} s (the server stopped responding)"),
        }
    }
}

/// `STATUS_LOGON_FAILURE (0xc000006d)`, or the bare number for a status without a name here.
pub fn describe(code: u32) -> String {
    match KNOWN.iter().find(|k| k.code == code) {
        Some(k) => format!("{} ({code:#010x})", k.name),
        None => format!("NTSTATUS {code:#010x}"),
    }
}

/// Classify an NTSTATUS. Unknown error statuses are permanent: a retry of the same request
/// gets the same answer.
pub fn status_failure(code: u32) -> Failure {
    let kind = KNOWN
        .iter()
        .find(|k| k.code == code)
        .map_or(Permanent, |k| k.kind);
    Failure {
        kind,
        status: Some(code),
        text: describe(code),
    }
}

/// Classify an error of the `smb` crate.
pub fn classify(e: &smb::Error) -> Failure {
    use smb::Error as E;
    match e {
        E::ReceivedErrorMessage(code, _) | E::UnexpectedMessageStatus(code) => status_failure(*code),
        E::IoError(io) => classify_io(io),
        E::TransportError(_)
        | E::ConnectionStopped
        | E::OperationTimeout(..)
        | E::MessageProcessingError(_)
        | E::Cancelled(_)
        | E::JoinError(_)
        | E::LockError
        | E::AcquireError(_) => transient(e.to_string()),
        // The crate refuses an asynchronous answer (STATUS_PENDING) to requests it does not
        // expect one for (a rename or close the server delays to break another client's
        // lease); the connection's accounting is off after it, and a retry may succeed.
        E::InvalidArgument(m) if m.contains("Async command is not allowed") => transient(e.to_string()),
        other => Failure {
            kind: Permanent,
            status: None,
            text: other.to_string(),
        },
    }
}

/// Classify an I/O error from the crate's read, write and flush calls (whose statuses survive
/// only as text), or from the socket.
pub fn classify_io(e: &std::io::Error) -> Failure {
    let text = e.to_string();
    if let Some(code) = status_in_text(&text) {
        return status_failure(code);
    }
    let connection_words = [
        "connection is stopped",
        "Transport error",
        "timed out",
        "Failed to receive message",
        "IO Error",
        "Not connected",
        // The connection's worker task ended (the server went away mid-request).
        "Message processing failed",
        "Failed to send message to worker",
    ];
    let kind = match ErrorKind::of_io(e.kind()) {
        Permanent
            if e.kind() != std::io::ErrorKind::PermissionDenied
                && connection_words.iter().any(|w| text.contains(w)) =>
        {
            Transient
        }
        kind => kind,
    };
    if kind == Transient {
        return transient(text);
    }
    Failure {
        kind,
        status: None,
        text,
    }
}

/// A failure of the connection, said plainly, with the crate's words in brackets.
fn transient(text: String) -> Failure {
    let plain = if text.contains("timed out") || text.contains("Timed out") {
        "the server stopped answering"
    } else if text.contains("refused") {
        "the server refused the connection"
    } else {
        "the connection was lost"
    };
    Failure {
        kind: Transient,
        status: None,
        text: format!("{plain} ({text})"),
    }
}

/// The NTSTATUS in the crate's text for a status error: `status: <name> (0x…).` or
/// `status: 0x….`.
fn status_in_text(text: &str) -> Option<u32> {
    let rest = &text[text.find("status: ")? + "status: ".len()..];
    let start = rest.find("0x")? + 2;
    let hex: String = rest[start..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    u32::from_str_radix(&hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_by_number() {
        for (code, kind) in [
            (LOGON_FAILURE, Permanent),
            (ACCESS_DENIED, Permanent),
            (OBJECT_NAME_NOT_FOUND, NotFound),
            (OBJECT_PATH_NOT_FOUND, NotFound),
            (BAD_NETWORK_NAME, NotFound),
            (0xC000_007F, Permanent),
            (0xC000_0044, Permanent),
            (0xC000_0203, Transient),
            (0xC000_9999, Permanent),
        ] {
            assert_eq!(status_failure(code).kind, kind, "{code:#x}");
        }
        assert_eq!(describe(0xC000_007F), "STATUS_DISK_FULL (0xc000007f)");
        assert_eq!(describe(0xC000_9999), "NTSTATUS 0xc0009999");
    }

    #[test]
    fn statuses_survive_the_crates_io_errors() {
        let e = std::io::Error::other(
            "Server returned an error message with status: Access Denied (0xc0000022).",
        );
        let f = classify_io(&e);
        assert_eq!((f.kind, f.status), (Permanent, Some(ACCESS_DENIED)));
        let e = std::io::Error::other("Unexpected message status: 0xc000007f.");
        assert_eq!(classify_io(&e).status, Some(0xC000_007F));
        let e = std::io::Error::other("Client connection is stopped");
        assert_eq!(classify_io(&e).kind, Transient);
        let e = std::io::Error::other("Operation timed out: ReceiveNextMessage, took >2s");
        assert_eq!(classify_io(&e).kind, Transient);
        let e = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "No write permission");
        assert_eq!(classify_io(&e).kind, Permanent);
    }
}
