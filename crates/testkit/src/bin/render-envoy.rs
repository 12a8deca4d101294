//! `render-envoy`: prints a shipped Envoy config with the test harness's substitutions, the same
//! rewrite the end-to-end tests and the benchmark run ([`registry_gateway_testkit::render_envoy_config`]),
//! so a script (`scripts/check-deploy`) validates exactly what the tests run.
//!
//! ```text
//! render-envoy [--registry ADDR] [--gateway ADDR] [--json] CONFIG
//! ```
//!
//! `CONFIG` is a file such as `envoy/envoy.yaml`; `--registry` (default `127.0.0.1:5000`) and
//! `--gateway` (default `127.0.0.1:50051`) are the `registry` and `registry-gateway` clusters'
//! new endpoints; the admin and the listener always go to `127.0.0.1:0`. The result goes to
//! stdout as YAML, or as JSON with `--json`. Exit 0 on success, 1 when the file cannot be
//! rendered (the reason on stderr), 2 on a usage error.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use registry_gateway_testkit::{EnvoyOptions, render_envoy_config};

const USAGE: &str = "usage: render-envoy [--registry ADDR] [--gateway ADDR] [--json] CONFIG";

struct Args {
    config: PathBuf,
    options: EnvoyOptions,
    json: bool,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut options = EnvoyOptions {
        registry_addr: SocketAddr::from(([127, 0, 0, 1], 5000)),
        gateway_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
    };
    let mut json = false;
    let mut config = None;
    while let Some(arg) = args.next() {
        let mut addr = |flag: &str| -> Result<SocketAddr, String> {
            let value = args.next().ok_or(format!("{flag} needs an address"))?;
            value
                .parse()
                .map_err(|e| format!("{flag} {value}: {e} (expected IP:PORT)"))
        };
        match arg.as_str() {
            "--registry" => options.registry_addr = addr("--registry")?,
            "--gateway" => options.gateway_addr = addr("--gateway")?,
            "--json" => json = true,
            "-h" | "--help" => return Err(String::new()),
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            path if config.is_none() => config = Some(PathBuf::from(path)),
            extra => return Err(format!("unexpected argument {extra}")),
        }
    }
    let config = config.ok_or("CONFIG is required")?;
    Ok(Args {
        config,
        options,
        json,
    })
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(problem) => {
            if !problem.is_empty() {
                eprintln!("render-envoy: {problem}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let config = match render_envoy_config(&args.config, &args.options) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("render-envoy: {e}");
            return ExitCode::FAILURE;
        }
    };
    let text = if args.json {
        serde_json::to_string_pretty(&config).map_err(|e| e.to_string())
    } else {
        serde_saphyr::to_string(&config).map_err(|e| e.to_string())
    };
    let text = match text {
        Ok(text) => text,
        Err(e) => {
            eprintln!("render-envoy: serialising the result: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{}", text.trim_end()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("render-envoy: writing stdout: {e}");
            ExitCode::FAILURE
        }
    }
}
