//! `ftp`: not built yet (in progress).

use ferry_config::{FtpSpec, HostOptions};

use crate::registry::OpenSecret;
use crate::{DynHost, HostError, HostResult};

pub struct FtpHost;

impl FtpHost {
    pub fn build(
        name: &str,
        _options: &HostOptions,
        _spec: &FtpSpec,
        _open: &OpenSecret<'_>,
    ) -> HostResult<DynHost> {
        Err(HostError::permanent(
            name,
            "ftp hosts are not supported by this build yet",
        ))
    }
}
