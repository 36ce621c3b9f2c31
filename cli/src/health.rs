//! `ferry health --url URL`: the container health probe. The runtime image has no curl or wget,
//! so compose's healthchecks run this: one plain HTTP/1.0 GET of a service's `/healthz`, exit
//! status 0 on a 2xx answer and 1 otherwise. It reads no settings and never touches NATS, so it
//! answers the same way whatever the node's configuration.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};

#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// The `/healthz` URL to ask, e.g. http://127.0.0.1:9181/healthz (plain http only).
    #[arg(long)]
    url: String,
    /// How long the connection and the answer may take.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// Ask once; print the status line (and the body when it is not healthy).
pub fn probe(args: &HealthArgs) -> anyhow::Result<ExitCode> {
    let (authority, path) = split_url(&args.url)?;
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("--url: resolve {authority:?}"))?
        .next()
        .with_context(|| format!("--url: {authority:?} has no address"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, args.timeout).with_context(|| format!("connect to {authority}"))?;
    stream.set_read_timeout(Some(args.timeout))?;
    stream.set_write_timeout(Some(args.timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n").context("send the request")?;
    let mut answer = Vec::new();
    // An answer larger than this is not a health answer.
    stream
        .take(64 * 1024)
        .read_to_end(&mut answer)
        .with_context(|| format!("read the answer of {}", args.url))?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status_line = head.lines().next().unwrap_or("");
    let code: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("{}: not an HTTP answer: {status_line:?}", args.url))?;
    if (200..300).contains(&code) {
        println!("{}: {code} {}", args.url, body.trim());
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{}: {code} {}", args.url, body.trim());
        Ok(ExitCode::FAILURE)
    }
}

/// `http://host:port/path` → (`host:port`, `/path`).
fn split_url(url: &str) -> anyhow::Result<(String, String)> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("--url: {url:?} is not an http:// URL");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        bail!("--url: {url:?} names no host");
    }
    let authority = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::split_url;

    #[test]
    fn urls_split_into_authority_and_path() {
        let ok = |url: &str| split_url(url).expect(url);
        assert_eq!(
            ok("http://127.0.0.1:9181/healthz"),
            ("127.0.0.1:9181".into(), "/healthz".into())
        );
        assert_eq!(ok("http://nats:8222"), ("nats:8222".into(), "/".into()));
        assert_eq!(
            ok("http://grafana/api/health"),
            ("grafana:80".into(), "/api/health".into())
        );
        let err = |url: &str| split_url(url).expect_err(url).to_string();
        assert_eq!(
            err("https://x:1/healthz"),
            "--url: \"https://x:1/healthz\" is not an http:// URL"
        );
        assert_eq!(err("http:///healthz"), "--url: \"http:///healthz\" names no host");
    }
}
