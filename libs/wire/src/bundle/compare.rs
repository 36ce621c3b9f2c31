//! `ferry config verify`: every difference between two sets of parts (a node's buckets or a
//! bundle), by what an administrator knows them as — task, host, parameter, certificate, PGP key,
//! new-files-only state, schedule state. **Invariant:** a secret's value, sealed or not, is never
//! in a difference: a changed secret shows as changed.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{Part, digest};
use crate::{ConfigChanges, ConfigDocument, topology};

/// One difference. `here` is the side verify runs on, `there` the side it is compared with.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Difference {
    /// `configuration`, `keymat`, `task`, `host`, `parameter`, `certificate`, `pgp key`,
    /// `new-files-only` or `schedule`.
    pub kind: &'static str,
    /// The task, host or parameter name, the fingerprint; empty for the whole part.
    pub name: String,
    pub detail: String,
}

fn diff(kind: &'static str, name: impl Into<String>, detail: impl Into<String>) -> Difference {
    Difference {
        kind,
        name: name.into(),
        detail: detail.into(),
    }
}

/// Every difference between `here` and `there` (parts by bucket; a missing part is empty).
pub fn compare(here: &BTreeMap<String, Part>, there: &BTreeMap<String, Part>) -> Vec<Difference> {
    let empty = Part::default();
    let part = |side: &BTreeMap<String, Part>, bucket: &str| -> Part {
        side.get(bucket).cloned().unwrap_or_else(|| empty.clone())
    };
    let mut out = Vec::new();
    configuration(
        &part(here, topology::KV_CONFIG),
        &part(there, topology::KV_CONFIG),
        &mut out,
    );
    for (bucket, kind, store) in [
        (topology::KV_CERTS_PERSONAL, "certificate", "personal store"),
        (topology::KV_CERTS_OTHER, "certificate", "other people's store"),
        (topology::KV_PGP_PUBLIC, "pgp key", "public ring"),
        (topology::KV_PGP_SECRET, "pgp key", "secret ring"),
    ] {
        by_key(&part(here, bucket), &part(there, bucket), |key, detail| {
            out.push(diff(kind, key, format!("{store}: {detail}")))
        });
    }
    let (h, t) = (part(here, topology::KV_STATE), part(there, topology::KV_STATE));
    let (dh, dt) = (digest(&h), digest(&t));
    if dh != dt {
        let mut counts = [0usize; 3];
        by_key(&h, &t, |_, detail| match detail {
            ONLY_HERE => counts[0] += 1,
            ONLY_THERE => counts[1] += 1,
            _ => counts[2] += 1,
        });
        out.push(diff(
            "new-files-only",
            "",
            format!(
                "{} entries here (digest {}), {} there (digest {}): {} only here, {} only there, {} different",
                h.entries.len(),
                &dh[..16],
                t.entries.len(),
                &dt[..16],
                counts[0],
                counts[1],
                counts[2]
            ),
        ));
    }
    let (h, t) = (part(here, topology::KV_SCHED), part(there, topology::KV_SCHED));
    let shown = |v: Option<&Vec<u8>>| {
        v.map(|v| String::from_utf8_lossy(&v[..v.len().min(200)]).into_owned())
            .unwrap_or_else(|| "none".into())
    };
    by_key(&h, &t, |key, _| {
        let task = key.strip_prefix(super::SCHED_PREFIX).unwrap_or(key);
        out.push(diff(
            "schedule",
            task,
            format!(
                "last fired slot here {}, there {}",
                shown(h.entries.get(key)),
                shown(t.entries.get(key))
            ),
        ))
    });
    out
}

const ONLY_HERE: &str = "only here";
const ONLY_THERE: &str = "only there";

/// Call `each(key, "only here" | "only there" | "different")` for every key that differs.
fn by_key(here: &Part, there: &Part, mut each: impl FnMut(&str, &str)) {
    let keys: BTreeSet<&String> = here.entries.keys().chain(there.entries.keys()).collect();
    for key in keys {
        match (here.entries.get(key), there.entries.get(key)) {
            (Some(_), None) => each(key, ONLY_HERE),
            (None, Some(_)) => each(key, ONLY_THERE),
            (Some(a), Some(b)) if a != b => each(key, "different"),
            _ => {}
        }
    }
}

fn configuration(here: &Part, there: &Part, out: &mut Vec<Difference>) {
    let doc = |part: &Part| -> Result<Option<ConfigDocument>, String> {
        part.entries
            .get(topology::CONFIG_KEY)
            .map(|bytes| crate::decode::<ConfigDocument>(bytes).map_err(|e| e.to_string()))
            .transpose()
    };
    let (h, t) = match (doc(here), doc(there)) {
        (Ok(h), Ok(t)) => (h, t),
        (Err(e), _) => return out.push(diff("configuration", "", format!("not readable here: {e}"))),
        (_, Err(e)) => return out.push(diff("configuration", "", format!("not readable there: {e}"))),
    };
    let (h, t) = match (h, t) {
        (None, None) => return,
        (Some(_), None) => return out.push(diff("configuration", "", "stored only here")),
        (None, Some(_)) => return out.push(diff("configuration", "", "stored only there")),
        (Some(h), Some(t)) => (h, t),
    };
    if h.keymat_id != t.keymat_id {
        out.push(diff(
            "keymat",
            "",
            format!(
                "secrets sealed under {} here, {} there",
                h.keymat_id.as_deref().unwrap_or("(none)"),
                t.keymat_id.as_deref().unwrap_or("(none)")
            ),
        ));
    }
    // `before` is there, `after` here: "added" is only here.
    let changes = ConfigChanges::between(&t.config, &h.config);
    for (kind, names) in [("task", &changes.tasks), ("host", &changes.hosts)] {
        for name in &names.added {
            out.push(diff(kind, name, ONLY_HERE));
        }
        for name in &names.removed {
            out.push(diff(kind, name, ONLY_THERE));
        }
        for name in &names.changed {
            let scope = format!("{kind} {name:?}");
            let fields: Vec<String> = changes
                .fields
                .iter()
                .filter(|f| f.scope == scope)
                .map(|f| {
                    format!(
                        "{} (here {}, there {})",
                        f.field,
                        f.after.as_deref().unwrap_or("unset"),
                        f.before.as_deref().unwrap_or("unset")
                    )
                })
                .collect();
            out.push(diff(kind, name, format!("different: {}", fields.join("; "))));
        }
    }
    let names: BTreeSet<&String> = h
        .config
        .parameters
        .keys()
        .chain(t.config.parameters.keys())
        .collect();
    for name in names {
        use ferry_config::ParamValue;
        let shown = |v: &ParamValue| match v {
            ParamValue::Plain(s) => format!("{s:?}"),
            ParamValue::Secure(_) => "(secret)".into(),
        };
        match (h.config.parameters.get(name), t.config.parameters.get(name)) {
            (Some(_), None) => out.push(diff("parameter", name, ONLY_HERE)),
            (None, Some(_)) => out.push(diff("parameter", name, ONLY_THERE)),
            (Some(a), Some(b)) if a != b => {
                let detail = match (a, b) {
                    (ParamValue::Secure(_), ParamValue::Secure(_)) => "different secret".to_string(),
                    _ => format!("different: here {}, there {}", shown(a), shown(b)),
                };
                out.push(diff("parameter", name, detail));
            }
            _ => {}
        }
    }
}
