//! `palisadectl policy lint`: policies that do not say what their authors meant.
//!
//! Exit status: 0 no finding at or above `--fail-on`, 1 some, 2 could not lint.

use std::path::{Path, PathBuf};

use palisade_agent::api::Request;
use palisade_policy::lint::{LintReport, Severity, render};

use super::report::{Format, ask, fail, read_dir};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum FailOn {
    Info,
    Warning,
    Error,
    /// Always exit 0 when linting worked.
    Never,
}

#[derive(clap::Args)]
pub struct Args {
    /// Lint a directory of manifests (Namespaces, Pods, Services, NetworkPolicies) instead of
    /// the running agent's state.
    #[arg(long, value_name = "DIR")]
    manifests: Option<PathBuf>,
    #[arg(short, long, value_enum, default_value = "text")]
    output: Format,
    /// Exit 1 when a finding of this severity or above exists.
    #[arg(long, value_enum, default_value = "error")]
    fail_on: FailOn,
}

pub fn run(socket: &Path, a: Args) -> i32 {
    let report: LintReport = match &a.manifests {
        Some(dir) => match read_dir(dir) {
            Ok(f) => f.lint(),
            Err(e) => return fail(&e),
        },
        None => match ask(socket, &Request::Lint) {
            Ok(r) => r,
            Err(e) => return fail(&e),
        },
    };
    match a.output {
        Format::Text => print!("{}", render(&report)),
        Format::Json => match serde_json::to_string_pretty(&report) {
            Ok(j) => println!("{j}"),
            Err(e) => return fail(&format!("encoding the report: {e}")),
        },
    }
    let threshold = match a.fail_on {
        FailOn::Info => Severity::Info,
        FailOn::Warning => Severity::Warning,
        FailOn::Error => Severity::Error,
        FailOn::Never => return 0,
    };
    i32::from(report.at_least(threshold) > 0)
}
