//! moto's S3 server (`moto_server`, from PyPI into `.ferry/tools`) on a random loopback port,
//! with one bucket made at start. Path-style addressing, region `us-east-1`.
//!
//! [`Auth::Open`] accepts any key pair (moto's default). [`Auth::Iam`] turns on moto's request
//! authentication once an IAM user with an `s3:*` policy and its access key exist, so a wrong
//! secret is refused with `SignatureDoesNotMatch` like AWS does. moto keeps everything in
//! memory: [`S3Server::restart`] starts an empty server on the same port and makes the bucket
//! (and the user, with a new key) again.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use super::{tools_dir, wait_port};

/// How the server checks requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Any access key and secret are accepted.
    Open,
    /// Only the key pair of the IAM user the peer creates ([`S3Server::access_key_id`]).
    Iam,
}

/// The bucket every server starts with.
pub const BUCKET: &str = "ferry-test";

/// The key pair of an [`Auth::Open`] server (moto accepts any).
const OPEN_KEY_ID: &str = "AKIAFERRYTEST";
const OPEN_SECRET: &str = "ferry-open-secret";

/// Makes the bucket (and with `iam`, the user and key, printed as `<id> <secret>`), then turns
/// authentication on.
const SETUP: &str = r#"
import json, sys, urllib.request
import boto3
endpoint, bucket, mode = sys.argv[1:4]
kw = dict(endpoint_url=endpoint, region_name="us-east-1",
          aws_access_key_id="setup", aws_secret_access_key="setup")
boto3.client("s3", **kw).create_bucket(Bucket=bucket)
if mode == "iam":
    iam = boto3.client("iam", **kw)
    iam.create_user(UserName="ferry")
    iam.put_user_policy(UserName="ferry", PolicyName="s3", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="ferry")["AccessKey"]
    urllib.request.urlopen(urllib.request.Request(
        endpoint + "/moto-api/reset-auth", data=b"0", method="POST",
        headers={"Content-Type": "text/plain"})).read()
    print(key["AccessKeyId"], key["SecretAccessKey"])
"#;

pub struct S3Server {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    auth: Auth,
    key_id: String,
    secret: String,
}

fn moto_path() -> PathBuf {
    tools_dir().join("bin/moto_server")
}

impl S3Server {
    /// A server with [`BUCKET`], accepting any key pair.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(Auth::Open)
    }

    pub fn start_with(auth: Auth) -> anyhow::Result<Self> {
        if !moto_path().exists() {
            bail!(
                "{} is missing: install the test peers with `scripts/install-deps.sh peers .ferry/tools` (make deps)",
                moto_path().display()
            );
        }
        let mut server = S3Server {
            child: None,
            dir: tempfile::Builder::new().prefix("ferry-moto-").tempdir()?,
            port: super::free_port()?,
            auth,
            key_id: OPEN_KEY_ID.into(),
            secret: OPEN_SECRET.into(),
        };
        server.spawn()?;
        Ok(server)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn access_key_id(&self) -> &str {
        &self.key_id
    }

    pub fn secret_access_key(&self) -> &str {
        &self.secret
    }

    /// The server's process id (for measuring its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stop with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill and start an empty server on the same port, with the bucket made again.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.path().join("moto.log"))?;
        let child = Command::new(moto_path())
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", moto_path().display()))?;
        self.child = Some(child);
        wait_port(self.port, Duration::from_secs(30), "moto_server", || self.log())?;
        let mode = match self.auth {
            Auth::Open => "open",
            Auth::Iam => "iam",
        };
        let out = Command::new("python3")
            .args(["-c", SETUP, &self.endpoint(), BUCKET, mode])
            .env("PYTHONPATH", tools_dir().join("py"))
            .output()
            .context("run python3 to set up moto")?;
        if !out.status.success() {
            bail!(
                "setting up moto failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
        if self.auth == Auth::Iam {
            let text = String::from_utf8(out.stdout)?;
            let (id, secret) = text
                .trim()
                .split_once(' ')
                .context("the setup script prints `<key id> <secret>`")?;
            self.key_id = id.to_string();
            self.secret = secret.to_string();
        }
        Ok(())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}
