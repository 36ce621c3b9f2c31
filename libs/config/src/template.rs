//! File name and folder templates with macros: `[OrigName]`, `[OrigBase]`, `[OrigExt]`,
//! `[yyyy]`, `[yy]`, `[mm]` (month), `[dd]`, `[HH]`, `[nn]` (minute), `[ss]`, `[TaskName]`,
//! `[RunID]`, and the run's: `[Parm:Name]` (a task or global parameter, `params.rs`), `[Rnd:n]`
//! (n random letters and digits, 1 to 64), `[ErrorCode]` and `[ErrorDescription]` (the run's
//! failure, in next actions). Macro names are case-insensitive except `[mm]`/`[MM]`-style
//! ambiguity, which Ferry avoids by naming minutes `[nn]` as the reference product does.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Local, Timelike};
use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Macro {
    OrigName,
    OrigBase,
    OrigExt,
    Year4,
    Year2,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    TaskName,
    RunId,
    /// `[Parm:Name]`: the name as written.
    Parm(String),
    /// `[Rnd:n]`.
    Rnd(usize),
    ErrorCode,
    ErrorDescription,
}

/// The most characters `[Rnd:n]` may ask for.
pub const MAX_RND: usize = 64;

const MACROS: &[(&str, Macro)] = &[
    ("origname", Macro::OrigName),
    ("origbase", Macro::OrigBase),
    ("origext", Macro::OrigExt),
    ("yyyy", Macro::Year4),
    ("yy", Macro::Year2),
    ("mm", Macro::Month),
    ("dd", Macro::Day),
    ("hh", Macro::Hour),
    ("nn", Macro::Minute),
    ("ss", Macro::Second),
    ("taskname", Macro::TaskName),
    ("runid", Macro::RunId),
    ("errorcode", Macro::ErrorCode),
    ("errordescription", Macro::ErrorDescription),
];

/// The macro names as the documentation writes them (matching is case-insensitive).
const MACRO_NAMES: &[&str] = &[
    "OrigName",
    "OrigBase",
    "OrigExt",
    "yyyy",
    "yy",
    "mm",
    "dd",
    "HH",
    "nn",
    "ss",
    "TaskName",
    "RunID",
    "ErrorCode",
    "ErrorDescription",
    "Parm:Name",
    "Rnd:n",
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Text(String),
    Macro(Macro),
}

/// A validated template. Serializes as the text the operator wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Template {
    text: String,
    segments: Vec<Segment>,
}

/// Values the macros expand to for one file of one run.
pub struct MacroContext<'a> {
    /// The source file's name, without its folder.
    pub orig_name: &'a str,
    pub task: &'a str,
    pub run_id: &'a str,
    /// The run's start time; date macros use the node's local time zone.
    pub time: DateTime<Local>,
    /// Parameter values by name for `[Parm:Name]` (names match ignoring case; secure values
    /// already opened). [`NO_PARAMS`] where a run has none.
    pub params: &'a BTreeMap<String, String>,
    /// The run's failure for `[ErrorCode]` / `[ErrorDescription]` (`None`: `0` and empty).
    pub error: Option<(u32, &'a str)>,
}

/// No parameters: for contexts outside a run's parameters.
pub static NO_PARAMS: BTreeMap<String, String> = BTreeMap::new();

/// The value of parameter `name` in `params`, its name matched ignoring case.
pub fn param_value<'p>(params: &'p BTreeMap<String, String>, name: &str) -> Option<&'p str> {
    params
        .get(name)
        .or_else(|| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
        .map(String::as_str)
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut segments = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('[') {
            if open > 0 {
                segments.push(Segment::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let unclosed = || {
                format!(
                    "has an unclosed `[` at {:?}; macros are written like [OrigName]",
                    &rest[open..]
                )
            };
            let close = after.find(']').ok_or_else(unclosed)?;
            let name = &after[..close];
            if name.contains('[') {
                return Err(unclosed());
            }
            let found = match parse_argument_macro(name) {
                Some(parsed) => parsed?,
                None => MACROS
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, m)| m.clone())
                    .ok_or_else(|| {
                        let guess = crate::model::closest(name, MACRO_NAMES.iter().copied())
                            .map(|g| format!("did you mean [{g}]? "))
                            .unwrap_or_default();
                        format!(
                            "uses unknown macro [{name}]; {guess}known: [{}]",
                            MACRO_NAMES.join("] [")
                        )
                    })?,
            };
            segments.push(Segment::Macro(found));
            rest = &after[close + 1..];
        }
        if let Some(close) = rest.find(']') {
            return Err(format!(
                "has a `]` without a matching `[` at {:?}",
                &rest[close..]
            ));
        }
        if !rest.is_empty() {
            segments.push(Segment::Text(rest.to_string()));
        }
        Ok(Self {
            text: text.to_string(),
            segments,
        })
    }

    /// Expand the macros. A `[Parm:Name]` whose name `ctx` lacks stays as written (visible, never
    /// silently empty); [`Template::try_render`] refuses it instead.
    pub fn render(&self, ctx: &MacroContext<'_>) -> String {
        self.expand(ctx, false).unwrap_or_else(|e| e)
    }

    /// Expand the macros; a `[Parm:Name]` whose name `ctx` lacks is an error naming it.
    pub fn try_render(&self, ctx: &MacroContext<'_>) -> Result<String, String> {
        self.expand(ctx, true)
    }

    /// The parameter names this template uses, as written.
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Macro(Macro::Parm(name)) => Some(name.as_str()),
            _ => None,
        })
    }

    /// This template with every `[Parm:Name]` replaced by its value in `params` (names ignore
    /// case), the other macros kept: how a run's parameters travel with a destination template
    /// to the transfer. A value holding `[` or `]`, or a name `params` lacks, is an error naming
    /// the parameter.
    pub fn with_params(&self, params: &BTreeMap<String, String>) -> Result<Template, String> {
        if self.param_names().next().is_none() {
            return Ok(self.clone());
        }
        let mut text = String::new();
        let mut segments = Vec::with_capacity(self.segments.len());
        for s in &self.segments {
            match s {
                Segment::Macro(Macro::Parm(name)) => {
                    let value = param_value(params, name).ok_or_else(|| {
                        format!("uses parameter [Parm:{name}], which this run does not have")
                    })?;
                    if value.contains(['[', ']']) {
                        return Err(format!(
                            "uses parameter [Parm:{name}], whose value contains `[` or `]`, which a path template cannot hold"
                        ));
                    }
                    text.push_str(value);
                    match segments.last_mut() {
                        Some(Segment::Text(t)) => t.push_str(value),
                        _ => segments.push(Segment::Text(value.to_string())),
                    }
                }
                Segment::Text(t) => {
                    text.push_str(t);
                    match segments.last_mut() {
                        Some(Segment::Text(prev)) => prev.push_str(t),
                        _ => segments.push(Segment::Text(t.clone())),
                    }
                }
                Segment::Macro(m) => {
                    text.push('[');
                    text.push_str(&macro_text(m));
                    text.push(']');
                    segments.push(Segment::Macro(m.clone()));
                }
            }
        }
        Ok(Template { text, segments })
    }

    /// Whether `put` could be this template after [`Template::with_params`]: the same text with
    /// each `[Parm:Name]` replaced by some text without `[` or `]`.
    pub fn admits(&self, put: &Template) -> bool {
        let mut rest = put.as_str();
        let mut wildcard = false;
        for s in &self.segments {
            let literal = match s {
                Segment::Macro(Macro::Parm(_)) => {
                    wildcard = true;
                    continue;
                }
                Segment::Text(t) => t.clone(),
                Segment::Macro(m) => format!("[{}]", macro_text(m)),
            };
            if wildcard {
                // The parameter's value ends where the next literal starts (values hold no
                // brackets; a literal text without brackets takes its first occurrence).
                let Some(at) = rest.find(&literal) else {
                    return false;
                };
                if rest[..at].contains(['[', ']']) {
                    return false;
                }
                rest = &rest[at + literal.len()..];
                wildcard = false;
            } else {
                let Some(after) = rest.strip_prefix(literal.as_str()) else {
                    return false;
                };
                rest = after;
            }
        }
        if wildcard {
            !rest.contains(['[', ']'])
        } else {
            rest.is_empty()
        }
    }

    /// Whether the template uses `[ErrorCode]` or `[ErrorDescription]` (meaningful only in next
    /// actions).
    pub fn uses_error_macros(&self) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Macro(Macro::ErrorCode | Macro::ErrorDescription)))
    }

    /// `Err` holds the error (strict) or, not strict, the rendering with unknown parameters kept.
    fn expand(&self, ctx: &MacroContext<'_>, strict: bool) -> Result<String, String> {
        let mut unknown = None;
        let (base, ext) = match ctx.orig_name.rfind('.') {
            Some(i) if i > 0 => (&ctx.orig_name[..i], &ctx.orig_name[i + 1..]),
            _ => (ctx.orig_name, ""),
        };
        let t = ctx.time;
        let mut out = String::new();
        for s in &self.segments {
            match s {
                Segment::Text(text) => out.push_str(text),
                Segment::Macro(m) => match m {
                    Macro::OrigName => out.push_str(ctx.orig_name),
                    Macro::OrigBase => out.push_str(base),
                    Macro::OrigExt => out.push_str(ext),
                    Macro::Year4 => out.push_str(&format!("{:04}", t.year())),
                    Macro::Year2 => out.push_str(&format!("{:02}", t.year() % 100)),
                    Macro::Month => out.push_str(&format!("{:02}", t.month())),
                    Macro::Day => out.push_str(&format!("{:02}", t.day())),
                    Macro::Hour => out.push_str(&format!("{:02}", t.hour())),
                    Macro::Minute => out.push_str(&format!("{:02}", t.minute())),
                    Macro::Second => out.push_str(&format!("{:02}", t.second())),
                    Macro::TaskName => out.push_str(ctx.task),
                    Macro::RunId => out.push_str(ctx.run_id),
                    Macro::Parm(name) => match param_value(ctx.params, name) {
                        Some(value) => out.push_str(value),
                        None => {
                            unknown.get_or_insert_with(|| name.clone());
                            out.push_str(&format!("[Parm:{name}]"));
                        }
                    },
                    Macro::Rnd(n) => {
                        let mut rng = rand::thread_rng();
                        out.extend((0..*n).map(|_| rng.sample(rand::distributions::Alphanumeric) as char));
                    }
                    Macro::ErrorCode => out.push_str(&ctx.error.map_or(0, |(code, _)| code).to_string()),
                    Macro::ErrorDescription => out.push_str(ctx.error.map_or("", |(_, why)| why)),
                },
            }
        }
        match unknown {
            Some(name) if strict => {
                let known: Vec<&str> = ctx.params.keys().map(String::as_str).collect();
                Err(format!(
                    "uses parameter [Parm:{name}], which this run does not have (known: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ))
            }
            Some(_) => Err(out),
            None => Ok(out),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the template expands to exactly the original name.
    pub fn is_orig_name(&self) -> bool {
        self.segments == [Segment::Macro(Macro::OrigName)]
    }
}

/// How `m` is written between its brackets.
fn macro_text(m: &Macro) -> String {
    match m {
        Macro::Parm(name) => format!("Parm:{name}"),
        Macro::Rnd(n) => format!("Rnd:{n}"),
        other => {
            let (i, _) = MACROS
                .iter()
                .enumerate()
                .find(|(_, (_, known))| known == other)
                .expect("every macro without an argument is in MACROS");
            MACRO_NAMES[i].to_string()
        }
    }
}

/// `[Parm:Name]` and `[Rnd:n]`: `None` when `name` is no macro with an argument.
fn parse_argument_macro(name: &str) -> Option<Result<Macro, String>> {
    let (head, argument) = name.split_once(':')?;
    if head.eq_ignore_ascii_case("parm") {
        return Some(if crate::is_valid_name(argument) {
            Ok(Macro::Parm(argument.to_string()))
        } else {
            Err(format!(
                "uses [{name}]: a parameter name is 1-64 letters, digits, '-' or '_', e.g. [Parm:Region]"
            ))
        });
    }
    if head.eq_ignore_ascii_case("rnd") {
        return Some(match argument.parse::<usize>() {
            Ok(n) if (1..=MAX_RND).contains(&n) => Ok(Macro::Rnd(n)),
            _ => Err(format!(
                "uses [{name}]: [Rnd:n] takes a count of random characters from 1 to {MAX_RND}, e.g. [Rnd:8]"
            )),
        });
    }
    None
}

impl TryFrom<String> for Template {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
    }
}

impl From<Template> for String {
    fn from(t: Template) -> String {
        t.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn renders_every_macro() {
        let t = Template::parse(
            "[TaskName]/[yyyy]-[mm]-[dd]T[HH][nn][ss]_[yy]_[OrigBase].[OrigExt]_[RunID]_[origname]",
        )
        .expect("valid");
        let ctx = MacroContext {
            orig_name: "report.csv",
            task: "payroll",
            run_id: "r1",
            time: Local
                .with_ymd_and_hms(2026, 3, 4, 5, 6, 7)
                .single()
                .expect("unambiguous"),
            params: &NO_PARAMS,
            error: None,
        };
        assert_eq!(
            t.render(&ctx),
            "payroll/2026-03-04T050607_26_report.csv_r1_report.csv"
        );
    }

    #[test]
    fn unknown_and_unbalanced_macros_are_refused() {
        assert!(Template::parse("[Orig]").unwrap_err().contains("[Orig]"));
        assert!(
            Template::parse("[OrigNam].csv")
                .unwrap_err()
                .contains("did you mean [OrigName]?")
        );
        assert!(Template::parse("a[OrigName").is_err());
        assert!(
            Template::parse("[yyyy-[mm]")
                .unwrap_err()
                .contains("unclosed `[` at \"[yyyy-[mm]\"")
        );
        assert!(Template::parse("a]b").is_err());
        assert!(Template::parse("[OrigName]").expect("valid").is_orig_name());
    }

    fn ctx<'a>(params: &'a BTreeMap<String, String>, error: Option<(u32, &'a str)>) -> MacroContext<'a> {
        MacroContext {
            orig_name: "a.csv",
            task: "t",
            run_id: "r",
            time: Local::now(),
            params,
            error,
        }
    }

    #[test]
    fn parameters_random_text_and_errors_expand() {
        let params = BTreeMap::from([("Region".to_string(), "eu-west".to_string())]);
        let t = Template::parse("[parm:region]_[Parm:Region]_[ErrorCode]:[ErrorDescription]").expect("valid");
        assert_eq!(
            t.render(&ctx(&params, Some((2, "disk full")))),
            "eu-west_eu-west_2:disk full"
        );
        assert_eq!(t.render(&ctx(&params, None)), "eu-west_eu-west_0:");
        assert_eq!(t.param_names().collect::<Vec<_>>(), ["region", "Region"]);
        assert!(t.uses_error_macros());

        let rnd = Template::parse("[Rnd:12]").expect("valid");
        let (a, b) = (rnd.render(&ctx(&params, None)), rnd.render(&ctx(&params, None)));
        assert_eq!(a.len(), 12);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()), "{a}");
        assert_ne!(a, b, "random each time");
    }

    #[test]
    fn unknown_parameters_and_bad_arguments_are_named() {
        let t = Template::parse("[Parm:missing].csv").expect("valid syntax");
        assert_eq!(t.render(&ctx(&NO_PARAMS, None)), "[Parm:missing].csv");
        assert_eq!(
            t.try_render(&ctx(&NO_PARAMS, None)).unwrap_err(),
            "uses parameter [Parm:missing], which this run does not have (known: none)"
        );
        for bad in ["[Rnd:0]", "[Rnd:65]", "[Rnd:x]", "[Parm:]", "[Parm:a.b]"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
        assert!(Template::parse("[Rnd:64]").is_ok());
        assert!(
            Template::parse("[Parms:x]")
                .unwrap_err()
                .contains("unknown macro")
        );
    }

    #[test]
    fn parameters_are_put_into_a_template() {
        let params = BTreeMap::from([("batch".to_string(), "b7".to_string())]);
        let t = Template::parse("[OrigBase]-[Parm:Batch]_[yyyy][Rnd:3].[OrigExt]").expect("valid");
        let put = t.with_params(&params).expect("known");
        assert_eq!(put.as_str(), "[OrigBase]-b7_[yyyy][Rnd:3].[OrigExt]");
        assert_eq!(Template::parse(put.as_str()).expect("reparses"), put);
        let bad = BTreeMap::from([("batch".to_string(), "a]b".to_string())]);
        assert!(t.with_params(&bad).unwrap_err().contains("[Parm:Batch]"));
        assert!(t.with_params(&NO_PARAMS).is_err());
    }
}
