//! The agent's configuration: the command line (every flag also an environment variable) and the
//! plain [`Config`] it turns into, which tests build directly.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use lumie_contract::{apps, workspace};
use reqwest::Url;

use crate::Error;
use crate::forward::CopyMode;

/// How the agent decides whether an app is up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthCheck {
    /// A TCP connect to the app's local address succeeds.
    Tcp,
    /// An HTTP GET of this URL answers 2xx or 3xx.
    Http(Url),
    /// Not checked and not required for `ready` (reported as `disabled`).
    Disabled,
}

/// One app the agent checks and forwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppConfig {
    /// Slug from the contract (`tilt`, `code-server`, `agents`).
    pub slug: String,
    /// Port the app listens on locally; the agent listens on the same port on the pod IP.
    pub port: u16,
    /// How readiness is checked.
    pub health: HealthCheck,
}

/// Where the agent's token comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// A file the kubelet keeps current (the pod's projected ServiceAccount token,
    /// `CODER_AGENT_TOKEN_FILE`): read again for every request, so a refreshed token is used
    /// as soon as it is written.
    File(PathBuf),
    /// A fixed token (`CODER_AGENT_TOKEN`), for development and stand-in control planes; the
    /// server accepts only projected tokens.
    Fixed(String),
}

impl TokenSource {
    /// The token to send now.
    pub fn current(&self) -> Result<String, Error> {
        match self {
            TokenSource::Fixed(t) => Ok(t.clone()),
            TokenSource::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| Error::Token {
                    path: path.clone(),
                    source,
                })?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(Error::Config(format!(
                        "token file {} is empty (is the projected volume mounted?)",
                        path.display()
                    )));
                }
                Ok(token.to_string())
            }
        }
    }
}

impl From<&str> for TokenSource {
    fn from(t: &str) -> Self {
        TokenSource::Fixed(t.to_string())
    }
}

impl From<String> for TokenSource {
    fn from(t: String) -> Self {
        TokenSource::Fixed(t)
    }
}

/// Everything the agent needs to run; built from [`Cli`] or directly by tests.
#[derive(Clone, Debug)]
pub struct Config {
    /// Control plane base URL (`CODER_AGENT_URL`).
    pub agent_url: Url,
    /// Agent token: the projected token file, or a fixed token.
    pub token: TokenSource,
    /// Pod IP to listen on for forwarding; `None` disables forwarding.
    pub pod_ip: Option<IpAddr>,
    /// Address the apps listen on inside the pod (forward target, TCP health checks).
    pub app_host: IpAddr,
    /// The apps, in contract order.
    pub apps: Vec<AppConfig>,
    /// Fixed report interval, overriding what the control plane answers.
    pub report_interval: Option<Duration>,
    /// How long the apps may take to become healthy before `start_timeout`.
    pub start_timeout: Duration,
    /// Time between health checks of one app.
    pub health_interval: Duration,
    /// Consecutive failed checks before an app is `unhealthy`.
    pub health_threshold: u32,
    /// Timeout of one health check.
    pub health_timeout: Duration,
    /// Home volume, for disk stats.
    pub home_dir: PathBuf,
    /// Most forwarded connections open at once, per port.
    pub max_connections: usize,
    /// How forwarded bytes are moved.
    pub copy_mode: CopyMode,
    /// Time allowed from SIGTERM to exit, including the final reports.
    pub shutdown_timeout: Duration,
    /// Extra PEM CA bundle trusted for the control plane (private CA).
    pub ca_bundle: Option<PathBuf>,
    /// Session port on the pod IP (0: no sessions).
    pub session_port: u16,
}

impl Config {
    /// A config with the contract's apps and the defaults of every tunable.
    pub fn new(agent_url: Url, token: impl Into<TokenSource>) -> Self {
        Self {
            agent_url,
            token: token.into(),
            pod_ip: None,
            app_host: IpAddr::from([127, 0, 0, 1]),
            apps: apps::ALL
                .iter()
                .map(|a| AppConfig {
                    slug: a.slug.to_string(),
                    port: a.port,
                    health: HealthCheck::Tcp,
                })
                .collect(),
            report_interval: None,
            start_timeout: Duration::from_secs(300),
            health_interval: Duration::from_secs(5),
            health_threshold: 3,
            health_timeout: Duration::from_secs(2),
            home_dir: PathBuf::from(workspace::HOME_MOUNT_PATH),
            max_connections: 512,
            copy_mode: CopyMode::Buffers,
            shutdown_timeout: Duration::from_secs(10),
            ca_bundle: None,
            session_port: workspace::SESSION_PORT,
        }
    }
}

/// lumie-agent: reports a workspace pod to lumie-server, checks its apps and forwards their ports
/// from the pod IP to localhost.
#[derive(Debug, Parser)]
#[command(name = "lumie-agent", version = lumie_build_info::VERSION, about)]
pub struct Cli {
    /// Control plane URL as seen from the pod.
    #[arg(long, env = "CODER_AGENT_URL", value_name = "CODER_AGENT_URL")]
    pub agent_url: Url,
    /// File holding the agent's token: the pod's projected ServiceAccount token (audience
    /// `lumie-coder-agent`), refreshed by the kubelet and read again for every request.
    #[arg(
        long,
        env = "CODER_AGENT_TOKEN_FILE",
        value_name = "CODER_AGENT_TOKEN_FILE",
        required_unless_present = "token",
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,
    /// A fixed agent token instead (development, stand-in control planes); lumie-server accepts
    /// only projected tokens.
    #[arg(
        long,
        env = "CODER_AGENT_TOKEN",
        value_name = "CODER_AGENT_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Pod IP (downward API); the agent listens there on each app port. Unset: no forwarding.
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<IpAddr>,
    /// Address the apps listen on inside the pod.
    #[arg(long, env = "LUMIE_AGENT_APP_HOST", default_value = "127.0.0.1")]
    pub app_host: IpAddr,
    /// Per-app health check, `slug=tcp`, `slug=disabled` or `slug=http://127.0.0.1:3000/health`
    /// (comma-separated in the env var). Apps not named use `tcp`.
    #[arg(
        long = "app-health",
        env = "LUMIE_AGENT_APP_HEALTH",
        value_delimiter = ','
    )]
    pub app_health: Vec<String>,
    /// Per-app port override, `slug=port` (comma-separated in the env var), for running several
    /// agents on one host.
    #[arg(
        long = "app-port",
        env = "LUMIE_AGENT_APP_PORTS",
        value_delimiter = ','
    )]
    pub app_port: Vec<String>,
    /// Fixed heartbeat interval (`500ms`, `15s`, `1m`), overriding the control plane's answer.
    #[arg(long, env = "LUMIE_AGENT_REPORT_INTERVAL", value_parser = parse_duration)]
    pub report_interval: Option<Duration>,
    /// How long the apps may take to become healthy.
    #[arg(long, env = "LUMIE_AGENT_START_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub start_timeout: Duration,
    /// Time between health checks.
    #[arg(long, env = "LUMIE_AGENT_HEALTH_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub health_interval: Duration,
    /// Consecutive failed checks before an app is unhealthy.
    #[arg(long, env = "LUMIE_AGENT_HEALTH_THRESHOLD", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub health_threshold: u32,
    /// Timeout of one health check.
    #[arg(long, env = "LUMIE_AGENT_HEALTH_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub health_timeout: Duration,
    /// Home volume, for disk usage.
    #[arg(long, env = "LUMIE_AGENT_HOME_DIR", default_value = workspace::HOME_MOUNT_PATH)]
    pub home_dir: PathBuf,
    /// Most forwarded connections open at once per port; more are closed at once.
    #[arg(long, env = "LUMIE_AGENT_MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,
    /// How forwarded bytes are moved: `buffers` (read/write; a buffer per direction, 16 KiB on
    /// the first bytes, growing to 256 KiB while a transfer keeps it full, freed when idle) or
    /// `splice` (zero-copy through pipes).
    #[arg(long, env = "LUMIE_AGENT_COPY_MODE", default_value = "buffers")]
    pub copy_mode: CopyMode,
    /// Time allowed from SIGTERM to exit, final reports included (keep below the pod's grace period).
    #[arg(long, env = "LUMIE_AGENT_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// PEM bundle of extra CAs to trust for the control plane (private CA).
    #[arg(long, env = "LUMIE_AGENT_CA_BUNDLE")]
    pub ca_bundle: Option<PathBuf>,
    /// Port on the pod IP for terminal, SSH and TCP sessions opened by the control plane (0: none).
    #[arg(long, env = "LUMIE_AGENT_SESSION_PORT", default_value_t = workspace::SESSION_PORT)]
    pub session_port: u16,
    /// Log filter (`info`, `lumie_agent=debug`, …).
    #[arg(long, env = "LUMIE_AGENT_LOG", default_value = "info")]
    pub log: String,
}

impl Cli {
    /// Turns the parsed flags into a [`Config`], checking the per-app settings.
    pub fn into_config(self) -> Result<Config, Error> {
        let token = match (self.token_file, self.token) {
            (Some(path), _) => TokenSource::File(path),
            (None, Some(t)) => TokenSource::Fixed(t),
            (None, None) => {
                return Err(Error::Config(
                    "no agent token: set CODER_AGENT_TOKEN_FILE (--token-file)".into(),
                ));
            }
        };
        let mut config = Config::new(self.agent_url, token);
        config.pod_ip = self.pod_ip;
        config.app_host = self.app_host;
        config.report_interval = self.report_interval;
        config.start_timeout = self.start_timeout;
        config.health_interval = self.health_interval;
        config.health_threshold = self.health_threshold;
        config.health_timeout = self.health_timeout;
        config.home_dir = self.home_dir;
        config.max_connections = self.max_connections.max(1);
        config.copy_mode = self.copy_mode;
        config.shutdown_timeout = self.shutdown_timeout;
        config.ca_bundle = self.ca_bundle;
        config.session_port = self.session_port;
        for spec in self.app_health.iter().filter(|s| !s.is_empty()) {
            let (slug, mode) = split_app_setting(spec)?;
            let health = match mode {
                "tcp" => HealthCheck::Tcp,
                "disabled" => HealthCheck::Disabled,
                url => HealthCheck::Http(Url::parse(url).map_err(|e| {
                    Error::Config(format!(
                        "--app-health {spec}: not tcp, disabled or a URL: {e}"
                    ))
                })?),
            };
            app_mut(&mut config, slug)?.health = health;
        }
        for spec in self.app_port.iter().filter(|s| !s.is_empty()) {
            let (slug, port) = split_app_setting(spec)?;
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| Error::Config(format!("--app-port {spec}: not a port")))?;
            app_mut(&mut config, slug)?.port = port;
        }
        Ok(config)
    }
}

fn split_app_setting(spec: &str) -> Result<(&str, &str), Error> {
    spec.split_once('=')
        .map(|(s, v)| (s.trim(), v.trim()))
        .ok_or_else(|| Error::Config(format!("{spec:?}: expected slug=value")))
}

fn app_mut<'a>(config: &'a mut Config, slug: &str) -> Result<&'a mut AppConfig, Error> {
    let known = config
        .apps
        .iter()
        .map(|a| a.slug.clone())
        .collect::<Vec<_>>();
    config
        .apps
        .iter_mut()
        .find(|a| a.slug == slug)
        .ok_or_else(|| Error::Config(format!("unknown app {slug:?}; known: {}", known.join(", "))))
}

/// Parses `250ms`, `15s`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with ms, s, m or h"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut argv = vec![
            "lumie-agent",
            "--agent-url",
            "http://cp:8080",
            "--token",
            "t",
        ];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .into_config()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn durations() {
        let cases = [
            ("250ms", Ok(Duration::from_millis(250))),
            ("15s", Ok(Duration::from_secs(15))),
            ("15", Ok(Duration::from_secs(15))),
            ("2m", Ok(Duration::from_secs(120))),
            ("1h", Ok(Duration::from_secs(3600))),
            ("1d", Err(())),
            ("s", Err(())),
            ("", Err(())),
        ];
        for (input, want) in cases {
            assert_eq!(parse_duration(input).map_err(|_| ()), want, "{input}");
        }
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.agent_url.as_str(), "http://cp:8080/");
        assert_eq!(
            c.apps
                .iter()
                .map(|a| (a.slug.as_str(), a.port))
                .collect::<Vec<_>>(),
            vec![("tilt", 10350), ("code-server", 13337), ("agents", 3000)]
        );
        assert!(c.apps.iter().all(|a| a.health == HealthCheck::Tcp));
        assert_eq!(c.pod_ip, None);
        assert_eq!(c.health_threshold, 3);
        assert_eq!(c.home_dir, PathBuf::from("/home/coder"));
        assert_eq!(c.copy_mode, CopyMode::Buffers);
        assert_eq!(c.token, TokenSource::Fixed("t".into()));
    }

    #[test]
    fn token_file_is_read_for_every_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let argv = [
            "lumie-agent",
            "--agent-url",
            "http://cp:8080",
            "--token-file",
            path.to_str().unwrap(),
        ];
        let c = Cli::try_parse_from(argv).unwrap().into_config().unwrap();
        assert_eq!(c.token, TokenSource::File(path.clone()));
        let e = c.token.current().unwrap_err().to_string();
        assert!(e.contains("token file") && e.contains("token"), "{e}");
        std::fs::write(&path, "first\n").unwrap();
        assert_eq!(c.token.current().unwrap(), "first");
        std::fs::write(&path, "refreshed").unwrap();
        assert_eq!(c.token.current().unwrap(), "refreshed");
        std::fs::write(&path, "  \n").unwrap();
        assert!(c.token.current().unwrap_err().to_string().contains("empty"));
        // Neither, or both: refused.
        let none = Cli::try_parse_from(["lumie-agent", "--agent-url", "http://cp:8080"]);
        assert!(none.is_err());
        let both = Cli::try_parse_from([
            "lumie-agent",
            "--agent-url",
            "http://cp:8080",
            "--token-file",
            "/x",
            "--token",
            "y",
        ]);
        assert!(both.is_err());
    }

    #[test]
    fn per_app_health_and_ports() {
        let c = parse(&[
            "--app-health",
            "tilt=http://127.0.0.1:10350/healthz",
            "--app-health",
            "agents=disabled",
            "--app-port",
            "code-server=23337",
            "--pod-ip",
            "127.0.0.2",
            "--report-interval",
            "500ms",
            "--copy-mode",
            "splice",
        ])
        .unwrap();
        assert_eq!(
            c.apps[0].health,
            HealthCheck::Http(Url::parse("http://127.0.0.1:10350/healthz").unwrap())
        );
        assert_eq!(c.apps[1].port, 23337);
        assert_eq!(c.apps[1].health, HealthCheck::Tcp);
        assert_eq!(c.apps[2].health, HealthCheck::Disabled);
        assert_eq!(c.pod_ip, Some(IpAddr::from([127, 0, 0, 2])));
        assert_eq!(c.report_interval, Some(Duration::from_millis(500)));
        assert_eq!(c.copy_mode, CopyMode::Splice);
    }

    #[test]
    fn bad_settings_are_rejected_with_the_reason() {
        for (args, needle) in [
            (&["--app-health", "nope=tcp"][..], "unknown app"),
            (&["--app-health", "tilt"][..], "slug=value"),
            (
                &["--app-health", "tilt=udp"][..],
                "not tcp, disabled or a URL",
            ),
            (&["--app-port", "tilt=0"][..], "not a port"),
            (&["--app-port", "tilt=70000"][..], "not a port"),
            (&["--health-threshold", "0"][..], "health-threshold"),
            (&["--copy-mode", "mmap"][..], "expected splice or buffers"),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }
}
