//! Command line and environment: the clap definition ([`Cli`]) and the plain [`Config`] the rest
//! of the server (and its tests) is built from.
//!
//! The environment variable names are those of the Coder deployment this replaces, so existing
//! Helm values keep working; every flag has one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use lumie_contract::{agent_api, workspace};

use crate::error::StartupError;
use crate::identity::oidc::DEFAULT_ALLOWED_CLOCK_SKEW;
use crate::identity::roles::{DEFAULT_ADMIN_GROUP, DEFAULT_ROLE_CLAIM};
use crate::identity::trusted_proxy::WildcardHost;
use crate::identity::{AccessUrl, IdentityError, OidcSettings, RoleMapping, TrustedProxy};

/// Default folder of the agent binaries the server hands out.
pub const DEFAULT_AGENT_BINARY_DIR: &str = "/usr/local/share/lumie-coder/bin";
/// Default data directory (the embedded SQLite database lives there).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/lumie-coder";
/// The Secret the Helm chart takes `CODER_PG_CONNECTION_URL` from; named in database errors.
pub const DB_SECRET: &str = "coder-db-secret";

/// lumie-server: the lumie-coder control plane.
#[derive(Debug, Parser)]
#[command(version = lumie_build_info::VERSION, about)]
pub struct Cli {
    /// What to run (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Server settings.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane (the default).
    Serve,
    /// Check the installation through the kube API: one line per check, exit 1 on a failure.
    Doctor(crate::doctor::DoctorArgs),
}

/// Flags of `lumie-server serve`; each has an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address the API, app proxy, agent API, `/healthz`, `/readyz` and `/metrics` listen on.
    #[arg(long, env = "LUMIE_LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// The URL developers reach the server at (through Teleport). Required.
    #[arg(long, env = "CODER_ACCESS_URL")]
    pub access_url: Option<String>,
    /// PostgreSQL URL; blank means the embedded SQLite database in `--data-dir`.
    #[arg(long, env = "CODER_PG_CONNECTION_URL", hide_env_values = true)]
    pub pg_connection_url: Option<String>,
    /// Where the embedded database and other state live.
    #[arg(long, env = "LUMIE_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// OIDC issuer (Keycloak realm); with client id and secret enables OIDC login.
    #[arg(long, env = "CODER_OIDC_ISSUER_URL")]
    pub oidc_issuer_url: Option<String>,
    /// OIDC client id.
    #[arg(long, env = "CODER_OIDC_CLIENT_ID")]
    pub oidc_client_id: Option<String>,
    /// OIDC client secret.
    #[arg(long, env = "CODER_OIDC_CLIENT_SECRET", hide_env_values = true)]
    pub oidc_client_secret: Option<String>,
    /// Claim the groups are read from (a dotted path reaches into nested claims).
    #[arg(long, env = "CODER_OIDC_GROUP_FIELD", default_value = DEFAULT_ROLE_CLAIM)]
    pub oidc_group_field: String,
    /// Group whose members are admins; everyone else is a member.
    #[arg(long, env = "LUMIE_OIDC_ADMIN_GROUP", default_value = DEFAULT_ADMIN_GROUP)]
    pub oidc_admin_group: String,
    /// Scopes asked for besides `openid` (comma separated; blank: `profile,email`).
    #[arg(long, env = "CODER_OIDC_SCOPES", value_delimiter = ',')]
    pub oidc_scopes: Vec<String>,
    /// Allowed difference between this server's clock and the provider's, seconds.
    #[arg(long, env = "LUMIE_OIDC_ALLOWED_CLOCK_SKEW_SECS", default_value_t = 60)]
    pub oidc_allowed_clock_skew_secs: u64,
    /// Headers trusted to carry the client address from the proxy (comma separated).
    #[arg(long, env = "CODER_PROXY_TRUSTED_HEADERS", value_delimiter = ',')]
    pub proxy_trusted_headers: Vec<String>,
    /// Proxy origins (CIDRs or addresses) trusted for those headers (comma separated). No
    /// default: name the Teleport app service's; empty, the headers are ignored (with a warning).
    #[arg(long, env = "CODER_PROXY_TRUSTED_ORIGINS", value_delimiter = ',')]
    pub proxy_trusted_origins: Vec<String>,
    /// Wildcard host for subdomain apps (`*.apps.example.com`, scheme and port optional,
    /// defaulting to the access URL's): each app on its own origin, the isolated mode. Blank
    /// means path-based apps only.
    #[arg(long, env = "CODER_WILDCARD_ACCESS_URL")]
    pub wildcard_access_url: Option<String>,
    /// DANGEROUS: let admins open other users' path-based apps. A path-based app runs on the
    /// control plane's origin, so the app's JavaScript acts with the admin's session (API keys,
    /// policy). Off by default; every such access is audited (`app.admin_access`).
    #[arg(
        long,
        env = "CODER_DANGEROUS_ALLOW_PATH_APP_SITE_OWNER_ACCESS",
        default_value_t = false
    )]
    pub dangerous_allow_path_app_site_owner_access: bool,
    /// Namespace the workspace pods live in.
    #[arg(long, env = "LUMIE_WORKSPACE_NAMESPACE", default_value = workspace::NAMESPACE)]
    pub workspace_namespace: String,
    /// Workspace pod template config (YAML); the built-in default when unset.
    #[arg(long, env = "LUMIE_TEMPLATE_FILE")]
    pub template_file: Option<PathBuf>,
    /// Folder holding `lumie-agent-<os>-<arch>` binaries.
    #[arg(long, env = "LUMIE_AGENT_BINARY_DIR", default_value = DEFAULT_AGENT_BINARY_DIR)]
    pub agent_binary_dir: PathBuf,
    /// URL pods use to reach the server (the public URL is unreachable from inside pods).
    #[arg(long, env = "LUMIE_AGENT_URL", default_value = workspace::IN_CLUSTER_URL)]
    pub agent_url: String,
    /// Seconds between agent heartbeats (handed to agents in each heartbeat response).
    #[arg(long, env = "LUMIE_AGENT_REPORT_INTERVAL_SECS", default_value_t = agent_api::DEFAULT_REPORT_INTERVAL_SECS)]
    pub agent_report_interval_secs: u64,
    /// Seconds an agent may take to make first contact before it is `timeout`.
    #[arg(
        long,
        env = "LUMIE_AGENT_CONNECTION_TIMEOUT_SECS",
        default_value_t = 120
    )]
    pub agent_connection_timeout_secs: u64,
    /// Seconds an object with workspace labels but no workspace may live before it is removed.
    #[arg(long, env = "LUMIE_ORPHAN_GRACE_SECS", default_value_t = 600)]
    pub orphan_grace_secs: u64,
    /// On SIGTERM, milliseconds `/healthz` answers 503 while still serving, so load balancers
    /// take the replica out of rotation before it stops accepting connections.
    #[arg(long, env = "LUMIE_SHUTDOWN_DRAIN_MS", default_value_t = 5000)]
    pub shutdown_drain_ms: u64,
    /// Then, milliseconds in-flight requests get to finish (streams and WebSockets are cut after).
    #[arg(long, env = "LUMIE_SHUTDOWN_GRACE_MS", default_value_t = 10000)]
    pub shutdown_grace_ms: u64,
    /// Seconds between checks of the `dev-workspace` ServiceAccount and Service.
    #[arg(long, env = "LUMIE_DRIFT_CHECK_INTERVAL_SECS", default_value_t = 60)]
    pub drift_check_interval_secs: u64,
    /// Kubernetes Secret the first admin's API token is written to on the first start (in
    /// `--first-admin-secret-namespace`); unset, the token is printed only to a terminal.
    #[arg(long, env = "LUMIE_FIRST_ADMIN_SECRET")]
    pub first_admin_secret: Option<String>,
    /// Namespace of the first admin's Secret (the server's own).
    #[arg(long, env = "LUMIE_FIRST_ADMIN_SECRET_NAMESPACE", default_value = workspace::CONTROL_PLANE_NAMESPACE)]
    pub first_admin_secret_namespace: String,
    /// Log format: `text` or `json`.
    #[arg(long, env = "LUMIE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Namespace of the leader Lease (the server's own; PostgreSQL only).
    #[arg(long, env = "LUMIE_LEASE_NAMESPACE", default_value = workspace::CONTROL_PLANE_NAMESPACE)]
    pub lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, env = "LUMIE_LEASE_NAME", default_value = crate::leader::DEFAULT_LEASE_NAME)]
    pub lease_name: String,
    /// Seconds a renewal holds the leader Lease; a dead leader is replaced within about this.
    #[arg(long, env = "LUMIE_LEASE_DURATION_SECS", default_value_t = 15)]
    pub lease_duration_secs: u64,
    /// Seconds between renewals of the leader Lease (at most half the duration).
    #[arg(long, env = "LUMIE_LEASE_RENEW_SECS", default_value_t = 5)]
    pub lease_renew_secs: u64,
}

/// Where state is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatabaseConfig {
    /// PostgreSQL at this URL (from Secret `coder-db-secret`).
    Postgres(String),
    /// The embedded SQLite database file.
    Sqlite(PathBuf),
}

/// OIDC login settings (enabled by `CODER_OIDC_ISSUER_URL`).
#[derive(Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// Issuer URL.
    pub issuer_url: String,
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: String,
    /// Claim carrying the groups.
    pub group_field: String,
    /// Group mapped to admin.
    pub admin_group: String,
    /// Scopes besides `openid` (empty: the defaults).
    pub scopes: Vec<String>,
    /// Allowed clock skew with the provider.
    pub allowed_clock_skew: Duration,
}

impl std::fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcConfig")
            .field("issuer_url", &self.issuer_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("group_field", &self.group_field)
            .field("admin_group", &self.admin_group)
            .field("scopes", &self.scopes)
            .field("allowed_clock_skew", &self.allowed_clock_skew)
            .finish()
    }
}

impl OidcConfig {
    /// Issuer, client id and secret with the default role mapping, scopes and clock skew.
    pub fn new(issuer_url: &str, client_id: &str, client_secret: &str) -> Self {
        OidcConfig {
            issuer_url: issuer_url.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            group_field: DEFAULT_ROLE_CLAIM.into(),
            admin_group: DEFAULT_ADMIN_GROUP.into(),
            scopes: vec![],
            allowed_clock_skew: DEFAULT_ALLOWED_CLOCK_SKEW,
        }
    }

    /// The OIDC client settings for this access URL; a missing secret names `coder-oidc-secret`.
    pub fn settings(&self, access: &AccessUrl) -> Result<OidcSettings, IdentityError> {
        let mut s = OidcSettings::new(
            &self.issuer_url,
            &self.client_id,
            Some(&self.client_secret),
            access,
        )?;
        if !self.scopes.is_empty() {
            s.scopes = self.scopes.clone();
        }
        s.allowed_clock_skew = self.allowed_clock_skew;
        Ok(s)
    }

    /// Which claim and group make an admin.
    pub fn roles(&self) -> RoleMapping {
        RoleMapping {
            claim: self.group_field.clone(),
            admin_group: self.admin_group.clone(),
        }
    }
}

/// The server's settings, validated. Tests build this directly.
#[derive(Clone, Debug)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// Public URL.
    pub access_url: String,
    /// Database.
    pub database: DatabaseConfig,
    /// Data directory.
    pub data_dir: PathBuf,
    /// OIDC, when configured.
    pub oidc: Option<OidcConfig>,
    /// Trusted proxy headers.
    pub proxy_trusted_headers: Vec<String>,
    /// Trusted proxy origins.
    pub proxy_trusted_origins: Vec<String>,
    /// Wildcard access URL, when set.
    pub wildcard_access_url: Option<String>,
    /// Admins may open other users' path-based apps (dangerous; audited).
    pub dangerous_allow_path_app_site_owner_access: bool,
    /// Workspace namespace.
    pub namespace: String,
    /// Template file, when set.
    pub template_file: Option<PathBuf>,
    /// Agent binaries folder.
    pub agent_binary_dir: PathBuf,
    /// URL handed to agents.
    pub agent_url: String,
    /// Agent report interval.
    pub agent_report_interval: Duration,
    /// Agent first-contact timeout.
    pub agent_connection_timeout: Duration,
    /// Grace period before orphaned objects are removed.
    pub orphan_grace: Duration,
    /// On SIGTERM: how long `/healthz` says 503 before the listener stops accepting.
    pub shutdown_drain: Duration,
    /// Then: how long in-flight requests get to finish.
    pub shutdown_grace: Duration,
    /// Interval of the contract drift check.
    pub drift_check_interval: Duration,
    /// Where the first admin's token goes on the first start; `None`: a terminal only.
    pub first_admin_secret: Option<SecretRef>,
    /// Leader election (PostgreSQL; SQLite runs one replica, which leads).
    pub leader: crate::leader::LeaderConfig,
}

/// A Secret by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The warning when no proxy is trusted (`CODER_PROXY_TRUSTED_ORIGINS` has no entry): forwarding
/// headers are then ignored, and the audit log records the proxy's address for every request
/// that came through Teleport. There is deliberately no default range to fall back on (any pod
/// in it could write the client IP), so the operator has to name Teleport's. Takes the two
/// settings as lists, so a check of a Deployment's env can say the same.
pub fn trusted_proxy_warning(headers: &[String], origins: &[String]) -> Option<String> {
    if origins.iter().any(|o| !o.trim().is_empty()) {
        return None;
    }
    let headers: Vec<&str> = headers
        .iter()
        .map(|h| h.trim())
        .filter(|h| !h.is_empty())
        .collect();
    let ignored = if headers.is_empty() {
        "no forwarding header is believed".to_string()
    } else {
        format!("{} is ignored", headers.join(", "))
    };
    Some(format!(
        "CODER_PROXY_TRUSTED_ORIGINS is empty: {ignored}, so the audit log records the proxy's \
         address as the client IP; set it to the Teleport app service's addresses \
         (chart value server.proxy.trustedOrigins)"
    ))
}

impl Config {
    /// [`trusted_proxy_warning`] for these settings; logged at start-up.
    pub fn trusted_proxy_warning(&self) -> Option<String> {
        trusted_proxy_warning(&self.proxy_trusted_headers, &self.proxy_trusted_origins)
    }

    /// A config for tests and tools: SQLite in `data_dir`, everything else at its default.
    pub fn for_tests(data_dir: PathBuf) -> Self {
        Config {
            listen: "127.0.0.1:0".parse().expect("literal address"),
            access_url: "http://127.0.0.1".into(),
            database: DatabaseConfig::Sqlite(data_dir.join("lumie-coder.db")),
            data_dir,
            oidc: None,
            proxy_trusted_headers: vec![],
            proxy_trusted_origins: vec![],
            wildcard_access_url: None,
            dangerous_allow_path_app_site_owner_access: false,
            namespace: workspace::NAMESPACE.into(),
            template_file: None,
            agent_binary_dir: DEFAULT_AGENT_BINARY_DIR.into(),
            agent_url: workspace::IN_CLUSTER_URL.into(),
            agent_report_interval: Duration::from_secs(agent_api::DEFAULT_REPORT_INTERVAL_SECS),
            agent_connection_timeout: Duration::from_secs(120),
            shutdown_drain: Duration::from_millis(5000),
            shutdown_grace: Duration::from_millis(10000),
            orphan_grace: Duration::from_secs(600),
            drift_check_interval: Duration::from_secs(60),
            first_admin_secret: None,
            leader: crate::leader::LeaderConfig::default(),
        }
    }
}

fn non_blank(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

fn check_url(setting: &'static str, value: &str) -> Result<(), StartupError> {
    if value.starts_with("http://") || value.starts_with("https://") {
        Ok(())
    } else {
        Err(StartupError::InvalidSetting {
            setting,
            message: format!("{value:?} is not an http(s) URL"),
        })
    }
}

impl TryFrom<ServeArgs> for Config {
    type Error = StartupError;

    fn try_from(a: ServeArgs) -> Result<Self, StartupError> {
        let access_url = non_blank(a.access_url).ok_or(StartupError::MissingSetting {
            setting: "CODER_ACCESS_URL (--access-url)",
            hint: "set it to the URL developers open, e.g. https://coder.lumie-infra.com",
        })?;
        check_url("CODER_ACCESS_URL", &access_url)?;
        check_url("LUMIE_AGENT_URL", &a.agent_url)?;
        let database = match non_blank(a.pg_connection_url) {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                DatabaseConfig::Postgres(url)
            }
            Some(_) => {
                return Err(StartupError::InvalidSetting {
                    setting: "CODER_PG_CONNECTION_URL",
                    message: format!(
                        "is not a postgres:// URL: check the value in Secret {DB_SECRET}"
                    ),
                });
            }
            None => DatabaseConfig::Sqlite(a.data_dir.join("lumie-coder.db")),
        };
        let access = AccessUrl::parse(&access_url)?;
        let wildcard_access_url = non_blank(a.wildcard_access_url);
        if let Some(w) = &wildcard_access_url {
            WildcardHost::parse(w, &access)?;
        }
        TrustedProxy::new(&a.proxy_trusted_headers, &a.proxy_trusted_origins)?;
        let oidc = match (
            non_blank(a.oidc_issuer_url),
            non_blank(a.oidc_client_id),
            non_blank(a.oidc_client_secret),
        ) {
            (None, None, None) => None,
            (Some(issuer_url), client_id, client_secret) => {
                let client_id = client_id.ok_or(StartupError::MissingSetting {
                    setting: "CODER_OIDC_CLIENT_ID",
                    hint: "OIDC login (CODER_OIDC_ISSUER_URL is set) needs the realm's client id, normally `coder`",
                })?;
                let mut oidc = OidcConfig::new(&issuer_url, &client_id, "");
                oidc.client_secret = client_secret.unwrap_or_default();
                oidc.group_field = a.oidc_group_field.trim().to_string();
                oidc.admin_group = a.oidc_admin_group.trim().to_string();
                oidc.scopes = a
                    .oidc_scopes
                    .iter()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty() && s != "openid")
                    .collect();
                oidc.allowed_clock_skew = Duration::from_secs(a.oidc_allowed_clock_skew_secs);
                // Refuse to start on what cannot work (a missing secret names its Secret).
                oidc.settings(&access)?;
                Some(oidc)
            }
            (None, _, _) => {
                return Err(StartupError::MissingSetting {
                    setting: "CODER_OIDC_ISSUER_URL",
                    hint: "OIDC client id or secret given without the issuer URL (the Keycloak realm)",
                });
            }
        };
        if a.agent_report_interval_secs == 0 {
            return Err(StartupError::InvalidSetting {
                setting: "LUMIE_AGENT_REPORT_INTERVAL_SECS",
                message: "must be at least 1".into(),
            });
        }
        if a.workspace_namespace.trim().is_empty() {
            return Err(StartupError::MissingSetting {
                setting: "LUMIE_WORKSPACE_NAMESPACE (--workspace-namespace)",
                hint: "the namespace workspace pods live in, normally lumie-dev",
            });
        }
        let leader = crate::leader::LeaderConfig {
            namespace: a.lease_namespace.trim().to_string(),
            name: a.lease_name.trim().to_string(),
            duration: Duration::from_secs(a.lease_duration_secs),
            renew: Duration::from_secs(a.lease_renew_secs),
        };
        crate::leader::decide::check_timing(leader.duration, leader.renew).map_err(|message| {
            StartupError::InvalidSetting {
                setting: "LUMIE_LEASE_DURATION_SECS / LUMIE_LEASE_RENEW_SECS",
                message,
            }
        })?;
        if leader.namespace.is_empty() || leader.name.is_empty() {
            return Err(StartupError::MissingSetting {
                setting: "LUMIE_LEASE_NAMESPACE / LUMIE_LEASE_NAME",
                hint: "the leader Lease's namespace (the server's own, normally coder) and name",
            });
        }
        Ok(Config {
            listen: a.listen,
            access_url: access_url.trim_end_matches('/').to_string(),
            database,
            data_dir: a.data_dir,
            oidc,
            proxy_trusted_headers: a.proxy_trusted_headers,
            proxy_trusted_origins: a.proxy_trusted_origins,
            wildcard_access_url,
            dangerous_allow_path_app_site_owner_access: a
                .dangerous_allow_path_app_site_owner_access,
            namespace: a.workspace_namespace,
            template_file: a.template_file,
            agent_binary_dir: a.agent_binary_dir,
            agent_url: a.agent_url.trim_end_matches('/').to_string(),
            agent_report_interval: Duration::from_secs(a.agent_report_interval_secs),
            agent_connection_timeout: Duration::from_secs(a.agent_connection_timeout_secs),
            shutdown_drain: Duration::from_millis(a.shutdown_drain_ms),
            shutdown_grace: Duration::from_millis(a.shutdown_grace_ms),
            orphan_grace: Duration::from_secs(a.orphan_grace_secs),
            drift_check_interval: Duration::from_secs(a.drift_check_interval_secs.max(1)),
            first_admin_secret: non_blank(a.first_admin_secret).map(|name| SecretRef {
                namespace: a.first_admin_secret_namespace.trim().to_string(),
                name,
            }),
            leader,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, StartupError> {
        let mut argv = vec!["lumie-server"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).expect("clap parse");
        Config::try_from(cli.serve)
    }

    #[test]
    fn defaults_give_sqlite_in_the_data_dir() {
        let c = parse(&["--access-url", "https://coder.example.com/"]).unwrap();
        assert_eq!(c.access_url, "https://coder.example.com");
        assert_eq!(
            c.database,
            DatabaseConfig::Sqlite(PathBuf::from(DEFAULT_DATA_DIR).join("lumie-coder.db"))
        );
        assert_eq!(c.namespace, "lumie-dev");
        assert_eq!(c.agent_url, "http://coder.coder.svc.cluster.local");
        assert_eq!(c.agent_report_interval, Duration::from_secs(15));
        assert_eq!(c.listen.port(), 8080);
        assert!(c.oidc.is_none());
    }

    #[test]
    fn first_admin_secret_names_a_secret_in_the_servers_namespace() {
        let c = parse(&["--access-url", "http://x"]).unwrap();
        assert_eq!(c.first_admin_secret, None);
        let c = parse(&["--access-url", "http://x", "--first-admin-secret", "  "]).unwrap();
        assert_eq!(c.first_admin_secret, None, "blank is unset");
        let c = parse(&[
            "--access-url",
            "http://x",
            "--first-admin-secret",
            "lumie-first-admin",
        ])
        .unwrap();
        let s = c.first_admin_secret.unwrap();
        assert_eq!(s.to_string(), "coder/lumie-first-admin");
        let c = parse(&[
            "--access-url",
            "http://x",
            "--first-admin-secret",
            "a",
            "--first-admin-secret-namespace",
            "ops",
        ])
        .unwrap();
        assert_eq!(c.first_admin_secret.unwrap().to_string(), "ops/a");
    }

    #[test]
    fn blank_pg_url_means_sqlite_and_a_postgres_url_means_postgres() {
        let c = parse(&["--access-url", "http://x", "--pg-connection-url", "  "]).unwrap();
        assert!(matches!(c.database, DatabaseConfig::Sqlite(_)));
        let c = parse(&[
            "--access-url",
            "http://x",
            "--pg-connection-url",
            "postgres://u:p@h/db",
        ])
        .unwrap();
        assert_eq!(
            c.database,
            DatabaseConfig::Postgres("postgres://u:p@h/db".into())
        );
    }

    #[test]
    fn errors_name_the_setting_on_one_line() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "CODER_ACCESS_URL"),
            (&["--access-url", "coder.example.com"], "CODER_ACCESS_URL"),
            (
                &[
                    "--access-url",
                    "http://x",
                    "--pg-connection-url",
                    "mysql://x",
                ],
                "coder-db-secret",
            ),
            (
                &["--access-url", "http://x", "--oidc-issuer-url", "http://kc"],
                "CODER_OIDC_CLIENT_ID",
            ),
            (
                &[
                    "--access-url",
                    "http://x",
                    "--oidc-issuer-url",
                    "http://kc",
                    "--oidc-client-id",
                    "coder",
                ],
                "coder-oidc-secret",
            ),
            (
                &[
                    "--access-url",
                    "http://x",
                    "--oidc-issuer-url",
                    "http://kc",
                    "--oidc-client-id",
                    "coder",
                    "--oidc-client-secret",
                    "  ",
                ],
                "CODER_OIDC_CLIENT_SECRET",
            ),
            (
                &["--access-url", "http://x", "--oidc-client-id", "coder"],
                "CODER_OIDC_ISSUER_URL",
            ),
            (
                &[
                    "--access-url",
                    "http://x",
                    "--proxy-trusted-origins",
                    "10.0.0.0/33",
                ],
                "CODER_PROXY_TRUSTED_ORIGINS",
            ),
            (
                &[
                    "--access-url",
                    "http://x",
                    "--agent-report-interval-secs",
                    "0",
                ],
                "LUMIE_AGENT_REPORT_INTERVAL_SECS",
            ),
            (
                &[
                    "--access-url",
                    "http://x",
                    "--wildcard-access-url",
                    "apps.example.com",
                ],
                "CODER_WILDCARD_ACCESS_URL",
            ),
        ];
        for (args, want) in cases {
            let e = parse(args).unwrap_err().to_string();
            assert!(e.contains(want), "{args:?}: {e}");
            assert!(!e.contains('\n'), "{args:?}: one line, got {e}");
        }
    }

    #[test]
    fn oidc_settings_from_flags() {
        let c = parse(&[
            "--access-url",
            "https://coder.example.com",
            "--oidc-issuer-url",
            "https://auth.example.com/realms/infra/",
            "--oidc-client-id",
            "coder",
            "--oidc-client-secret",
            "s",
            "--oidc-group-field",
            "realm_access.roles",
            "--oidc-admin-group",
            "coder-admin",
            "--oidc-scopes",
            "openid,profile,email,groups",
            "--oidc-allowed-clock-skew-secs",
            "5",
        ])
        .unwrap();
        let oidc = c.oidc.expect("oidc configured");
        assert_eq!(oidc.scopes, ["profile", "email", "groups"]);
        assert_eq!(oidc.roles().claim, "realm_access.roles");
        assert_eq!(oidc.roles().admin_group, "coder-admin");
        let access = AccessUrl::parse(&c.access_url).unwrap();
        let settings = oidc.settings(&access).unwrap();
        assert_eq!(settings.issuer_url, "https://auth.example.com/realms/infra");
        assert_eq!(
            settings.redirect_url,
            "https://coder.example.com/api/v2/users/oidc/callback"
        );
        assert_eq!(settings.allowed_clock_skew, Duration::from_secs(5));
        assert!(!format!("{oidc:?}").contains("\"s\""), "secret redacted");
        let d = parse(&[
            "--access-url",
            "http://x",
            "--oidc-issuer-url",
            "http://kc",
            "--oidc-client-id",
            "coder",
            "--oidc-client-secret",
            "s",
        ])
        .unwrap()
        .oidc
        .unwrap();
        assert_eq!(d.roles(), RoleMapping::default());
        assert!(d.scopes.is_empty());
    }

    #[test]
    fn no_trusted_proxy_by_default_and_a_warning_naming_the_setting_until_one_is_set() {
        let c = parse(&["--access-url", "http://x"]).unwrap();
        assert!(c.proxy_trusted_origins.is_empty(), "no default range");
        let cases: &[(&[&str], Option<&str>)] = &[
            (&[], Some("no forwarding header is believed")),
            (
                &["--proxy-trusted-headers", "X-Forwarded-For"],
                Some("X-Forwarded-For is ignored"),
            ),
            (
                &[
                    "--proxy-trusted-headers",
                    "X-Forwarded-For",
                    "--proxy-trusted-origins",
                    " , ",
                ],
                Some("X-Forwarded-For is ignored"),
            ),
            (
                &[
                    "--proxy-trusted-headers",
                    "X-Forwarded-For",
                    "--proxy-trusted-origins",
                    "10.42.7.0/28",
                ],
                None,
            ),
            (&["--proxy-trusted-origins", "10.42.7.12"], None),
        ];
        for (args, want) in cases {
            let mut argv = vec!["--access-url", "http://x"];
            argv.extend_from_slice(args);
            let warning = parse(&argv).unwrap().trusted_proxy_warning();
            match (want, &warning) {
                (None, None) => {}
                (Some(part), Some(w)) => {
                    assert!(w.contains(part), "{args:?}: {w}");
                    assert!(w.contains("CODER_PROXY_TRUSTED_ORIGINS"), "{args:?}: {w}");
                    assert!(w.contains("server.proxy.trustedOrigins"), "{args:?}: {w}");
                }
                _ => panic!("{args:?}: want {want:?}, got {warning:?}"),
            }
        }
        assert!(
            Config::for_tests("/tmp".into())
                .trusted_proxy_warning()
                .is_some()
        );
    }

    #[test]
    fn app_isolation_settings() {
        let c = parse(&["--access-url", "https://coder.example.com"]).unwrap();
        assert!(
            !c.dangerous_allow_path_app_site_owner_access,
            "off by default"
        );
        assert_eq!(c.wildcard_access_url, None);
        let c = parse(&[
            "--access-url",
            "https://coder.example.com",
            "--wildcard-access-url",
            " *.apps.example.com ",
            "--dangerous-allow-path-app-site-owner-access",
        ])
        .unwrap();
        assert!(c.dangerous_allow_path_app_site_owner_access);
        assert_eq!(c.wildcard_access_url.as_deref(), Some("*.apps.example.com"));
    }

    #[test]
    fn every_flag_has_an_env_var() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        for arg in cmd.get_arguments() {
            if arg.get_id() == "help" || arg.get_id() == "version" {
                continue;
            }
            assert!(arg.get_env().is_some(), "--{} has no env var", arg.get_id());
        }
    }
}
