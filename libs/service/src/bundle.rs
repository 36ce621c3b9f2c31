//! A node's side of the configuration bundle ([`ferry_wire::bundle`]): read the buckets a bundle
//! holds from JetStream, and make them equal to a bundle. Used by `ferry config
//! export|import|verify`; free of CLI concerns so the file-based replication can use it too.
//!
//! **Invariants:** only the keys [`bundle::keeps`] allows are read or changed (a node's
//! `enabled.<node>` schedule switch and every other bucket stay as they are); values are copied
//! as stored, never opened; [`apply`] changes only what differs, so running it again after a
//! failure completes it and running it twice changes nothing the second time.

use std::collections::BTreeMap;

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use ferry_wire::bundle::{self, Bundle, Part};
use futures::TryFutureExt;

/// `op`, or "permission denied" as soon as the server refuses one of this user's JetStream
/// publishes (NATS says so only on the side; the request would otherwise just time out).
async fn permitted<T, E: std::fmt::Display>(
    what: impl FnOnce() -> String,
    op: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T> {
    let mut denials = crate::nats::denials();
    let refused = async move {
        loop {
            match denials.recv().await {
                Ok(text) if text.contains("$JS.") || text.contains("$KV.") => return text,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    };
    tokio::select! {
        result = op => result.map_err(|e| anyhow::anyhow!("{}: {e}", what())),
        text = refused => Err(anyhow::anyhow!(
            "{}: permission denied ({}): reading and writing what a bundle holds takes the admin role",
            what(),
            text.trim()
        )),
    }
}

/// Why a node running Ferry `version` under keymat `keymat_id` must not import `bundle`
/// (checked before anything changes): another Ferry version, another keymat, an entry that does
/// not decode. `ferry config import` and the promotion of a file-based standby both ask.
pub fn refusal(bundle: &Bundle, version: &str, keymat_id: &str) -> anyhow::Result<()> {
    manifest_refusal(&bundle.manifest, version, keymat_id)?;
    bundle::check_entries(bundle)?;
    Ok(())
}

/// [`refusal`]'s checks that need only the manifest: the version and the keymat.
pub fn manifest_refusal(manifest: &bundle::Manifest, version: &str, keymat_id: &str) -> anyhow::Result<()> {
    manifest.check_version(version)?;
    if manifest.keymat_id != keymat_id {
        anyhow::bail!(
            "made under keymat {}, this node's is {keymat_id}: `ferry keymat import` the primary's keymat first",
            manifest.keymat_id
        );
    }
    Ok(())
}

/// The last value of every key of `bucket` a bundle holds, and the bucket's last sequence.
pub async fn read_part(js: &jetstream::Context, bucket: &str) -> anyhow::Result<Part> {
    let mut stream = permitted(
        || format!("open bucket {bucket}"),
        js.get_stream(format!("KV_{bucket}")),
    )
    .await?;
    let mut revision = permitted(|| format!("read bucket {bucket}'s state"), stream.info())
        .await?
        .state
        .last_sequence;
    let prefix = format!("$KV.{bucket}.");
    let stored = permitted(
        || format!("read bucket {bucket}"),
        crate::streams::read_raw(
            &stream,
            &format!("{prefix}>"),
            DeliverPolicy::LastPerSubject,
            None,
        )
        .map_err(|e| format!("{e:#}")),
    )
    .await?;
    let mut entries = BTreeMap::new();
    for m in stored {
        revision = revision.max(m.seq);
        let deleted = m
            .message
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .is_some_and(|op| op.as_str() != "PUT");
        let Some(key) = m.message.subject.as_str().strip_prefix(&prefix) else {
            continue;
        };
        if !deleted && bundle::keeps(bucket, key) {
            entries.insert(key.to_string(), m.message.payload.to_vec());
        }
    }
    Ok(Part {
        bucket: bucket.to_string(),
        revision,
        entries,
    })
}

/// Every part a bundle holds, read from the node's buckets.
pub async fn snapshot(js: &jetstream::Context) -> anyhow::Result<BTreeMap<String, Part>> {
    let mut parts = BTreeMap::new();
    for bucket in bundle::PARTS {
        parts.insert(bucket.to_string(), read_part(js, bucket).await?);
    }
    Ok(parts)
}

/// The parts of a bundle of this node, whose keymat is `keymat_id`: [`snapshot`], refused when
/// the stored configuration's secrets are sealed under another keymat (a bundle states one
/// keymat: the stores' private material is always sealed to the node's).
pub async fn export_parts(js: &jetstream::Context, keymat_id: &str) -> anyhow::Result<Vec<Part>> {
    sealed_under(snapshot(js).await?, keymat_id)
}

/// `parts`, refused when the configuration among them is sealed under a keymat other than
/// `keymat_id` (see [`export_parts`]).
pub fn sealed_under(parts: BTreeMap<String, Part>, keymat_id: &str) -> anyhow::Result<Vec<Part>> {
    let sealed = parts
        .get(ferry_wire::topology::KV_CONFIG)
        .and_then(|p| p.entries.get(ferry_wire::topology::CONFIG_KEY))
        .map(|bytes| ferry_wire::decode::<ferry_wire::ConfigDocument>(bytes))
        .transpose()
        .map_err(|e| anyhow::anyhow!("the stored configuration cannot be read: {e}"))?
        .and_then(|doc| doc.keymat_id);
    if let Some(sealed) = sealed
        && sealed != keymat_id
    {
        anyhow::bail!(
            "the stored configuration's secrets are sealed under keymat {sealed}, this node's keymat is {keymat_id}: \
             apply the configuration again on this node (or import keymat {sealed}) before exporting"
        );
    }
    Ok(parts.into_values().collect())
}

/// What [`apply`] did to one bucket.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq, Eq)]
pub struct Applied {
    pub part: String,
    /// Keys written (new or different).
    pub put: usize,
    /// Keys the bundle does not have, deleted.
    pub deleted: usize,
    pub unchanged: usize,
}

/// [`apply`] failed: where, and what was done before it.
#[derive(Debug, thiserror::Error)]
#[error("part {part}: {reason}; {changes} change(s) were made before it")]
pub struct ApplyError {
    pub part: String,
    pub reason: String,
    /// Keys written or deleted before the failure (0: the node is as it was).
    pub changes: usize,
    /// The parts completed before the failure.
    pub done: Vec<Applied>,
}

/// Make the node's buckets equal to `bundle` (already verified): first read every bucket (so a
/// node the user may not read, or cannot reach, fails with nothing changed), then bucket by
/// bucket in [`bundle::PARTS`] order (the configuration last) put every entry that is new or
/// different and delete every kept key the bundle does not have. The configuration becomes a
/// new revision of its bucket (so `ferry config rollback` can go back) only if it differs.
pub async fn apply(js: &jetstream::Context, bundle: &Bundle) -> Result<Vec<Applied>, ApplyError> {
    let mut plan = Vec::new();
    for bucket in bundle::PARTS {
        let fail = |e: anyhow::Error| ApplyError {
            part: bucket.to_string(),
            reason: format!("{e:#}"),
            changes: 0,
            done: Vec::new(),
        };
        let kv = permitted(|| format!("open bucket {bucket}"), js.get_key_value(bucket))
            .await
            .map_err(fail)?;
        let current = read_part(js, bucket).await.map_err(fail)?;
        plan.push((bucket, kv, current));
    }
    let mut done: Vec<Applied> = Vec::new();
    let mut changes = 0usize;
    for (bucket, kv, current) in plan {
        let wanted = &bundle.parts[bucket];
        let mut applied = Applied {
            part: bucket.to_string(),
            ..Applied::default()
        };
        for (key, value) in &wanted.entries {
            if current.entries.get(key) == Some(value) {
                applied.unchanged += 1;
                continue;
            }
            if let Err(e) = permitted(|| format!("put key {key:?}"), kv.put(key, value.clone().into())).await
            {
                return Err(ApplyError {
                    part: bucket.to_string(),
                    reason: format!("{e:#}"),
                    changes,
                    done,
                });
            }
            applied.put += 1;
            changes += 1;
        }
        for key in current
            .entries
            .keys()
            .filter(|k| !wanted.entries.contains_key(*k))
        {
            if let Err(e) = permitted(|| format!("delete key {key:?}"), kv.delete(key)).await {
                return Err(ApplyError {
                    part: bucket.to_string(),
                    reason: format!("{e:#}"),
                    changes,
                    done,
                });
            }
            applied.deleted += 1;
            changes += 1;
        }
        done.push(applied);
    }
    Ok(done)
}
