//! A lint report in plain words.

use std::fmt::Write as _;

use super::{LintReport, Severity};

/// The report as text for a terminal: one block per finding, then a summary line and the
/// notes.
pub fn render(r: &LintReport) -> String {
    let mut out = String::new();
    for f in &r.findings {
        let at = if f.path.is_empty() {
            f.object.clone()
        } else {
            format!("{} {}", f.object, f.path)
        };
        let _ = writeln!(out, "{}[{} {}]: {at}", f.severity, f.code, f.check);
        let _ = writeln!(out, "  {}", f.message);
        if let Some(s) = &f.suggestion {
            let _ = writeln!(out, "  suggestion: {s}");
        }
    }
    let count = |s: Severity| r.findings.iter().filter(|f| f.severity == s).count();
    let _ = writeln!(
        out,
        "{} finding{} ({} error, {} warning, {} info) in {} NetworkPolic{}",
        r.findings.len(),
        if r.findings.len() == 1 { "" } else { "s" },
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Info),
        r.policies,
        if r.policies == 1 { "y" } else { "ies" },
    );
    for n in &r.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}
