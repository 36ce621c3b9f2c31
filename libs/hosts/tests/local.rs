//! The conformance suite against the node's own file system.

use std::sync::Arc;

use ferry_hosts::conformance;
use ferry_hosts::local::LocalHost;

#[tokio::test]
async fn local_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let host: ferry_hosts::DynHost = Arc::new(LocalHost::new("local"));
    conformance::run(&host, &dir.path().to_string_lossy())
        .await
        .expect("conformance");
}
