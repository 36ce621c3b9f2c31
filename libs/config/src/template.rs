//! File name and folder templates with macros: `[OrigName]`, `[OrigBase]`, `[OrigExt]`,
//! `[yyyy]`, `[yy]`, `[mm]` (month), `[dd]`, `[HH]`, `[nn]` (minute), `[ss]`, `[TaskName]`,
//! `[RunID]`. Macro names are case-insensitive except `[mm]`/`[MM]`-style ambiguity, which Ferry
//! avoids by naming minutes `[nn]` as the reference product does.

use chrono::{DateTime, Datelike, Local, Timelike};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

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
];

/// The macro names as the documentation writes them (matching is case-insensitive).
const MACRO_NAMES: &[&str] = &[
    "OrigName", "OrigBase", "OrigExt", "yyyy", "yy", "mm", "dd", "HH", "nn", "ss", "TaskName", "RunID",
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
            let found = MACROS
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, m)| *m)
                .ok_or_else(|| {
                    let guess = crate::model::closest(name, MACRO_NAMES.iter().copied())
                        .map(|g| format!("did you mean [{g}]? "))
                        .unwrap_or_default();
                    format!(
                        "uses unknown macro [{name}]; {guess}known: [{}]",
                        MACRO_NAMES.join("] [")
                    )
                })?;
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

    pub fn render(&self, ctx: &MacroContext<'_>) -> String {
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
                },
            }
        }
        out
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the template expands to exactly the original name.
    pub fn is_orig_name(&self) -> bool {
        self.segments == [Segment::Macro(Macro::OrigName)]
    }
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
}
