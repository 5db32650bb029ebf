//! `lumie`: parses the command line into a [`lumie_cli::Config`], runs the command on a small
//! runtime, and turns the result into the exit status (the remote command's for `lumie ssh`,
//! 1 with the error on stderr otherwise).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = lumie_cli::Cli::parse();
    let xdg = std::env::var("XDG_CONFIG_HOME").ok();
    let home = std::env::var("HOME").ok();
    let config = match cli.into_config(xdg.as_deref(), home.as_deref()) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&lumie_cli::Error::io("starting the runtime")(e)),
    };
    let result = runtime.block_on(lumie_cli::run(config));
    // Standard input may still be read by a blocking thread (ssh); do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(&e),
    }
}

fn fail(e: &lumie_cli::Error) -> ExitCode {
    eprintln!("lumie: {e}");
    ExitCode::FAILURE
}
