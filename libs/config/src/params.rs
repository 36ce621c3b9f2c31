//! Task parameters: `[parameters]` (global) and `[task.parameters]` (a task's own, overriding a
//! global one of the same name), used by `[Parm:Name]` in templates, process options and next
//! actions; `ferry task run NAME --param k=v` overrides them for one run.
//!
//! ```toml
//! [parameters]
//! region = "eu-west"
//! api_key = { secure = "env:API_KEY" }   # sealed by `ferry apply`, like a host's password
//! ```
//!
//! Invariants:
//! - a secure value is stored sealed under the node's keymat, bound to where it stands
//!   ([`global_binding`], [`task_binding`], [`run_binding`]), and shown as [`MASK`] everywhere
//!   (task show, run records, events, logs); only the run that uses it opens it;
//! - names are 1-64 letters, digits, `-` and `_`, and match ignoring case (two names of one table
//!   that differ only in case are refused);
//! - a secure parameter never reaches a destination folder or file name, which end up in audit
//!   records and logs (refused at apply time).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::template::param_value;
use crate::{SEALED_PREFIX, Secret, is_valid_name};

/// What a secure value is shown as.
pub const MASK: &str = "********";

/// The key of a secure parameter's inline table: `name = { secure = "..." }`.
pub const SECURE_KEY: &str = "secure";

/// One parameter's value as stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamValue {
    Plain(String),
    /// Sealed under the node's keymat.
    Secure(Secret),
}

impl ParamValue {
    /// The value as it may be shown: plain text, or [`MASK`].
    pub fn shown(&self) -> &str {
        match self {
            ParamValue::Plain(v) => v,
            ParamValue::Secure(_) => MASK,
        }
    }

    pub fn is_secure(&self) -> bool {
        matches!(self, ParamValue::Secure(_))
    }
}

impl std::fmt::Debug for ParamValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamValue::Plain(v) => write!(f, "Plain({v:?})"),
            ParamValue::Secure(s) => write!(f, "Secure({s:?})"),
        }
    }
}

/// Parameters by name, as written.
pub type Parameters = BTreeMap<String, ParamValue>;

/// Where a global parameter's sealed value is bound.
pub fn global_binding(name: &str) -> String {
    format!("param/{name}")
}
/// Where a task parameter's sealed value is bound.
pub fn task_binding(task: &str, name: &str) -> String {
    format!("task/{task}/param/{name}")
}
/// Where a value given for one run (`--param`, a chained task's parameters) is bound.
pub fn run_binding(task: &str, name: &str) -> String {
    format!("run/{task}/param/{name}")
}

/// Where a parameter's value came from, which decides its binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Global,
    Task,
    Run,
}

/// One parameter of a run: its name (as the task or global table writes it, else as given), its
/// value and where it came from.
#[derive(Debug, Clone)]
pub struct Effective<'a> {
    pub name: &'a str,
    pub value: &'a ParamValue,
    pub origin: Origin,
}

impl Effective<'_> {
    /// The binding its sealed value is opened with.
    pub fn binding(&self, task: &str) -> String {
        match self.origin {
            Origin::Global => global_binding(self.name),
            Origin::Task => task_binding(task, self.name),
            Origin::Run => run_binding(task, self.name),
        }
    }
}

/// The parameters of one run of a task: global ones, overridden by the task's, overridden by the
/// run's (names matched ignoring case), in name order.
pub fn effective<'a>(
    global: &'a Parameters,
    task: &'a Parameters,
    run: &'a Parameters,
) -> Vec<Effective<'a>> {
    let mut out: Vec<Effective<'a>> = Vec::new();
    for (layer, origin) in [(global, Origin::Global), (task, Origin::Task), (run, Origin::Run)] {
        for (name, value) in layer {
            let entry = Effective { name, value, origin };
            match out.iter_mut().find(|e| e.name.eq_ignore_ascii_case(name)) {
                // The declared spelling stays; the value is the later layer's.
                Some(e) => {
                    e.value = value;
                    e.origin = origin;
                }
                None => out.push(entry),
            }
        }
    }
    out.sort_by_key(|e| e.name.to_ascii_lowercase());
    out
}

/// The run's parameters as they may be shown (secure ones as [`MASK`]).
pub fn shown(effective: &[Effective<'_>]) -> BTreeMap<String, String> {
    effective
        .iter()
        .map(|e| (e.name.to_string(), e.value.shown().to_string()))
        .collect()
}

/// The run's plain parameters (secure ones left out): what destination templates may use.
pub fn plain(effective: &[Effective<'_>]) -> BTreeMap<String, String> {
    effective
        .iter()
        .filter_map(|e| match e.value {
            ParamValue::Plain(v) => Some((e.name.to_string(), v.clone())),
            ParamValue::Secure(_) => None,
        })
        .collect()
}

/// Whether `name` is declared in `global` or `task` (ignoring case).
pub fn declared(global: &Parameters, task: &Parameters, name: &str) -> Option<bool> {
    let find = |p: &Parameters| {
        p.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.is_secure())
    };
    find(task).or_else(|| find(global))
}

/// Look `name` up in resolved values (ignoring case).
pub fn lookup<'p>(values: &'p BTreeMap<String, String>, name: &str) -> Option<&'p str> {
    param_value(values, name)
}

/// Read a `[parameters]` table at `path` (`parameters` or `task.parameters`). Problems are
/// `(field, value, message)`; a secure value must already be sealed (`ferry apply` seals it).
pub fn validate(table: &toml::Table, path: &str, problems: &mut Vec<(String, String, String)>) -> Parameters {
    let mut out = Parameters::new();
    for (name, value) in table {
        let field = format!("{path}.{name}");
        if !is_valid_name(name) {
            problems.push((
                field,
                name.clone(),
                "is not a valid parameter name: use 1-64 letters, digits, '-' or '_'".into(),
            ));
            continue;
        }
        if let Some(other) = out.keys().find(|k| k.eq_ignore_ascii_case(name)) {
            problems.push((
                field,
                name.clone(),
                format!("differs from parameter {other:?} only in case; [Parm:...] names ignore case"),
            ));
            continue;
        }
        let parsed = match value {
            toml::Value::String(s) => Ok(ParamValue::Plain(s.clone())),
            toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
                Ok(ParamValue::Plain(value.to_string()))
            }
            toml::Value::Table(t) if t.len() == 1 => match t.get(SECURE_KEY) {
                Some(toml::Value::String(sealed)) => Secret::try_from(sealed.clone())
                    .map(ParamValue::Secure)
                    .map_err(|m| (format!("{field}.{SECURE_KEY}"), String::new(), m)),
                _ => Err((
                    field.clone(),
                    String::new(),
                    format!("is a table; write a value, or {{ {SECURE_KEY} = \"...\" }} for a secret"),
                )),
            },
            _ => Err((
                field.clone(),
                String::new(),
                format!("is not a value: write a string, or {{ {SECURE_KEY} = \"...\" }} for a secret"),
            )),
        };
        match parsed {
            Ok(v) => {
                out.insert(name.clone(), v);
            }
            Err(p) => problems.push(p),
        }
    }
    out
}

/// The secure values of a raw `[parameters]` table that still need sealing: `(name, value)`.
pub(crate) fn secure_slots(table: &mut toml::Table) -> Vec<(String, &mut toml::Value)> {
    table
        .iter_mut()
        .filter_map(|(name, value)| {
            let slot = value.as_table_mut()?.get_mut(SECURE_KEY)?;
            slot.is_str().then(|| (name.clone(), slot))
        })
        .collect()
}

/// Whether `text` is sealed text (as opposed to a value, `env:VAR` or `file:PATH`).
pub fn is_sealed(text: &str) -> bool {
    text.starts_with(SEALED_PREFIX)
}

/// Parse `--param k=v` arguments (repeatable): names are checked, values are taken as written.
pub fn parse_assignments(args: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for arg in args {
        let Some((name, value)) = arg.split_once('=') else {
            return Err(format!("--param {:?} is not NAME=VALUE", name_only(arg)));
        };
        if !is_valid_name(name) {
            return Err(format!(
                "--param {name:?}: a parameter name is 1-64 letters, digits, '-' or '_'"
            ));
        }
        if out.keys().any(|k: &String| k.eq_ignore_ascii_case(name)) {
            return Err(format!("--param {name:?} is given more than once"));
        }
        out.insert(name.to_string(), value.to_string());
    }
    Ok(out)
}

/// An argument without `=` might be a secret typed in the wrong place: show at most its start.
fn name_only(arg: &str) -> String {
    arg.chars().take(24).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed() -> Secret {
        Secret::try_from(format!("{SEALED_PREFIX}abcd:c2VjcmV0")).expect("well-formed")
    }

    #[test]
    fn tables_are_read_and_mistakes_named() {
        let table: toml::Table = toml::from_str(&format!(
            "Region = \"eu\"\nretries = 3\nkey = {{ secure = \"{}\" }}\nregion = \"x\"\n\"a.b\" = \"1\"\nplain = {{ secure = \"hunter2\" }}\nt = {{ other = 1 }}",
            sealed().sealed()
        ))
        .expect("toml");
        let mut problems = Vec::new();
        let params = validate(&table, "parameters", &mut problems);
        // Keys come in sorted order: `Region` is read first, `region` is the duplicate.
        assert_eq!(params["Region"], ParamValue::Plain("eu".into()));
        assert_eq!(params["retries"], ParamValue::Plain("3".into()));
        assert!(params["key"].is_secure());
        assert_eq!(params["key"].shown(), MASK);
        let fields: Vec<&str> = problems.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(
            fields,
            [
                "parameters.a.b",
                "parameters.plain.secure",
                "parameters.region",
                "parameters.t"
            ],
            "{problems:#?}"
        );
        assert!(problems[1].2.contains("is not sealed"), "{}", problems[1].2);
        assert!(
            !format!("{problems:?}").contains("hunter2"),
            "a refused secret is never shown"
        );
    }

    #[test]
    fn runs_override_tasks_override_globals() {
        let global = Parameters::from([
            ("Region".into(), ParamValue::Plain("eu".into())),
            ("key".into(), ParamValue::Secure(sealed())),
        ]);
        let task = Parameters::from([("region".into(), ParamValue::Plain("us".into()))]);
        let run = Parameters::from([("REGION".into(), ParamValue::Plain("ap".into()))]);
        let e = effective(&global, &task, &run);
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[1].name, e[1].value.shown(), e[1].origin),
            ("Region", "ap", Origin::Run)
        );
        assert_eq!(e[1].binding("t"), "run/t/param/Region");
        assert_eq!(e[0].binding("t"), "param/key");
        assert_eq!(shown(&e)["key"], MASK);
        assert!(!plain(&e).contains_key("key"));
        assert_eq!(declared(&global, &task, "KEY"), Some(true));
        assert_eq!(declared(&global, &task, "nope"), None);
    }

    #[test]
    fn assignments_are_name_equals_value() {
        let args = ["a=1".to_string(), "b=x=y".to_string(), "c=".to_string()];
        let parsed = parse_assignments(&args).expect("valid");
        assert_eq!(parsed["b"], "x=y");
        assert_eq!(parsed["c"], "");
        assert!(parse_assignments(&["novalue".into()]).is_err());
        assert!(parse_assignments(&["a b=1".into()]).is_err());
        assert!(parse_assignments(&["a=1".into(), "A=2".into()]).is_err());
    }
}
