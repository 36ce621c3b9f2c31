//! Least privilege on the bus: what each NATS user may publish and subscribe to (ADR 007).
//!
//! One user per service per node and three operator roles for the `ferry` command. The lists are
//! built from the same subject and topology constants the services use, so a new subject cannot
//! be forgotten here without a test (`tests/tests/nats_auth.rs`) failing. `ferry nats setup`
//! renders them as a nats-server `authorization` block.
//!
//! What the lists guarantee:
//! - only the coordinator of node N answers `ferry.api.N.failover-coordinator.*` (a lease grant
//!   cannot be forged by another user) and only coordinators write the lease bucket;
//! - of the services, only the scheduler writes the configuration bucket (an apply goes through
//!   its validation), and the coordinator when a file-based standby imports a bundle on
//!   promotion (the bundle's values as stored, as `ferry config import` writes them);
//! - a service reads and writes only the streams and buckets its work needs;
//! - replies reach only the asker: each user subscribes to its own inbox prefix
//!   (`_INBOX.<its public key>`) and publishes to an inbox only as a response
//!   (`allow_responses`);
//! - of the services, only the cert-handler reads or writes its stores (personal and other
//!   people's certificates, PGP key rings), and the coordinator, which replaces them with a
//!   standby's mirrors or a bundle's copies (sealed values; it never opens one); only the node's transfer and the admin call its key source (`keys.*`: the
//!   keys processes use, Certs Restore), and only the admin imports, removes, generates or
//!   exports private material (`admin.*`, [`crate::keys`]);
//! - *viewer* reads status, runs, the audit trail and the configuration, and lists and exports
//!   public certificates and PGP public keys; *operator* also runs tasks and starts or stops
//!   schedules; *admin* also applies configurations, changes roles and manages keys, and reads
//!   and writes the buckets a configuration bundle holds (`ferry config export|import|verify`:
//!   values copied as stored — secrets and private keys sealed to the keymat, which never
//!   crosses the bus — so this gives the admin no plaintext it could not already import or
//!   export through the cert-handler).

use crate::keys::api as keys_api;
use crate::subjects::{self, api, service};
use crate::topology;

/// What one user may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    /// May publish to the reply subject of a request it received (a responder).
    pub allow_responses: bool,
}

/// An operator role of the `ferry` command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// The five services of a node.
pub const SERVICES: [&str; 5] = [
    service::SCHEDULER,
    service::FILE_COLLECTOR,
    service::TRANSFER,
    service::CERT_HANDLER,
    service::FAILOVER_COORDINATOR,
];

const STREAMS: [&str; 7] = [
    topology::STREAM_RUNQ,
    topology::STREAM_FILEQ,
    topology::STREAM_RESULTS,
    topology::STREAM_EVENTS,
    topology::STREAM_AUDIT,
    topology::STREAM_AUDIT_SEALS,
    topology::STREAM_DEADLETTER,
];
const BUCKETS: [&str; 9] = [
    topology::KV_CONFIG,
    topology::KV_STATE,
    topology::KV_RUNS,
    topology::KV_SCHED,
    topology::KV_LEASE,
    topology::KV_CERTS_PERSONAL,
    topology::KV_CERTS_OTHER,
    topology::KV_PGP_PUBLIC,
    topology::KV_PGP_SECRET,
];

/// Every endpoint of one group of the cert-handler on `node` (`*`: every node).
fn cert_handler_group(node: &str, group: &str) -> String {
    format!("{}.{group}.>", subjects::api_group(node, service::CERT_HANDLER))
}

fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

impl Permissions {
    fn publish(&mut self, subjects: impl IntoIterator<Item = impl Into<String>>) -> &mut Self {
        self.publish.extend(subjects.into_iter().map(Into::into));
        self
    }

    fn subscribe(&mut self, subjects: impl IntoIterator<Item = impl Into<String>>) -> &mut Self {
        self.subscribe.extend(subjects.into_iter().map(Into::into));
        self
    }

    /// Read a stream: its info, single messages (direct and through the API), and consumers of
    /// any kind on it (create, fetch, ack, flow control, delete).
    fn read_stream(&mut self, stream: &str) -> &mut Self {
        self.publish([
            format!("$JS.API.STREAM.INFO.{stream}"),
            format!("$JS.API.STREAM.MSG.GET.{stream}"),
            format!("$JS.API.DIRECT.GET.{stream}"),
            format!("$JS.API.DIRECT.GET.{stream}.>"),
            format!("$JS.API.CONSUMER.CREATE.{stream}"),
            format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
            format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>"),
            format!("$JS.API.CONSUMER.INFO.{stream}.>"),
            format!("$JS.API.CONSUMER.DELETE.{stream}.>"),
            format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.>"),
            format!("$JS.ACK.{stream}.>"),
            format!("$JS.FC.{stream}.>"),
        ])
    }

    fn read_bucket(&mut self, bucket: &str) -> &mut Self {
        self.read_stream(&kv_stream(bucket))
    }

    /// Read a bucket and put, update and delete its keys.
    fn write_bucket(&mut self, bucket: &str) -> &mut Self {
        self.read_bucket(bucket).publish([format!("$KV.{bucket}.>")])
    }

    /// What every service does: create the topology if it is missing (creating an existing
    /// stream with its own configuration changes nothing), ask its coordinator for the lease and
    /// follow the lease bucket, ask other services of its node for their status, serve its API
    /// (also to `$SRV` discovery), stop when told to.
    fn service_base(node: &str, service_name: &str) -> Self {
        let mut p = Permissions {
            allow_responses: true,
            ..Permissions::default()
        };
        p.publish(["$JS.API.INFO".to_string()]);
        for stream in STREAMS
            .iter()
            .map(|s| s.to_string())
            .chain(BUCKETS.iter().map(|b| kv_stream(b)))
        {
            p.publish([
                format!("$JS.API.STREAM.INFO.{stream}"),
                format!("$JS.API.STREAM.CREATE.{stream}"),
            ]);
        }
        p.read_bucket(topology::KV_LEASE)
            .publish([
                subjects::api(node, service::FAILOVER_COORDINATOR, api::LEASE),
                subjects::api(node, "*", api::STATUS),
            ])
            .subscribe([
                subjects::node_stop(node),
                subjects::node_lease(node),
                format!("{}.>", subjects::api_group(node, service_name)),
                "$SRV.>".to_string(),
            ]);
        p
    }
}

/// The permissions of `service_name` on `node`.
pub fn for_service(node: &str, service_name: &str) -> Permissions {
    let mut p = Permissions::service_base(node, service_name);
    match service_name {
        service::SCHEDULER => {
            p.write_bucket(topology::KV_CONFIG)
                .write_bucket(topology::KV_SCHED)
                .read_bucket(topology::KV_RUNS)
                .read_stream(topology::STREAM_RUNQ)
                .publish([subjects::RUN_REQUESTS])
                .subscribe([subjects::TRIGGERS]);
        }
        service::FILE_COLLECTOR => {
            p.read_stream(topology::STREAM_RUNQ)
                .read_stream(topology::STREAM_FILEQ)
                .read_stream(topology::STREAM_RESULTS)
                .read_stream(topology::STREAM_EVENTS)
                .read_bucket(topology::KV_CONFIG)
                .write_bucket(topology::KV_STATE)
                .write_bucket(topology::KV_RUNS)
                .publish([
                    subjects::FILE_BATCHES.to_string(),
                    "ferry.event.run.>".to_string(),
                    // Next actions: task events, chained runs, and their audit records.
                    subjects::task_event_filter(None),
                    subjects::RUN_REQUESTS.to_string(),
                    subjects::audit_file("*"),
                    // Answering a dead-lettered work batch in transfer's place, and ending a
                    // dead-lettered run.
                    subjects::BATCH_RESULTS.to_string(),
                    format!("$JS.API.STREAM.MSG.DELETE.{}", topology::STREAM_FILEQ),
                    format!("$JS.API.STREAM.MSG.DELETE.{}", topology::STREAM_RUNQ),
                ])
                // The max-deliveries advisories of both queues, as the dead-letter stream keeps them.
                .read_stream(topology::STREAM_DEADLETTER);
        }
        service::TRANSFER => {
            p.read_stream(topology::STREAM_FILEQ)
                .read_bucket(topology::KV_CONFIG)
                .write_bucket(topology::KV_STATE)
                .write_bucket(topology::KV_RUNS)
                // A `config-bundle` step reads the schedule state (the stores come from the
                // cert-handler's `keys.stores`).
                .read_bucket(topology::KV_SCHED)
                .publish([subjects::BATCH_RESULTS.to_string(), subjects::audit_file("*")])
                // Keys for process steps, from its own node's cert-handler only.
                .publish([
                    cert_handler_group(node, keys_api::keys::GROUP),
                    subjects::api(node, service::CERT_HANDLER, keys_api::KEYMAT),
                ]);
        }
        service::CERT_HANDLER => {
            // The certificates the stored configuration names (an FTPS host's ca_file), and
            // its own stores.
            p.read_bucket(topology::KV_CONFIG)
                .write_bucket(topology::KV_CERTS_PERSONAL)
                .write_bucket(topology::KV_CERTS_OTHER)
                .write_bucket(topology::KV_PGP_PUBLIC)
                .write_bucket(topology::KV_PGP_SECRET);
        }
        service::FAILOVER_COORDINATOR => {
            // Mirror mode (`ferry standby`): replace this node's copies of the mirrored buckets
            // with mirrors and make them its own again, read the configuration's keymat id, ask
            // the primary's JetStream domain through the link and probe that the link passes
            // none of Ferry's subjects. File-based replication: import a bundle into the same
            // buckets when promoted (values as stored, sealed: no plaintext).
            for bucket in topology::MIRRORED {
                p.publish([
                    format!("$JS.API.STREAM.DELETE.{}", kv_stream(bucket)),
                    format!("$JS.API.STREAM.UPDATE.{}", kv_stream(bucket)),
                ]);
                p.write_bucket(bucket);
            }
            p.read_bucket(topology::KV_CONFIG).publish([
                "$JS.*.API.INFO".to_string(),
                "ferry.standby.probe.*".to_string(),
                "$KV.ferry_standby_probe.*".to_string(),
            ]);
            p.write_bucket(topology::KV_LEASE)
                .read_stream(topology::STREAM_EVENTS)
                .read_stream(topology::STREAM_AUDIT)
                .read_stream(topology::STREAM_AUDIT_SEALS)
                .publish([
                    subjects::AUDIT_SEAL.to_string(),
                    subjects::role_changed(node),
                    subjects::audit_role(node),
                    subjects::node_lease(node),
                    subjects::node_stop(node),
                ]);
        }
        _ => {}
    }
    p
}

/// The permissions of an operator role (on every node).
pub fn for_role(role: Role) -> Permissions {
    let mut p = Permissions::default();
    p.publish(["$JS.API.INFO".to_string(), subjects::api("*", "*", api::STATUS)])
        .publish([subjects::api("*", service::SCHEDULER, api::KEYMAT)])
        .publish(
            [
                keys_api::CERTS_LIST,
                keys_api::CERTS_EXPORT,
                keys_api::PGP_LIST,
                keys_api::PGP_EXPORT,
                keys_api::KEYMAT,
            ]
            .map(|e| subjects::api("*", service::CERT_HANDLER, e)),
        )
        .read_stream(topology::STREAM_EVENTS)
        .read_stream(topology::STREAM_AUDIT)
        .read_stream(topology::STREAM_AUDIT_SEALS)
        .read_stream(topology::STREAM_RESULTS)
        .read_bucket(topology::KV_CONFIG)
        .read_bucket(topology::KV_RUNS)
        .read_bucket(topology::KV_SCHED)
        .read_bucket(topology::KV_LEASE);
    // `ferry standby status`.
    p.publish([subjects::api(
        "*",
        service::FAILOVER_COORDINATOR,
        api::STANDBY_STATUS,
    )]);
    if role >= Role::Operator {
        p.publish([
            subjects::api("*", service::SCHEDULER, api::RUN),
            subjects::api("*", service::SCHEDULER, api::START),
            subjects::api("*", service::SCHEDULER, api::STOP),
            subjects::api("*", service::TRANSFER, api::HOST_TEST),
            subjects::TRIGGERS.to_string(),
        ]);
    }
    if role >= Role::Admin {
        p.publish([
            subjects::api("*", service::SCHEDULER, api::APPLY),
            subjects::api("*", service::SCHEDULER, api::ROLLBACK),
        ]);
        for verb in [
            api::PROMOTE,
            api::DEMOTE,
            api::DISABLE,
            api::ENABLE,
            api::SHUTDOWN,
            api::STANDBY_ATTACH,
            api::STANDBY_DETACH,
        ] {
            p.publish([subjects::api("*", service::FAILOVER_COORDINATOR, verb)]);
        }
        p.publish([subjects::node_stop("*")]).publish([
            cert_handler_group("*", keys_api::admin::GROUP),
            cert_handler_group("*", keys_api::keys::GROUP),
        ]);
        for bucket in crate::bundle::PARTS {
            p.write_bucket(bucket);
        }
    }
    p
}

/// A user of the server's `authorization` block: its public nkey, a comment, its permissions.
pub struct User {
    pub comment: String,
    pub nkey: String,
    pub permissions: Permissions,
}

/// Render `users` as a nats-server configuration fragment (`include` it from the server's
/// configuration). Every user may also subscribe to its own reply inbox, `_INBOX.<nkey>.>`.
pub fn server_config(users: &[User]) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let list = |items: &[String]| items.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ");
    let mut out = String::from(
        "# Written by `ferry nats setup`: one nkey user per service per node and per operator role.\n\
         # Regenerate it with the same command rather than editing it.\nauthorization {\n  users = [\n",
    );
    for user in users {
        let mut subscribe = user.permissions.subscribe.clone();
        subscribe.push(format!("_INBOX.{}.>", user.nkey));
        out += &format!(
            "    # {}\n    {{\n      nkey: {}\n      permissions: {{\n        publish: {{ allow: [{}] }}\n        subscribe: {{ allow: [{}] }}\n{}      }}\n    }}\n",
            user.comment,
            quote(&user.nkey),
            list(&user.permissions.publish),
            list(&subscribe),
            if user.permissions.allow_responses {
                "        allow_responses: true\n"
            } else {
                ""
            }
        );
    }
    out += "  ]\n}\n";
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_grow_and_only_the_admin_applies_or_changes_roles() {
        let [viewer, operator, admin] = Role::ALL.map(for_role);
        for p in [&viewer, &operator] {
            assert!(
                !p.publish
                    .iter()
                    .any(|s| s.ends_with(".apply") || s.ends_with(".rollback") || s.ends_with(".promote"))
            );
        }
        assert!(!viewer.publish.iter().any(|s| s.ends_with(".run")));
        assert!(operator.publish.iter().any(|s| s.ends_with("scheduler.run")));
        assert!(admin.publish.iter().any(|s| s.ends_with("scheduler.apply")));
        assert!(admin.publish.iter().any(|s| s.ends_with("scheduler.rollback")));
        for (small, big) in [(&viewer, &operator), (&operator, &admin)] {
            assert!(small.publish.iter().all(|s| big.publish.contains(s)));
        }
    }

    #[test]
    fn only_the_nodes_coordinator_answers_lease_requests_and_writes_the_lease() {
        for service_name in SERVICES {
            let p = for_service("node1", service_name);
            let answers = p
                .subscribe
                .iter()
                .any(|s| s.starts_with("ferry.api.node1.failover-coordinator"));
            let writes = p.publish.iter().any(|s| s.starts_with("$KV.ferry_lease"));
            let coordinator = service_name == service::FAILOVER_COORDINATOR;
            assert_eq!((answers, writes), (coordinator, coordinator), "{service_name}");
            let config = p.publish.iter().any(|s| s.starts_with("$KV.ferry_config"));
            // The coordinator too: a file-based standby imports a bundle when promoted.
            assert_eq!(
                config,
                service_name == service::SCHEDULER || coordinator,
                "{service_name}"
            );
            // No service may forge replies: publishing to an inbox is only a response.
            assert!(
                !p.publish.iter().any(|s| s.starts_with("_INBOX")),
                "{service_name}"
            );
        }
    }

    /// Whether NATS subject pattern `pattern` (`*` one token, `>` the rest) covers `subject`.
    fn covers(pattern: &str, subject: &str) -> bool {
        let (mut p, mut s) = (pattern.split('.'), subject.split('.'));
        loop {
            match (p.next(), s.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    #[test]
    fn only_the_nodes_transfer_and_the_admin_get_keys_and_only_the_admin_manages_them() {
        let on = |endpoint: &str| subjects::api("node1", service::CERT_HANDLER, endpoint);
        let secret = on(&keys_api::in_group(
            keys_api::keys::GROUP,
            keys_api::keys::PGP_SECRET,
        ));
        let restore = on(&keys_api::in_group(
            keys_api::keys::GROUP,
            keys_api::keys::ADD_PERSONAL,
        ));
        let import = on(&keys_api::in_group(
            keys_api::admin::GROUP,
            keys_api::admin::CERTS_IMPORT,
        ));
        let pfx = on(&keys_api::in_group(
            keys_api::admin::GROUP,
            keys_api::admin::CERTS_EXPORT_PFX,
        ));
        let list = on(keys_api::CERTS_LIST);
        let may = |p: &Permissions, subject: &str| p.publish.iter().any(|pattern| covers(pattern, subject));
        for service_name in SERVICES {
            let p = for_service("node1", service_name);
            let transfer = service_name == service::TRANSFER;
            assert_eq!(may(&p, &secret), transfer, "{service_name}");
            assert_eq!(may(&p, &restore), transfer, "{service_name}");
            assert!(!may(&p, &import) && !may(&p, &pfx), "{service_name}");
            // Another node's transfer gets no keys from this node.
            assert!(
                !may(&for_service("node2", service_name), &secret),
                "{service_name}"
            );
            // Only the cert-handler touches the stores, and the coordinator, which imports a
            // bundle (values as stored, sealed) when a file-based standby is promoted.
            let stores = [
                topology::KV_CERTS_PERSONAL,
                topology::KV_CERTS_OTHER,
                topology::KV_PGP_PUBLIC,
                topology::KV_PGP_SECRET,
            ];
            for bucket in stores {
                let reads = p
                    .publish
                    .iter()
                    .any(|s| s.contains(&kv_stream(bucket)) && s.contains("GET"));
                let writes = p.publish.iter().any(|s| s.starts_with(&format!("$KV.{bucket}.")));
                let owner =
                    service_name == service::CERT_HANDLER || service_name == service::FAILOVER_COORDINATOR;
                assert_eq!((reads, writes), (owner, owner), "{service_name} {bucket}");
            }
        }
        for role in Role::ALL {
            let p = for_role(role);
            let admin = role == Role::Admin;
            assert!(may(&p, &list), "{role:?} lists certificates");
            for subject in [&secret, &restore, &import, &pfx] {
                assert_eq!(may(&p, subject), admin, "{role:?} {subject}");
            }
        }
    }

    #[test]
    fn only_the_admin_reads_and_writes_what_a_bundle_holds_and_nobody_the_lease() {
        for role in Role::ALL {
            let p = for_role(role);
            for bucket in crate::bundle::PARTS {
                let writes = p.publish.contains(&format!("$KV.{bucket}.>"));
                assert_eq!(writes, role == Role::Admin, "{role:?} {bucket}");
            }
            let secret_ring = format!("$JS.API.DIRECT.GET.{}", kv_stream(topology::KV_PGP_SECRET));
            assert_eq!(p.publish.contains(&secret_ring), role == Role::Admin, "{role:?}");
            assert!(
                !p.publish
                    .iter()
                    .any(|s| s.starts_with(&format!("$KV.{}", topology::KV_LEASE))),
                "{role:?} may write the lease"
            );
        }
    }

    #[test]
    fn no_user_can_forge_a_server_advisory() {
        let advisory = subjects::max_deliveries_advisory(topology::STREAM_FILEQ, topology::CONSUMER_TRANSFER);
        assert!(covers("$JS.EVENT.>", &advisory) && !covers("$JS.API.>", &advisory));
        let users = SERVICES
            .iter()
            .map(|s| (s.to_string(), for_service("node1", s)))
            .chain(Role::ALL.map(|r| (r.name().to_string(), for_role(r))));
        for (who, p) in users {
            let forging = p.publish.iter().find(|pattern| covers(pattern, &advisory));
            assert_eq!(forging, None, "{who} may publish the max-deliveries advisory");
        }
    }

    #[test]
    fn the_server_config_quotes_every_subject_and_adds_the_users_inbox() {
        let text = server_config(&[User {
            comment: "node1 transfer".into(),
            nkey: "UABC".into(),
            permissions: for_service("node1", service::TRANSFER),
        }]);
        assert!(text.contains("nkey: \"UABC\""), "{text}");
        assert!(text.contains("\"_INBOX.UABC.>\""), "{text}");
        assert!(text.contains("\"$KV.ferry_state.>\""), "{text}");
        assert!(text.contains("allow_responses: true"), "{text}");
    }
}
