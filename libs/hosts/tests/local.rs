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

/// Chunks read straight from the file system: a link is never followed, a large file read in
/// recycled buffers keeps its bytes while the reader runs ahead, and dropping the stream early
/// ends the reads.
#[tokio::test]
async fn local_chunks_follow_no_link_and_keep_their_bytes() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let host: ferry_hosts::DynHost = Arc::new(LocalHost::new("local"));
    let data: Vec<u8> = (0..(20u32 << 20) + 7)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = dir.path().join("big.bin");
    std::fs::write(&file, &data).expect("write");
    let path = file.to_string_lossy().to_string();

    // Consumed one chunk at a time (each dropped at once, so buffers come back for reuse).
    let mut chunks = host.read_chunks(&path, 1 << 20).await.expect("read_chunks");
    let mut hasher_input = Vec::with_capacity(data.len());
    while let Some(c) = chunks.next().await {
        hasher_input.extend_from_slice(&c.expect("chunk"));
    }
    assert!(hasher_input == data, "recycled chunks changed the bytes");
    // Held all at once (no buffer may be reused while held).
    assert!(
        conformance::get_chunks(&host, &path, 1 << 20)
            .await
            .expect("chunks")
            == data
    );

    // Dropped after the first chunk: the reader notices at its next send and stops.
    let mut chunks = host.read_chunks(&path, 4096).await.expect("read_chunks");
    assert_eq!(chunks.next().await.expect("a chunk").expect("ok").len(), 4096);
    drop(chunks);

    let link = dir.path().join("link.bin");
    std::os::unix::fs::symlink(&file, &link).expect("symlink");
    let refused = host
        .read_chunks(&link.to_string_lossy(), 4096)
        .await
        .err()
        .expect("a link is refused");
    assert!(refused.to_string().contains("link.bin"), "{refused}");
}
