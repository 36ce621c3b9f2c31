//! Mirror mode, as every service sees it: on a standby attached to a primary
//! (`ferry standby attach`) the mirrored buckets ([`ferry_wire::topology::MIRRORED`]) are
//! read-only copies. The stores refuse writes by themselves (a mirror has no subjects); a writer
//! asks here first so that the refusal says why and what to do.

use anyhow::Context;
use async_nats::jetstream;

use ferry_wire::standby::META_PRIMARY;

/// The primary `bucket` is a mirror of (its URL as attached), or `None` when the bucket is this
/// node's own.
pub async fn mirror_of(js: &jetstream::Context, bucket: &str) -> anyhow::Result<Option<String>> {
    let mut stream = js
        .get_stream(format!("KV_{bucket}"))
        .await
        .with_context(|| format!("open bucket {bucket}"))?;
    let info = stream
        .info()
        .await
        .with_context(|| format!("read bucket {bucket}'s configuration"))?;
    Ok(info.config.mirror.as_ref().map(|mirror| {
        info.config
            .metadata
            .get(META_PRIMARY)
            .cloned()
            .or_else(|| mirror.external.as_ref().map(|e| e.api_prefix.clone()))
            .unwrap_or_else(|| mirror.name.clone())
    }))
}

/// `Err(message)` when `bucket` is a mirror: "this node's {what} is a mirror of {primary}; {verb}
/// on the primary or promote this node".
pub async fn refuse_if_mirror(
    js: &jetstream::Context,
    bucket: &str,
    what: &str,
    verb: &str,
) -> Result<(), String> {
    match mirror_of(js, bucket).await {
        Ok(None) => Ok(()),
        Ok(Some(primary)) => Err(format!(
            "this node's {what} is a mirror of {primary}; {verb} on the primary or promote this node (`ferry failover promote`)"
        )),
        Err(e) => Err(format!("{e:#}")),
    }
}
