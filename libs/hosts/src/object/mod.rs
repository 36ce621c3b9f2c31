//! `s3` and `azure`: Amazon S3 (and S3-compatible stores) and Azure Blob Storage, over
//! `object_store`.
//!
//! Folders are key prefixes (`in/a.csv` is the object `in/a.csv`). A folder exists when some
//! object's key starts with `folder/`; [`Host::create_dir_all`] writes the zero-byte
//! `folder/` marker object the S3 console and most tools use, so a folder a transfer created
//! (or a person created in a console) stays listable when it is empty, while a folder nobody
//! created is `NotFound`. Markers are never listed as files.
//!
//! Writing (see `upload.rs`): nothing is visible under the final key before
//! [`Staged::commit`](crate::Staged::commit).
//! A file of up to `part_bytes` is held in memory and put at the commit; a larger one is a
//! multipart upload (S3) or a block list (Azure) whose parts go up while the file streams, at
//! most `PARTS_IN_FLIGHT` (4) at a time, and whose completion is the commit. With
//! `verify = "read_back"` the object is first stored under the temporary name, read back, and
//! copied into place at the commit.
//!
//! Invariants:
//! - an object appears under its final key whole, or not at all;
//! - a create-new commit of a file put in one request is a conditional put (`If-None-Match: *`,
//!   atomic on the server); a multipart completion is checked right before it completes (see
//!   `upload.rs` for the remaining race), so [`Capabilities::rename_noreplace`] is false;
//! - errors carry the server's status and error code and never a secret or a URL query.
//!
//! Where `object_store` does not fit, this module steps around it, each time in one place:
//! Azure blob names ending in `/` and single-blob deletes are signed here
//! (`Shared::azure_blob`); query strings are sent with `%20` for spaces (`http.rs`); a
//! recursive listing is one delimited listing per folder, the only way to tell a `b/` marker
//! from a file `b`.

mod error;
mod http;
mod upload;

use std::collections::HashSet;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use ferry_config::{AzureSpec, HostOptions, S3Spec, Verify};
use ferry_keymat::Zeroizing;
use futures::stream::{BoxStream, FuturesUnordered};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, Checksum, S3ConditionalPut, S3CopyIfNotExists};
use object_store::azure::{
    AzureAccessKey, AzureAuthorizer, AzureConfigKey, AzureCredential, MicrosoftAzureBuilder,
};
use object_store::client::{HttpErrorKind, HttpRequest, HttpRequestBody};
use object_store::multipart::MultipartStore;
use object_store::path::{Path, PathPart};
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};
use tokio::io::{AsyncRead, ReadBuf};

use self::error::{Context, Failure, Scrub};
use self::http::Http;
use crate::registry::OpenSecret;
use crate::{
    ByteStream, Capabilities, DynHost, Entry, ErrorKind, Host, HostError, HostResult, Meta, Probe, Upload,
    WriteTarget,
};

/// Folder listings in flight at once during a recursive listing.
const LIST_CONCURRENCY: usize = 8;

/// Which service a host talks to, and what only that service needs.
enum Service {
    S3,
    Azure {
        /// `https://<account>.blob.core.windows.net` or `http://127.0.0.1:10000/<account>`.
        account_url: String,
        account: String,
        container: String,
        auth: AzureAuth,
    },
}

/// How the few Azure requests `object_store` cannot make are signed (see [`Shared::azure_blob`]).
enum AzureAuth {
    /// The account key as configured, and as object_store signs with it.
    Key(Zeroizing<String>, AzureCredential),
    /// The SAS query string (without `?`).
    Sas(Zeroizing<String>),
}

/// An S3 bucket or Azure Blob container as a [`Host`].
pub struct ObjectHost {
    shared: Arc<Shared>,
}

/// What a host and its uploads share.
pub(crate) struct Shared {
    name: String,
    /// For requests without a body ([`Lane::Quick`]).
    store: Arc<dyn ObjectStore>,
    /// For requests that carry a part or a small file ([`Lane::Bulk`]); the same service.
    bulk: Arc<dyn ObjectStore>,
    multipart: Arc<dyn MultipartStore>,
    service: Service,
    /// Files larger than this go up in parts.
    part_bytes: usize,
    read_back: bool,
    scrub: Scrub,
    http: Http,
    /// `bucket "b"` or `container "c"`, for messages.
    container_label: String,
    /// Facts for `ferry host test`.
    notes: Vec<String>,
    /// Folders whose marker this process has written (so a folder costs one request per run).
    made_folders: Mutex<HashSet<String>>,
}

impl Shared {
    fn ctx(&self) -> Context<'_> {
        Context {
            host: &self.name,
            container: &self.container_label,
            scrub: &self.scrub,
        }
    }

    /// Classify an `object_store` error that happened while doing `what`.
    pub(crate) fn err(&self, what: &str, e: &object_store::Error) -> HostError {
        self.ctx().error(what, e)
    }

    /// The object key of a file path (`/in/a.csv` and `in/a.csv` are the same key).
    pub(crate) fn key(&self, path: &str) -> HostResult<Path> {
        let key = self.folder_key(path)?;
        if key.is_root() {
            return Err(HostError::permanent(
                &self.name,
                format!("{path:?} names no object"),
            ));
        }
        Ok(key)
    }

    /// The key prefix of a folder path (the root of the bucket or container for `""` and `/`).
    fn folder_key(&self, path: &str) -> HostResult<Path> {
        Path::parse(path.trim_start_matches('/')).map_err(|e| {
            HostError::permanent(&self.name, format!("{path:?} is not a valid object name: {e}"))
        })
    }

    /// Whether the server checks a SHA-256 sent with every request body (S3's
    /// `x-amz-checksum-sha256`, refused with `BadDigest` on a mismatch).
    pub(crate) fn server_checks_sha256(&self) -> bool {
        matches!(self.service, Service::S3)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // An object appears whole when its put or completion succeeds.
            atomic_rename: true,
            // Conditional for a single put, checked-then-completed for a multipart upload.
            rename_noreplace: false,
            // A stored object's SHA-256 cannot be asked for: S3 keeps a multipart object's
            // checksum as a hash of its part hashes, Azure keeps none. (What an upload sends is
            // still checked: see `upload`.)
            server_sha256: false,
            // Resuming needs the upload id and part list to outlive the process; the seam has
            // nowhere to keep them, so an interrupted upload starts again.
            resume: false,
            // What the store acknowledged is stored; a committed object needs no sync.
            durable: true,
            byte_names: false,
        }
    }

    /// Write the `folder/` marker object.
    async fn put_marker(&self, folder: &Path) -> HostResult<()> {
        let what = format!("create folder {folder}");
        match &self.service {
            Service::S3 => {
                // An empty last part makes the key end in `/`.
                let marker = folder.clone().join(PathPart::from(""));
                self.store
                    .put(&marker, PutPayload::new())
                    .await
                    .map_err(|e| self.err(&what, &e))?;
            }
            Service::Azure { .. } => {
                self.azure_blob("PUT", &format!("{folder}/"), &what).await?;
            }
        }
        Ok(())
    }

    /// Whether the `folder/` marker exists. Only needed on Azure, where object_store leaves a
    /// blob named like the listed prefix out of the listing.
    async fn azure_marker_exists(&self, folder: &Path) -> HostResult<bool> {
        match self.service {
            Service::S3 => Ok(false),
            Service::Azure { .. } => {
                self.azure_blob("HEAD", &format!("{folder}/"), &format!("look at folder {folder}"))
                    .await
            }
        }
    }

    /// One blob request object_store cannot make the way a host needs it: a blob name ending in
    /// `/` (object_store drops the slash), and a single-blob DELETE (object_store deletes through
    /// the Blob Batch API, which Azurite refuses with a SAS token). `Ok(false)` for a 404.
    async fn azure_blob(&self, method: &str, name: &str, what: &str) -> HostResult<bool> {
        let Service::Azure {
            account_url,
            account,
            container,
            auth,
        } = &self.service
        else {
            unreachable!("only Azure hosts sign their own requests");
        };
        let mut url = format!(
            "{account_url}/{}/{}",
            http::encode_key(container),
            http::encode_key(name)
        );
        if let AzureAuth::Sas(sas) = auth {
            url.push('?');
            url.push_str(sas);
        }
        let client = self
            .http
            .client
            .get()
            .expect("object_store connected its client when the store was built")
            .clone();
        let mut attempt = 0;
        let response = loop {
            attempt += 1;
            let mut request = HttpRequest::new(HttpRequestBody::empty());
            *request.method_mut() = method.parse().expect("a valid HTTP method");
            *request.uri_mut() = url
                .parse()
                .map_err(|e| HostError::permanent(&self.name, self.scrub.clean(&format!("{what}: {e}"))))?;
            let headers = request.headers_mut();
            headers.insert("content-length", object_store::HeaderValue::from_static("0"));
            if method == "PUT" {
                headers.insert(
                    "x-ms-blob-type",
                    object_store::HeaderValue::from_static("BlockBlob"),
                );
            }
            if let AzureAuth::Key(_, credential) = auth {
                AzureAuthorizer::new(credential, account)
                    .try_authorize(&mut request)
                    .map_err(|e| self.err(what, &e))?;
            }
            match client.execute(request).await {
                Ok(response) => break response,
                // A pooled connection the server had closed: the request was not sent.
                Err(e)
                    if attempt == 1
                        && matches!(e.kind(), HttpErrorKind::Connect | HttpErrorKind::Request) => {}
                Err(e) => {
                    let e = object_store::Error::Generic {
                        store: "MicrosoftAzure",
                        source: Box::new(e),
                    };
                    return Err(self.err(what, &e));
                }
            }
        };
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(true);
        }
        let body = response.into_body().bytes().await.unwrap_or_default();
        let failure = Failure::from_response(Some(status), &String::from_utf8_lossy(&body));
        if status == 404 && failure.code.as_deref().is_none_or(|c| c == "BlobNotFound") {
            return Ok(false);
        }
        Err(self.ctx().failure(what, &failure))
    }

    /// Delete one object; a missing one is fine.
    pub(crate) async fn delete_key(&self, key: &Path, what: &str) -> HostResult<()> {
        if let Service::Azure { .. } = self.service {
            self.azure_blob("DELETE", key.as_ref(), what).await?;
            return Ok(());
        }
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => {
                let error = self.err(what, &e);
                if error.kind == ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(error)
                }
            }
        }
    }

    /// Whether anything has a key under `folder/` (one listing request at most).
    async fn folder_exists(&self, folder: &Path) -> HostResult<bool> {
        if folder.is_root() {
            return Ok(true);
        }
        let mut objects = self.store.list(Some(folder));
        match objects.next().await {
            None => self.azure_marker_exists(folder).await,
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(self.err(&format!("look at folder {folder}"), &e)),
        }
    }
}

/// The two request timeouts of a host. reqwest's read timeout runs from sending a request until
/// its response head arrives (and then between body reads), so a request that carries a body
/// of up to `part_bytes` (a part, a put) gets a second per MiB more than one that carries none.
#[derive(Clone, Copy)]
enum Lane {
    /// Listings, heads, reads, deletes, copies: `operation_timeout_secs`.
    Quick,
    /// Requests that carry a part or a whole small file.
    Bulk,
}

/// What every request of one host is built with.
fn client_options(options: &HostOptions, allow_http: bool, part_bytes: u64, lane: Lane) -> ClientOptions {
    let carry = match lane {
        Lane::Quick => Duration::ZERO,
        Lane::Bulk => Duration::from_secs(part_bytes.div_ceil(1 << 20)),
    };
    ClientOptions::new()
        .with_allow_http(allow_http)
        .with_connect_timeout(Duration::from_secs(options.connect_timeout_secs))
        .with_timeout_disabled()
        .with_read_timeout(Duration::from_secs(options.operation_timeout_secs) + carry)
        .with_pool_idle_timeout(Duration::from_secs(options.idle_timeout_secs))
        .with_pool_max_idle_per_host(options.max_connections as usize)
}

/// A couple of quick retries inside one request (a dropped keep-alive connection, a 503); the
/// transfer's own retries (`retries`, `retry_wait_secs`) handle longer outages.
fn retry_config(options: &HostOptions) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: Duration::from_secs(options.operation_timeout_secs),
    }
}

/// `https://host:port` → `https://bucket.host:port` (virtual-hosted addressing on an endpoint).
fn virtual_hosted(endpoint: &str, bucket: &str) -> String {
    let endpoint = endpoint.trim_end_matches('/');
    match endpoint.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{bucket}.{rest}"),
        None => format!("{bucket}.{endpoint}"),
    }
}

/// The account's URL: an endpoint whose host is `<account>.…` or that has a path is used as it
/// is; a bare endpoint (`http://127.0.0.1:10000`, Azurite) gets the account as its first path
/// segment (the emulator's path-style addressing).
fn azure_account_url(endpoint: Option<&str>, account: &str) -> String {
    let Some(endpoint) = endpoint else {
        return format!("https://{account}.blob.core.windows.net");
    };
    let endpoint = endpoint.trim_end_matches('/');
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    if rest.contains('/') || rest.starts_with(&format!("{account}.")) {
        endpoint.to_string()
    } else {
        format!("{endpoint}/{account}")
    }
}

impl ObjectHost {
    pub fn build_s3(
        name: &str,
        options: &HostOptions,
        spec: &S3Spec,
        open: &OpenSecret<'_>,
    ) -> HostResult<DynHost> {
        let secret = open("secret_access_key", &spec.secret_access_key)?;
        let token = spec
            .session_token
            .as_ref()
            .map(|t| open("session_token", t))
            .transpose()?;
        let mut secrets = vec![secret.clone()];
        secrets.extend(token.clone());
        let scrub = Scrub::new(secrets);
        let http = Http::new(options.max_connections);
        let endpoint = match &spec.endpoint {
            Some(e) if spec.path_style => e.clone(),
            Some(e) => virtual_hosted(e, &spec.bucket),
            None => format!("https://s3.{}.amazonaws.com", spec.region),
        };
        let build = |lane: Lane| {
            let mut builder = AmazonS3Builder::new()
                .with_client_options(client_options(options, spec.allow_http, spec.part_bytes, lane))
                .with_retry(retry_config(options))
                .with_http_connector(http.connector())
                .with_bucket_name(&spec.bucket)
                .with_region(&spec.region)
                .with_access_key_id(&spec.access_key_id)
                .with_secret_access_key(secret.as_str())
                .with_virtual_hosted_style_request(!spec.path_style)
                .with_checksum_algorithm(Checksum::SHA256)
                .with_conditional_put(S3ConditionalPut::ETagMatch)
                // `read_back` copies the staged object into place; a create-new copy is then an
                // UploadPartCopy completed with `If-None-Match: *` (atomic on S3).
                .with_copy_if_not_exists(S3CopyIfNotExists::Multipart)
                // One DELETE per object: every S3-compatible store has it (DeleteObjects needs
                // Content-MD5 and is missing from some).
                .with_disable_bulk_delete(true);
            if let Some(token) = &token {
                builder = builder.with_token(token.as_str());
            }
            if spec.endpoint.is_some() {
                builder = builder.with_endpoint(&endpoint);
            }
            builder
                .build()
                .map(Arc::new)
                .map_err(|e| HostError::permanent(name, scrub.clean(&format!("s3 settings: {e}"))))
        };
        let (quick, bulk) = (build(Lane::Quick)?, build(Lane::Bulk)?);
        let notes = vec![
            format!("endpoint: {endpoint}"),
            format!("bucket: {}", spec.bucket),
            format!("region: {}", spec.region),
            format!(
                "addressing: {}",
                if spec.path_style {
                    "path-style"
                } else {
                    "virtual-hosted"
                }
            ),
            format!("part size: {} bytes", spec.part_bytes),
            "checksums: SHA-256 of every request body, checked by the server".to_string(),
        ];
        Ok(Arc::new(ObjectHost {
            shared: Arc::new(Shared {
                name: name.to_string(),
                store: quick,
                bulk: bulk.clone(),
                multipart: bulk,
                service: Service::S3,
                part_bytes: spec.part_bytes as usize,
                read_back: options.verify == Verify::ReadBack,
                scrub,
                http,
                container_label: format!("bucket {:?}", spec.bucket),
                notes,
                made_folders: Mutex::default(),
            }),
        }))
    }

    pub fn build_azure(
        name: &str,
        options: &HostOptions,
        spec: &AzureSpec,
        open: &OpenSecret<'_>,
    ) -> HostResult<DynHost> {
        let account_url = azure_account_url(spec.endpoint.as_deref(), &spec.account);
        let http = Http::new(options.max_connections);
        let (auth, scrub) = match (&spec.access_key, &spec.sas_token) {
            (Some(key), _) => {
                let key = open("access_key", key)?;
                let scrub = Scrub::new(vec![key.clone()]);
                let credential = AzureAccessKey::try_new(&key).map_err(|e| {
                    HostError::permanent(
                        name,
                        scrub.clean(&format!("access_key is not a storage account key: {e}")),
                    )
                })?;
                (AzureAuth::Key(key, AzureCredential::AccessKey(credential)), scrub)
            }
            (None, Some(sas)) => {
                let sas = open("sas_token", sas)?;
                let sas = Zeroizing::new(sas.trim_start_matches('?').to_string());
                // The signature is the part that must never show; the whole token goes too.
                let mut secrets = vec![sas.clone()];
                for pair in sas.split('&') {
                    if let Some(("sig", value)) = pair.split_once('=') {
                        secrets.push(Zeroizing::new(value.to_string()));
                    }
                }
                (AzureAuth::Sas(sas), Scrub::new(secrets))
            }
            (None, None) => {
                return Err(HostError::permanent(
                    name,
                    "azure hosts need access_key or sas_token",
                ));
            }
        };
        let build = |lane: Lane| {
            let builder = MicrosoftAzureBuilder::new()
                .with_client_options(client_options(options, spec.allow_http, spec.part_bytes, lane))
                .with_retry(retry_config(options))
                .with_http_connector(http.connector())
                .with_account(&spec.account)
                .with_container_name(&spec.container)
                .with_endpoint(account_url.clone());
            let builder = match &auth {
                AzureAuth::Key(key, _) => builder.with_access_key(key.as_str()),
                AzureAuth::Sas(sas) => builder.with_config(AzureConfigKey::SasKey, sas.as_str()),
            };
            builder
                .build()
                .map(Arc::new)
                .map_err(|e| HostError::permanent(name, scrub.clean(&format!("azure settings: {e}"))))
        };
        let (quick, bulk) = (build(Lane::Quick)?, build(Lane::Bulk)?);
        let notes = vec![
            format!("endpoint: {account_url}"),
            format!("account: {}", spec.account),
            format!("container: {}", spec.container),
            format!(
                "authentication: {}",
                if spec.access_key.is_some() {
                    "account key"
                } else {
                    "SAS token"
                }
            ),
            format!("block size: {} bytes", spec.part_bytes),
        ];
        Ok(Arc::new(ObjectHost {
            shared: Arc::new(Shared {
                name: name.to_string(),
                store: quick,
                bulk: bulk.clone(),
                multipart: bulk,
                service: Service::Azure {
                    account_url,
                    account: spec.account.clone(),
                    container: spec.container.clone(),
                    auth,
                },
                part_bytes: spec.part_bytes as usize,
                read_back: options.verify == Verify::ReadBack,
                scrub,
                http,
                container_label: format!("container {:?}", spec.container),
                notes,
                made_folders: Mutex::default(),
            }),
        }))
    }
}

fn mtime_ns(meta: &object_store::ObjectMeta) -> i128 {
    meta.last_modified
        .timestamp_nanos_opt()
        .map(i128::from)
        .unwrap_or_else(|| i128::from(meta.last_modified.timestamp()) * 1_000_000_000)
}

#[async_trait]
impl Host for ObjectHost {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn capabilities(&self) -> Capabilities {
        self.shared.capabilities()
    }

    fn pool(&self) -> Option<crate::PoolStatus> {
        Some(self.shared.http.pool())
    }

    async fn list(&self, folder: &str, recursive: bool) -> HostResult<Vec<Entry>> {
        let s = &self.shared;
        let root = s.folder_key(folder)?;
        let strip = if root.is_root() {
            String::new()
        } else {
            format!("{root}/")
        };
        // One delimited listing per folder level: only a delimited listing tells a `b/` folder
        // marker (a common prefix) from a file `b` (object_store drops a key's trailing `/`).
        let list_one = |prefix: Path| async move {
            let result = s.store.list_with_delimiter(Some(&prefix)).await;
            (prefix, result)
        };
        let mut pending = FuturesUnordered::new();
        pending.push(list_one(root.clone()));
        let mut waiting = Vec::new();
        let mut entries = Vec::new();
        while let Some((prefix, result)) = pending.next().await {
            let listed = result.map_err(|e| s.err(&format!("list {prefix}"), &e))?;
            if prefix == root
                && !root.is_root()
                && listed.objects.is_empty()
                && listed.common_prefixes.is_empty()
                && !s.azure_marker_exists(&root).await?
            {
                return Err(HostError::not_found(
                    &s.name,
                    format!("folder {folder} does not exist (no object has a key under {root}/)"),
                ));
            }
            for object in listed.objects {
                // The folder's own `prefix/` marker comes back under the folder's name.
                if object.location == prefix {
                    continue;
                }
                let rel = object
                    .location
                    .as_ref()
                    .strip_prefix(&strip)
                    .unwrap_or(object.location.as_ref());
                entries.push(Entry {
                    rel_path: rel.to_string(),
                    size: object.size,
                    mtime_ns: mtime_ns(&object),
                });
            }
            if recursive {
                waiting.extend(listed.common_prefixes);
            }
            while pending.len() < LIST_CONCURRENCY
                && let Some(next) = waiting.pop()
            {
                pending.push(list_one(next));
            }
        }
        entries.sort_by(|a, b| a.rel_path.cmp(&b.rel_path));
        Ok(entries)
    }

    async fn stat(&self, path: &str) -> HostResult<Option<Meta>> {
        let s = &self.shared;
        let key = s.folder_key(path)?;
        if key.is_root() {
            return Ok(Some(Meta {
                size: 0,
                mtime_ns: 0,
                is_dir: true,
            }));
        }
        match s.store.head(&key).await {
            Ok(meta) => Ok(Some(Meta {
                size: meta.size,
                mtime_ns: mtime_ns(&meta),
                is_dir: false,
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(s.folder_exists(&key).await?.then_some(Meta {
                size: 0,
                mtime_ns: 0,
                is_dir: true,
            })),
            Err(e) => Err(s.err(&format!("stat {path}"), &e)),
        }
    }

    async fn read(&self, path: &str, offset: u64) -> HostResult<ByteStream> {
        let s = &self.shared;
        let key = s.key(path)?;
        let what = format!("read {path}");
        let options = GetOptions::new().with_range((offset > 0).then_some(GetRange::Offset(offset)));
        let stream = match s.store.get_opts(&key, options).await {
            Ok(result) => result.into_stream(),
            Err(e) => {
                let error = s.err(&what, &e);
                // A read from the very end has no bytes to return, which S3 calls a bad range.
                if offset > 0
                    && Failure::of(&e).status == Some(416)
                    && s.store.head(&key).await.is_ok_and(|m| m.size == offset)
                {
                    futures::stream::empty().boxed()
                } else {
                    return Err(error);
                }
            }
        };
        Ok(Box::pin(StreamRead {
            stream,
            chunk: Bytes::new(),
            shared: self.shared.clone(),
            what,
        }))
    }

    async fn create_dir_all(&self, path: &str) -> HostResult<()> {
        let s = &self.shared;
        let folder = s.folder_key(path)?;
        if folder.is_root() {
            return Ok(());
        }
        let seen = s
            .made_folders
            .lock()
            .expect("never poisoned")
            .contains(folder.as_ref());
        if seen {
            return Ok(());
        }
        s.put_marker(&folder).await?;
        let mut made = s.made_folders.lock().expect("never poisoned");
        // Bounded: a process that makes very many folders just writes some markers again.
        if made.len() >= 10_000 {
            made.clear();
        }
        made.insert(folder.to_string());
        Ok(())
    }

    async fn write(&self, target: &WriteTarget) -> HostResult<Box<dyn Upload>> {
        upload::start(self.shared.clone(), target)
    }

    async fn delete(&self, path: &str) -> HostResult<()> {
        let key = self.shared.key(path)?;
        self.shared.delete_key(&key, &format!("delete {path}")).await
    }

    async fn probe(&self, folder: &str) -> HostResult<Probe> {
        let s = &self.shared;
        // Connects, authenticates and checks the folder in one request.
        self.list(folder, false).await?;
        Ok(Probe {
            server: s.http.server.get().cloned(),
            capabilities: s.capabilities(),
            notes: s.notes.clone(),
            ..Probe::default()
        })
    }
}

/// An object's body as an [`AsyncRead`], with errors classified like every other host error.
struct StreamRead {
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    chunk: Bytes,
    shared: Arc<Shared>,
    what: String,
}

impl AsyncRead for StreamRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.chunk.is_empty() {
                let n = this.chunk.len().min(buf.remaining());
                buf.put_slice(&this.chunk.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match ready!(this.stream.try_poll_next_unpin(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(bytes)) => this.chunk = bytes,
                Some(Err(e)) => {
                    let error = this.shared.err(&this.what, &e);
                    let kind = match error.kind {
                        ErrorKind::Transient => io::ErrorKind::ConnectionAborted,
                        ErrorKind::NotFound => io::ErrorKind::NotFound,
                        _ => io::ErrorKind::Other,
                    };
                    return Poll::Ready(Err(io::Error::new(kind, error.message)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_address_buckets_and_accounts() {
        assert_eq!(
            virtual_hosted("https://s3.example.net:9000/", "b"),
            "https://b.s3.example.net:9000"
        );
        assert_eq!(
            azure_account_url(Some("http://127.0.0.1:10000"), "devstoreaccount1"),
            "http://127.0.0.1:10000/devstoreaccount1"
        );
        assert_eq!(
            azure_account_url(Some("https://acct.blob.core.windows.net/"), "acct"),
            "https://acct.blob.core.windows.net"
        );
        assert_eq!(
            azure_account_url(None, "acct"),
            "https://acct.blob.core.windows.net"
        );
    }
}
