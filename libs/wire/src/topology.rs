//! Streams and KV buckets, and the idempotent set-up every service runs at start.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

/// Run requests, one message per run; work-queue retention (a run is consumed once).
pub const STREAM_RUNQ: &str = "FERRY_RUNQ";
/// Per-file work items; work-queue retention, shared by all transfer instances.
pub const STREAM_FILEQ: &str = "FERRY_FILEQ";
/// Per-file results, read back by the file-collector to finish a run.
pub const STREAM_RESULTS: &str = "FERRY_RESULTS";
/// Run started/finished and role-change events.
pub const STREAM_EVENTS: &str = "FERRY_EVENTS";
/// The audit trail: one record per file movement.
pub const STREAM_AUDIT: &str = "FERRY_AUDIT";
/// The audit trail's hash chain ([`crate::seal`]); kept longer than the records it seals.
pub const STREAM_AUDIT_SEALS: &str = "FERRY_AUDIT_SEALS";
/// JetStream's max-deliveries advisories of the run queue and the file queue, kept until a
/// file-collector has answered them (work-queue retention).
pub const STREAM_DEADLETTER: &str = "FERRY_DEADLETTER";
/// Revisions of the configuration the bucket keeps (`ferry config history` / `rollback`).
pub const CONFIG_HISTORY: i64 = 20;

/// Deliveries of one work batch, or one run request, before its consumer gives up on it (a
/// worker crashed or stalled on it every time); the file-collector then fails the batch's files
/// or the run ("dead-lettered").
pub const MAX_DELIVER: i64 = 10;

/// Durable consumer names.
pub const CONSUMER_COLLECTOR: &str = "file-collector";
pub const CONSUMER_TRANSFER: &str = "transfer";

/// The applied configuration document, a single key so an apply is one atomic write.
pub const KV_CONFIG: &str = "ferry_config";
pub const CONFIG_KEY: &str = "current";
/// New-files-only state: `nfo.<source key>.<file key>`.
pub const KV_STATE: &str = "ferry_state";
/// Run bookkeeping: `lock.<task>` (a task never overlaps itself), `run.<run id>`, `item.<item id>`.
pub const KV_RUNS: &str = "ferry_runs";
/// Scheduler bookkeeping: `last.<task>` (last fired slot), `enabled.<node>`.
pub const KV_SCHED: &str = "ferry_sched";
/// The failover lease: key [`LEASE_KEY`], plus `node.<id>` announcements. Its `max_age` is the
/// lease TTL, so a key that is not re-written within the TTL disappears.
pub const KV_LEASE: &str = "ferry_lease";
pub const LEASE_KEY: &str = "active";
/// The cert-handler's stores ([`crate::keys`]), each written only by the cert-handler.
/// Personal certificates: key = SHA-256 fingerprint of the leaf; chain plus the private key
/// sealed to the node's keymat.
pub const KV_CERTS_PERSONAL: &str = "ferry_certs_personal";
/// Other people's certificates: key = SHA-256 fingerprint; the DER.
pub const KV_CERTS_OTHER: &str = "ferry_certs_other";
/// PGP public keys: key = primary fingerprint; the transferable public key.
pub const KV_PGP_PUBLIC: &str = "ferry_pgp_public";
/// PGP secret keys: key = primary fingerprint; the transferable secret key sealed to the keymat.
pub const KV_PGP_SECRET: &str = "ferry_pgp_secret";
/// The buckets a standby in mirror mode copies from its primary (`ferry standby attach`):
/// configuration, new-files-only state, schedule state, certificate stores and key rings. Run
/// bookkeeping and the lease stay each site's own.
pub const MIRRORED: [&str; 7] = [
    KV_CONFIG,
    KV_STATE,
    KV_SCHED,
    KV_CERTS_PERSONAL,
    KV_CERTS_OTHER,
    KV_PGP_PUBLIC,
    KV_PGP_SECRET,
];

pub fn node_key(node: &str) -> String {
    format!("node.{node}")
}

/// Cluster-wide choices every service makes the same way when it creates the topology.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Replicas of every stream and bucket (1 for a single server, 3 for a three-server cluster).
    pub replicas: usize,
    /// The failover lease TTL: the lease bucket's `max_age`. Fixed when the bucket is created.
    pub lease_ttl: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            replicas: 1,
            lease_ttl: Duration::from_secs(10),
        }
    }
}

/// How long JetStream remembers a message id: a slot fired again within this window is dropped.
/// The scheduler's `last.<task>` record covers restarts longer than this.
pub const DEDUPE_WINDOW: Duration = Duration::from_secs(30 * 60);

/// Create or update every stream and bucket. Safe to run concurrently from every service.
pub async fn ensure(js: &jetstream::Context, options: Options) -> Result<(), async_nats::Error> {
    let day = Duration::from_secs(24 * 3600);
    let one = |subject: &str| vec![subject.to_string()];
    let streams = [
        (
            STREAM_RUNQ,
            one(crate::subjects::RUN_REQUESTS),
            stream::RetentionPolicy::WorkQueue,
            7 * day,
        ),
        (
            STREAM_FILEQ,
            one(crate::subjects::FILE_BATCHES),
            stream::RetentionPolicy::WorkQueue,
            7 * day,
        ),
        (
            STREAM_RESULTS,
            one(crate::subjects::BATCH_RESULTS),
            stream::RetentionPolicy::Limits,
            7 * day,
        ),
        (
            STREAM_EVENTS,
            one(crate::subjects::EVENTS),
            stream::RetentionPolicy::Limits,
            90 * day,
        ),
        (
            STREAM_AUDIT,
            one(crate::subjects::AUDIT),
            stream::RetentionPolicy::Limits,
            365 * day,
        ),
        (
            STREAM_AUDIT_SEALS,
            one(crate::subjects::AUDIT_SEAL),
            stream::RetentionPolicy::Limits,
            400 * day,
        ),
        (
            STREAM_DEADLETTER,
            vec![
                crate::subjects::max_deliveries_advisory(STREAM_RUNQ, CONSUMER_COLLECTOR),
                crate::subjects::max_deliveries_advisory(STREAM_FILEQ, CONSUMER_TRANSFER),
            ],
            stream::RetentionPolicy::WorkQueue,
            7 * day,
        ),
    ];
    for (name, subjects, retention, max_age) in &streams {
        let config = stream::Config {
            name: name.to_string(),
            subjects: subjects.clone(),
            retention: *retention,
            max_age: *max_age,
            duplicate_window: DEDUPE_WINDOW,
            storage: stream::StorageType::File,
            num_replicas: options.replicas,
            ..Default::default()
        };
        let mut existing = js.get_or_create_stream(config.clone()).await?;
        // A store made by an older Ferry may bind other subjects (the file queue's subjects
        // gained a batch token): move it to the current ones.
        if existing.info().await?.config.subjects != config.subjects {
            js.update_stream(config).await?;
        }
    }
    let buckets = [
        (KV_CONFIG, CONFIG_HISTORY, Duration::ZERO),
        (KV_STATE, 1, Duration::ZERO),
        (KV_RUNS, 1, 7 * day),
        (KV_SCHED, 1, Duration::ZERO),
        (KV_LEASE, 1, options.lease_ttl),
        (KV_CERTS_PERSONAL, 1, Duration::ZERO),
        (KV_CERTS_OTHER, 1, Duration::ZERO),
        (KV_PGP_PUBLIC, 1, Duration::ZERO),
        (KV_PGP_SECRET, 1, Duration::ZERO),
    ];
    for (bucket, history, max_age) in buckets {
        // A bucket that exists is left alone, whatever it is: on a standby in mirror mode it is
        // a mirror of the primary's (no subjects of its own) and must stay one.
        if js.get_key_value(bucket).await.is_ok() {
            continue;
        }
        js.create_key_value(kv::Config {
            bucket: bucket.to_string(),
            history,
            max_age,
            storage: stream::StorageType::File,
            num_replicas: options.replicas,
            ..Default::default()
        })
        .await?;
    }
    // On a cluster, a stream another process has just created can still answer "not found" on
    // some servers for a moment: do not report the topology ready until every piece opens.
    for (name, ..) in &streams {
        js.get_stream(*name).await?;
    }
    for (bucket, ..) in buckets {
        js.get_key_value(bucket).await?;
    }
    Ok(())
}
