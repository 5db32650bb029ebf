//! The doctor's network probes outside the kube API: connecting to the database with the URL
//! from its Secret, fetching the OIDC issuer's discovery document, and asking the server for
//! the agent binary as a workspace pod would. Each returns a
//! [`Reach`] that [`super::reach`] turns into a verdict; credentials never reach the output.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

use super::reach::{Reach, discovery_document};

/// Whether `host:port` resolves from here.
async fn resolves(host: &str, port: u16, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addrs)) => {
            if addrs.count() > 0 {
                Ok(())
            } else {
                Err("no addresses".into())
            }
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer in {}s", timeout.as_secs())),
    }
}

use lumie_contract::diagnostics::error_chain as chain;

/// Connects to PostgreSQL with `url` and asks its version.
pub async fn database(url: &str, timeout: Duration) -> Reach {
    let opts = match PgConnectOptions::from_str(url) {
        Ok(o) => o,
        // The parse error names what is wrong, never the URL itself.
        Err(e) => return Reach::Failed(format!("the database URL does not parse: {e}")),
    };
    let host = opts.get_host().to_string();
    let port = opts.get_port();
    let database = opts.get_database().unwrap_or("(default)").to_string();
    let whom = format!("{}@{host}:{port}/{database}", opts.get_username());
    if !host.starts_with('/')
        && let Err(error) = resolves(&host, port, timeout).await
    {
        return Reach::Unresolvable { host, error };
    }
    let connect = async {
        let mut conn = PgConnection::connect_with(&opts).await?;
        let version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&mut conn)
            .await?;
        let _ = conn.close().await;
        Ok::<_, sqlx::Error>(version)
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(version)) => Reach::Reached(format!(
            "connected to PostgreSQL {version} as {whom} with the Secret's URL"
        )),
        Ok(Err(e)) => Reach::Failed(format!("connecting as {whom}: {}", chain(&e))),
        Err(_) => Reach::Failed(format!(
            "connecting as {whom}: no answer in {}s",
            timeout.as_secs()
        )),
    }
}

/// `HEAD <agent_url>/bin/lumie-agent-linux-amd64`, as a pod's init script would fetch it, then
/// the other architectures' binaries.
pub async fn agent_binary(agent_url: &str, timeout: Duration) -> Reach {
    let bin = crate::distribution::POD_BINARY;
    let url = format!("{}/bin/{bin}", agent_url.trim_end_matches('/'));
    let Ok(parsed) = reqwest::Url::parse(&url) else {
        return Reach::Failed(format!("LUMIE_AGENT_URL {agent_url:?} does not parse"));
    };
    let host = parsed.host_str().unwrap_or_default().to_string();
    let port = parsed.port_or_known_default().unwrap_or(80);
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if let Err(error) = resolves(&bare, port, timeout).await {
        return Reach::Unresolvable { host: bare, error };
    }
    let client = match reqwest::Client::builder().timeout(timeout).build() {
        Ok(c) => c,
        Err(e) => return Reach::Failed(format!("building an HTTP client: {e}")),
    };
    match client.head(parsed).send().await {
        Ok(r) if r.status().is_success() => {
            // The other architectures' binaries: named when missing, not a failure (a cluster
            // may have no arm64 node).
            let mut missing = Vec::new();
            for (arch, other) in crate::distribution::POD_BINARIES {
                if other == bin {
                    continue;
                }
                let u = format!("{}/bin/{other}", agent_url.trim_end_matches('/'));
                if let Ok(r) = client.head(&u).send().await
                    && r.status() == reqwest::StatusCode::NOT_FOUND
                {
                    missing.push(format!(
                        "no {other} (404): workspace pods on {arch} nodes cannot download their agent"
                    ));
                }
            }
            if missing.is_empty() {
                Reach::Reached(format!("serves {bin} at {url}"))
            } else {
                Reach::Reached(format!("serves {bin} at {url}, but {}", missing.join("; ")))
            }
        }
        Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => Reach::Failed(format!(
            "it has no agent binary to serve: {url} answers 404 (LUMIE_AGENT_BINARY_DIR holds no {bin})"
        )),
        Ok(r) => Reach::Failed(format!("{url} answers HTTP {}", r.status().as_u16())),
        // Not reached from here says nothing about the pods' view: no verdict.
        Err(e) => Reach::Unresolvable {
            host: bare,
            error: chain(&e),
        },
    }
}

/// Fetches `<issuer>/.well-known/openid-configuration` and judges it.
pub async fn oidc_issuer(issuer: &str, timeout: Duration) -> Reach {
    let url = match reqwest::Url::parse(issuer) {
        Ok(u) => u,
        Err(e) => return Reach::Failed(format!("issuer URL {issuer:?} does not parse: {e}")),
    };
    let Some(host) = url.host_str().map(str::to_string) else {
        return Reach::Failed(format!("issuer URL {issuer:?} has no host"));
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Err(error) = resolves(bare, port, timeout).await {
        return Reach::Unresolvable {
            host: bare.to_string(),
            error,
        };
    }
    let client = match reqwest::Client::builder().timeout(timeout).build() {
        Ok(c) => c,
        Err(e) => return Reach::Failed(format!("HTTP client: {}", chain(&e))),
    };
    let discovery = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let response = match client.get(&discovery).send().await {
        Ok(r) => r,
        Err(e) => return Reach::Failed(format!("GET {discovery}: {}", chain(&e))),
    };
    let status = response.status().as_u16();
    match response.text().await {
        Ok(body) => discovery_document(issuer, status, &body),
        Err(e) => Reach::Failed(format!("GET {discovery}: {}", chain(&e))),
    }
}
