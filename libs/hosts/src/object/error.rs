//! Turning `object_store` errors into classified [`HostError`]s.
//!
//! The kind follows the server's status and error code (S3 `<Code>`, Azure `<Code>`): a missing
//! bucket or container and failed authentication are permanent, a missing object is `NotFound`,
//! 5xx, throttling and connection errors are transient. Messages quote the server's code and
//! message but never a URL's query (an Azure SAS token travels there) or any secret of the host.

use std::error::Error as StdError;

use ferry_keymat::Zeroizing;
use object_store::client::{HttpError, HttpErrorKind};

use crate::{ErrorKind, HostError};

/// Codes that mean the credentials were refused.
const AUTH_CODES: &[&str] = &[
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AuthenticationFailed",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "InvalidAuthenticationInfo",
    "NoAuthenticationInformation",
];

/// Codes that mean the credentials were accepted but lack a permission.
const PERMISSION_CODES: &[&str] = &[
    "AccessDenied",
    "AuthorizationFailure",
    "AuthorizationPermissionMismatch",
    "AuthorizationResourceTypeMismatch",
    "AccountIsDisabled",
];

/// Codes worth a retry although their status may not say so.
const BUSY_CODES: &[&str] = &[
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "ServerBusy",
    "OperationTimedOut",
    "RequestTimeout",
];

/// Codes of a bucket or container that does not exist.
const MISSING_CONTAINER_CODES: &[&str] = &["NoSuchBucket", "ContainerNotFound"];

/// What one failed request said, as far as `object_store` lets us see it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Failure {
    /// The HTTP status, when a response came back.
    pub status: Option<u16>,
    /// The server's error code (`SignatureDoesNotMatch`, `ContainerNotFound`, …).
    pub code: Option<String>,
    /// The first line of the server's error message.
    pub message: Option<String>,
    /// How the request failed when no response came back.
    pub transport: Option<HttpErrorKind>,
    /// The innermost cause of a transport failure (`Connection refused (os error 111)`).
    pub cause: Option<String>,
}

impl Failure {
    /// Read the status, code and message out of an `object_store` error's source chain.
    pub fn of(error: &object_store::Error) -> Failure {
        let mut current: Option<&(dyn StdError + 'static)> = Some(error);
        while let Some(e) = current {
            if let Some(http) = e.downcast_ref::<HttpError>() {
                return Failure {
                    transport: Some(http.kind()),
                    cause: Some(innermost(http)),
                    ..Failure::default()
                };
            }
            // `object_store` keeps the status and body in a private type; its text is stable.
            let text = e.to_string();
            if let Some(rest) = text.strip_prefix("Server returned non-2xx status code: ") {
                let status = rest.get(..3).and_then(|s| s.parse().ok());
                let body = rest.split_once(": ").map(|(_, b)| b).unwrap_or_default();
                return Failure::from_response(status, body);
            }
            if let Some(body) = text.strip_prefix("Server returned error response: ") {
                // A 200 whose body is an error (S3 does this on CompleteMultipartUpload).
                return Failure::from_response(None, body);
            }
            current = e.source();
        }
        Failure::default()
    }

    /// From a response's status and body (S3 and Azure both answer with `<Error><Code>…`).
    pub fn from_response(status: Option<u16>, body: &str) -> Failure {
        Failure {
            status,
            code: xml_tag(body, "Code"),
            message: xml_tag(body, "Message").map(|m| {
                let first = m.lines().next().unwrap_or_default().trim();
                first.chars().take(300).collect()
            }),
            ..Failure::default()
        }
    }

    /// Azurite answers a wrong key with `AuthorizationFailure` ("Server failed to authenticate
    /// the request"), where Azure says `AuthenticationFailed`.
    fn says_unauthenticated(&self) -> bool {
        self.code.as_deref() == Some("AuthorizationFailure")
            && self
                .message
                .as_deref()
                .is_some_and(|m| m.contains("failed to authenticate"))
    }

    fn code_in(&self, codes: &[&str]) -> bool {
        self.code.as_deref().is_some_and(|c| codes.contains(&c))
    }

    /// `403 SignatureDoesNotMatch: The request signature …`, or the transport cause.
    fn describe(&self) -> String {
        if let Some(kind) = self.transport {
            let what = match kind {
                HttpErrorKind::Connect => "cannot connect",
                HttpErrorKind::Timeout => "timed out",
                HttpErrorKind::Request | HttpErrorKind::Interrupted => "connection lost",
                HttpErrorKind::Decode => "unreadable response",
                _ => "request failed",
            };
            return match &self.cause {
                Some(c) => format!("{what}: {c}"),
                None => what.to_string(),
            };
        }
        let mut out = String::new();
        if let Some(s) = self.status {
            out.push_str(&s.to_string());
        }
        if let Some(c) = &self.code {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(c);
        }
        match &self.message {
            Some(m) if !out.is_empty() => format!("{out}: {m}"),
            Some(m) => m.clone(),
            None if out.is_empty() => "no reason given".to_string(),
            None => format!("{out} (the server gave no reason)"),
        }
    }
}

/// The text of the deepest error under `e` (reqwest's own texts repeat the URL and say little).
fn innermost(e: &(dyn StdError + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

fn xml_tag(body: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&format!("</{tag}>"))? + start;
    let value = body[start..end].trim();
    (!value.is_empty()).then(|| value.to_string())
}

/// Removes the host's secrets from text before it reaches an error or a log line.
pub(super) struct Scrub {
    secrets: Vec<Zeroizing<String>>,
}

impl Scrub {
    pub fn new(secrets: Vec<Zeroizing<String>>) -> Scrub {
        // Very short values would blank out ordinary words; real keys are long.
        let secrets = secrets.into_iter().filter(|s| s.len() >= 6).collect();
        Scrub { secrets }
    }

    /// `text` without URL queries and without any secret.
    pub fn clean(&self, text: &str) -> String {
        let mut out = strip_url_queries(text);
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "<redacted>");
            }
        }
        out
    }
}

/// `http://h/p?sig=…` → `http://h/p`: a query may hold a SAS token.
fn strip_url_queries(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("http") {
        let (before, url_on) = rest.split_at(at);
        out.push_str(before);
        let end = url_on
            .find(|c: char| c.is_whitespace() || c == ')' || c == '"' || c == '\'')
            .unwrap_or(url_on.len());
        let url = &url_on[..end];
        out.push_str(url.split_once('?').map_or(url, |(u, _)| u));
        rest = &url_on[end..];
    }
    out.push_str(rest);
    out
}

/// What the failing operation was about: `bucket "b"` or `container "c"`.
pub(super) struct Context<'a> {
    pub host: &'a str,
    pub container: &'a str,
    pub scrub: &'a Scrub,
}

impl Context<'_> {
    /// Classify `error`, which happened while doing `what` (`read in/a.csv`).
    pub fn error(&self, what: &str, error: &object_store::Error) -> HostError {
        use object_store::Error as E;
        let failure = Failure::of(error);
        match error {
            E::InvalidPath { source } => HostError::permanent(
                self.host,
                self.scrub.clean(&format!(
                    "{what}: the server listed a name that is not a valid path: {source}"
                )),
            ),
            E::NotFound { .. } if !failure.code_in(MISSING_CONTAINER_CODES) => HostError::not_found(
                self.host,
                self.scrub
                    .clean(&format!("{what}: not found ({})", failure.describe())),
            ),
            _ if failure.status.is_some() || failure.code.is_some() || failure.transport.is_some() => {
                self.failure(what, &failure)
            }
            E::Unauthenticated { .. } | E::PermissionDenied { .. } => self.failure(
                what,
                &Failure {
                    status: Some(403),
                    ..failure
                },
            ),
            other => HostError::permanent(self.host, self.scrub.clean(&format!("{what}: {other}"))),
        }
    }

    /// Classify a failure read from a response (or from an error's source chain).
    pub fn failure(&self, what: &str, f: &Failure) -> HostError {
        let said = f.describe();
        let (kind, text) = if f.code_in(MISSING_CONTAINER_CODES) {
            (
                ErrorKind::Permanent,
                format!("{what}: {} does not exist ({said})", self.container),
            )
        } else if f.code_in(AUTH_CODES) || f.status == Some(401) || f.says_unauthenticated() {
            (
                ErrorKind::Permanent,
                format!("{what}: authentication failed ({said})"),
            )
        } else if f.code_in(PERMISSION_CODES) {
            (
                ErrorKind::Permanent,
                format!("{what}: permission denied ({said})"),
            )
        } else if f.status == Some(403) {
            (
                ErrorKind::Permanent,
                format!("{what}: authentication failed or permission denied ({said})"),
            )
        } else if f.status == Some(404) {
            (ErrorKind::NotFound, format!("{what}: not found ({said})"))
        } else if f.code_in(BUSY_CODES)
            || f.status.is_some_and(|s| s >= 500 || s == 429 || s == 408)
            || (f.status.is_none() && f.code.is_some())
        {
            (
                ErrorKind::Transient,
                format!("{what}: server busy or failing ({said})"),
            )
        } else if f.transport.is_some() {
            let certificate = f
                .cause
                .as_deref()
                .is_some_and(|c| c.to_ascii_lowercase().contains("certificate"));
            if certificate {
                (
                    ErrorKind::Permanent,
                    format!("{what}: TLS certificate refused ({said})"),
                )
            } else {
                (ErrorKind::Transient, format!("{what}: {said}"))
            }
        } else {
            (ErrorKind::Permanent, format!("{what}: {said}"))
        };
        HostError::new(self.host, kind, self.scrub.clean(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx_error(f: Failure) -> HostError {
        let scrub = Scrub::new(vec![Zeroizing::new("s3cr3t-value".to_string())]);
        let ctx = Context {
            host: "h",
            container: "bucket \"b\"",
            scrub: &scrub,
        };
        ctx.failure("upload a.csv", &f)
    }

    #[test]
    fn server_codes_decide_the_kind() {
        let auth = ctx_error(Failure::from_response(
            Some(403),
            "<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match</Message></Error>",
        ));
        assert_eq!(auth.kind, ErrorKind::Permanent);
        assert_eq!(
            auth.message,
            "upload a.csv: authentication failed (403 SignatureDoesNotMatch: The request signature we calculated does not match)"
        );
        let missing = ctx_error(Failure::from_response(
            Some(404),
            "<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message></Error>",
        ));
        assert_eq!(missing.kind, ErrorKind::Permanent);
        assert!(
            missing
                .message
                .contains("bucket \"b\" does not exist (404 NoSuchBucket")
        );
        let azure = ctx_error(Failure::from_response(
            Some(403),
            "<?xml version=\"1.0\"?><Error><Code>AuthenticationFailed</Code><Message>Server failed to authenticate the request.\nRequestId:1</Message></Error>",
        ));
        assert!(
            azure
                .message
                .ends_with("(403 AuthenticationFailed: Server failed to authenticate the request.)")
        );
        assert_eq!(
            ctx_error(Failure::from_response(Some(503), "")).kind,
            ErrorKind::Transient
        );
        assert_eq!(
            ctx_error(Failure::from_response(
                Some(200),
                "<Error><Code>InternalError</Code></Error>"
            ))
            .kind,
            ErrorKind::Transient
        );
        assert_eq!(
            ctx_error(Failure::from_response(Some(404), "")).kind,
            ErrorKind::NotFound
        );
        let refused = ctx_error(Failure {
            transport: Some(HttpErrorKind::Connect),
            cause: Some("Connection refused (os error 111)".into()),
            ..Failure::default()
        });
        assert_eq!(refused.kind, ErrorKind::Transient);
        assert_eq!(
            refused.message,
            "upload a.csv: cannot connect: Connection refused (os error 111)"
        );
    }

    #[test]
    fn secrets_and_url_queries_never_reach_a_message() {
        let scrub = Scrub::new(vec![Zeroizing::new("s3cr3t-value".to_string())]);
        assert_eq!(
            scrub.clean("PUT http://h:1/c/b?sv=1&sig=abc%2F failed (key s3cr3t-value)"),
            "PUT http://h:1/c/b failed (key <redacted>)"
        );
    }
}
