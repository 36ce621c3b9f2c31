//! `sftp`: not built yet (in progress).

use ferry_config::{HostOptions, SftpSpec};

use crate::registry::OpenSecret;
use crate::{DynHost, HostError, HostResult};

pub struct SftpHost;

impl SftpHost {
    pub fn build(
        name: &str,
        _options: &HostOptions,
        _spec: &SftpSpec,
        _open: &OpenSecret<'_>,
    ) -> HostResult<DynHost> {
        Err(HostError::permanent(
            name,
            "sftp hosts are not supported by this build yet",
        ))
    }
}
