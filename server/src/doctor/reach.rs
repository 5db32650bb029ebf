//! The database and the OIDC issuer, reached over the network: what a try came to ([`Reach`])
//! and its verdict. The tries themselves are [`super::probe`]'s.

use super::checks::id;
use super::report::Check;

/// What happened when the doctor tried to reach a network service (database, OIDC issuer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Not configured; the string says why (and the check says whether that is fine).
    NotConfigured(String),
    /// Not tried because of an earlier check's failure.
    Skipped(String),
    /// Reached; what was seen.
    Reached(String),
    /// The host name does not resolve from where the doctor runs.
    Unresolvable {
        /// The host.
        host: String,
        /// The resolver's error.
        error: String,
    },
    /// Reached, or tried to, and it failed.
    Failed(String),
}

/// Whether a host name only resolves inside a cluster: a Service name (no dot), or a name under
/// `.svc` / `.cluster.local`. From an operator's laptop those fail to resolve, which says
/// nothing about the server's view.
pub fn is_in_cluster_host(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    if h.is_empty() || h == "localhost" || h.parse::<std::net::IpAddr>().is_ok() {
        return false;
    }
    !h.contains('.') || h.ends_with(".svc") || h.contains(".svc.") || h.ends_with(".cluster.local")
}

fn reach_check(
    id: &'static str,
    what: &str,
    reach: &Reach,
    fix: &str,
    not_configured_ok: bool,
) -> Check {
    match reach {
        Reach::Reached(detail) => Check::ok(id, detail.clone()),
        Reach::NotConfigured(why) if not_configured_ok => Check::ok(id, why.clone()),
        Reach::NotConfigured(why) => Check::warning(id, why.clone(), fix.to_string()),
        Reach::Skipped(why) => Check::warning(
            id,
            format!("{what} not checked: {why}"),
            "fix the check named there first",
        ),
        Reach::Unresolvable { host, error } if is_in_cluster_host(host) => Check::warning(
            id,
            format!(
                "{what} host {host} is an in-cluster name this machine cannot resolve ({error}); not checked from here"
            ),
            "run the doctor inside the cluster: kubectl -n coder exec deploy/coder -- lumie-server doctor",
        ),
        Reach::Unresolvable { host, error } => Check::failure(
            id,
            format!("{what} host {host} does not resolve: {error}"),
            fix.to_string(),
        ),
        Reach::Failed(error) => Check::failure(id, format!("{what}: {error}"), fix.to_string()),
    }
}

/// The database answered with the Secret's URL.
pub fn database(reach: &Reach) -> Check {
    reach_check(
        id::DATABASE,
        "database",
        reach,
        "check the URL in the database Secret (host, port, user, password, database, sslmode) and that PostgreSQL accepts connections from the cluster",
        true,
    )
}

/// The OIDC issuer serves its discovery document.
pub fn oidc_issuer(reach: &Reach) -> Check {
    reach_check(
        id::OIDC_ISSUER,
        "OIDC issuer",
        reach,
        "check server.oidc.issuerUrl (CODER_OIDC_ISSUER_URL) is the realm URL, e.g. https://auth.lumie-edu.com/realms/infra, and that Keycloak is up",
        false,
    )
}

/// Judges a discovery document fetched from `issuer`: it must name the same issuer (Keycloak
/// behind a proxy with the wrong hostname setting names another one, and logins then fail).
pub fn discovery_document(issuer: &str, status: u16, body: &str) -> Reach {
    if !(200..300).contains(&status) {
        return Reach::Failed(format!(
            "{issuer}/.well-known/openid-configuration answered HTTP {status}"
        ));
    }
    let doc: serde_json::Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(e) => {
            return Reach::Failed(format!(
                "{issuer}/.well-known/openid-configuration is not JSON: {e}"
            ));
        }
    };
    let named = doc["issuer"].as_str().unwrap_or_default();
    if named.trim_end_matches('/') != issuer.trim_end_matches('/') {
        return Reach::Failed(format!(
            "the discovery document of {issuer} names issuer {named:?}: tokens will not validate"
        ));
    }
    for field in ["authorization_endpoint", "token_endpoint", "jwks_uri"] {
        if doc[field].as_str().is_none_or(str::is_empty) {
            return Reach::Failed(format!("the discovery document of {issuer} has no {field}"));
        }
    }
    Reach::Reached(format!(
        "OIDC issuer {issuer} serves its discovery document"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::fixtures::assert_verdict;
    use crate::doctor::report::Status;
    use serde_json::json;

    #[test]
    fn in_cluster_hosts() {
        for h in [
            "postgres",
            "postgres.db.svc",
            "postgres.db.svc.cluster.local",
            "pg.db.svc.corp.internal",
            "x.cluster.local.",
        ] {
            assert!(is_in_cluster_host(h), "{h}");
        }
        for h in [
            "db.example.com",
            "127.0.0.1",
            "localhost",
            "::1",
            "auth.lumie-edu.com",
            "",
        ] {
            assert!(!is_in_cluster_host(h), "{h}");
        }
    }

    #[test]
    fn reach_table() {
        let unresolvable = |host: &str| Reach::Unresolvable {
            host: host.into(),
            error: "no such host".into(),
        };
        type Case = (
            &'static str,
            fn(&Reach) -> Check,
            Reach,
            Status,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            (
                "db reached",
                database,
                Reach::Reached("connected".into()),
                Status::Ok,
                "connected",
            ),
            (
                "db in-cluster",
                database,
                unresolvable("postgres.db.svc"),
                Status::Warning,
                "in-cluster name this machine cannot resolve",
            ),
            (
                "db public unresolvable",
                database,
                unresolvable("db.example.com"),
                Status::Failure,
                "does not resolve",
            ),
            (
                "db refused",
                database,
                Reach::Failed("connection refused".into()),
                Status::Failure,
                "connection refused",
            ),
            (
                "db embedded",
                database,
                Reach::NotConfigured("embedded SQLite".into()),
                Status::Ok,
                "embedded",
            ),
            (
                "db skipped",
                database,
                Reach::Skipped("see db-secret".into()),
                Status::Warning,
                "not checked",
            ),
            (
                "oidc unset",
                oidc_issuer,
                Reach::NotConfigured("CODER_OIDC_ISSUER_URL unset".into()),
                Status::Warning,
                "unset",
            ),
            (
                "oidc in-cluster",
                oidc_issuer,
                unresolvable("keycloak"),
                Status::Warning,
                "in-cluster",
            ),
        ];
        for (name, f, reach, status, text) in cases {
            let c = f(&reach);
            assert_verdict(name, &c, status, text);
        }
    }

    #[test]
    fn discovery_document_table() {
        let iss = "http://127.0.0.1:1/realms/infra";
        let doc = |issuer: &str| {
            json!({"issuer": issuer, "authorization_endpoint": "a", "token_endpoint": "t", "jwks_uri": "j"}).to_string()
        };
        let cases: Vec<(&str, u16, String, Option<&str>)> = vec![
            ("good", 200, doc(iss), None),
            ("trailing slash", 200, doc(&format!("{iss}/")), None),
            ("404", 404, "not found".into(), Some("answered HTTP 404")),
            ("html", 200, "<html>".into(), Some("is not JSON")),
            (
                "other issuer",
                200,
                doc("http://keycloak:8080/realms/infra"),
                Some("names issuer"),
            ),
            (
                "no jwks",
                200,
                json!({"issuer": iss, "authorization_endpoint": "a", "token_endpoint": "t"})
                    .to_string(),
                Some("no jwks_uri"),
            ),
        ];
        for (name, status, body, want) in cases {
            match (discovery_document(iss, status, &body), want) {
                (Reach::Reached(_), None) => {}
                (Reach::Failed(e), Some(w)) => assert!(e.contains(w), "{name}: {e}"),
                (got, _) => panic!("{name}: {got:?}"),
            }
        }
    }
}
