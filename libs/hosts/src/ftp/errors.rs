//! Classifying what went wrong with an FTP request: the server's reply code decides (RFC 959:
//! 4xx is transient, 5xx permanent), with the exceptions Ferry cares about, and TLS failures are
//! told apart from lost connections.

use std::time::Duration;

use suppaftp::FtpError;

use crate::{ErrorKind, HostError};

/// A failed request: the server's reply code if it answered, the classified error, and whether the
/// control connection can still be used.
#[derive(Debug)]
pub(super) struct Failed {
    pub code: Option<u16>,
    pub error: HostError,
    /// The connection is out of step or gone: it must not go back to the pool.
    pub broken: bool,
}

impl Failed {
    /// The server answered `code` (e.g. `550` for a missing file).
    pub fn is(&self, code: u16) -> bool {
        self.code == Some(code)
    }

    /// The same failure with another kind (a reply whose meaning depends on the request).
    pub fn with_kind(mut self, kind: ErrorKind) -> Failed {
        self.error.kind = kind;
        self
    }

    pub fn timeout(host: &str, what: &str, after: Duration) -> Failed {
        Failed {
            code: None,
            error: HostError::transient(host, format!("{what}: no answer within {} s", after.as_secs())),
            broken: true,
        }
    }
}

impl From<Failed> for HostError {
    fn from(f: Failed) -> HostError {
        f.error
    }
}

/// Classify `e`, the failure of `what` (e.g. `upload to /out/.a.part`).
pub(super) fn failed(host: &str, what: &str, e: FtpError) -> Failed {
    match e {
        FtpError::UnexpectedResponse(response) => {
            let text = reply_text(&response.body);
            let code = text.get(..3).and_then(|c| c.parse::<u16>().ok());
            let kind = code.map_or(ErrorKind::Permanent, |c| reply_kind(c, &text));
            Failed {
                code,
                error: HostError::new(host, kind, format!("{what}: {text}")),
                // 421: the server is closing the connection.
                broken: code == Some(421),
            }
        }
        FtpError::ConnectionError(io) => Failed {
            code: None,
            error: io_error(host, what, &io),
            broken: true,
        },
        FtpError::SecureError(message) => {
            // suppaftp wraps our connector's words in "Secure error: " once or twice.
            let mut message = message.as_str();
            while let Some(rest) = message.strip_prefix("Secure error: ") {
                message = rest;
            }
            // Our connector (conn.rs) words its own failures; a TLS failure that is not a lost
            // connection is a setting or a refusal, which a retry will not change.
            let (kind, message) = match message.strip_prefix(REFUSED) {
                Some(refused) => (ErrorKind::Permanent, refused),
                None => (ErrorKind::Transient, message),
            };
            Failed {
                code: None,
                error: HostError::new(host, kind, format!("{what}: {message}")),
                broken: true,
            }
        }
        other => Failed {
            code: None,
            error: HostError::permanent(host, format!("{what}: {other}")),
            broken: true,
        },
    }
}

/// What a reply code means for a retry.
fn reply_kind(code: u16, text: &str) -> ErrorKind {
    match code {
        // Insufficient storage (452) and storage allocation exceeded (552): disk or quota full.
        452 | 552 => ErrorKind::Permanent,
        400..=499 => ErrorKind::Transient,
        // Many servers (vsftpd among them) answer 550 both for a missing file and for a refused
        // one; the words tell them apart.
        550 if text.to_ascii_lowercase().contains("permission") => ErrorKind::Permanent,
        550 => ErrorKind::NotFound,
        _ => ErrorKind::Permanent,
    }
}

/// The reply as the server wrote it, on one line (`530 Login incorrect.`).
fn reply_text(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Marks the connector's messages for failures a retry cannot fix (see [`tls_refused`]).
const REFUSED: &str = "TLS refused: ";

/// A TLS failure worth no retry (a certificate not trusted, an alert from the server).
pub(super) fn tls_refused(message: String) -> String {
    format!("{REFUSED}{message}")
}

/// Classify an I/O error of the control or a data connection; a TLS error inside it (an alert
/// that arrived after the handshake, as a TLS 1.3 server refusing a client certificate sends it)
/// is permanent.
pub(super) fn io_error(host: &str, what: &str, e: &std::io::Error) -> HostError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => HostError::permanent(host, format!("{what}: {}", describe_tls(tls))),
        None => HostError::io(host, what, e),
    }
}

/// A rustls error in words an operator can act on.
pub(super) fn describe_tls(e: &rustls::Error) -> String {
    match e {
        rustls::Error::AlertReceived(alert) => {
            use rustls::AlertDescription as A;
            let why = match alert {
                A::CertificateRequired => ": it requires a client certificate (client_cert, client_key)",
                A::BadCertificate | A::UnknownCA | A::CertificateUnknown | A::AccessDenied => {
                    ": it did not accept the client certificate"
                }
                _ => "",
            };
            format!("the server refused the TLS session ({alert:?}){why}")
        }
        other => format!("TLS: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use suppaftp::{Status, types::Response};

    use super::*;

    fn reply(code: u32, text: &str) -> FtpError {
        FtpError::UnexpectedResponse(Response::new(Status::from(code), text.as_bytes().to_vec()))
    }

    #[track_caller]
    fn assert_failed(e: FtpError, kind: ErrorKind, message: &str, broken: bool) {
        let f = failed("partner", "do it", e);
        assert_eq!(
            (f.error.kind, f.error.message.as_str(), f.broken),
            (kind, message, broken)
        );
    }

    #[test]
    fn replies_are_classified_and_quoted() {
        use ErrorKind::*;
        assert_failed(
            reply(530, "530 Login incorrect.\r\n"),
            Permanent,
            "do it: 530 Login incorrect.",
            false,
        );
        assert_failed(
            reply(550, "550 Failed to open file.\r\n"),
            NotFound,
            "do it: 550 Failed to open file.",
            false,
        );
        assert_failed(
            reply(550, "550 Permission denied.\r\n"),
            Permanent,
            "do it: 550 Permission denied.",
            false,
        );
        assert_failed(
            reply(552, "552 Quota exceeded.\r\n"),
            Permanent,
            "do it: 552 Quota exceeded.",
            false,
        );
        assert_failed(
            reply(452, "452 Disk full.\r\n"),
            Permanent,
            "do it: 452 Disk full.",
            false,
        );
        assert_failed(
            reply(426, "426 Failure writing network stream.\r\n"),
            Transient,
            "do it: 426 Failure writing network stream.",
            false,
        );
        assert_failed(
            reply(421, "421 Timeout.\r\n"),
            Transient,
            "do it: 421 Timeout.",
            true,
        );
        // A code suppaftp does not know keeps its number (the text carries it).
        assert_failed(
            reply(0, "534 Policy requires SSL.\r\n"),
            Permanent,
            "do it: 534 Policy requires SSL.",
            false,
        );
        assert_failed(
            reply(211, "211-Features:\r\n EPSV\r\n211 End\r\n"),
            Permanent,
            "do it: 211-Features: EPSV 211 End",
            false,
        );
    }

    #[test]
    fn lost_connections_are_transient_and_tls_refusals_permanent() {
        use std::io::{Error, ErrorKind as Io};
        assert_failed(
            FtpError::ConnectionError(Error::new(Io::ConnectionReset, "reset")),
            ErrorKind::Transient,
            "do it: reset",
            true,
        );
        assert_failed(
            FtpError::ConnectionError(Error::new(
                Io::InvalidData,
                rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
            )),
            ErrorKind::Permanent,
            "do it: the server refused the TLS session (CertificateRequired): it requires a client \
             certificate (client_cert, client_key)",
            true,
        );
        assert_failed(
            FtpError::SecureError(format!(
                "Secure error: {}",
                tls_refused("certificate for 127.0.0.1 is not trusted: UnknownIssuer".into())
            )),
            ErrorKind::Permanent,
            "do it: certificate for 127.0.0.1 is not trusted: UnknownIssuer",
            true,
        );
        assert_failed(
            FtpError::SecureError("TLS handshake with 127.0.0.1: connection reset".into()),
            ErrorKind::Transient,
            "do it: TLS handshake with 127.0.0.1: connection reset",
            true,
        );
    }
}
