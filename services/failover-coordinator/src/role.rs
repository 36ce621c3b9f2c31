//! The node's role, persisted in its data dir so it survives a reboot without NATS: a disabled
//! node stays disabled, a standby stays standby.
//!
//! Invariant: the file is replaced atomically (temp file, fsync, rename, directory fsync); a
//! reader sees the old role or the new one.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use ferry_wire::Role;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Recorded {
    role: Role,
    changed_at: DateTime<Utc>,
    reason: String,
}

pub struct RoleStore {
    path: PathBuf,
}

impl RoleStore {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join("failover-role.json"),
        }
    }

    /// The recorded role, or `None` on a node's first start.
    pub fn load(&self) -> anyhow::Result<Option<Role>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                let recorded: Recorded = serde_json::from_slice(&bytes)
                    .with_context(|| format!("read role from {}", self.path.display()))?;
                Ok(Some(recorded.role))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}", self.path.display())),
        }
    }

    pub fn save(&self, role: Role, reason: &str) -> anyhow::Result<()> {
        let dir = self.path.parent().expect("the role file sits in the data dir");
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let recorded = Recorded {
            role,
            changed_at: Utc::now(),
            reason: reason.to_string(),
        };
        let tmp = self.path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        file.write_all(&serde_json::to_vec_pretty(&recorded)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path).with_context(|| format!("write {}", self.path.display()))?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_survives_a_new_store() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = RoleStore::new(dir.path());
        assert_eq!(store.load().expect("load"), None);
        store.save(Role::Disabled, "test").expect("save");
        assert_eq!(
            RoleStore::new(dir.path()).load().expect("load"),
            Some(Role::Disabled)
        );
    }
}
