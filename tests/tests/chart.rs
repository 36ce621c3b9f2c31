//! The Helm chart (`charts/ferry`) renders, with its default values, the HA pair's values and a
//! set with every option on, into Kubernetes objects that hold together — and into pods that give
//! Ferry and nats-server everything their configuration names.
//!
//! Each rendering (`helm lint --strict`, then `helm template`) is checked twice:
//! - as objects: known kinds only; names DNS-1123 labels, unique per kind; labels well-formed;
//!   workloads whose selectors match their pods, whose probes name ports that exist, non-root with
//!   a read-only root file system; Services that reach pods and name their ports; a StatefulSet's
//!   headless Service; PodDisruptionBudgets that select something; a ServiceMonitor that selects
//!   every service's metrics port; a PrometheusRule holding exactly `rules/ferry.rules.yml`'s
//!   groups; a dashboards ConfigMap with one parseable JSON per `dashboards/*.json`;
//! - as pods: each pod's volumes are laid out in a temp dir (ConfigMaps from the rendering,
//!   Secrets as the chart's README tells an operator to make them — `ferry nats setup`'s keys, a
//!   test CA, a keymat — with the chart's file modes, a PersistentVolumeClaim shared by the pods
//!   that claim it), the init container's own command runs on it, and then each service loads the
//!   rendered node.toml with Ferry's settings loader and builds its NATS connection from it
//!   (which refuses a seed or key others may read), opens the node's keymat (one per node), and
//!   serves on the port its probes use; the bundled nats-server checks its rendered
//!   configuration (`nats-server -t`), and all its servers start on it on loopback (a three-server
//!   cluster for the HA values), refuse an anonymous client, and let the node's services start
//!   as their own users over TLS (all five with every option on; two of each node of the HA
//!   pair), creating Ferry's streams and buckets on as many servers as `replicas` says.
//!
//! And the README's values table names every value of values.yaml with its default.
//!
//! `kubectl apply --dry-run=client` is not used: it needs an API server for discovery, and there
//! is none here.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde::Deserialize;
use serde_json::{Map, Value};

const CHART: &str = "charts/ferry";

/// Every option on: bundled NATS (one server, so it can be started here), TLS with a client
/// certificate, the node's users, the keymat from a Secret, two transfers, monitoring.
const ALL_ON: &str = r#"
nodeId: node1
nats:
  credentialsSecret: ferry-node1-nats
  cliSeed: true
  tlsSecret: ferry-nats-tls
  tlsClientCertificate: true
  bundled:
    enabled: true
    replicas: 1
    tlsSecret: ferry-nats-tls
keymat:
  existingSecret: ferry-keymat
transfer:
  replicas: 3
  antiAffinity: hard
persistence:
  accessMode: ReadWriteMany
imagePullSecrets: [registry]
monitoring:
  serviceMonitor:
    enabled: true
    labels: {release: prometheus}
  prometheusRule:
    enabled: true
  dashboards:
    enabled: true
"#;

/// Kinds the chart may render: (apiVersion, kind).
const KNOWN_KINDS: &[(&str, &str)] = &[
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("v1", "PersistentVolumeClaim"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("policy/v1", "PodDisruptionBudget"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
];

/// The Secrets the values of these tests name (made as the chart's README says, see
/// `Secrets::as_the_readme_makes_them`; `registry` only for image pulls).
const SECRETS_FROM_VALUES: &[&str] = &[
    "ferry-node1-nats",
    "ferry-node2-nats",
    "ferry-nats-tls",
    "ferry-keymat",
    "registry",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_values_render_one_node_that_ferry_accepts() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let secrets = Secrets::as_the_readme_makes_them(work.path())?;
    let release = render("ferry", &[], &[])?;
    release.check()?;
    let node = release.start_pods(work.path(), &secrets).await?;

    let deployments: BTreeSet<&str> = release.kind("Deployment").map(name).collect();
    let expected: BTreeSet<String> = ferry_wire::permissions::SERVICES
        .iter()
        .map(|s| format!("ferry-{s}"))
        .collect();
    ensure!(
        deployments.iter().map(|d| d.to_string()).collect::<BTreeSet<_>>() == expected,
        "a Deployment per service: {deployments:?}"
    );
    for kind in ["StatefulSet", "ServiceMonitor", "PrometheusRule"] {
        ensure!(release.kind(kind).next().is_none(), "{kind} is off by default");
    }
    let pvc = release.get("PersistentVolumeClaim", "ferry-data")?;
    ensure!(
        pvc["spec"]["accessModes"] == serde_json::json!(["ReadWriteOnce"]),
        "{pvc}"
    );
    // A ReadWriteOnce volume is on one Kubernetes node: every pod that mounts it must go there.
    for deployment in release.kind("Deployment") {
        let spec = &deployment["spec"]["template"]["spec"];
        let mounts_data = spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|v| v["name"] == "data");
        let co_located = spec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            .as_array()
            .is_some_and(|terms| terms.iter().any(|t| t["topologyKey"] == "kubernetes.io/hostname"));
        ensure!(
            mounts_data == co_located,
            "{}: data volume {mounts_data}, kept together {co_located}",
            name(deployment)
        );
    }
    let settings = &node.settings["scheduler"];
    ensure!(
        settings.node_id == "node1" && settings.nats_url == "tls://nats:4222",
        "{settings:?}"
    );
    ensure!(settings.failover_coordinator.mode == ferry_wire::FailoverMode::Manual);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_values_render_a_pair_in_automatic_failover_on_one_three_server_nats_cluster() -> anyhow::Result<()>
{
    let work = tempfile::tempdir()?;
    let secrets = Secrets::as_the_readme_makes_them(work.path())?;
    let chart = ferry_tests::workspace_root().join(CHART);
    let primary = render("ferry-node1", &[chart.join("values-ha.yaml")], &[])?;
    let standby = render("ferry-node2", &[chart.join("values-ha-standby.yaml")], &[])?;
    primary.check()?;
    standby.check()?;
    let one = primary.start_pods(&work.path().join("node1"), &secrets).await?;
    let two = standby.start_pods(&work.path().join("node2"), &secrets).await?;

    let (s1, s2) = (
        &one.settings["failover-coordinator"],
        &two.settings["failover-coordinator"],
    );
    ensure!(s1.node_id != s2.node_id, "two nodes, two ids: {}", s1.node_id);
    let f1 = &s1.failover_coordinator;
    let f2 = &s2.failover_coordinator;
    ensure!(
        f1.mode == ferry_wire::FailoverMode::Automatic && f2.mode == ferry_wire::FailoverMode::Automatic,
        "automatic failover on both"
    );
    ensure!(f1.initial_role == ferry_wire::Role::Active && f2.initial_role == ferry_wire::Role::Standby);
    ensure!(f1.lease_ttl_ms == f2.lease_ttl_ms, "one lease TTL for the pair");
    ensure!(
        s1.replicas == 3 && s2.replicas == 3,
        "streams on all three servers"
    );

    // The primary's release runs three clustered servers; the standby connects to them.
    let nats = primary.get("StatefulSet", "ferry-node1-nats")?;
    ensure!(nats["spec"]["replicas"] == 3, "three NATS servers");
    let conf = primary.get("ConfigMap", "ferry-node1-nats")?["data"]["nats.conf"]
        .as_str()
        .context("nats.conf")?
        .to_string();
    let headless = nats["spec"]["serviceName"].as_str().context("serviceName")?;
    for i in 0..3 {
        let route = format!("nats://ferry-node1-nats-{i}.{headless}.ferry.svc:6222");
        ensure!(conf.contains(&route), "route {route} in\n{conf}");
    }
    ensure!(
        conf.contains("sync_interval: always"),
        "every write synced:\n{conf}"
    );
    for settings in [s1, s2] {
        let url = settings.nats_url.strip_prefix("tls://").context("TLS to NATS")?;
        let (host, port) = url.split_once(':').context("host:port")?;
        let service = primary.get("Service", host)?;
        ensure!(
            service["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["port"].as_u64() == port.parse().ok()),
            "{host} serves port {port}"
        );
    }
    for release in [&primary, &standby] {
        let transfer = release
            .kind("Deployment")
            .find(|d| name(d).ends_with("-transfer"))
            .context("transfer")?;
        ensure!(transfer["spec"]["replicas"] == 2, "two transfers");
        let spec = &transfer["spec"]["template"]["spec"];
        ensure!(
            !spec["affinity"]["podAntiAffinity"].is_null(),
            "transfers spread: {spec}"
        );
        let pvc = release
            .kind("PersistentVolumeClaim")
            .next()
            .context("a data volume")?;
        ensure!(pvc["spec"]["accessModes"] == serde_json::json!(["ReadWriteMany"]));
    }
    ensure!(primary.kind("PrometheusRule").count() == 1 && standby.kind("PrometheusRule").count() == 0);

    // The three servers, started from the rendered configuration, form a JetStream cluster on
    // which both nodes' services start as their own users, with every stream on three servers.
    ensure!(
        one.nats.len() == 3 && two.nats.is_empty(),
        "the primary's release runs the servers"
    );
    for node in [&one, &two] {
        start_service_on(node, "failover-coordinator", &one.nats_url()).await?;
        start_service_on(node, "scheduler", &one.nats_url()).await?;
    }
    anonymous_is_refused(&one).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_option_on_renders_objects_that_hold_together() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let secrets = Secrets::as_the_readme_makes_them(work.path())?;
    let values = work.path().join("all-on.yaml");
    std::fs::write(&values, ALL_ON)?;
    let release = render("ferry", &[values], &[])?;
    release.check()?;
    let node = release.start_pods(&work.path().join("pods"), &secrets).await?;
    ensure!(node.nats.len() == 1, "one bundled server");
    // Every service starts on the bundled server, over TLS with its client certificate, as its
    // own user.
    for service in ferry_wire::permissions::SERVICES {
        start_service_on(&node, service, &node.nats_url()).await?;
    }
    anonymous_is_refused(&node).await?;

    let keymat = node.key_ids.values().next().context("keymat")?;
    ensure!(*keymat == secrets.keymat_id, "the keymat from the Secret");
    let scheduler = release.get("Deployment", "ferry-scheduler")?;
    let items: Vec<&Value> = scheduler["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["secret"]["secretName"] == "ferry-node1-nats")
        .flat_map(|v| v["secret"]["items"].as_array().into_iter().flatten())
        .map(|i| &i["key"])
        .collect();
    ensure!(
        items == [&Value::from("scheduler.nk"), &Value::from("cli.nk")],
        "the scheduler's pod gets its own seed and the CLI's, no other service's: {items:?}"
    );
    for kind in [
        "StatefulSet",
        "ServiceMonitor",
        "PrometheusRule",
        "PodDisruptionBudget",
    ] {
        ensure!(release.kind(kind).next().is_some(), "{kind} rendered");
    }
    let dashboards = release.get("ConfigMap", "ferry-dashboards")?;
    ensure!(
        dashboards["metadata"]["labels"]["grafana_dashboard"] == "1",
        "{dashboards}"
    );
    Ok(())
}

#[test]
fn values_ferry_would_refuse_are_refused_when_rendering() -> anyhow::Result<()> {
    let cases: &[(&[&str], &str)] = &[
        (&["nodeId=node.1"], r#"nodeId: "node.1" is not a valid name"#),
        (&["nats.bundled.enabled=true"], "nats.bundled.tlsSecret: empty"),
        (
            &["nats.bundled.enabled=true", "nats.bundled.tlsSecret=t"],
            "would accept anonymous clients",
        ),
        (
            &[
                "nats.bundled.enabled=true",
                "nats.allowInsecure=true",
                "nats.bundled.replicas=2",
            ],
            "nats.bundled.replicas: 2 must be 1, 3 or 5",
        ),
        (
            &[
                "nats.bundled.enabled=true",
                "nats.allowInsecure=true",
                "replicas=3",
            ],
            "replicas: 3 streams replicas exceed nats.bundled.replicas (1 servers)",
        ),
        (
            &["persistence.enabled=false"],
            "persistence.enabled: false gives each pod its own /data",
        ),
        (
            &["nats.tlsClientCertificate=true"],
            "nats.tlsClientCertificate: the client certificate",
        ),
        (
            &["transfer.antiAffinity=soft"],
            "set persistence.accessMode=ReadWriteMany",
        ),
        (
            &[
                "transfer.antiAffinity=sometimes",
                "persistence.accessMode=ReadWriteMany",
            ],
            r#"transfer.antiAffinity: "sometimes" must be"#,
        ),
        (
            &["failover.mode=auto"],
            r#"failover.mode: "auto" must be manual or automatic"#,
        ),
        (
            &["persistence.accessMode=ReadOnlyMany"],
            r#"persistence.accessMode: "ReadOnlyMany""#,
        ),
    ];
    let mut problems = Vec::new();
    for (sets, expected) in cases {
        match render("ferry", &[], sets) {
            Ok(_) => problems.push(format!("{sets:?}: rendered")),
            Err(e) if !format!("{e:#}").contains(expected) => {
                problems.push(format!("{sets:?}: the error lacks {expected:?}: {e:#}"))
            }
            Err(_) => {}
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

/// Every value in values.yaml is in the README's table, and where the table gives one default per
/// name, it is the value's default.
#[test]
fn every_value_is_in_the_readme_table_with_its_default() -> anyhow::Result<()> {
    let chart = ferry_tests::workspace_root().join(CHART);
    let values: Value = serde_norway::from_str(&std::fs::read_to_string(chart.join("values.yaml"))?)?;
    let readme = std::fs::read_to_string(chart.join("README.md"))?;
    let services = [
        "scheduler",
        "fileCollector",
        "transfer",
        "certHandler",
        "failoverCoordinator",
    ];
    let mut documented = BTreeSet::new();
    let mut problems = Vec::new();
    for row in readme.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').collect();
        let ticked =
            |cell: &str| -> Vec<String> { cell.split('`').skip(1).step_by(2).map(str::to_string).collect() };
        // `a.b.c`, `.d` names a.b.c and a.b.d; `<service>.x` names x of every service.
        let mut names = Vec::new();
        for token in ticked(cells[1]) {
            let full = match (token.strip_prefix('.'), names.first()) {
                (Some(sibling), Some(first)) => {
                    let first: &String = first;
                    format!(
                        "{}.{sibling}",
                        first.rsplit_once('.').map_or("", |(parent, _)| parent)
                    )
                }
                _ => token,
            };
            names.push(full.trim_start_matches('.').to_string());
        }
        let expanded: Vec<String> = names
            .iter()
            .flat_map(|n| match n.strip_prefix("<service>.") {
                Some(rest) => services.iter().map(|s| format!("{s}.{rest}")).collect(),
                None => vec![n.clone()],
            })
            .collect();
        documented.extend(expanded.iter().cloned());
        let defaults = ticked(cells[2]);
        if defaults.len() != names.len() || names.iter().any(|n| n.starts_with('<')) {
            continue;
        }
        for (name, default) in names.iter().zip(defaults) {
            let value = name.split('.').fold(&values, |v, key| &v[key]);
            let shown = match value {
                Value::String(s) => s.clone(),
                Value::Array(a) if a.is_empty() => "[]".into(),
                Value::Object(o) if o.is_empty() => "{}".into(),
                other => other.to_string(),
            };
            let default = default
                .strip_prefix('"')
                .and_then(|d| d.strip_suffix('"'))
                .unwrap_or(&default);
            if shown != default {
                problems.push(format!(
                    "{name}: the README says {default:?}, values.yaml has {shown:?}"
                ));
            }
        }
    }
    fn leaves(prefix: &str, value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (key, value) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    leaves(&path, value, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let mut all = Vec::new();
    leaves("", &values, &mut all);
    for value in all {
        let covered = documented
            .iter()
            .any(|d| value == *d || value.starts_with(&format!("{d}.")));
        if !covered {
            problems.push(format!("{value} is not in the README's values table"));
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

// ---- Rendering ----------------------------------------------------------------------------

fn helm() -> PathBuf {
    let path = ferry_tests::workspace_root().join(".ferry/tools/bin/helm");
    assert!(
        path.exists(),
        "helm is not installed at {}: run `make test`, or `scripts/install-deps.sh observe`",
        path.display()
    );
    path
}

/// `helm lint --strict` and `helm template` of the chart as release `release` in namespace ferry.
fn render(release: &str, values: &[PathBuf], sets: &[&str]) -> anyhow::Result<Release> {
    let chart = ferry_tests::workspace_root().join(CHART);
    let mut args: Vec<String> = Vec::new();
    for file in values {
        args.extend(["--values".into(), file.display().to_string()]);
    }
    for set in sets {
        args.extend(["--set".into(), set.to_string()]);
    }
    let run = |command: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(helm())
            .args(command)
            .arg(&chart)
            .args(&args)
            .output()
            .context("run helm")?;
        ensure!(
            out.status.success(),
            "helm {} {values:?} {sets:?}: {}{}",
            command.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    };
    let lint = run(&["lint", "--strict"])?;
    ensure!(lint.contains("0 chart(s) failed"), "{lint}");
    let text = run(&["template", release, "--namespace", "ferry"])?;
    let mut objects = Vec::new();
    for document in serde_norway::Deserializer::from_str(&text) {
        let value = Value::deserialize(document).context("a rendered document parses as YAML")?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    ensure!(!objects.is_empty(), "nothing rendered");
    Ok(Release {
        name: release.to_string(),
        objects,
    })
}

struct Release {
    name: String,
    objects: Vec<Value>,
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or("")
}

fn map(value: &Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap_or_default()
}

/// Every label of `selector` is on `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = map(selector);
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn array(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

impl Release {
    fn kind<'a>(&'a self, kind: &str) -> impl Iterator<Item = &'a Value> + use<'a> {
        let kind = kind.to_string();
        self.objects.iter().filter(move |o| o["kind"] == kind.as_str())
    }

    fn get(&self, kind: &str, wanted: &str) -> anyhow::Result<&Value> {
        self.kind(kind)
            .find(|o| name(o) == wanted)
            .with_context(|| format!("{kind} {wanted} is not rendered"))
    }

    /// Deployments and StatefulSets.
    fn workloads(&self) -> impl Iterator<Item = &Value> {
        self.objects
            .iter()
            .filter(|o| o["kind"] == "Deployment" || o["kind"] == "StatefulSet")
    }

    /// The object checks of the module comment; every problem is reported, not just the first.
    fn check(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        let mut seen = BTreeSet::new();
        for object in &self.objects {
            let (api, kind, object_name) = (
                object["apiVersion"].as_str().unwrap_or(""),
                object["kind"].as_str().unwrap_or(""),
                name(object),
            );
            let what = format!("{kind} {object_name}");
            if !KNOWN_KINDS.contains(&(api, kind)) {
                problems.push(format!("{what}: unknown apiVersion/kind {api}/{kind}"));
            }
            if !dns_label(object_name)
                || (kind == "Service" && !object_name.starts_with(|c: char| c.is_ascii_lowercase()))
            {
                problems.push(format!(
                    "{what}: the name is not a DNS-1123 label of at most 63 characters"
                ));
            }
            if !seen.insert((kind.to_string(), object_name.to_string())) {
                problems.push(format!("{what}: rendered twice"));
            }
            for labels in [
                &object["metadata"]["labels"],
                &object["spec"]["template"]["metadata"]["labels"],
            ] {
                for (key, value) in map(labels) {
                    let value = value.as_str().unwrap_or("not a string");
                    if !label_key(&key) || !label_value(value) {
                        problems.push(format!("{what}: label {key}={value:?} is not a valid label"));
                    }
                }
            }
            match kind {
                "Deployment" | "StatefulSet" => self.check_workload(object, &what, &mut problems),
                "Service" => self.check_service(object, &what, &mut problems),
                "ConfigMap" if map(&object["data"]).is_empty() => problems.push(format!("{what}: no data")),
                "PersistentVolumeClaim"
                    if array(&object["spec"]["accessModes"]).count() == 0
                        || object["spec"]["resources"]["requests"]["storage"].is_null() =>
                {
                    problems.push(format!("{what}: no access mode or size"));
                }
                "PodDisruptionBudget" => {
                    let selector = &object["spec"]["selector"]["matchLabels"];
                    if !self
                        .workloads()
                        .any(|w| selects(selector, &w["spec"]["template"]["metadata"]["labels"]))
                    {
                        problems.push(format!("{what}: selects no pods"));
                    }
                }
                "ServiceMonitor" => self.check_service_monitor(object, &what, &mut problems),
                "PrometheusRule" => check_prometheus_rule(object, &what, &mut problems),
                _ => {}
            }
            if kind == "ConfigMap" && object_name.ends_with("-dashboards") {
                check_dashboards(object, &what, &mut problems);
            }
        }
        ensure!(problems.is_empty(), "{}: {}", self.name, problems.join("\n"));
        Ok(())
    }

    fn check_workload(&self, object: &Value, what: &str, problems: &mut Vec<String>) {
        let template = &object["spec"]["template"];
        if !selects(
            &object["spec"]["selector"]["matchLabels"],
            &template["metadata"]["labels"],
        ) {
            problems.push(format!(
                "{what}: spec.selector.matchLabels does not match the pod's labels"
            ));
        }
        // Another workload's selector must not take this one's pods.
        for other in self.workloads().filter(|o| *o != object) {
            if selects(
                &other["spec"]["selector"]["matchLabels"],
                &template["metadata"]["labels"],
            ) {
                problems.push(format!("{what}: its pods are also selected by {}", name(other)));
            }
        }
        let spec = &template["spec"];
        if spec["securityContext"]["runAsNonRoot"] != true {
            problems.push(format!("{what}: the pod may run as root"));
        }
        let containers: Vec<&Value> = array(&spec["containers"]).collect();
        if containers.is_empty() {
            problems.push(format!("{what}: no containers"));
        }
        for container in containers.iter().copied().chain(array(&spec["initContainers"])) {
            let container_name = container["name"].as_str().unwrap_or("");
            if container_name.is_empty() || container["image"].as_str().unwrap_or("").is_empty() {
                problems.push(format!("{what}: a container without a name or an image"));
            }
            let security = &container["securityContext"];
            if security["readOnlyRootFilesystem"] != true || security["allowPrivilegeEscalation"] != false {
                problems.push(format!(
                    "{what}: container {container_name} has a writable root or may escalate"
                ));
            }
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                let probe = &container[probe];
                if probe.is_null() {
                    continue;
                }
                let port = if probe["httpGet"].is_null() {
                    &probe["tcpSocket"]["port"]
                } else {
                    &probe["httpGet"]["port"]
                };
                let exists = array(&container["ports"]).any(|p| match port {
                    Value::String(s) => p["name"] == *s,
                    _ => p["containerPort"] == *port,
                });
                if !exists {
                    problems.push(format!(
                        "{what}: container {container_name}'s probe names port {port}, which it does not have"
                    ));
                }
            }
            if container_name.len() > 63 {
                problems.push(format!("{what}: container name {container_name} is too long"));
            }
            for port in array(&container["ports"]) {
                if port["name"].as_str().is_some_and(|n| n.len() > 15) {
                    problems.push(format!(
                        "{what}: port name {} is over 15 characters",
                        port["name"]
                    ));
                }
            }
            for mount in array(&container["volumeMounts"]) {
                if !array(&spec["volumes"]).any(|v| v["name"] == mount["name"])
                    && !array(&object["spec"]["volumeClaimTemplates"])
                        .any(|t| t["metadata"]["name"] == mount["name"])
                {
                    problems.push(format!(
                        "{what}: {container_name} mounts volume {}, which the pod lacks",
                        mount["name"]
                    ));
                }
            }
        }
        for volume in array(&spec["volumes"]) {
            let config_map = &volume["configMap"]["name"];
            if let Some(config_map) = config_map.as_str() {
                match self.kind("ConfigMap").find(|c| name(c) == config_map) {
                    None => problems.push(format!(
                        "{what}: volume {}: ConfigMap {config_map} is not rendered",
                        volume["name"]
                    )),
                    Some(c) => {
                        for item in array(&volume["configMap"]["items"]) {
                            if c["data"][item["key"].as_str().unwrap_or("")].is_null() {
                                problems.push(format!(
                                    "{what}: ConfigMap {config_map} has no key {}",
                                    item["key"]
                                ));
                            }
                        }
                    }
                }
            }
            if let Some(claim) = volume["persistentVolumeClaim"]["claimName"].as_str()
                && self.kind("PersistentVolumeClaim").all(|c| name(c) != claim)
            {
                problems.push(format!(
                    "{what}: volume {}: claim {claim} is not rendered",
                    volume["name"]
                ));
            }
        }
        // Secrets and ConfigMaps named by volumes and variables are rendered or named by values.
        let secret_named = |s: &Value| SECRETS_FROM_VALUES.contains(&s.as_str().unwrap_or(""));
        let config_map_rendered = |c: &Value| self.kind("ConfigMap").any(|m| m["metadata"]["name"] == *c);
        for volume in array(&spec["volumes"]) {
            let secret = &volume["secret"]["secretName"];
            if !secret.is_null() && !secret_named(secret) {
                problems.push(format!(
                    "{what}: volume {}: Secret {secret} is named by no value",
                    volume["name"]
                ));
            }
        }
        for container in array(&spec["containers"]).chain(array(&spec["initContainers"])) {
            for from in array(&container["envFrom"]) {
                let (config_map, secret) = (&from["configMapRef"]["name"], &from["secretRef"]["name"]);
                if (!config_map.is_null() && !config_map_rendered(config_map))
                    || (!secret.is_null() && !secret_named(secret))
                {
                    problems.push(format!(
                        "{what}: envFrom {from} refers to nothing rendered or named"
                    ));
                }
            }
            for var in array(&container["env"]) {
                let (config_map, secret) = (
                    &var["valueFrom"]["configMapKeyRef"]["name"],
                    &var["valueFrom"]["secretKeyRef"]["name"],
                );
                if (!config_map.is_null() && !config_map_rendered(config_map))
                    || (!secret.is_null() && !secret_named(secret))
                {
                    problems.push(format!(
                        "{what}: env {} refers to nothing rendered or named",
                        var["name"]
                    ));
                }
            }
        }
        for pull in array(&spec["imagePullSecrets"]) {
            if !SECRETS_FROM_VALUES.contains(&pull["name"].as_str().unwrap_or("")) {
                problems.push(format!(
                    "{what}: image pull secret {pull} is not one the values name"
                ));
            }
        }
        if object["kind"] == "StatefulSet" {
            let service = object["spec"]["serviceName"].as_str().unwrap_or("");
            match self.kind("Service").find(|s| name(s) == service) {
                Some(s) if s["spec"]["clusterIP"] == "None" => {}
                Some(_) => problems.push(format!("{what}: its Service {service} is not headless")),
                None => problems.push(format!("{what}: serviceName {service} is not a rendered Service")),
            }
        }
    }

    fn check_service(&self, object: &Value, what: &str, problems: &mut Vec<String>) {
        let ports: Vec<&Value> = array(&object["spec"]["ports"]).collect();
        if ports.is_empty() {
            problems.push(format!("{what}: no ports"));
        }
        let pods: Vec<&Value> = self
            .workloads()
            .map(|w| &w["spec"]["template"])
            .filter(|t| selects(&object["spec"]["selector"], &t["metadata"]["labels"]))
            .collect();
        if pods.is_empty() {
            problems.push(format!("{what}: selects no pods"));
        }
        for port in ports {
            let target = &port["targetPort"];
            for pod in &pods {
                let exists = array(&pod["spec"]["containers"])
                    .flat_map(|c| array(&c["ports"]))
                    .any(|p| match target {
                        Value::String(s) => p["name"] == *s,
                        Value::Null => p["containerPort"] == port["port"],
                        _ => p["containerPort"] == *target,
                    });
                if !exists {
                    problems.push(format!(
                        "{what}: port {} targets {target}, which its pods lack",
                        port["name"]
                    ));
                }
            }
        }
    }

    fn check_service_monitor(&self, object: &Value, what: &str, problems: &mut Vec<String>) {
        let selected: Vec<&Value> = self
            .kind("Service")
            .filter(|s| {
                selects(
                    &object["spec"]["selector"]["matchLabels"],
                    &s["metadata"]["labels"],
                )
            })
            .collect();
        let services: BTreeSet<String> = selected
            .iter()
            .map(|s| {
                s["metadata"]["labels"]["app.kubernetes.io/component"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        let all: BTreeSet<String> = ferry_wire::permissions::SERVICES
            .iter()
            .map(|s| s.to_string())
            .collect();
        if services != all {
            problems.push(format!("{what}: scrapes {services:?}, not every service"));
        }
        for endpoint in array(&object["spec"]["endpoints"]) {
            for service in &selected {
                if !array(&service["spec"]["ports"]).any(|p| p["name"] == endpoint["port"]) {
                    problems.push(format!(
                        "{what}: Service {} has no port {}",
                        name(service),
                        endpoint["port"]
                    ));
                }
            }
        }
        // The job the alert rules and dashboards select (`job=~"ferry.*"`).
        let job_label = object["spec"]["jobLabel"].as_str().unwrap_or("");
        for service in &selected {
            let job = service["metadata"]["labels"][job_label]
                .as_str()
                .unwrap_or(name(service));
            if !job.starts_with("ferry") {
                problems.push(format!("{what}: Service {}'s job would be {job}", name(service)));
            }
        }
    }
}

fn check_prometheus_rule(object: &Value, what: &str, problems: &mut Vec<String>) {
    let path = ferry_tests::workspace_root()
        .join(CHART)
        .join("rules/ferry.rules.yml");
    let file: Result<Value, String> = std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_norway::from_str(&text).map_err(|e| e.to_string()));
    match file {
        Err(e) => problems.push(format!("{}: {e}", path.display())),
        Ok(file) if file["groups"] != object["spec"]["groups"] => {
            problems.push(format!("{what}: spec.groups differ from {}", path.display()))
        }
        Ok(_) => {}
    }
}

fn check_dashboards(object: &Value, what: &str, problems: &mut Vec<String>) {
    let dir = ferry_tests::workspace_root().join(CHART).join("dashboards");
    let files: BTreeSet<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".json"))
                .collect()
        })
        .unwrap_or_default();
    let data = map(&object["data"]);
    let keys: BTreeSet<String> = data.keys().cloned().collect();
    if keys != files || files.is_empty() {
        problems.push(format!("{what}: keys {keys:?}, dashboards {files:?}"));
    }
    let mut size = 0;
    for (key, text) in &data {
        let text = text.as_str().unwrap_or("");
        size += key.len() + text.len();
        match serde_json::from_str::<Value>(text) {
            Ok(d) if d["panels"].is_array() => {}
            Ok(_) => problems.push(format!("{what}: {key} has no panels")),
            Err(e) => problems.push(format!("{what}: {key} is not JSON: {e}")),
        }
    }
    // What Kubernetes stores of one object.
    if size > 1 << 20 {
        problems.push(format!("{what}: {size} bytes, over a ConfigMap's 1 MiB"));
    }
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

fn label_key(key: &str) -> bool {
    let (prefix, name) = key.rsplit_once('/').unwrap_or(("", key));
    let prefix_ok = prefix.is_empty() || (prefix.len() <= 253 && prefix.split('.').all(dns_label));
    prefix_ok && !name.is_empty() && label_value(name)
}

// ---- Pods ------------------------------------------------------------------------------------

/// The Secrets an operator makes as the chart's README says, by name and key.
struct Secrets {
    secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    keymat_id: String,
}

impl Secrets {
    fn as_the_readme_makes_them(dir: &Path) -> anyhow::Result<Secrets> {
        let files = |dir: &Path| -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
            let mut out = BTreeMap::new();
            for entry in std::fs::read_dir(dir)? {
                let entry = entry?;
                if entry.file_type()?.is_file() {
                    out.insert(
                        entry.file_name().to_string_lossy().into_owned(),
                        std::fs::read(entry.path())?,
                    );
                }
            }
            Ok(out)
        };
        // ferry nats setup --dir keys --nodes node1,node2 --cli-role admin
        let keys = dir.join("keys");
        ferry_tests::nats_keys(&keys, "node1,node2")?;
        let auth = std::fs::read(keys.join("auth.conf"))?;
        let mut secrets = BTreeMap::new();
        // kubectl create secret generic ferry-node1-nats --from-file=keys/node1/ --from-file=keys/auth.conf
        let mut node1 = files(&keys.join("node1"))?;
        node1.insert("auth.conf".into(), auth);
        secrets.insert("ferry-node1-nats".to_string(), node1);
        secrets.insert("ferry-node2-nats".to_string(), files(&keys.join("node2"))?);
        // A cert-manager Certificate's Secret: tls.crt, tls.key, ca.crt.
        std::fs::create_dir_all(dir.join("pki"))?;
        let pki = ferry_testkit::peers::vsftpd::TestPki::generate(&dir.join("pki"))?;
        secrets.insert(
            "ferry-nats-tls".to_string(),
            BTreeMap::from([
                ("tls.crt".to_string(), std::fs::read(&pki.server_cert)?),
                ("tls.key".to_string(), std::fs::read(&pki.server_key)?),
                ("ca.crt".to_string(), std::fs::read(&pki.ca_cert)?),
            ]),
        );
        // kubectl create secret generic ferry-keymat --from-file=keymat
        let keymat_file = dir.join("keymat");
        let keymat = ferry_keymat::Keymat::load_or_create(&keymat_file)?;
        secrets.insert(
            "ferry-keymat".to_string(),
            BTreeMap::from([("keymat".to_string(), std::fs::read(&keymat_file)?)]),
        );
        let names: BTreeSet<&str> = secrets.keys().map(String::as_str).collect();
        ensure!(
            names.iter().all(|n| SECRETS_FROM_VALUES.contains(n)),
            "SECRETS_FROM_VALUES lists {names:?}"
        );
        Ok(Secrets {
            secrets,
            keymat_id: keymat.key_id().to_string(),
        })
    }
}

/// What the pods of one release showed when laid out and started.
struct Node {
    /// The settings each service loaded, by service.
    settings: BTreeMap<String, ferry_service::Settings>,
    /// The keymat each service that opens one opened, by service.
    key_ids: BTreeMap<String, String>,
    /// The bundled servers, started from the rendered configuration on loopback (killed on drop).
    nats: Vec<NatsProcess>,
}

impl Node {
    /// The started servers' client URLs, as a Ferry `nats_url`.
    fn nats_url(&self) -> String {
        let urls: Vec<String> = self
            .nats
            .iter()
            .map(|n| format!("tls://127.0.0.1:{}", n.port))
            .collect();
        urls.join(",")
    }
}

/// A pod laid out in a directory: each volume a folder, each container a root whose mount
/// paths are symbolic links to them.
struct Pod {
    name: String,
    roots: BTreeMap<String, PathBuf>,
}

impl Pod {
    fn root(&self, container: &str) -> &Path {
        &self.roots[container]
    }
}

/// Absolute paths in quoted strings of a configuration moved under `root`.
fn under(root: &Path, text: &str) -> String {
    text.replace("\"/", &format!("\"{}/", root.display()))
}

/// A volume's file mode as Kubernetes reads it: YAML 1.1, where `0440` is octal (serde_norway,
/// YAML 1.2, leaves a leading-zero number a string).
fn file_mode(value: &Value, default: u32) -> anyhow::Result<u32> {
    match value {
        Value::Null => Ok(default),
        Value::Number(n) => n.as_u64().map(|n| n as u32).context("a mode"),
        Value::String(s) if s.starts_with('0') => {
            u32::from_str_radix(s, 8).with_context(|| format!("mode {s:?} is not octal"))
        }
        other => bail!("mode {other} is not a number"),
    }
}

impl Release {
    fn lay_out(&self, dir: &Path, pod: &str, workload: &Value, secrets: &Secrets) -> anyhow::Result<Pod> {
        let spec = &workload["spec"]["template"]["spec"];
        let pod_dir = dir.join("pods").join(pod);
        let mut volumes = BTreeMap::new();
        for volume in array(&spec["volumes"]) {
            let volume_name = volume["name"].as_str().context("volume name")?;
            let path = pod_dir.join("volumes").join(volume_name);
            if let Some(claim) = volume["persistentVolumeClaim"]["claimName"].as_str() {
                // One folder per claim: the pods that claim it share it.
                let shared = dir.join("claims").join(claim);
                std::fs::create_dir_all(&shared)?;
                volumes.insert(volume_name.to_string(), shared);
                continue;
            }
            std::fs::create_dir_all(&path)?;
            if let Some(config_map) = volume["configMap"]["name"].as_str() {
                let data = map(&self.get("ConfigMap", config_map)?["data"]);
                for (key, text) in data {
                    std::fs::write(path.join(&key), text.as_str().unwrap_or(""))?;
                }
            } else if let Some(secret) = volume["secret"]["secretName"].as_str() {
                let held = secrets.secrets.get(secret).with_context(|| {
                    format!("{pod}: volume {volume_name}: Secret {secret} is not one the README makes")
                })?;
                let mode = file_mode(&volume["secret"]["defaultMode"], 0o644)?;
                let items: Vec<(String, String)> = match volume["secret"]["items"].as_array() {
                    Some(items) => items
                        .iter()
                        .map(|i| {
                            (
                                i["key"].as_str().unwrap_or("").to_string(),
                                i["path"].as_str().unwrap_or("").to_string(),
                            )
                        })
                        .collect(),
                    None => held.keys().map(|k| (k.clone(), k.clone())).collect(),
                };
                for (key, file) in items {
                    let bytes = held.get(&key).with_context(|| {
                        format!("{pod}: volume {volume_name}: Secret {secret} has no key {key}")
                    })?;
                    std::fs::write(path.join(&file), bytes)?;
                    std::fs::set_permissions(path.join(&file), std::fs::Permissions::from_mode(mode))?;
                }
            } else {
                ensure!(
                    !volume["emptyDir"].is_null(),
                    "{pod}: volume {volume_name} of an unexpected kind: {volume}"
                );
            }
            volumes.insert(volume_name.to_string(), path);
        }
        for template in array(&workload["spec"]["volumeClaimTemplates"]) {
            let claim = template["metadata"]["name"].as_str().context("claim name")?;
            let path = dir.join("claims").join(format!("{claim}-{pod}"));
            std::fs::create_dir_all(&path)?;
            volumes.insert(claim.to_string(), path);
        }
        let mut roots = BTreeMap::new();
        for container in array(&spec["initContainers"]).chain(array(&spec["containers"])) {
            let container_name = container["name"].as_str().context("container name")?;
            let root = pod_dir.join("containers").join(container_name);
            std::fs::create_dir_all(&root)?;
            for mount in array(&container["volumeMounts"]) {
                let volume = &volumes[mount["name"].as_str().context("mount name")?];
                let target = match mount["subPath"].as_str() {
                    Some(sub) => volume.join(sub),
                    None => volume.clone(),
                };
                ensure!(
                    target.exists(),
                    "{pod}: {container_name} mounts {}, which is not there",
                    target.display()
                );
                let at = root.join(
                    mount["mountPath"]
                        .as_str()
                        .context("mountPath")?
                        .trim_start_matches('/'),
                );
                std::fs::create_dir_all(at.parent().context("a mount path has a parent")?)?;
                std::os::unix::fs::symlink(&target, &at)?;
            }
            roots.insert(container_name.to_string(), root);
        }
        Ok(Pod {
            name: pod.to_string(),
            roots,
        })
    }

    /// Lay out every pod (one per workload: replicas are alike) and start what can start here.
    async fn start_pods(&self, dir: &Path, secrets: &Secrets) -> anyhow::Result<Node> {
        let mut node = Node {
            settings: BTreeMap::new(),
            key_ids: BTreeMap::new(),
            nats: Vec::new(),
        };
        for workload in self.workloads() {
            if workload["kind"] == "StatefulSet" {
                node.nats = self.start_nats(dir, workload, secrets)?;
                continue;
            }
            let pod_name = format!("{}-0", name(workload));
            let pod = self.lay_out(dir, &pod_name, workload, secrets)?;
            let spec = &workload["spec"]["template"]["spec"];
            for init in array(&spec["initContainers"]) {
                run_init(&pod, init)?;
            }
            for container in array(&spec["containers"]) {
                let (service, settings) = load_service(&pod, container, workload)?;
                if matches!(service.as_str(), "scheduler" | "file-collector" | "transfer") {
                    let keymat = settings
                        .open_keymat()
                        .with_context(|| format!("{}: {service} opens the node's keymat", pod.name))?;
                    node.key_ids
                        .insert(service.clone(), keymat.current()?.key_id().to_string());
                }
                node.settings.insert(service, settings);
            }
        }
        let ids: BTreeSet<&String> = node.key_ids.values().collect();
        ensure!(
            ids.len() == 1,
            "{}: one keymat for the node's services, not {:?}",
            self.name,
            node.key_ids
        );
        ensure!(
            node.settings.len() == ferry_wire::permissions::SERVICES.len(),
            "{}: five services",
            self.name
        );
        Ok(node)
    }
}

/// Run an init container's shell command with its absolute paths moved under the container's root.
fn run_init(pod: &Pod, init: &Value) -> anyhow::Result<()> {
    let root = pod.root(init["name"].as_str().context("init name")?);
    let command: Vec<&str> = array(&init["command"]).filter_map(Value::as_str).collect();
    let [shell, "-c", script] = command.as_slice() else {
        bail!(
            "{}: init container command {command:?} is not `sh -c SCRIPT`",
            pod.name
        );
    };
    let script = script.replace(" /", &format!(" {}/", root.display()));
    let out = Command::new(shell).arg("-c").arg(&script).output()?;
    ensure!(
        out.status.success(),
        "{}: init container failed: {script}: {}",
        pod.name,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Load a Ferry container's settings from its FERRY_CONFIG and check what it needs is there.
fn load_service(
    pod: &Pod,
    container: &Value,
    workload: &Value,
) -> anyhow::Result<(String, ferry_service::Settings)> {
    let service = container["name"].as_str().context("container name")?.to_string();
    let what = format!("{}: {service}", pod.name);
    ensure!(
        ferry_wire::permissions::SERVICES.contains(&service.as_str()),
        "{what}: not one of Ferry's services"
    );
    ensure!(
        container["command"] == serde_json::json!([format!("ferry-{service}")]),
        "{what}: runs {}",
        container["command"]
    );
    let env: BTreeMap<&str, &str> = array(&container["env"])
        .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
        .collect();
    let config = env.get("FERRY_CONFIG").context("FERRY_CONFIG")?;
    let root = pod.root(&service);
    let text = std::fs::read_to_string(root.join(config.trim_start_matches('/')))
        .with_context(|| format!("{what}: read FERRY_CONFIG {config}"))?;
    let file = root.join("node-under-root.toml");
    std::fs::write(&file, under(root, &text))?;
    let settings = ferry_service::Settings::load(Some(&file))
        .with_context(|| format!("{what}: Ferry refuses the chart's node.toml:\n{text}"))?;
    let metrics = match service.as_str() {
        "scheduler" => settings.scheduler.metrics_addr,
        "file-collector" => settings.file_collector.metrics_addr,
        "transfer" => settings.transfer.metrics_addr,
        "cert-handler" => settings.cert_handler.metrics_addr,
        _ => settings.failover_coordinator.metrics_addr,
    };
    let probe_port = &container["readinessProbe"]["httpGet"]["port"];
    let port = array(&container["ports"])
        .find(|p| p["name"] == *probe_port)
        .with_context(|| format!("{what}: no port named {probe_port}"))?;
    ensure!(
        metrics.ip().is_unspecified() && port["containerPort"].as_u64() == Some(metrics.port().into()),
        "{what}: serves /healthz on {metrics}, its probes ask port {port}"
    );
    // Data (keymat, role, local hosts) on the node's volume, not the read-only root.
    if service != "cert-handler" {
        let volume = array(&container["volumeMounts"])
            .find(|m| {
                settings
                    .data_dir
                    .starts_with(root.join(m["mountPath"].as_str().unwrap_or("-").trim_start_matches('/')))
            })
            .with_context(|| format!("{what}: data_dir {} is on no volume", settings.data_dir.display()))?;
        let claimed = array(&workload["spec"]["template"]["spec"]["volumes"])
            .any(|v| v["name"] == volume["name"] && !v["persistentVolumeClaim"].is_null());
        ensure!(
            claimed,
            "{what}: data_dir is on volume {}, not the node's claim",
            volume["name"]
        );
    }
    // The credentials, CA and client certificate as Ferry reads them (seeds and keys must be
    // private to the user).
    let runtime = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        runtime.block_on(ferry_service::nats::connect_options(&settings, &service))
    })
    .with_context(|| format!("{what}: its NATS connection"))?;
    Ok((service, settings))
}

impl Release {
    /// Lay out every pod of the NATS StatefulSet, check each one's rendered configuration with
    /// `nats-server -t`, and start them all on loopback: client, monitoring and cluster ports
    /// moved to free ones and the routes to those (what the headless Service's names resolve to
    /// in Kubernetes); everything else as rendered.
    fn start_nats(
        &self,
        dir: &Path,
        workload: &Value,
        secrets: &Secrets,
    ) -> anyhow::Result<Vec<NatsProcess>> {
        let replicas = workload["spec"]["replicas"].as_u64().context("replicas")?;
        let container = array(&workload["spec"]["template"]["spec"]["containers"])
            .find(|c| c["name"] == "nats")
            .context("a nats container")?;
        let cluster_ports: Vec<u16> = (0..replicas).map(|_| ferry_tests::free_port()).collect();
        let routes: Vec<String> = cluster_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        let server = ferry_testkit::nats_server_path();
        let mut started = Vec::new();
        for (i, cluster_port) in cluster_ports.iter().enumerate() {
            let pod = self.lay_out(dir, &format!("{}-{i}", name(workload)), workload, secrets)?;
            let root = pod.root("nats");
            let args: Vec<&str> = array(&container["args"]).filter_map(Value::as_str).collect();
            let ["--config", config] = args.as_slice() else {
                bail!("{}: nats-server args {args:?}", pod.name);
            };
            let original = root.join(config.trim_start_matches('/'));
            let text =
                std::fs::read_to_string(&original).with_context(|| format!("{}: read {config}", pod.name))?;
            // Beside the original, so that its relative `include` resolves the same way.
            let file = original.with_file_name("nats-under-root.conf");
            std::fs::write(&file, under(root, &text))?;
            let mut env = BTreeMap::new();
            for var in array(&container["env"]) {
                let value = match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("metadata.name") => pod.name.clone(),
                    Some(other) => bail!("{}: env from {other}", pod.name),
                    None => var["value"].as_str().unwrap_or("").to_string(),
                };
                env.insert(var["name"].as_str().unwrap_or("").to_string(), value);
            }
            let out = Command::new(&server)
                .args(["-t", "-c"])
                .arg(&file)
                .envs(&env)
                .output()?;
            ensure!(
                out.status.success(),
                "{}: nats-server refuses the rendered configuration: {}{}\n{text}",
                pod.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let (client, monitor) = (ferry_tests::free_port(), ferry_tests::free_port());
            let mut command = Command::new(&server);
            command.arg("-c").arg(&file).args([
                "-a",
                "127.0.0.1",
                "-p",
                &client.to_string(),
                "-m",
                &monitor.to_string(),
            ]);
            if replicas > 1 {
                ensure!(
                    text.contains("cluster {"),
                    "{}: {replicas} servers and no cluster:\n{text}",
                    pod.name
                );
                command.args([
                    "--cluster",
                    &format!("nats://127.0.0.1:{cluster_port}"),
                    "--routes",
                    &routes.join(","),
                ]);
            }
            let child = command
                .envs(&env)
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(root.join("nats.log"))?)
                .spawn()?;
            started.push(NatsProcess { child, port: client });
        }
        Ok(started)
    }
}

/// Connect a node's `service` to `nats_url` the way the service does at start — as its own user,
/// with the pod's files — including creating every stream and bucket at the node's replicas,
/// which a JetStream cluster does only once its servers have formed it.
async fn start_service_on(node: &Node, service: &str, nats_url: &str) -> anyhow::Result<()> {
    let mut settings = node.settings[service].clone();
    ensure!(settings.nats.ca_file.is_some(), "{service}: TLS to NATS");
    settings.nats_url = nats_url.to_string();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let connected = tokio::time::timeout(
        Duration::from_secs(60),
        ferry_service::nats::connect(&settings, service, &shutdown),
    )
    .await;
    shutdown.cancel();
    match connected {
        Ok(Ok((client, js))) => {
            let stream = js.get_stream(ferry_wire::topology::STREAM_RUNQ).await?;
            let replicas = stream.cached_info().config.num_replicas;
            ensure!(
                replicas == settings.replicas,
                "FERRY_RUNQ on {replicas} servers, not {}",
                settings.replicas
            );
            drop(client);
            Ok(())
        }
        Ok(Err(e)) => Err(e.context(format!("{service} of {} on {nats_url}", settings.node_id))),
        Err(_) => bail!(
            "{service} of {} did not start on {nats_url} within 60 s",
            settings.node_id
        ),
    }
}

/// The bundled servers include `ferry nats setup`'s users: a client without credentials is refused.
async fn anonymous_is_refused(node: &Node) -> anyhow::Result<()> {
    ferry_service::nats::install_crypto_provider();
    let ca = node.settings["scheduler"].nats.ca_file.clone().context("a CA")?;
    let url = format!("tls://127.0.0.1:{}", node.nats.first().context("a server")?.port);
    let attempt = async_nats::ConnectOptions::new()
        .add_root_certificates(ca.into())
        .require_tls(true)
        .connect(url.as_str());
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Ok(_)) => bail!("the bundled NATS let in a client without credentials"),
        Ok(Err(e)) if e.kind() == async_nats::ConnectErrorKind::AuthorizationViolation => Ok(()),
        Ok(Err(e)) => bail!("an anonymous client failed otherwise than refused: {e}"),
        Err(_) => bail!("an anonymous client neither connected nor was refused within 10 s"),
    }
}

/// A nats-server started from a rendered configuration, killed on drop.
struct NatsProcess {
    child: std::process::Child,
    port: u16,
}

impl Drop for NatsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
