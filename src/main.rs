//! The `registry-gateway` binary: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;
use registry_gateway::cli::{Cli, Command};
use registry_gateway::{app, commands, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { path } => ExitCode::from(commands::check_config(
            &path,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        )),
        Command::Explain {
            config,
            json,
            repository,
        } => ExitCode::from(commands::explain(
            &config,
            &repository,
            json,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        )),
        Command::Audit(args) => ExitCode::from(commands::audit(
            &args,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        )),
        Command::Serve(args) => serve(*args),
    }
}

fn serve(args: registry_gateway::cli::ServeArgs) -> ExitCode {
    if let Err(e) = telemetry::init(args.log_format, &args.log) {
        eprintln!("registry-gateway: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("registry-gateway: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(app::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let text = registry_gateway::commands::with_causes(&e);
            tracing::error!("{text}");
            eprintln!("registry-gateway: {text}");
            ExitCode::from(1)
        }
    }
}
