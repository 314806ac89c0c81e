//! `netward lint`: the pitfalls of the policies, plus what was invalid in the manifests.
//! Exit 1 when there is anything to fix.
use std::process::ExitCode;

use serde::Serialize;

use super::common::{self, Input, Output};
use super::EXIT_DENIED;
use crate::lint::{self, Finding};
use crate::source::SourceError;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub input: Input,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Serialize)]
struct Json<'a> {
    findings: &'a [Finding],
    /// Problems found while reading the manifests (invalid objects).
    errors: &'a [SourceError],
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Invalid policies are findings of their own: do not print them twice.
    let loaded = common::load_reporting(&args.input, false)?;
    let findings = lint::lint(&loaded.cluster);
    match args.output {
        Output::Json => common::print_json(&Json {
            findings: &findings,
            errors: &loaded.errors,
        })?,
        Output::Table => common::emit(&table(&findings))?,
    }
    Ok(if findings.is_empty() && loaded.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DENIED)
    })
}

/// `warning[code] object field` then the message and the fix, indented; a count at the end.
pub fn table(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        let severity = serde_json::to_value(f.severity)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let field = if f.field.is_empty() {
            String::new()
        } else {
            format!(" {}", f.field)
        };
        out.push_str(&format!(
            "{severity}[{}] {}{field}\n  {}\n  fix: {}\n\n",
            f.code, f.object, f.message, f.fix
        ));
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == lint::Severity::Error)
        .count();
    out.push_str(&match findings.len() {
        0 => "no findings\n".to_string(),
        n => format!(
            "{n} finding{} ({errors} error{}, {} warning{})\n",
            if n == 1 { "" } else { "s" },
            if errors == 1 { "" } else { "s" },
            n - errors,
            if n - errors == 1 { "" } else { "s" }
        ),
    });
    out
}
