//! `ferry nats setup`: least privilege on the bus (ADR 007). Generates an nkey user for every
//! service of every node and for each operator role, and the nats-server `authorization` block
//! that gives each exactly what it needs (`ferry_wire::permissions`). Seeds are private files
//! (mode 0600) kept across runs; the server configuration holds public keys only.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use ferry_wire::permissions::{self, Role, User};

#[derive(Debug, clap::Args)]
pub struct SetupArgs {
    /// Where the seeds and `auth.conf` go: `<dir>/<node>/<service>.nk`, `<dir>/<role>.nk`.
    #[arg(long)]
    dir: PathBuf,
    /// The nodes to make service users for, comma-separated (every node of the cluster).
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<String>,
    /// Also give each node a `cli.nk` holding this role's seed (what `ferry` on that node uses
    /// with `nkey_seed_file = "<dir>/{node}/{service}.nk"`): viewer, operator or admin.
    #[arg(long)]
    cli_role: Option<String>,
    /// Make new seeds even where some exist (the old ones stop working once the server reloads).
    #[arg(long)]
    rotate: bool,
}

pub fn setup(args: &SetupArgs, json: bool) -> anyhow::Result<ExitCode> {
    for node in &args.nodes {
        if !ferry_config::is_valid_name(node) {
            bail!("--nodes: {node:?} is not a valid node id: use 1-64 letters, digits, '-' or '_'");
        }
    }
    let cli_role = match &args.cli_role {
        Some(name) => Some(
            Role::parse(name)
                .with_context(|| format!("--cli-role: {name:?} is not viewer, operator or admin"))?,
        ),
        None => None,
    };
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    let mut users = Vec::new();
    let mut written = Vec::new();
    let mut role_seeds = std::collections::BTreeMap::new();
    for role in Role::ALL {
        let path = args.dir.join(format!("{}.nk", role.name()));
        let (pair, seed) = seed_at(&path, args.rotate)?;
        role_seeds.insert(role, seed);
        users.push(User {
            comment: format!("operator role {}", role.name()),
            nkey: pair.public_key(),
            permissions: permissions::for_role(role),
        });
        written.push(path);
    }
    for node in &args.nodes {
        let dir = args.dir.join(node);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        for service in permissions::SERVICES {
            let path = dir.join(format!("{service}.nk"));
            let (pair, _) = seed_at(&path, args.rotate)?;
            users.push(User {
                comment: format!("node {node}, service {service}"),
                nkey: pair.public_key(),
                permissions: permissions::for_service(node, service),
            });
            written.push(path);
        }
        if let Some(role) = cli_role {
            let path = dir.join("cli.nk");
            crate::keymat::write_private(&path, role_seeds[&role].as_bytes())?;
            written.push(path);
        }
    }
    let conf = args.dir.join("auth.conf");
    std::fs::write(&conf, permissions::server_config(&users))
        .with_context(|| format!("write {}", conf.display()))?;
    written.push(conf.clone());
    if json {
        let files: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
        println!(
            "{}",
            serde_json::json!({ "server_config": conf.display().to_string(), "files": files })
        );
    } else {
        println!(
            "{} users; include {} from the nats-server configuration; seeds under {}",
            users.len(),
            conf.display(),
            args.dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The user key pair whose seed is at `path`: the one already there (unless `rotate`), else a
/// new one written there privately.
fn seed_at(path: &Path, rotate: bool) -> anyhow::Result<(nkeys::KeyPair, String)> {
    if !rotate && path.exists() {
        let seed = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let seed = seed.trim().to_string();
        let pair = nkeys::KeyPair::from_seed(&seed).map_err(|e| {
            anyhow::anyhow!(
                "{} holds no nkey seed ({e}); --rotate replaces it",
                path.display()
            )
        })?;
        return Ok((pair, seed));
    }
    let pair = nkeys::KeyPair::new_user();
    let seed = pair.seed().map_err(|e| anyhow::anyhow!("nkey seed: {e}"))?;
    crate::keymat::write_private(path, seed.as_bytes())?;
    Ok((pair, seed))
}
