//! Building connected hosts from the stored configuration, and keeping one per host.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ferry_config::{Host as HostConfig, HostSpec};
use ferry_keymat::{KeymatStore, Zeroizing};

use crate::local::LocalHost;
use crate::{DynHost, HostError, HostMetrics, HostResult};

/// Build a host from its configuration, opening its secrets with the node's keymat. Connections
/// are made on first use (and pooled), so this does no I/O beyond reading the keymat.
pub fn connect(config: &HostConfig, keymat: &KeymatStore) -> HostResult<DynHost> {
    let name = config.name.as_str();
    // Unused when no remote kind is compiled in.
    #[allow(unused_variables)]
    let open = |field: &str, secret: &ferry_config::Secret| -> HostResult<Zeroizing<String>> {
        let keymat = keymat
            .current()
            .map_err(|e| HostError::permanent(name, e.to_string()))?;
        keymat
            .open(&ferry_config::Secret::binding(name, field), secret)
            .map_err(|e| HostError::permanent(name, format!("{field}: {e}")))
    };
    let host: DynHost = match &config.spec {
        HostSpec::Local => Arc::new(LocalHost::new(name)),
        #[cfg(feature = "sftp")]
        HostSpec::Sftp(spec) => crate::sftp::SftpHost::build(name, &config.options, spec, &open)?,
        #[cfg(feature = "ftp")]
        HostSpec::Ftp(spec) => crate::ftp::FtpHost::build(name, &config.options, spec, &open)?,
        #[cfg(feature = "smb")]
        HostSpec::Smb(spec) => crate::smb::SmbHost::build(name, &config.options, spec, &open)?,
        #[cfg(feature = "object")]
        HostSpec::S3(spec) => crate::object::ObjectHost::build_s3(name, &config.options, spec, &open)?,
        #[cfg(feature = "object")]
        HostSpec::Azure(spec) => crate::object::ObjectHost::build_azure(name, &config.options, spec, &open)?,
        #[allow(unreachable_patterns)]
        other => {
            return Err(HostError::permanent(
                name,
                format!("{} hosts are not compiled into this build", other.kind()),
            ));
        }
    };
    Ok(host)
}

/// Opens one secret field of the host being built (`field`, e.g. `password`).
pub type OpenSecret<'a> = dyn Fn(&str, &ferry_config::Secret) -> HostResult<Zeroizing<String>> + 'a;

/// One connected host per configured host name, rebuilt when its configuration changes (an
/// apply) — so each service holds one pool per host, not one per file.
pub struct Hosts {
    keymat: Arc<KeymatStore>,
    built: Mutex<HashMap<String, (HostConfig, DynHost)>>,
    metrics: Option<HostMetrics>,
}

impl Hosts {
    pub fn new(keymat: Arc<KeymatStore>) -> Hosts {
        Hosts {
            keymat,
            built: Mutex::new(HashMap::new()),
            metrics: None,
        }
    }

    /// [`Hosts::new`], every host it builds recorded in `ferry_hosts_*` metrics in `registry`
    /// (what the services use).
    pub fn measured(keymat: Arc<KeymatStore>, registry: &prometheus::Registry) -> prometheus::Result<Hosts> {
        Ok(Hosts {
            metrics: Some(HostMetrics::new(registry)?),
            ..Hosts::new(keymat)
        })
    }

    pub fn keymat(&self) -> &KeymatStore {
        &self.keymat
    }

    /// The host for `config`, built once per configuration of that name.
    pub fn get(&self, config: &HostConfig) -> HostResult<DynHost> {
        let mut built = self.built.lock().expect("the hosts lock is never poisoned");
        if let Some((seen, host)) = built.get(&config.name)
            && seen == config
        {
            return Ok(host.clone());
        }
        let mut host = connect(config, &self.keymat)?;
        if let Some(metrics) = &self.metrics {
            host = metrics.wrap(host);
        }
        built.insert(config.name.clone(), (config.clone(), host.clone()));
        Ok(host)
    }
}
