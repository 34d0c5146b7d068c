//! Phone numbers as Zammad wants them: international digits without `+` or `00`,
//! internal extensions unchanged, `anonymous` for a withheld caller.
//!
//! Zammad compares block lists byte for byte and normalises national numbers with a
//! hard-coded German `49`, so the bridge sends one format everywhere (docs/calls.md,
//! "Numbers"; docs/zammad.md, "Numbers").

use crate::config::NumbersConfig;
use regex::Regex;

/// How the site writes numbers: its country code and dialing prefixes.
#[derive(Debug, Clone)]
pub struct NumberPlan {
    country_code: String,
    national_prefix: String,
    international_prefix: String,
    extension: Regex,
}

/// What a caller ID or dialed number turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhoneNumber {
    /// Withheld, empty or `<unknown>`: sent as `anonymous`.
    Anonymous,
    /// An internal extension (matches `extension_pattern`), kept as dialed.
    Extension(String),
    /// International digits without `+` or `00`.
    International(String),
}

impl PhoneNumber {
    pub fn is_extension(&self) -> bool {
        matches!(self, PhoneNumber::Extension(_))
    }

    /// The string Zammad gets.
    pub fn into_zammad(self) -> String {
        match self {
            PhoneNumber::Anonymous => "anonymous".into(),
            PhoneNumber::Extension(s) | PhoneNumber::International(s) => s,
        }
    }
}

impl NumberPlan {
    pub fn new(numbers: &NumbersConfig, extension: Regex) -> Self {
        Self {
            country_code: numbers.country_code.to_string(),
            national_prefix: numbers.national_prefix.to_string(),
            international_prefix: numbers.international_prefix.to_string(),
            extension,
        }
    }

    pub fn is_extension(&self, s: &str) -> bool {
        self.extension.is_match(s)
    }

    /// Classifies and normalises a raw caller ID or dialed number.
    pub fn parse(&self, raw: &str) -> PhoneNumber {
        let raw = raw.trim();
        if is_withheld(raw) {
            return PhoneNumber::Anonymous;
        }
        if self.is_extension(raw) {
            return PhoneNumber::Extension(raw.to_string());
        }
        let plus = raw.starts_with('+');
        // Keep digits, and `*`/`#` for feature codes; drop spaces, dashes, dots, brackets.
        let digits: String = raw
            .chars()
            .filter(|c| c.is_ascii_digit() || *c == '*' || *c == '#')
            .collect();
        if digits.is_empty() {
            // Letters only (a SIP user name such as "alice"): pass through unchanged.
            return PhoneNumber::International(raw.to_string());
        }
        if plus {
            return PhoneNumber::International(digits);
        }
        if let Some(rest) = strip_nonempty(&digits, &self.international_prefix) {
            return PhoneNumber::International(rest.to_string());
        }
        if let Some(rest) = strip_nonempty(&digits, &self.national_prefix) {
            return PhoneNumber::International(format!("{}{}", self.country_code, rest));
        }
        PhoneNumber::International(digits)
    }

    /// `parse` straight to the string Zammad gets.
    pub fn normalise(&self, raw: &str) -> String {
        self.parse(raw).into_zammad()
    }
}

/// `s` without `prefix`, if the prefix is not empty and `s` starts with it.
fn strip_nonempty<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if prefix.is_empty() {
        None
    } else {
        s.strip_prefix(prefix)
    }
}

/// Asterisk's ways of saying "no caller ID".
/// Whether a caller presentation withholds the number. `pres` is Asterisk's presentation
/// as AMI's `CID-CallingPres` (`"32 (Presentation Prohibited, Not Screened)"`) or FastAGI's
/// `agi_callingpres` (`"32"`) show it: its `AST_PRES_RESTRICTION` bits (0x60, in
/// `include/asterisk/callerid.h`) are restricted (0x20), unavailable (0x40) or reserved
/// (0x60), anything but allowed (0x00). `None` when it is not a presentation at all.
pub fn presentation_withholds(pres: &str) -> Option<bool> {
    let code: u32 = pres.split_whitespace().next()?.parse().ok()?;
    Some(code & 0x60 != 0)
}

pub fn is_withheld(raw: &str) -> bool {
    let raw = raw.trim();
    raw.is_empty()
        || raw.eq_ignore_ascii_case("<unknown>")
        || raw.eq_ignore_ascii_case("unknown")
        || raw.eq_ignore_ascii_case("anonymous")
        || raw.eq_ignore_ascii_case("restricted")
        || raw.eq_ignore_ascii_case("withheld")
        || raw.eq_ignore_ascii_case("private")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> NumberPlan {
        NumberPlan::new(
            &NumbersConfig::default(),
            Regex::new("^[0-9]{2,5}$").unwrap(),
        )
    }

    #[track_caller]
    fn check(raw: &str, want: &str) {
        assert_eq!(plan().normalise(raw), want, "input {raw:?}");
    }

    #[test]
    fn normalises_to_international_digits() {
        check("+49 30 1234", "49301234"); // the example of docs/calls.md, "Numbers"
        check("0301234", "49301234"); // national, country_code 49
        check("0044 20 7946 0000", "442079460000"); // international prefix dropped
        check("+1 (555) 555-0100", "15555550100");
        check("+15555550100", "15555550100");
        check("201", "201"); // extension unchanged
        check("49301234", "49301234"); // already international digits
        check("*97", "*97");
    }

    /// docs/configuration.md, "Numbers by country": each row's settings turn its example
    /// into what the row says (`→ DIGITS`, or `stays DIGITS`).
    #[test]
    fn the_documented_settings_by_country_do_what_the_table_says() {
        let doc = include_str!("../../docs/configuration.md");
        let table = doc
            .split("## Numbers by country")
            .nth(1)
            .expect("the section")
            .split("\n## ")
            .next()
            .unwrap();
        let unquote = |cell: &str| cell.trim().trim_matches('`').trim_matches('"').to_string();
        let extensions = Regex::new("^[0-9]{2,5}$").unwrap();
        let mut rows = 0;
        let rows_of_table = table.lines().filter(|l| {
            l.starts_with("| ") && !l.starts_with("| country") && !l.starts_with("| ---")
        });
        for line in rows_of_table {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let (country, example) = (cells[1], cells[5]);
            let numbers = NumbersConfig {
                country_code: unquote(cells[2]).parse().unwrap(),
                national_prefix: unquote(cells[3]).parse().unwrap(),
                international_prefix: unquote(cells[4]).parse().unwrap(),
            };
            let plan = NumberPlan::new(&numbers, extensions.clone());
            let (raw, want) = match example.split_once(" → ") {
                Some((raw, rest)) => (raw, rest.split_whitespace().next().unwrap()),
                None => {
                    let (raw, rest) = example.split_once(" stays ").expect("→ or stays");
                    (raw, rest.split_whitespace().next().unwrap())
                }
            };
            let (raw, want) = (raw.trim_matches('`'), want.trim_matches(['`', ';', ',']));
            assert_eq!(plan.normalise(raw), want, "{country}: {raw}");
            rows += 1;
        }
        assert!(rows >= 15, "{rows} rows");
    }

    #[test]
    fn withheld_callers_become_anonymous() {
        for raw in ["", "<unknown>", "anonymous", "Anonymous", "unknown", "  "] {
            check(raw, "anonymous");
        }
    }

    #[test]
    fn presentations_as_asterisk_shows_them() {
        for (pres, withholds) in [
            ("0 (Presentation Allowed, Not Screened)", Some(false)),
            ("1 (Presentation Allowed, Passed Screen)", Some(false)),
            ("3", Some(false)),
            ("32 (Presentation Prohibited, Not Screened)", Some(true)),
            ("35", Some(true)),
            ("67 (Number Unavailable)", Some(true)),
            ("", None),
            ("Prohibited", None),
        ] {
            assert_eq!(presentation_withholds(pres), withholds, "{pres:?}");
        }
    }

    #[test]
    fn other_country_code_and_empty_prefixes() {
        let p = NumberPlan::new(
            &NumbersConfig {
                country_code: "41".parse().unwrap(),
                national_prefix: "0".parse().unwrap(),
                international_prefix: "00".parse().unwrap(),
            },
            Regex::new("^[0-9]{2,5}$").unwrap(),
        );
        assert_eq!(p.normalise("081 288 63 93"), "41812886393");
        let none = NumberPlan::new(
            &NumbersConfig {
                country_code: "1".parse().unwrap(),
                national_prefix: "".parse().unwrap(),
                international_prefix: "".parse().unwrap(),
            },
            Regex::new("^[0-9]{3}$").unwrap(),
        );
        assert_eq!(none.normalise("5555550100"), "5555550100");
    }
}
