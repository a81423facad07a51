//! One `domainNames` entry: validation (the CRD's pattern, and DNS's length limits) and
//! matching (the API's definition).

use std::fmt;

/// `domainNames` may list at most this many entries per peer (the CRD's `MaxItems`).
pub const MAX_DOMAIN_NAMES: usize = 25;
/// A DNS name is at most 253 characters in text form without the trailing dot (RFC 1035's
/// 255 octets on the wire); a label at most 63.
pub const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// A validated `domainNames` entry, kept lower-case and without the trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainPattern {
    /// `*.suffix`: matches names with one or more labels before `suffix`.
    wildcard: bool,
    /// The exact name, or the suffix after `*.`.
    name: String,
}

impl DomainPattern {
    /// Parses an entry as the CRD's pattern accepts it:
    /// `^(\*\.)?([a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.)+[a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.?$`
    /// (at least two labels; `*` only as the whole first label), plus DNS's limits (63 per
    /// label, 253 in all), which the CRD does not check but no resolver would answer past.
    /// The error says what is wrong, for a message that also names the field and value.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (wildcard, rest) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let rest = rest.strip_suffix('.').unwrap_or(rest);
        if rest.is_empty() {
            return Err("is not a domain name".into());
        }
        if rest.len() > MAX_NAME_LEN {
            return Err(format!(
                "is {} characters long; a domain name has at most {MAX_NAME_LEN}",
                rest.len()
            ));
        }
        let labels: Vec<&str> = rest.split('.').collect();
        if labels.len() < 2 {
            return Err(
                "needs at least two labels (e.g. example.com); a single label or a \
                        top-level domain alone is not allowed"
                    .into(),
            );
        }
        for label in &labels {
            check_label(label)?;
        }
        Ok(DomainPattern {
            wildcard,
            name: rest.to_ascii_lowercase(),
        })
    }

    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// The exact name, or for `*.suffix` the suffix: lower-case, no trailing dot.
    pub fn suffix(&self) -> &str {
        &self.name
    }

    /// Whether `name` (as a resolver returns it: any case, with or without the trailing dot)
    /// is matched: equal for an exact entry; for `*.suffix`, one or more whole labels followed
    /// by `.suffix` (never `suffix` itself, never a partial label such as `my-suffix`).
    pub fn matches(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        if !self.wildcard {
            return name.eq_ignore_ascii_case(&self.name);
        }
        // `x.suffix`: at least one character and a dot before the suffix.
        let Some(split) = name.len().checked_sub(self.name.len() + 1) else {
            return false;
        };
        split > 0
            && name.is_char_boundary(split)
            && name.as_bytes()[split] == b'.'
            && name[split + 1..].eq_ignore_ascii_case(&self.name)
            && name[..split].split('.').all(|l| !l.is_empty())
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*.{}", self.name)
        } else {
            f.write_str(&self.name)
        }
    }
}

fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("has an empty label (two dots in a row, or a leading dot)".into());
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(format!(
            "has a label of {} characters ({label:?}); a label has at most {MAX_LABEL_LEN}",
            label.len()
        ));
    }
    if label == "*" {
        return Err("may use `*` only as the whole first label (`*.example.com`)".into());
    }
    let bytes = label.as_bytes();
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "has {c:?} in label {label:?} (letters, digits, '-' and '_' only; `*` only as \
             `*.` at the start)"
        ));
    }
    if !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
        return Err(format!(
            "has label {label:?}, which must begin and end with a letter or digit"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> DomainPattern {
        DomainPattern::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn the_api_examples_match_as_documented() {
        let k = p("kubernetes.io");
        assert!(k.matches("kubernetes.io"));
        for other in [
            "www.kubernetes.io",
            "blog.kubernetes.io",
            "my-kubernetes.io",
            "wikipedia.org",
        ] {
            assert!(!k.matches(other), "{other}");
        }
        let b = p("blog.kubernetes.io");
        assert!(b.matches("blog.kubernetes.io"));
        assert!(!b.matches("www.kubernetes.io") && !b.matches("kubernetes.io"));
        let w = p("*.kubernetes.io");
        for yes in [
            "www.kubernetes.io",
            "blog.kubernetes.io",
            "latest.blog.kubernetes.io",
        ] {
            assert!(w.matches(yes), "{yes}");
        }
        for no in [
            "kubernetes.io",
            "wikipedia.org",
            "my-kubernetes.io",
            ".kubernetes.io",
        ] {
            assert!(!w.matches(no), "{no}");
        }
    }

    #[test]
    fn case_and_the_trailing_dot_do_not_matter_on_either_side() {
        let e = p("API.Example.COM.");
        assert_eq!(e.to_string(), "api.example.com");
        for yes in ["api.example.com", "API.EXAMPLE.COM.", "Api.Example.Com"] {
            assert!(e.matches(yes), "{yes}");
        }
        let w = p("*.CDN.example.com");
        assert!(w.matches("a.b.cdn.EXAMPLE.com."));
        assert!(!w.matches("cdn.example.com."));
        assert!(
            !w.matches("a..cdn.example.com"),
            "an empty label is no label"
        );
    }

    #[test]
    fn entries_the_crd_rejects_are_rejected_with_the_reason() {
        for (bad, why) in [
            ("", "not a domain name"),
            ("com", "at least two labels"),
            ("*.com", "at least two labels"),
            ("*", "at least two labels"),
            ("*.", "not a domain name"),
            ("a.*.example.com", "only as the whole first label"),
            ("*example.com", "'*'"),
            ("-a.example.com", "begin and end"),
            ("a-.example.com", "begin and end"),
            ("a..example.com", "empty label"),
            ("exa mple.com", "' '"),
            ("ex\u{e4}mple.com", "'\u{e4}'"),
            ("example.com..", "empty label"),
        ] {
            let e = DomainPattern::parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(
            DomainPattern::parse(&long_label)
                .unwrap_err()
                .contains("at most 63")
        );
        let long_name = format!("{}com", "abcdefghi.".repeat(26));
        assert!(
            DomainPattern::parse(&long_name)
                .unwrap_err()
                .contains("at most 253")
        );
        // Underscores are allowed inside labels (service records), as the CRD's pattern says.
        assert!(DomainPattern::parse("_http._tcp.example.com").is_err());
        assert!(DomainPattern::parse("a_b.example.com").is_ok());
    }

    #[test]
    fn a_wildcard_never_matches_across_a_partial_label() {
        let w = p("*.example.com");
        assert!(!w.matches("badexample.com"));
        assert!(!w.matches("xexample.com"));
        assert!(w.matches("x.example.com"));
        // Non-ASCII input never panics (byte offsets that are not char boundaries).
        assert!(!w.matches("\u{e4}\u{e4}example.com"));
        assert!(!w.matches("é.example.co"));
    }
}
