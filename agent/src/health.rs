//! App readiness: the failure-threshold logic (pure) and the checks themselves (TCP connect or
//! HTTP GET), run per app on an interval. Changes are sent on a channel at once so the agent
//! reports them immediately instead of at the next heartbeat.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use lumie_contract::agent_api::AppHealth;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::config::{AppConfig, HealthCheck};

/// Turns a stream of check results into health states: the first success makes an app
/// `healthy`; `threshold` failures in a row make it `unhealthy` (from `initializing` too, so an
/// app that never starts is reported as such).
#[derive(Clone, Debug)]
pub struct Threshold {
    threshold: u32,
    failures: u32,
    health: AppHealth,
}

impl Threshold {
    /// A tracker in `initializing` that needs `threshold` (at least 1) failures in a row.
    pub fn new(threshold: u32) -> Self {
        Self {
            threshold: threshold.max(1),
            failures: 0,
            health: AppHealth::Initializing,
        }
    }

    /// The current health.
    pub fn health(&self) -> AppHealth {
        self.health
    }

    /// Failed checks in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records one check result; returns the new health if it changed.
    pub fn observe(&mut self, ok: bool) -> Option<AppHealth> {
        let next = if ok {
            self.failures = 0;
            AppHealth::Healthy
        } else {
            self.failures = self.failures.saturating_add(1);
            if self.failures >= self.threshold {
                AppHealth::Unhealthy
            } else {
                self.health
            }
        };
        (next != self.health).then(|| {
            self.health = next;
            next
        })
    }
}

/// A health change of the app at `index` in the config's app list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthChange {
    /// Index into [`crate::config::Config::apps`].
    pub index: usize,
    /// The new health.
    pub health: AppHealth,
}

/// Checks one app once: `Err` says what failed.
pub async fn probe(
    check: &HealthCheck,
    addr: SocketAddr,
    http: &reqwest::Client,
    timeout: Duration,
) -> Result<(), String> {
    match check {
        HealthCheck::Disabled => Ok(()),
        HealthCheck::Tcp => match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("connect {addr}: {e}")),
            Err(_) => Err(format!("connect {addr}: timed out after {timeout:?}")),
        },
        HealthCheck::Http(url) => match http.get(url.clone()).timeout(timeout).send().await {
            Ok(resp) if resp.status().is_success() || resp.status().is_redirection() => Ok(()),
            Ok(resp) => Err(format!("GET {url}: HTTP {}", resp.status())),
            Err(e) => Err(format!("GET {url}: {}", crate::error_chain(&e))),
        },
    }
}

/// Settings shared by every app's checker.
#[derive(Clone, Debug)]
pub struct CheckSettings {
    /// Where the apps listen.
    pub app_host: IpAddr,
    /// Time between checks.
    pub interval: Duration,
    /// Failures in a row before `unhealthy`.
    pub threshold: u32,
    /// Timeout of one check.
    pub timeout: Duration,
}

/// Checks the app at `index` forever, sending every health change on `changes`. A disabled app
/// is reported `disabled` once and not checked.
pub async fn run_checker(
    index: usize,
    app: AppConfig,
    settings: CheckSettings,
    http: reqwest::Client,
    changes: mpsc::UnboundedSender<HealthChange>,
) {
    if app.health == HealthCheck::Disabled {
        let _ = changes.send(HealthChange {
            index,
            health: AppHealth::Disabled,
        });
        return;
    }
    let addr = SocketAddr::new(settings.app_host, app.port);
    let mut tracker = Threshold::new(settings.threshold);
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = probe(&app.health, addr, &http, settings.timeout).await;
        let failures_before = tracker.failures();
        if let Some(health) = tracker.observe(result.is_ok()) {
            match &result {
                Ok(()) => tracing::info!(app = %app.slug, "app is healthy"),
                Err(why) => tracing::warn!(
                    app = %app.slug,
                    failures = tracker.failures(),
                    "app is unhealthy: {why}"
                ),
            }
            if changes.send(HealthChange { index, health }).is_err() {
                return;
            }
        } else if let Err(why) = &result
            && failures_before == 0
        {
            tracing::debug!(app = %app.slug, "app check failed: {why}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AppHealth::{Healthy as H, Initializing as I, Unhealthy as U};

    #[test]
    fn threshold_table() {
        // (threshold, check results, health after each, changes reported)
        #[rustfmt::skip]
        let cases: Vec<(u32, Vec<bool>, Vec<AppHealth>)> = vec![
            (3, vec![true], vec![H]),
            (3, vec![false, false, false], vec![I, I, U]),
            (3, vec![false, false, true], vec![I, I, H]),
            (3, vec![true, false, false, false, false], vec![H, H, H, U, U]),
            (3, vec![true, false, false, true, false, false], vec![H, H, H, H, H, H]),
            (3, vec![true, false, false, false, true], vec![H, H, H, U, H]),
            (1, vec![true, false, true], vec![H, U, H]),
            (0, vec![false], vec![U]),
        ];
        for (threshold, results, want) in cases {
            let mut t = Threshold::new(threshold);
            let mut prev = t.health();
            for (i, (ok, want)) in results.iter().zip(&want).enumerate() {
                let changed = t.observe(*ok);
                assert_eq!(
                    t.health(),
                    *want,
                    "threshold {threshold}, step {i} of {results:?}"
                );
                assert_eq!(
                    changed,
                    (*want != prev).then_some(*want),
                    "change at step {i}"
                );
                prev = *want;
            }
        }
    }

    #[tokio::test]
    async fn tcp_and_http_probes_see_real_sockets() {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let t = Duration::from_secs(2);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(probe(&HealthCheck::Tcp, addr, &http, t).await, Ok(()));

        // An HTTP server answering 200 on /ok and 503 elsewhere.
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]);
                    let status = if req.starts_with("GET /ok ") {
                        "200 OK"
                    } else {
                        "503 Busy"
                    };
                    let _ = s
                        .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes())
                        .await;
                });
            }
        });
        let ok = HealthCheck::Http(format!("http://{addr}/ok").parse().unwrap());
        let busy = HealthCheck::Http(format!("http://{addr}/busy").parse().unwrap());
        assert_eq!(probe(&ok, addr, &http, t).await, Ok(()));
        let err = probe(&busy, addr, &http, t).await.unwrap_err();
        assert!(err.contains("503"), "{err}");

        // Nothing listens on a port just released.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let err = probe(&HealthCheck::Tcp, closed, &http, t)
            .await
            .unwrap_err();
        assert!(err.contains("refused"), "{err}");
    }
}
