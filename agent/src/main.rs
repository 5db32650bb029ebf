//! `lumie-agent`: parses the configuration, sets up logging and a single-threaded runtime (the
//! agent is small and mostly idle), and runs the agent until SIGTERM or SIGINT.

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use lumie_agent::Cli;
use tokio::signal::unix::{SignalKind, signal};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = cli.into_config()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(2)
        .build()
        .context("starting the runtime")?;
    let state = runtime.block_on(async move {
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let stop = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
                _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
            }
        };
        lumie_agent::run(config, stop).await.context("lumie-agent")
    })?;
    tracing::info!(lifecycle = state.as_str(), "stopped");
    Ok(())
}
