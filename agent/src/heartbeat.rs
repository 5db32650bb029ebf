//! Heartbeats to the control plane: the HTTP client, and the loop that sends one on the report
//! interval the server hands out (jittered), at once when the reported state changes, and with
//! exponential backoff while the server cannot be reached. It never gives up.

use std::collections::BTreeMap;
use std::time::Duration;

use lumie_contract::agent_api::{
    AGENT_TOKEN_HEADER, AppHealth, HEARTBEAT_PATH, HeartbeatRequest, HeartbeatResponse, LOGS_PATH,
    LogBatch, LogBatchResponse, MANIFEST_PATH, Manifest, ResourceStats,
};
use reqwest::Url;
use tokio::sync::watch;

use crate::backoff::{self, Backoff};
use crate::config::{Config, TokenSource};
use crate::lifecycle::Lifecycle;
use crate::stats::StatsCollector;
use crate::{Error, error_chain};

/// Timeout of one heartbeat request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the agent reports: its lifecycle and the health of each app.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Lifecycle state and reason.
    pub lifecycle: Lifecycle,
    /// Health by app slug.
    pub apps: BTreeMap<String, AppHealth>,
}

impl Report {
    /// The heartbeat body for this report.
    pub fn to_request(&self, stats: Option<ResourceStats>) -> HeartbeatRequest {
        HeartbeatRequest {
            lifecycle: self.lifecycle.state,
            lifecycle_reason: self.lifecycle.reason.clone(),
            apps: self.apps.clone(),
            stats,
            version: crate::VERSION.to_string(),
        }
    }
}

/// Posts heartbeats with the agent token (read from its source for every request).
#[derive(Clone, Debug)]
pub struct HeartbeatClient {
    http: reqwest::Client,
    url: Url,
    base: Url,
    token: TokenSource,
}

impl HeartbeatClient {
    /// A client for `config`'s control plane, trusting its CA bundle when one is set.
    pub fn new(config: &Config) -> Result<Self, Error> {
        let mut builder = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("lumie-agent/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(1);
        if let Some(path) = &config.ca_bundle {
            let pem = std::fs::read(path).map_err(|source| Error::CaBundle {
                path: path.clone(),
                source,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Error::Config(format!("CA bundle {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(Error::Config(format!(
                    "CA bundle {}: no certificates",
                    path.display()
                )));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(Error::Client)?;
        Ok(Self {
            http,
            url: heartbeat_url(&config.agent_url)?,
            base: config.agent_url.clone(),
            token: config.token.clone(),
        })
    }

    /// The agent token as it is now, and the fixed one, for redacting them from script output.
    pub fn secrets(&self) -> Vec<String> {
        self.token.current().into_iter().collect()
    }

    /// Fetches the manifest (the scripts to run). A server without the route (404) has none.
    pub async fn manifest(&self) -> Result<Manifest, Error> {
        let token = self.token.current()?;
        let resp = self
            .http
            .get(endpoint_url(&self.base, MANIFEST_PATH)?)
            .header(AGENT_TOKEN_HEADER, token)
            .send()
            .await
            .map_err(|e| Error::Unreachable(error_chain(&e)))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(Manifest::default());
        }
        parse_answer(resp).await
    }

    /// Sends one batch of script output.
    pub async fn send_logs(&self, batch: &LogBatch) -> Result<LogBatchResponse, Error> {
        let token = self.token.current()?;
        let resp = self
            .http
            .post(endpoint_url(&self.base, LOGS_PATH)?)
            .header(AGENT_TOKEN_HEADER, token)
            .json(batch)
            .send()
            .await
            .map_err(|e| Error::Unreachable(error_chain(&e)))?;
        parse_answer(resp).await
    }

    /// The heartbeat URL.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Sends one heartbeat and returns the server's answer.
    pub async fn send(&self, request: &HeartbeatRequest) -> Result<HeartbeatResponse, Error> {
        // Read per request: the kubelet rewrites a projected token before it expires.
        let token = self.token.current()?;
        let resp = self
            .http
            .post(self.url.clone())
            .header(AGENT_TOKEN_HEADER, token)
            .json(request)
            .send()
            .await
            .map_err(|e| Error::Unreachable(error_chain(&e)))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| Error::Unreachable(error_chain(&e)))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)])
                .trim()
                .to_string();
            return Err(Error::Rejected {
                status: status.as_u16(),
                body: text,
            });
        }
        serde_json::from_slice(&body).map_err(|e| Error::BadAnswer(e.to_string()))
    }
}

/// `{agent_url}/api/v2/workspaceagents/me/heartbeat`, keeping any path prefix of the base URL.
pub fn heartbeat_url(base: &Url) -> Result<Url, Error> {
    endpoint_url(base, HEARTBEAT_PATH)
}

/// `{agent_url}{path}`, keeping any path prefix of the base URL.
pub fn endpoint_url(base: &Url, path: &str) -> Result<Url, Error> {
    let joined = format!("{}{path}", base.as_str().trim_end_matches('/'));
    Url::parse(&joined).map_err(|e| Error::Config(format!("agent URL {base}: {e}")))
}

async fn parse_answer<T: serde::de::DeserializeOwned>(resp: reqwest::Response) -> Result<T, Error> {
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| Error::Unreachable(error_chain(&e)))?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)])
            .trim()
            .to_string();
        return Err(Error::Rejected {
            status: status.as_u16(),
            body: text,
        });
    }
    serde_json::from_slice(&body).map_err(|e| Error::BadAnswer(e.to_string()))
}

/// Sends heartbeats forever: right away, then on the (jittered) report interval, and at once
/// whenever `reports` changes. While the control plane cannot be reached, retries with backoff
/// and says in the log what it is waiting for. Each answer is handed to `on_answer` (session
/// keys). Abort the task to stop it.
pub async fn run_loop(
    client: HeartbeatClient,
    mut reports: watch::Receiver<Report>,
    mut stats: StatsCollector,
    interval_override: Option<Duration>,
    first_contact: tokio::sync::oneshot::Sender<()>,
    on_answer: impl Fn(&HeartbeatResponse),
) {
    let mut backoff = Backoff::default();
    let mut connected = false;
    let mut first_contact = Some(first_contact);
    loop {
        let report = reports.borrow_and_update().clone();
        let request = report.to_request(Some(stats.collect()));
        let wait = match client.send(&request).await {
            Ok(answer) => {
                on_answer(&answer);
                let interval = interval_override
                    .unwrap_or_else(|| Duration::from_secs(answer.report_interval_seconds.max(1)));
                if !connected {
                    if backoff.attempt() > 0 {
                        tracing::info!(
                            url = %client.url(),
                            failed_attempts = backoff.attempt(),
                            "control plane reachable again; report interval {interval:?}"
                        );
                    } else {
                        tracing::info!(url = %client.url(), "reporting to the control plane every {interval:?}");
                    }
                    connected = true;
                }
                backoff.reset();
                if let Some(tx) = first_contact.take() {
                    let _ = tx.send(());
                }
                tracing::debug!(
                    lifecycle = report.lifecycle.state.as_str(),
                    "heartbeat sent"
                );
                backoff::jittered(interval, backoff::random())
            }
            Err(e) => {
                connected = false;
                let delay = backoff.next_delay(backoff::random());
                tracing::warn!(
                    attempt = backoff.attempt(),
                    "waiting for the control plane: heartbeat to {} failed: {e}; retrying in {delay:?}",
                    client.url()
                );
                // Changes made meanwhile go out with the next attempt; no earlier.
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = reports.changed() => if changed.is_err() { return },
        }
    }
}

/// Sends `request` until it is accepted or `deadline` passes, backing off between attempts.
/// Used for the final reports on shutdown.
pub async fn deliver(
    client: &HeartbeatClient,
    request: &HeartbeatRequest,
    deadline: tokio::time::Instant,
) -> Result<(), Error> {
    let mut backoff = Backoff::default();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let err = match tokio::time::timeout(left, client.send(request)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => Error::Unreachable(format!("no answer within {left:?}")),
        };
        let delay = backoff.next_delay(backoff::random());
        if tokio::time::Instant::now() + delay >= deadline {
            return Err(err);
        }
        tracing::warn!(
            "reporting {} failed: {err}; retrying in {delay:?}",
            request.lifecycle.as_str()
        );
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_url_keeps_prefixes() {
        for (base, want) in [
            (
                "http://coder.coder.svc.cluster.local",
                "http://coder.coder.svc.cluster.local/api/v2/workspaceagents/me/heartbeat",
            ),
            (
                "http://127.0.0.1:8080/",
                "http://127.0.0.1:8080/api/v2/workspaceagents/me/heartbeat",
            ),
            (
                "https://cp.example/coder/",
                "https://cp.example/coder/api/v2/workspaceagents/me/heartbeat",
            ),
        ] {
            let got = heartbeat_url(&Url::parse(base).unwrap()).unwrap();
            assert_eq!(got.as_str(), want);
        }
    }
}
