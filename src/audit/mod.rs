//! `registry-gateway audit`: applies a configuration to the registry as it stands.
//!
//! It walks the catalog (every page), lists every repository's tags with the tag-list code of
//! `serve` (same pagination, deadline and authentication), reads every tagged manifest and
//! measures it with the policy core exactly as a push of those bytes would be measured, and
//! reports every limit the registry's contents break. An index measures nothing itself: each
//! child is read by digest and measured, and a child over the limit is a violation of the tag.
//!
//! - `scan`: the walk, bounded by `--concurrency`.
//! - `retry`: retries with backoff on 429, 5xx, deadlines and lost connections.
//! - `children`: child measurements shared by digest, bounded in memory.
//! - `report`: findings, their order, the table and the JSON document.

mod children;
mod report;
mod retry;
mod scan;

use std::io::Write;
use std::sync::Arc;

pub use self::report::{Finding, Kind, Problem, Report};
use self::scan::{ScanOptions, scan};
use crate::cli::AuditArgs;
use crate::policy::Policy;
use crate::registry::RegistryClient;

/// Exit code: every repository was read and nothing breaks a limit.
pub const EXIT_CLEAN: u8 = 0;
/// Exit code: the audit could not finish: an invalid or unreadable configuration, registry
/// settings that cannot work, an unreadable catalog, or any repository, tag or child manifest
/// that could not be read or measured. Violations found are still printed.
pub const EXIT_INCOMPLETE: u8 = 1;
/// Exit code: the command line is wrong (clap's convention, as for every subcommand).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the audit finished and found violations.
pub const EXIT_VIOLATIONS: u8 = 3;

/// Runs the audit of `policy` with `args` on a runtime of its own, prints the table (or with
/// `--json` exactly one JSON document) to `out`, and returns the exit code. A progress line goes
/// to the process's stderr only when that is a terminal.
pub fn run(policy: Policy, args: &AuditArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let registry = match RegistryClient::new(args.registry.registry_config()) {
        Ok(client) => Arc::new(client),
        Err(e) => {
            let _ = writeln!(
                err,
                "registry-gateway audit: {}",
                crate::commands::with_causes(&e)
            );
            return EXIT_INCOMPLETE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(err, "registry-gateway audit: cannot start the runtime: {e}");
            return EXIT_INCOMPLETE;
        }
    };
    let options = ScanOptions {
        concurrency: args.concurrency,
        catalog_page_size: args.catalog_page_size,
        repositories: args.repository.clone(),
    };
    let report = runtime.block_on(scan(registry, Arc::new(policy), options));
    let text = if args.json {
        report.to_json()
    } else {
        report.to_table()
    };
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        let _ = writeln!(err, "registry-gateway audit: cannot write the output: {e}");
        return EXIT_INCOMPLETE;
    }
    exit_code(&report, err)
}

/// Errors outrank violations: an incomplete audit cannot say that what it did not read is fine.
fn exit_code(report: &Report, err: &mut dyn Write) -> u8 {
    if !report.is_complete() {
        let _ = writeln!(
            err,
            "registry-gateway audit: incomplete: {} errors (listed in the output); {} violations found in what was read",
            report.errors.len(),
            report.violations.len()
        );
        EXIT_INCOMPLETE
    } else if report.violations.is_empty() {
        EXIT_CLEAN
    } else {
        EXIT_VIOLATIONS
    }
}
