//! `lumie-server`: parses the configuration and runs the control plane.
use clap::Parser;
use lumie_server::config::{Cli, Command, Config};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.serve).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, naming the setting and what to check.
            eprintln!("lumie-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: lumie_server::config::ServeArgs) -> anyhow::Result<()> {
    let config = Config::try_from(args)?;
    let db = lumie_server::db::Db::connect(&config.database).await?;
    let client = lumie_server::preflight::kube_client().await?;
    lumie_server::preflight::check_kube(&client, &config.namespace).await?;
    drop(db);
    Ok(())
}
