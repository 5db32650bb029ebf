//! `lumie-webhook`: parse the command line, set up logging, call the library.
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use lumie_webhook::Error;
use lumie_webhook::cli::{CertsCommand, Cli, Command, LogFormat, load_policies, run_review};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lumie-webhook: {e:#}");
            // Unreadable input to `review` is exit 2; everything else that fails is exit 1.
            match e.downcast_ref::<Error>() {
                Some(Error::BadRequest(_)) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            let client = match args.policy {
                Some(_) => None,
                None => Some(
                    kube::Client::try_default()
                        .await
                        .context("connecting to Kubernetes (in-cluster or KUBECONFIG)")?,
                ),
            };
            let server = lumie_webhook::server::start(args.into_config(client)).await?;
            shutdown_signal().await;
            tracing::info!("shutting down");
            server.shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Review(args) => {
            let policies = load_policies(args.policy.as_deref())?;
            run_review(
                &policies,
                &args.identities.identities(),
                args.endpoint,
                &mut std::io::stdin().lock(),
                &mut std::io::stdout().lock(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(args) => {
            let policies = load_policies(args.policy.as_deref())?;
            let all_allowed = lumie_webhook::check::run(
                &policies,
                &args.config(),
                &mut std::io::stdout().lock(),
            )?;
            Ok(if all_allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Certs(CertsCommand::Generate(a)) => {
            let files = lumie_webhook::certs::generate_files(
                &a.service,
                &a.namespace,
                &a.ip,
                a.days,
                &a.out,
            )?;
            println!(
                "wrote {}, {}, {}, {}",
                files.ca_cert.display(),
                files.tls_cert.display(),
                files.tls_key.display(),
                files.ca_bundle.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
