//! File masks: `;`-separated lists of patterns with `*` (any run of characters) and `?` (one
//! character), matched case-insensitively against a file's name (not its folder), as MFT
//! administrators know them from Windows. `*.*` matches every name, including names without a dot.

use serde::{Deserialize, Serialize};

/// A validated mask list. Serializes as the text the operator wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MaskList {
    text: String,
    patterns: Vec<Vec<char>>,
}

impl MaskList {
    /// Parse `*.csv;report?.txt`. Errors say what is wrong with which item.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Err("is empty; write at least one mask, e.g. *.* for every file".to_string());
        }
        let mut patterns = Vec::new();
        for (i, item) in text.split(';').enumerate() {
            let item = item.trim();
            if item.is_empty() {
                return Err(format!(
                    "has an empty mask at position {}; separate masks with a single ';'",
                    i + 1
                ));
            }
            if let Some(c) = item.chars().find(|c| matches!(c, '/' | '\\')) {
                return Err(format!(
                    "mask {item:?} contains {c:?}: a mask matches file names, not folders; \
                     put the folder in `folder` (and set `subdirectories` to look below it)"
                ));
            }
            if item.contains('|') {
                return Err(format!(
                    "mask {item:?} contains '|'; separate masks with ';', e.g. *.csv;*.txt"
                ));
            }
            if let Some(c) = item
                .chars()
                .find(|c| matches!(c, '[' | ']' | '<' | '>' | '"') || c.is_control())
            {
                return Err(format!(
                    "mask {item:?} contains {c:?}; masks allow only `*` and `?` as wildcards"
                ));
            }
            let pattern = if item == "*.*" {
                vec!['*']
            } else {
                item.chars().flat_map(char::to_lowercase).collect()
            };
            patterns.push(pattern);
        }
        Ok(Self {
            text: text.to_string(),
            patterns,
        })
    }

    /// Whether any mask in the list matches `name` (a file name without its folder).
    pub fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().flat_map(char::to_lowercase).collect();
        self.patterns.iter().any(|p| glob(p, &name))
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl TryFrom<String> for MaskList {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
    }
}

impl From<MaskList> for String {
    fn from(m: MaskList) -> String {
        m.text
    }
}

/// Iterative wildcard match with single-star backtracking: linear in practice, no recursion.
fn glob(pattern: &[char], name: &[char]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, n));
            p += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(text: &str, name: &str) -> bool {
        MaskList::parse(text).expect("valid mask").matches(name)
    }

    #[test]
    fn wildcards_and_lists() {
        assert!(m("*.csv", "a.csv"));
        assert!(m("*.csv", "A.CSV"), "case-insensitive");
        assert!(!m("*.csv", "a.csv.tmp"));
        assert!(m("*.csv;report?.txt", "report7.txt"));
        assert!(!m("report?.txt", "report10.txt"));
        assert!(m("*.*", "README"), "*.* matches names without a dot");
        assert!(m("*", ""));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy"));
        assert!(m(" *.txt ; *.csv", "x.csv"), "items are trimmed");
    }

    #[test]
    fn bad_masks_are_named() {
        assert!(
            MaskList::parse("*.csv;;*.txt")
                .unwrap_err()
                .contains("position 2")
        );
        assert!(MaskList::parse("in/*.csv").unwrap_err().contains("in/*.csv"));
        assert!(MaskList::parse("[ab].txt").is_err());
        assert!(MaskList::parse("").unwrap_err().contains("is empty"));
        assert!(MaskList::parse(" ; ").unwrap_err().contains("position 1"));
    }
}
