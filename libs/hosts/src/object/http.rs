//! The HTTP layer under `object_store`: its reqwest client (rustls over aws-lc-rs), wrapped so
//! that one host has at most `max_connections` requests in flight and the server's `Server`
//! header is kept for `ferry host test`.
//!
//! reqwest pools the connections (idle ones closed after `idle_timeout_secs`, at most
//! `max_connections` kept per server) and drops a connection that failed instead of reusing it,
//! which is the pool contract the other kinds get from `deadpool`.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use object_store::ClientOptions;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use tokio::sync::Semaphore;

/// What the host keeps of its HTTP layer.
#[derive(Debug, Clone)]
pub(super) struct Http {
    /// The first `Server` header a response carried.
    pub server: Arc<OnceLock<String>>,
    /// The client `object_store` sends through (for the few requests it cannot make).
    pub client: Arc<OnceLock<HttpClient>>,
    limit: Arc<Semaphore>,
    max: usize,
}

impl Http {
    pub fn new(max_connections: u32) -> Http {
        Http {
            server: Arc::default(),
            client: Arc::default(),
            limit: Arc::new(Semaphore::new(max_connections.max(1) as usize)),
            max: max_connections.max(1) as usize,
        }
    }

    /// Requests in flight against `max_connections` (reqwest keeps its idle connections to
    /// itself).
    pub fn pool(&self) -> crate::PoolStatus {
        crate::PoolStatus {
            in_use: self.max.saturating_sub(self.limit.available_permits()),
            idle: None,
            max: self.max,
        }
    }

    /// The connector to hand to the `object_store` builder.
    pub fn connector(&self) -> Connector {
        Connector(self.clone())
    }
}

#[derive(Debug)]
pub(super) struct Connector(Http);

impl HttpConnector for Connector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        let client = HttpClient::new(Limited {
            inner,
            http: self.0.clone(),
        });
        let _ = self.0.client.set(client.clone());
        Ok(client)
    }
}

#[derive(Debug)]
struct Limited {
    inner: HttpClient,
    http: Http,
}

#[async_trait]
impl HttpService for Limited {
    async fn call(&self, mut req: HttpRequest) -> Result<HttpResponse, HttpError> {
        // object_store form-encodes query values (a space as `+`) but signs them decoded. AWS and
        // Azure read `+` as a space; RFC 3986 servers (moto among them) read a plus sign, so a
        // listing of `odd names/` fails their signature check. `%20` means a space to all of them
        // (a literal `+` in a value is always sent as `%2B`).
        let uri = req.uri().to_string();
        if let Some((base, query)) = uri.split_once('?')
            && query.contains('+')
            && let Ok(fixed) = format!("{base}?{}", query.replace('+', "%20")).parse()
        {
            *req.uri_mut() = fixed;
        }
        // Held until the response head arrives: an upload holds it while its body goes up; a
        // download releases it once the server answers (its body is read at the caller's pace).
        let _permit = self
            .http
            .limit
            .acquire()
            .await
            .expect("the request limit is never closed");
        let response = self.inner.execute(req).await?;
        if self.http.server.get().is_none()
            && let Some(server) = response.headers().get("server").and_then(|v| v.to_str().ok())
        {
            let _ = self.http.server.set(server.to_string());
        }
        Ok(response)
    }
}

/// Percent-encode an object key for a URL path (`/` kept).
pub(super) fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_encoded_for_urls() {
        assert_eq!(super::encode_key("a b/ä;x/"), "a%20b/%C3%A4%3Bx/");
    }
}
