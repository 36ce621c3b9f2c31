//! `ferry keymat export|import|status`: the node's master key, handled on the node itself (the
//! CLI reads the keymat file named by the node's settings; the key never crosses the bus).
//! The reference product's "copy the KeyMat to the standby once" is `export` on the primary and
//! `import` on the standby.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use ferry_keymat::{Keymat, Zeroizing};

#[derive(Debug, clap::Subcommand)]
pub enum KeymatCommand {
    /// Write the keymat, encrypted under a password (Argon2id), to a file.
    Export {
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        password: Password,
    },
    /// Install a keymat exported by `ferry keymat export` (on a standby, once).
    Import {
        file: PathBuf,
        #[command(flatten)]
        password: Password,
        /// Replace a different keymat this node already has (secrets sealed under it no longer
        /// open: apply the configuration again or replicate the primary's).
        #[arg(long)]
        force: bool,
    },
    /// This node's key id, and whether the stored configuration's secrets are sealed under it.
    Status,
}

/// Where the export password comes from: a file, an environment variable, or the first line of
/// standard input (never the command line, where other users could see it).
#[derive(Debug, clap::Args)]
pub struct Password {
    /// Read the password from this file (its first line).
    #[arg(long, conflicts_with = "password_env")]
    password_file: Option<PathBuf>,
    /// Read the password from this environment variable.
    #[arg(long)]
    password_env: Option<String>,
}

impl Password {
    fn read(&self) -> anyhow::Result<Zeroizing<String>> {
        let line = |text: &str| Zeroizing::new(text.lines().next().unwrap_or_default().to_string());
        if let Some(file) = &self.password_file {
            let text = Zeroizing::new(
                std::fs::read_to_string(file)
                    .with_context(|| format!("read password file {}", file.display()))?,
            );
            return Ok(line(&text));
        }
        if let Some(var) = &self.password_env {
            let value = Zeroizing::new(
                std::env::var(var).with_context(|| format!("environment variable {var} is not set"))?,
            );
            return Ok(line(&value));
        }
        eprint!("keymat password: ");
        let mut text = Zeroizing::new(String::new());
        std::io::stdin()
            .lock()
            .read_line(&mut text)
            .context("read the password from standard input")?;
        Ok(line(&text))
    }
}

pub fn export(keymat_path: &Path, out: &Path, password: &Password, json: bool) -> anyhow::Result<ExitCode> {
    let keymat =
        Keymat::load(keymat_path).with_context(|| "this node has no keymat yet (start the node once)")?;
    let text = keymat.export(&password.read()?)?;
    write_private(out, text.as_bytes())?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "key_id": keymat.key_id(), "file": out })
        );
    } else {
        println!(
            "keymat {} exported to {} (protected by the password; keep the file and the password apart)",
            keymat.key_id(),
            out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn import(
    keymat_path: &Path,
    file: &Path,
    password: &Password,
    force: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    let keymat = Keymat::import(&text, &password.read()?)?;
    if let Ok(current) = Keymat::load(keymat_path) {
        if current.key_id() == keymat.key_id() {
            report(json, keymat.key_id(), "is already this node's keymat");
            return Ok(ExitCode::SUCCESS);
        }
        if !force {
            bail!(
                "this node already has keymat {}; importing {} would make secrets sealed under {} unreadable here. \
                 Use --force to replace it",
                current.key_id(),
                keymat.key_id(),
                current.key_id()
            );
        }
    }
    keymat.install(keymat_path)?;
    report(
        json,
        keymat.key_id(),
        "installed; the node's services use it from now on",
    );
    Ok(ExitCode::SUCCESS)
}

pub fn status(keymat_path: &Path, config_keymat: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let ours = Keymat::load(keymat_path).ok().map(|k| k.key_id().to_string());
    let matches = match (&ours, config_keymat) {
        (Some(a), Some(b)) => Some(a == b),
        _ => None,
    };
    if json {
        println!(
            "{}",
            serde_json::json!({
                "key_id": ours,
                "file": keymat_path,
                "configuration_key_id": config_keymat,
                "matches": matches,
            })
        );
    } else {
        match &ours {
            Some(id) => println!("keymat {id} ({})", keymat_path.display()),
            None => println!(
                "no keymat at {} (the node creates one on first start)",
                keymat_path.display()
            ),
        }
        match (config_keymat, matches) {
            (Some(id), Some(true)) => {
                println!("the stored configuration's secrets are sealed under it ({id})")
            }
            (Some(id), _) => println!(
                "the stored configuration's secrets are sealed under keymat {id}, NOT this node's: import that keymat \
                 (`ferry keymat import`) before this node runs tasks"
            ),
            (None, _) => println!("the stored configuration names no keymat"),
        }
    }
    Ok(if matches == Some(false) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn report(json: bool, key_id: &str, what: &str) {
    if json {
        println!("{}", serde_json::json!({ "key_id": key_id, "result": what }));
    } else {
        println!("keymat {key_id} {what}");
    }
}

/// Create `path` with mode 0600 (refusing to follow a symlink there).
pub(crate) fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}
