//! `smb`: not built yet (in progress).

use ferry_config::{HostOptions, SmbSpec};

use crate::registry::OpenSecret;
use crate::{DynHost, HostError, HostResult};

pub struct SmbHost;

impl SmbHost {
    pub fn build(
        name: &str,
        _options: &HostOptions,
        _spec: &SmbSpec,
        _open: &OpenSecret<'_>,
    ) -> HostResult<DynHost> {
        Err(HostError::permanent(
            name,
            "smb hosts are not supported by this build yet",
        ))
    }
}
