//! Azurite's Blob service (`azurite-blob`, from npm into `.ferry/tools`) on a random loopback
//! port, storing in a temp dir, with one container made at start. Azurite checks SharedKey
//! signatures against its public development account ([`ACCOUNT`], [`ACCOUNT_KEY`]) and keeps
//! its data on disk (see [`AzuriteServer::restart`]).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use super::{tools_dir, wait_port};

/// Azurite's well-known development account and key (public, the same in every install).
pub const ACCOUNT: &str = "devstoreaccount1";
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The container every server starts with.
pub const CONTAINER: &str = "ferry-test";

/// `PUT ?restype=container`, signed with SharedKey (Python's standard library only: Azurite's
/// npm package brings no Azure SDK).
const CREATE_CONTAINER: &str = r#"
import base64, email.utils, hashlib, hmac, sys, urllib.error, urllib.request
endpoint, account, key, container = sys.argv[1:5]
date = email.utils.formatdate(usegmt=True)
version = "2021-08-06"
to_sign = ("PUT\n" + "\n" * 11 + f"x-ms-date:{date}\nx-ms-version:{version}\n"
           + f"/{account}/{account}/{container}\nrestype:container")
sig = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()).decode()
request = urllib.request.Request(f"{endpoint}/{account}/{container}?restype=container", method="PUT",
    data=b"", headers={"x-ms-date": date, "x-ms-version": version, "Content-Type": "",
                       "Authorization": f"SharedKey {account}:{sig}"})
try:
    urllib.request.urlopen(request).read()
except urllib.error.HTTPError as e:
    if e.code != 409:  # ContainerAlreadyExists
        raise
"#;

/// An account SAS for the Blob service (read, write, delete, list, add, create), valid until
/// 2099, signed with the account key: what an Azure portal hands a partner.
const ACCOUNT_SAS: &str = r#"
import base64, hashlib, hmac, sys, urllib.parse
account, key = sys.argv[1:3]
fields = {"sv": "2021-08-06", "ss": "b", "srt": "sco", "sp": "rwdlac",
          "se": "2099-01-01T00:00:00Z", "spr": "https,http"}
to_sign = "\n".join([account, fields["sp"], fields["ss"], fields["srt"], "", fields["se"], "",
                     fields["spr"], fields["sv"], ""]) + "\n"
fields["sig"] = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()).decode()
print(urllib.parse.urlencode(fields))
"#;

pub struct AzuriteServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

fn azurite_path() -> PathBuf {
    tools_dir().join("node_modules/.bin/azurite-blob")
}

impl AzuriteServer {
    /// A server with [`CONTAINER`].
    pub fn start() -> anyhow::Result<Self> {
        if !azurite_path().exists() {
            bail!(
                "{} is missing: install the test peers with `scripts/install-deps.sh peers .ferry/tools` (make deps)",
                azurite_path().display()
            );
        }
        let mut server = AzuriteServer {
            child: None,
            dir: tempfile::Builder::new().prefix("ferry-azurite-").tempdir()?,
            port: super::free_port()?,
        };
        server.spawn()?;
        server.create_container(CONTAINER)?;
        Ok(server)
    }

    /// `http://127.0.0.1:PORT` (the account is the first path segment under it).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Make another container (an existing one is fine).
    pub fn create_container(&self, name: &str) -> anyhow::Result<()> {
        let out = Command::new("python3")
            .args([
                "-c",
                CREATE_CONTAINER,
                &self.endpoint(),
                ACCOUNT,
                ACCOUNT_KEY,
                name,
            ])
            .output()
            .context("run python3 to create an Azurite container")?;
        if !out.status.success() {
            bail!(
                "creating container {name} failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
        Ok(())
    }

    /// An account SAS token (a query string without `?`) for the development account.
    pub fn account_sas(&self) -> anyhow::Result<String> {
        let out = Command::new("python3")
            .args(["-c", ACCOUNT_SAS, ACCOUNT, ACCOUNT_KEY])
            .output()
            .context("run python3 to sign a SAS token")?;
        if !out.status.success() {
            bail!(
                "signing a SAS token failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    /// Stop with SIGKILL — once the test container is in Azurite's saved metadata (it saves every
    /// 5 s): a server that loses its container on a kill is not what the kill tests are about, and
    /// a client retrying before `restart` made it again would be told the container is gone.
    pub fn kill(&mut self) {
        let saved = self.dir.path().join("data/__azurite_db_blob__.json");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline
            && !std::fs::read_to_string(&saved).is_ok_and(|db| db.contains(CONTAINER))
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill_now();
    }

    fn kill_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill and start again on the same port and data. Azurite saves its metadata every few
    /// seconds, so what the last seconds made may be gone (the container is made again, too).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()?;
        self.create_container(CONTAINER)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("azurite.log")).unwrap_or_default()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        let log = std::fs::File::create(self.dir.path().join("azurite.log"))?;
        let child = Command::new(azurite_path())
            .args(["--blobHost", "127.0.0.1", "--blobPort", &self.port.to_string()])
            .arg("--location")
            .arg(&data)
            .args(["--silent", "--disableTelemetry"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", azurite_path().display()))?;
        self.child = Some(child);
        wait_port(self.port, Duration::from_secs(30), "azurite-blob", || self.log())
    }
}

impl Drop for AzuriteServer {
    fn drop(&mut self) {
        self.kill_now();
    }
}
