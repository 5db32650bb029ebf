//! Command line: clap definitions (every flag has an environment variable) turned into the
//! plain config structs the library runs on, and the offline `review` command.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::check::CheckConfig;
use crate::error::{Error, Result};
use crate::isolation::{DEFAULT_ADMIN_GROUP, Identities};
use crate::policy::PolicySet;
use crate::review::{Endpoint, MAX_BODY_BYTES, Reviewer};
use crate::server::{PolicySource, ServeConfig};

/// `--version`: the crate version, the git revision ([`lumie_build_info`]) and the upstream
/// release whose Pod Security baseline the rules follow
/// ([`crate::validate::BASELINE_KUBERNETES_RELEASE`]).
pub fn version() -> &'static str {
    static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "{} (rev {}; Pod Security baseline of Kubernetes {}, plus lumie-coder's stricter \
             rules: see webhook/README.md)",
            env!("CARGO_PKG_VERSION"),
            lumie_build_info::REVISION,
            crate::baseline_kubernetes_release!(),
        )
    });
    &VERSION
}

/// lumie-webhook: admission webhook that injects and enforces the workspace pod contract.
#[derive(Debug, Parser)]
#[command(version = version(), about)]
pub struct Cli {
    /// Log format.
    #[arg(long, env = "LUMIE_WEBHOOK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format (logs go to stderr).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve /mutate and /validate over HTTPS, health and metrics over HTTP.
    Serve(ServeArgs),
    /// Answer one AdmissionReview from stdin on stdout, exactly as the endpoint would.
    Review(ReviewArgs),
    /// Judge pod manifests offline; exit 1 if any pod is denied.
    Check(CheckArgs),
    /// TLS material for the webhook.
    #[command(subcommand)]
    Certs(CertsCommand),
}

/// `serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// HTTPS address for /mutate and /validate.
    #[arg(long, env = "LUMIE_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Plain-HTTP address for /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "LUMIE_WEBHOOK_HEALTH_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub health_listen: SocketAddr,
    /// Serving certificate (PEM); reloaded when the file changes.
    #[arg(
        long,
        env = "LUMIE_WEBHOOK_TLS_CERT",
        default_value = "/etc/lumie-webhook/tls/tls.crt"
    )]
    pub tls_cert: PathBuf,
    /// Serving key (PEM); reloaded when the file changes.
    #[arg(
        long,
        env = "LUMIE_WEBHOOK_TLS_KEY",
        default_value = "/etc/lumie-webhook/tls/tls.key"
    )]
    pub tls_key: PathBuf,
    /// Use the policies in this file instead of watching WorkspacePolicy objects (no cluster needed).
    #[arg(long, env = "LUMIE_WEBHOOK_POLICY_FILE")]
    pub policy: Option<PathBuf>,
    /// Seconds between checks of the certificate files.
    #[arg(long, env = "LUMIE_WEBHOOK_CERT_POLL_SECONDS", default_value_t = 1)]
    pub cert_poll_seconds: u64,
    /// Who the control plane and the admins are.
    #[command(flatten)]
    pub identities: IdentityArgs,
}

/// Who the control plane and the admins are (workspace isolation).
#[derive(Debug, Args)]
pub struct IdentityArgs {
    /// Usernames of the control plane, comma-separated: only they create workspace pods
    /// (the server's ServiceAccount, `system:serviceaccount:<namespace>:<server name>`).
    #[arg(
        long,
        env = "LUMIE_WEBHOOK_CONTROL_PLANE_USERS",
        value_delimiter = ',',
        default_value = lumie_contract::policy::CONTROL_PLANE_USER
    )]
    pub control_plane_user: Vec<String>,
    /// Groups allowed to exec, attach and port-forward into any workspace pod, comma-separated.
    #[arg(
        long,
        env = "LUMIE_WEBHOOK_ADMIN_GROUPS",
        value_delimiter = ',',
        default_value = DEFAULT_ADMIN_GROUP
    )]
    pub admin_group: Vec<String>,
}

impl IdentityArgs {
    /// The identities, blanks dropped.
    pub fn identities(&self) -> Identities {
        let clean = |v: &[String]| {
            v.iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        Identities {
            control_plane: clean(&self.control_plane_user),
            admin_groups: clean(&self.admin_group),
        }
    }
}

/// `review` flags.
#[derive(Debug, Args)]
pub struct ReviewArgs {
    /// Which endpoint to answer as.
    #[arg(long, env = "LUMIE_WEBHOOK_REVIEW_ENDPOINT", value_parser = parse_endpoint)]
    pub endpoint: Endpoint,
    /// Policy file; the built-in default when absent.
    #[arg(long, env = "LUMIE_WEBHOOK_POLICY_FILE")]
    pub policy: Option<PathBuf>,
    /// Who the control plane and the admins are.
    #[command(flatten)]
    pub identities: IdentityArgs,
}

fn parse_endpoint(s: &str) -> std::result::Result<Endpoint, String> {
    s.parse()
}

/// `check` flags.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Policy file; the built-in default when absent.
    #[arg(long, env = "LUMIE_WEBHOOK_POLICY_FILE")]
    pub policy: Option<PathBuf>,
    /// The user the pods are created as (the privileged exception depends on it).
    #[arg(
        long,
        env = "LUMIE_WEBHOOK_CHECK_USER",
        default_value = "system:serviceaccount:coder:coder"
    )]
    pub user: String,
    /// The user's groups, comma-separated.
    #[arg(long, env = "LUMIE_WEBHOOK_CHECK_GROUPS", value_delimiter = ',')]
    pub groups: Vec<String>,
    /// Namespace for pods that name none.
    #[arg(long, env = "LUMIE_WEBHOOK_CHECK_NAMESPACE", default_value = lumie_contract::workspace::NAMESPACE)]
    pub namespace: String,
    /// Pod manifests, YAML or JSON, multi-document.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// `certs` subcommands.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Write ca.crt, tls.crt, tls.key and ca-bundle.b64 for the webhook Service.
    Generate(CertsArgs),
}

/// `certs generate` flags.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// The webhook's Service name.
    #[arg(long, env = "LUMIE_WEBHOOK_SERVICE", default_value = "lumie-webhook")]
    pub service: String,
    /// The webhook's namespace.
    #[arg(long, env = "LUMIE_WEBHOOK_NAMESPACE", default_value = lumie_contract::workspace::CONTROL_PLANE_NAMESPACE)]
    pub namespace: String,
    /// Output directory.
    #[arg(long, env = "LUMIE_WEBHOOK_CERTS_OUT")]
    pub out: PathBuf,
    /// Extra IP addresses for the serving certificate, comma-separated.
    #[arg(long, env = "LUMIE_WEBHOOK_CERT_IPS", value_delimiter = ',')]
    pub ip: Vec<IpAddr>,
    /// Validity in days.
    #[arg(long, env = "LUMIE_WEBHOOK_CERT_DAYS", default_value_t = 365)]
    pub days: i64,
}

impl ServeArgs {
    /// The serve config; `client` is used when no policy file is given.
    pub fn into_config(self, client: Option<kube::Client>) -> ServeConfig {
        let mut config =
            ServeConfig::new(self.listen, self.health_listen, self.tls_cert, self.tls_key);
        config.cert_poll = std::time::Duration::from_secs(self.cert_poll_seconds.max(1));
        config.identities = self.identities.identities();
        config.policy = match (self.policy, client) {
            (Some(path), _) => PolicySource::File(path),
            (None, Some(client)) => PolicySource::Watch(client),
            (None, None) => PolicySource::Builtin,
        };
        config
    }
}

impl CheckArgs {
    /// The check config.
    pub fn config(&self) -> CheckConfig {
        CheckConfig {
            files: self.files.clone(),
            user: self.user.clone(),
            groups: self.groups.clone(),
            default_namespace: self.namespace.clone(),
        }
    }
}

/// The policies from `--policy`, or the built-in default.
pub fn load_policies(path: Option<&Path>) -> Result<PolicySet> {
    match path {
        Some(p) => crate::policy_file::load(p),
        None => Ok(PolicySet::builtin()),
    }
}

/// `review`: one AdmissionReview from `input` to `output`. An unreadable review is
/// [`Error::BadRequest`] (exit 2); any readable one is answered (exit 0).
pub fn run_review(
    policies: &PolicySet,
    identities: &Identities,
    endpoint: Endpoint,
    input: &mut dyn Read,
    output: &mut dyn Write,
) -> Result<()> {
    let mut body = Vec::new();
    input
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .map_err(Error::io("<stdin>"))?;
    let reviewed = Reviewer {
        policies,
        identities,
        now: None,
    }
    .review(endpoint, &body)?;
    output
        .write_all(&reviewed.body)
        .and_then(|()| output.write_all(b"\n"))
        .map_err(Error::io("<stdout>"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_has_an_env_var() {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !arg.is_positional() && !builtin && arg.get_env().is_none() {
                    missing.push(format!("{} --{}", cmd.get_name(), arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), &mut missing);
        assert!(missing.is_empty(), "flags without env: {missing:?}");
    }

    #[test]
    fn serve_defaults_match_the_agreed_interface() {
        let cli = Cli::try_parse_from(["lumie-webhook", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        let c = args.into_config(None);
        assert_eq!(c.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(c.health_listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.tls_cert, PathBuf::from("/etc/lumie-webhook/tls/tls.crt"));
        assert_eq!(c.tls_key, PathBuf::from("/etc/lumie-webhook/tls/tls.key"));
        assert_eq!(c.identities, Identities::default());
        let cli = Cli::try_parse_from([
            "lumie-webhook",
            "serve",
            "--control-plane-user",
            "system:serviceaccount:coder:lumie-server, ",
            "--admin-group",
            "system:masters,platform-admins",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        let ids = args.into_config(None).identities;
        assert_eq!(
            ids.control_plane,
            ["system:serviceaccount:coder:lumie-server"]
        );
        assert_eq!(ids.admin_groups, ["system:masters", "platform-admins"]);
    }

    #[test]
    fn review_rejects_unknown_endpoints() {
        let err = Cli::try_parse_from(["lumie-webhook", "review", "--endpoint", "admit"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown endpoint"), "{err}");
    }
}
