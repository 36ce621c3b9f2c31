//! What every host kind's tests share. Each test binary uses a part of it.
#![allow(dead_code)]

use ferry_hosts::{DynHost, HostError, WriteTarget, conformance};

pub use ferry_hosts::conformance::sha;

/// Host `name` of `toml`, built the way the services build it (secrets sealed to a keymat in the
/// returned folder, which must live as long as the host).
pub fn sealed(toml: &str, name: &str) -> (DynHost, tempfile::TempDir) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let host = conformance::connect_sealed(toml, name, dir.path()).expect("build host");
    (host, dir)
}

/// The error of `r`, which must have failed; printed, so a test's output shows the wording.
pub fn expect_err<T>(what: &str, r: Result<T, HostError>) -> HostError {
    match r {
        Ok(_) => panic!("{what}: succeeded, expected an error"),
        Err(e) => {
            eprintln!("{what}: {e}");
            e
        }
    }
}

/// Where a test writes `dir/name`, without resume.
pub fn target(dir: &str, name: &str, size: u64) -> WriteTarget {
    conformance::target(dir, name, false, size)
}

/// Size and SHA-256 of a stored file.
pub async fn stored_sha(host: &DynHost, path: &str) -> (u64, String) {
    ferry_hosts::hash_stored(host, path).await.expect("read back")
}
