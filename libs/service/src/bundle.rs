//! A node's side of the configuration bundle ([`ferry_wire::bundle`]): read the buckets a bundle
//! holds from JetStream, and make them equal to a bundle. Used by `ferry config
//! export|import|verify`; free of CLI concerns so the file-based replication can use it too.
//!
//! **Invariants:** only the keys [`bundle::keeps`] allows are read or changed (a node's
//! `enabled.<node>` schedule switch and every other bucket stay as they are); values are copied
//! as stored, never opened; [`apply`] changes only what differs, so running it again after a
//! failure completes it and running it twice changes nothing the second time.

use std::collections::BTreeMap;

use anyhow::Context;
use async_nats::jetstream::{self, consumer::DeliverPolicy};
use ferry_wire::bundle::{self, Bundle, Part};

/// The last value of every key of `bucket` a bundle holds, and the bucket's last sequence.
pub async fn read_part(js: &jetstream::Context, bucket: &str) -> anyhow::Result<Part> {
    let mut stream = js
        .get_stream(format!("KV_{bucket}"))
        .await
        .with_context(|| format!("open bucket {bucket}"))?;
    let mut revision = stream
        .info()
        .await
        .with_context(|| format!("read bucket {bucket}'s state"))?
        .state
        .last_sequence;
    let prefix = format!("$KV.{bucket}.");
    let stored = crate::streams::read_raw(
        &stream,
        &format!("{prefix}>"),
        DeliverPolicy::LastPerSubject,
        None,
    )
    .await
    .with_context(|| format!("read bucket {bucket}"))?;
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

/// A write of [`apply`] failed: what was done before it.
#[derive(Debug, thiserror::Error)]
#[error("part {part}: {action} key {key:?}: {reason}; {changes} change(s) were made before it")]
pub struct ApplyError {
    pub part: String,
    pub action: &'static str,
    pub key: String,
    pub reason: String,
    pub changes: usize,
    /// The parts completed before the failure.
    pub done: Vec<Applied>,
}

/// Make the node's buckets equal to `bundle` (already verified), bucket by bucket in
/// [`bundle::PARTS`] order (the configuration last): put every entry that is new or different,
/// delete every kept key the bundle does not have. The configuration becomes a new revision of
/// its bucket (so `ferry config rollback` can go back) only if it differs.
pub async fn apply(js: &jetstream::Context, bundle: &Bundle) -> Result<Vec<Applied>, ApplyError> {
    let mut done: Vec<Applied> = Vec::new();
    let mut changes = 0usize;
    for bucket in bundle::PARTS {
        let fail = |action, key: &str, reason: String, changes, done: &Vec<Applied>| ApplyError {
            part: bucket.to_string(),
            action,
            key: key.to_string(),
            reason,
            changes,
            done: done.clone(),
        };
        let wanted = &bundle.parts[bucket];
        let kv = js
            .get_key_value(bucket)
            .await
            .map_err(|e| fail("open bucket for", "", e.to_string(), changes, &done))?;
        let current = read_part(js, bucket)
            .await
            .map_err(|e| fail("read", "", format!("{e:#}"), changes, &done))?;
        let mut applied = Applied {
            part: bucket.to_string(),
            ..Applied::default()
        };
        for (key, value) in &wanted.entries {
            if current.entries.get(key) == Some(value) {
                applied.unchanged += 1;
                continue;
            }
            kv.put(key, value.clone().into())
                .await
                .map_err(|e| fail("put", key, e.to_string(), changes, &done))?;
            applied.put += 1;
            changes += 1;
        }
        for key in current
            .entries
            .keys()
            .filter(|k| !wanted.entries.contains_key(*k))
        {
            kv.delete(key)
                .await
                .map_err(|e| fail("delete", key, e.to_string(), changes, &done))?;
            applied.deleted += 1;
            changes += 1;
        }
        done.push(applied);
    }
    Ok(done)
}
