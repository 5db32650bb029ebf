//! Contract drift of the objects the lumie-dev overlay owns: the `dev-workspace` ServiceAccount
//! and Service. Checked at start and every minute; each drift is a readiness warning, a
//! `lumie_contract_drift{object,field}` series set to 1, and a log line. Read only: the control
//! plane never creates, patches or deletes these objects.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use kube::{Api, Client};
use lumie_contract::service;
use lumie_contract::workspace::STABLE_SERVICE;

use crate::metrics::DriftLabels;
use crate::state::AppState;

/// One field that does not match the contract.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Drift {
    /// `serviceaccount/dev-workspace` or `service/dev-workspace`.
    pub object: String,
    /// `exists`, `port/<slug>`, `targetPort/<slug>`.
    pub field: String,
    /// What is wrong, for people.
    pub message: String,
}

/// Every (object, field) this check can report, so fixed drift goes back to 0.
pub fn known_fields(sa_name: &str) -> Vec<(String, String)> {
    let svc_obj = format!("service/{STABLE_SERVICE}");
    let mut v = vec![
        (format!("serviceaccount/{sa_name}"), "exists".to_string()),
        (svc_obj.clone(), "exists".to_string()),
    ];
    v.extend(
        service::drift_fields()
            .into_iter()
            .map(|f| (svc_obj.clone(), f)),
    );
    v
}

/// Compares what exists with the contract. The Service's ports are judged by
/// [`service::port_drift`], the rule `lumie-server doctor` applies too.
pub fn contract_drift(
    namespace: &str,
    sa_name: &str,
    sa: Option<&ServiceAccount>,
    svc: Option<&Service>,
) -> Vec<Drift> {
    let mut out = vec![];
    let sa_obj = format!("serviceaccount/{sa_name}");
    let svc_obj = format!("service/{STABLE_SERVICE}");
    if sa.is_none() {
        out.push(Drift {
            object: sa_obj,
            field: "exists".into(),
            message: format!(
                "ServiceAccount {namespace}/{sa_name} is missing: workspace pods cannot start (it is owned by the lumie-dev overlay)"
            ),
        });
    }
    let Some(svc) = svc else {
        out.push(Drift {
            object: svc_obj,
            field: "exists".into(),
            message: format!(
                "Service {namespace}/{STABLE_SERVICE} is missing (it is owned by the lumie-dev overlay)"
            ),
        });
        return out;
    };
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default();
    out.extend(
        service::port_drift(ports)
            .problems
            .into_iter()
            .map(|p| Drift {
                object: svc_obj.clone(),
                field: p.field(),
                message: format!("Service {namespace}/{STABLE_SERVICE} {p}"),
            }),
    );
    out
}

/// Reads both objects; `Err` when the kube API did not answer.
pub async fn check(
    client: &Client,
    namespace: &str,
    sa_name: &str,
) -> Result<Vec<Drift>, kube::Error> {
    let sa = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .get_opt(sa_name)
        .await?;
    let svc = Api::<Service>::namespaced(client.clone(), namespace)
        .get_opt(STABLE_SERVICE)
        .await?;
    Ok(contract_drift(
        namespace,
        sa_name,
        sa.as_ref(),
        svc.as_ref(),
    ))
}

/// Runs one check and records it: readiness (kube reachable + warnings), metric, log lines.
pub async fn check_and_record(state: &AppState, client: &Client) {
    let sa_name = state.template.service_account_name.clone();
    let ns = state.config.namespace.clone();
    match check(client, &ns, &sa_name).await {
        Ok(drifts) => {
            let drifted: BTreeSet<(String, String)> = drifts
                .iter()
                .map(|d| (d.object.clone(), d.field.clone()))
                .collect();
            for (object, field) in known_fields(&sa_name) {
                let v = i64::from(drifted.contains(&(object.clone(), field.clone())));
                state
                    .metrics
                    .contract_drift
                    .get_or_create(&DriftLabels { object, field })
                    .set(v);
            }
            for d in &drifts {
                tracing::warn!(object = %d.object, field = %d.field, "contract drift: {}", d.message);
            }
            let mut r = state.readiness.write().expect("readiness lock");
            r.kube_reachable = true;
            r.warnings = drifts.into_iter().map(|d| d.message).collect();
        }
        Err(e) => {
            tracing::warn!(error = %e, "kube API check failed");
            let mut r = state.readiness.write().expect("readiness lock");
            r.kube_reachable = false;
        }
    }
}

/// Checks at start and every `drift_check_interval`.
pub async fn run(state: AppState, client: Client) {
    loop {
        check_and_record(&state, &client).await;
        tokio::time::sleep(state.config.drift_check_interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn svc(ports: Vec<(&str, i32, Option<IntOrString>)>) -> Service {
        Service {
            spec: Some(ServiceSpec {
                ports: Some(
                    ports
                        .into_iter()
                        .map(|(n, p, t)| ServicePort {
                            name: Some(n.into()),
                            port: p,
                            target_port: t,
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn drift_table() {
        let sa = ServiceAccount::default();
        let good = svc(vec![
            ("tilt", 10350, Some(IntOrString::Int(10350))),
            (
                "code-server",
                13337,
                Some(IntOrString::String("code-server".into())),
            ),
            ("agents", 3000, None),
        ]);
        assert_eq!(
            contract_drift("lumie-dev", "dev-workspace", Some(&sa), Some(&good)),
            vec![]
        );
        let fields = |d: Vec<Drift>| {
            d.into_iter()
                .map(|d| format!("{} {}", d.object, d.field))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            fields(contract_drift("lumie-dev", "dev-workspace", None, None)),
            [
                "serviceaccount/dev-workspace exists",
                "service/dev-workspace exists"
            ]
        );
        let bad = svc(vec![
            ("tilt", 10351, Some(IntOrString::Int(10350))),
            ("code-server", 13337, Some(IntOrString::Int(8080))),
        ]);
        let d = contract_drift("lumie-dev", "dev-workspace", Some(&sa), Some(&bad));
        assert_eq!(
            fields(d.clone()),
            [
                "service/dev-workspace port/tilt",
                "service/dev-workspace targetPort/code-server",
                "service/dev-workspace port/agents"
            ]
        );
        assert!(
            d[0].message.contains("is 10351, the contract says 10350"),
            "{}",
            d[0].message
        );
        // What the old readiness check let pass and the doctor did not: a renamed port, UDP.
        let mut renamed = good.clone();
        let ports = renamed.spec.as_mut().unwrap().ports.as_mut().unwrap();
        ports[0].name = Some("tilt-ui".into());
        ports[1].protocol = Some("UDP".into());
        let d = contract_drift("lumie-dev", "dev-workspace", Some(&sa), Some(&renamed));
        assert_eq!(
            fields(d.clone()),
            [
                "service/dev-workspace port/tilt",
                "service/dev-workspace protocol/code-server"
            ]
        );
        assert_eq!(
            d[1].message,
            "Service lumie-dev/dev-workspace port code-server is UDP, the contract says TCP"
        );
        let known = known_fields("dev-workspace");
        for d in [d, contract_drift("lumie-dev", "dev-workspace", None, None)] {
            for d in d {
                assert!(
                    known.contains(&(d.object.clone(), d.field.clone())),
                    "{d:?} is a known field, so it can go back to 0"
                );
            }
        }
    }
}
