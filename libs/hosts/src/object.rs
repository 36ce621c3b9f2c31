//! `s3` and `azure`: not built yet (in progress).

use ferry_config::{AzureSpec, HostOptions, S3Spec};

use crate::registry::OpenSecret;
use crate::{DynHost, HostError, HostResult};

pub struct ObjectHost;

impl ObjectHost {
    pub fn build_s3(
        name: &str,
        _options: &HostOptions,
        _spec: &S3Spec,
        _open: &OpenSecret<'_>,
    ) -> HostResult<DynHost> {
        Err(HostError::permanent(
            name,
            "s3 hosts are not supported by this build yet",
        ))
    }
    pub fn build_azure(
        name: &str,
        _options: &HostOptions,
        _spec: &AzureSpec,
        _open: &OpenSecret<'_>,
    ) -> HostResult<DynHost> {
        Err(HostError::permanent(
            name,
            "azure hosts are not supported by this build yet",
        ))
    }
}
