//! The leader verdict (PostgreSQL installs, where replicas elect one leader with a Lease): the
//! server replicas the doctor sees (the Deployment's pods), which one holds the Lease, and how
//! long ago it was acquired and renewed. A lease not renewed within its duration means no
//! replica is running builds or the reconciler.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;

use super::checks::{id, name_of};
use super::control_plane::pod_ready;
use super::facts::Read;
use super::judge::read_failed;
use super::report::Check;
use crate::leader::{DEFAULT_LEASE_NAME, observe};

/// The Lease's name: the server container's literal `LUMIE_LEASE_NAME`, else the default.
pub fn lease_name(deploy: Option<&Deployment>) -> String {
    deploy
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| {
            s.containers
                .iter()
                .find(|c| c.name == "lumie-server")
                .or(s.containers.first())
        })
        .and_then(|c| c.env.as_ref())
        .and_then(|env| env.iter().rev().find(|e| e.name == "LUMIE_LEASE_NAME"))
        .and_then(|e| e.value.clone())
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_LEASE_NAME.to_string())
}

/// A holder identity is its pod's name, a dash and a random suffix.
fn pod_of<'a>(pods: &'a [Pod], holder: &str) -> Option<&'a Pod> {
    pods.iter().find(|p| {
        holder
            .strip_prefix(name_of(&p.metadata))
            .is_some_and(|rest| rest.starts_with('-'))
    })
}

fn ago(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

/// The verdict, from the pods the Deployment's selector matches and the Lease as read, at
/// `now_ms`.
pub fn leadership(
    ns: &str,
    lease_name: &str,
    pods: &[Pod],
    lease: &Read<Option<Lease>>,
    now_ms: i64,
) -> Check {
    let lease = match lease {
        Ok(l) => l,
        Err(e) => return read_failed(id::LEADER, &format!("Lease {ns}/{lease_name}"), e),
    };
    let replicas = if pods.is_empty() {
        "no server pods".to_string()
    } else {
        let list: Vec<String> = pods
            .iter()
            .map(|p| {
                let state = if pod_ready(p) { "ready" } else { "not ready" };
                format!("{} ({state})", name_of(&p.metadata))
            })
            .collect();
        format!("replicas: {}", list.join(", "))
    };
    let Some(lease) = lease else {
        return Check::warning(
            id::LEADER,
            format!("no leader Lease {ns}/{lease_name} yet: no replica has led; {replicas}"),
            format!(
                "check the server pods' logs for lease errors and that the server may create Leases in {ns} (chart: rbac.create, Role lumie-coder-leader)"
            ),
        );
    };
    let o = observe(lease);
    let transitions = lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_transitions)
        .unwrap_or(0);
    let acquired = lease
        .spec
        .as_ref()
        .and_then(|s| s.acquire_time.as_ref())
        .map(|t| format!(", acquired {} ago", ago(now_ms - t.0.as_millisecond())))
        .unwrap_or_default();
    let Some(holder) = o.holder.filter(|h| !h.is_empty()) else {
        return Check::warning(
            id::LEADER,
            format!("Lease {ns}/{lease_name} is released: no leader right now; {replicas}"),
            "a replica takes it within its renew interval; if this stays, check the server pods' logs",
        );
    };
    let duration_ms = o.duration_ms.unwrap_or(0);
    let renewed = o.renewed_ms.map(|r| now_ms - r);
    let holder_pod = pod_of(pods, &holder);
    let detail = format!(
        "leader {holder}, Lease {ns}/{lease_name} renewed {} ago (duration {}s{acquired}, {transitions} hand-over(s)); {replicas}",
        renewed.map_or_else(|| "never".into(), ago),
        duration_ms / 1000,
    );
    match renewed {
        Some(age) if age <= duration_ms => match holder_pod {
            Some(p) if pod_ready(p) => Check::ok(id::LEADER, detail),
            Some(_) => Check::warning(
                id::LEADER,
                format!("{detail} — the leader's pod is not ready"),
                "it is still renewing; if it stays not ready, delete that pod so another replica takes over",
            ),
            None => Check::warning(
                id::LEADER,
                format!("{detail} — the holder is none of the server Deployment's pods"),
                "another process holds the Lease under this name: check LUMIE_LEASE_NAME and who else runs a lumie-server against this cluster",
            ),
        },
        _ => Check::failure(
            id::LEADER,
            format!("{detail} — expired: no replica is running builds or the reconciler"),
            "a live replica takes over within one renew interval; if none does, check the server pods' logs for lease errors (apiserver reachable? Role lumie-coder-leader bound?)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::report::Status;
    use serde_json::json;

    fn pod(name: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        }))
        .unwrap()
    }

    fn lease(holder: Option<&str>, renewed_ms: i64, duration_s: i32) -> Lease {
        let t = |ms: i64| {
            k8s_openapi::jiff::Timestamp::from_millisecond(ms)
                .unwrap()
                .to_string()
        };
        serde_json::from_value(json!({
            "metadata": {"name": "lumie-server-leader", "namespace": "coder"},
            "spec": {
                "holderIdentity": holder,
                "renewTime": t(renewed_ms),
                "acquireTime": t(renewed_ms - 600_000),
                "leaseDurationSeconds": duration_s,
                "leaseTransitions": 3
            }
        }))
        .unwrap()
    }

    #[test]
    fn leader_table() {
        let now = 1_800_000_000_000;
        let pods = vec![
            pod("coder-a", true),
            pod("coder-b", true),
            pod("coder-c", false),
        ];
        /// (what, the Lease as read, the verdict, words its summary names).
        type Case<'a> = (&'a str, Read<Option<Lease>>, Status, &'a [&'a str]);
        let cases: Vec<Case> = vec![
            (
                "fresh, held by a ready replica",
                Ok(Some(lease(Some("coder-a-x1y2z3"), now - 2_000, 15))),
                Status::Ok,
                &[
                    "leader coder-a-x1y2z3",
                    "renewed 2s ago",
                    "duration 15s",
                    "acquired 10m ago",
                    "3 hand-over(s)",
                    "coder-a (ready)",
                    "coder-c (not ready)",
                ],
            ),
            (
                "held by a replica not ready",
                Ok(Some(lease(Some("coder-c-aaaaaa"), now - 1_000, 15))),
                Status::Warning,
                &["not ready"],
            ),
            (
                "held by a stranger",
                Ok(Some(lease(Some("laptop-123456"), now - 1_000, 15))),
                Status::Warning,
                &["none of the server Deployment's pods"],
            ),
            (
                "a name prefix is not a pod (coder-ab is not coder-a's)",
                Ok(Some(lease(Some("coder-ab"), now - 1_000, 15))),
                Status::Warning,
                &["none of the server Deployment's pods"],
            ),
            (
                "expired",
                Ok(Some(lease(Some("coder-a-x1y2z3"), now - 16_000, 15))),
                Status::Failure,
                &["expired", "renewed 16s ago"],
            ),
            (
                "released",
                Ok(Some(lease(None, now - 1_000, 15))),
                Status::Warning,
                &["released"],
            ),
            (
                "no lease",
                Ok(None),
                Status::Warning,
                &["no leader Lease coder/lumie-server-leader"],
            ),
        ];
        for (what, l, status, needles) in cases {
            let c = leadership("coder", "lumie-server-leader", &pods, &l, now);
            assert_eq!(c.status, status, "{what}: {}", c.summary);
            assert_eq!(c.fix.is_some(), status != Status::Ok, "{what}");
            for n in needles {
                assert!(c.summary.contains(n), "{what}: {n:?} in {}", c.summary);
            }
        }
    }

    #[test]
    fn lease_name_from_the_deployment_or_the_default() {
        let deploy = |env: serde_json::Value| -> Deployment {
            serde_json::from_value(json!({
                "metadata": {"name": "coder"},
                "spec": {"selector": {}, "template": {"spec": {"containers": [
                    {"name": "lumie-server", "env": env}
                ]}}}
            }))
            .unwrap()
        };
        assert_eq!(lease_name(None), DEFAULT_LEASE_NAME);
        assert_eq!(lease_name(Some(&deploy(json!([])))), DEFAULT_LEASE_NAME);
        assert_eq!(
            lease_name(Some(&deploy(
                json!([{"name": "LUMIE_LEASE_NAME", "value": "mine"}])
            ))),
            "mine"
        );
    }
}
