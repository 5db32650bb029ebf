//! `lumie-server doctor`: the checks an operator would otherwise type by hand, run through the
//! kube API, one line each (ok / warning / failure, with the fix).
//!
//! A run is two steps: [`facts::gather`] reads everything once into a plain [`facts::Facts`]
//! (the only I/O, with [`probe`]'s network probes), and [`judge::judge`] turns it into the
//! [`Report`], pure, so the verdicts are unit tables rather than cluster tests.
//!
//! - this module: the flags ([`DoctorArgs`] → [`DoctorOptions`]), the client, [`run`];
//! - the verdicts by topic: [`control_plane`] (server Deployment, settings, Secrets),
//!   [`reach`] (database, OIDC issuer), [`webhook`] (configurations, caBundle, the dry-run
//!   probe), [`overlay`] (the lumie-dev ServiceAccount, RoleBinding and Service),
//!   [`capacity`] (pending pods, room on the workers), [`policy`] (the dind exception),
//!   [`leader`] (the replicas and the leader Lease, with PostgreSQL);
//!   [`checks`]: the check ids they share; [`certs`]: caBundle against the serving certificate;
//! - [`report`]: the [`Report`], its text and JSON, and the exit code.
//!
//! Reading the cluster never stops the run: a read that fails becomes that check's line.

pub mod capacity;
pub mod certs;
pub mod checks;
pub mod control_plane;
pub mod facts;
#[cfg(test)]
mod fixtures;
pub mod judge;
pub mod leader;
pub mod overlay;
pub mod policy;
pub mod probe;
pub mod reach;
pub mod report;
pub mod webhook;

use std::path::PathBuf;
use std::time::Duration;

use kube::Client;
use lumie_contract::workspace;

use crate::error::StartupError;
use checks::id;
pub use report::{Check, OutputFormat, Report, Status};

/// Flags of `lumie-server doctor`; each has an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// Namespace of the control plane (server, webhook, their Secrets).
    #[arg(long, env = "LUMIE_DOCTOR_NAMESPACE", default_value = workspace::CONTROL_PLANE_NAMESPACE)]
    pub namespace: String,
    /// Namespace the workspace pods live in.
    #[arg(long, env = "LUMIE_WORKSPACE_NAMESPACE", default_value = workspace::NAMESPACE)]
    pub workspace_namespace: String,
    /// Name of the server Deployment (the chart's `server.name`).
    #[arg(long, env = "LUMIE_DOCTOR_SERVER_DEPLOYMENT", default_value = "coder")]
    pub server_deployment: String,
    /// Name of the webhook Deployment and of both webhook configurations (`webhook.name`).
    #[arg(
        long,
        env = "LUMIE_DOCTOR_WEBHOOK_NAME",
        default_value = "lumie-webhook"
    )]
    pub webhook_name: String,
    /// Kubeconfig file; unset: in-cluster ServiceAccount, then `~/.kube/config`.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// `text` (one line per check) or `json`.
    #[arg(long, env = "LUMIE_DOCTOR_OUTPUT", value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// How long each network probe (database, OIDC, DNS) may take, in seconds.
    #[arg(long, env = "LUMIE_DOCTOR_TIMEOUT_SECONDS", default_value_t = 5)]
    pub timeout_seconds: u64,
}

/// What the doctor runs with; tests build it directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoctorOptions {
    /// Control plane namespace.
    pub namespace: String,
    /// Workspace namespace.
    pub workspace_namespace: String,
    /// Server Deployment name.
    pub server_deployment: String,
    /// Webhook Deployment / configuration name.
    pub webhook_name: String,
    /// Kubeconfig file, if not in-cluster or the default.
    pub kubeconfig: Option<PathBuf>,
    /// Output format (used by the caller that prints).
    pub output: OutputFormat,
    /// Timeout of each network probe.
    pub timeout: Duration,
}

impl Default for DoctorOptions {
    fn default() -> Self {
        DoctorOptions {
            namespace: workspace::CONTROL_PLANE_NAMESPACE.into(),
            workspace_namespace: workspace::NAMESPACE.into(),
            server_deployment: "coder".into(),
            webhook_name: "lumie-webhook".into(),
            kubeconfig: None,
            output: OutputFormat::Text,
            timeout: Duration::from_secs(5),
        }
    }
}

impl From<DoctorArgs> for DoctorOptions {
    fn from(a: DoctorArgs) -> Self {
        DoctorOptions {
            namespace: a.namespace,
            workspace_namespace: a.workspace_namespace,
            server_deployment: a.server_deployment,
            webhook_name: a.webhook_name,
            kubeconfig: a.kubeconfig.filter(|p| !p.as_os_str().is_empty()),
            output: a.output,
            timeout: Duration::from_secs(a.timeout_seconds.max(1)),
        }
    }
}

/// The kube client: the kubeconfig file when given (a single path), else in-cluster or the
/// default kubeconfig.
async fn client(options: &DoctorOptions) -> Result<Client, StartupError> {
    let fail = |e: String| {
        StartupError::Kube(format!(
            "no kube API configuration: {e} — set KUBECONFIG (or --kubeconfig), or run in-cluster"
        ))
    };
    let config = match &options.kubeconfig {
        Some(path) if !path.to_string_lossy().contains(':') => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| fail(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| fail(format!("{}: {e}", path.display())))?
        }
        _ => kube::Config::infer()
            .await
            .map_err(|e| fail(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| fail(e.to_string()))
}

/// Runs every check with a client built from the options.
pub async fn run(options: DoctorOptions) -> Result<Report, StartupError> {
    let client = client(&options).await?;
    run_with_client(client, &options).await
}

/// What `main` calls for `lumie-server doctor`: prints the report in the chosen format and
/// returns the exit code (1 when a check failed). With no kube API at all the report is one
/// failing `kube-api` line, so `--output json` consumers still get a document.
pub async fn run_cli(args: DoctorArgs) -> std::process::ExitCode {
    let options = DoctorOptions::from(args);
    let report = match run(options.clone()).await {
        Ok(report) => report,
        Err(e) => unreachable_report(&e),
    };
    print!("{}", report.render(options.output));
    std::process::ExitCode::from(report.exit_code())
}

/// The report when the kube API cannot be used at all.
pub fn unreachable_report(e: &StartupError) -> Report {
    Report {
        checks: vec![Check::failure(
            id::KUBE_API,
            e.to_string(),
            "point KUBECONFIG (or --kubeconfig) at the cluster, or run the doctor in-cluster",
        )],
    }
}

/// Runs every check against `client`: gather the facts, then judge them.
pub async fn run_with_client(
    client: Client,
    options: &DoctorOptions,
) -> Result<Report, StartupError> {
    let facts = facts::gather(&client, options).await?;
    Ok(judge::judge(options, &facts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: DoctorArgs,
    }

    #[test]
    fn every_flag_has_an_env_var_and_the_defaults_match_the_chart() {
        let cmd = <Wrapper as clap::CommandFactory>::command();
        for arg in cmd.get_arguments() {
            if arg.get_id() == "help" {
                continue;
            }
            assert!(arg.get_env().is_some(), "--{} has no env var", arg.get_id());
        }
        let w = Wrapper::try_parse_from(["doctor"]).unwrap();
        let mut o = DoctorOptions::from(w.args);
        o.kubeconfig = None; // KUBECONFIG of whoever runs the tests
        let want = DoctorOptions::default();
        assert_eq!(o.namespace, want.namespace);
        assert_eq!(o.server_deployment, "coder");
        assert_eq!(o.webhook_name, "lumie-webhook");
        assert_eq!(o.output, OutputFormat::Text);
        assert_eq!(o.timeout, Duration::from_secs(5));
        let w =
            Wrapper::try_parse_from(["doctor", "--output", "json", "--namespace", "x"]).unwrap();
        let o = DoctorOptions::from(w.args);
        assert_eq!(o.output, OutputFormat::Json);
        assert_eq!(o.namespace, "x");
    }

    /// The wiring main.rs uses: `Doctor(DoctorArgs)` as a subcommand next to the server's own
    /// flattened flags (one of which shares `LUMIE_WORKSPACE_NAMESPACE`).
    #[test]
    fn doctor_args_work_as_a_subcommand_of_the_server_cli() {
        #[derive(Parser)]
        struct Top {
            #[command(subcommand)]
            command: Option<Sub>,
            #[arg(long, env = "LUMIE_WORKSPACE_NAMESPACE", default_value = "lumie-dev")]
            workspace_namespace: String,
        }
        #[derive(clap::Subcommand)]
        enum Sub {
            Doctor(DoctorArgs),
        }
        <Top as clap::CommandFactory>::command().debug_assert();
        let top = Top::try_parse_from(["lumie-server", "doctor", "--output", "json"]).unwrap();
        assert_eq!(top.workspace_namespace, "lumie-dev");
        let Some(Sub::Doctor(args)) = top.command else {
            panic!("doctor subcommand")
        };
        assert_eq!(args.output, OutputFormat::Json);
    }

    #[test]
    fn no_kube_api_is_one_failing_line() {
        let r = unreachable_report(&StartupError::Kube("kube API unreachable: refused".into()));
        assert_eq!(r.exit_code(), 1);
        let v: serde_json::Value = serde_json::from_str(&r.render_json()).unwrap();
        assert_eq!(v["checks"][0]["id"], "kube-api");
        assert!(
            r.render_text()
                .starts_with("failure  kube-api  kubernetes: kube API unreachable")
        );
    }
}
