//! Contract drift of the objects the lumie-dev overlay owns: the `dev-workspace` ServiceAccount
//! and Service. Checked at start and every minute; each drift is a readiness warning, a
//! `lumie_contract_drift{object,field}` series set to 1, and a log line. Read only: the control
//! plane never creates, patches or deletes these objects.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use kube::{Api, Client};
use lumie_contract::service;
use lumie_contract::workspace::STABLE_SERVICE;

use crate::metrics::{DriftLabels, Metrics};

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

/// What `/readyz` reports beyond the database.
#[derive(Debug, Default, Clone)]
pub struct ReadinessState {
    /// The kube API answered the last check.
    pub kube_reachable: bool,
    /// Contract drift and other non-fatal warnings.
    pub warnings: Vec<String>,
    /// Shutting down: `/healthz` and `/readyz` answer 503 so balancers stop sending requests.
    pub draining: bool,
}

/// The periodic contract check and what it writes: readiness, the drift metric, log lines.
pub struct DriftCheck {
    /// Kube client.
    pub client: Client,
    /// The workspace namespace.
    pub namespace: String,
    /// The template's ServiceAccount (the overlay's `dev-workspace`).
    pub service_account: String,
    /// Where `/readyz` reads the outcome.
    pub readiness: Arc<RwLock<ReadinessState>>,
    /// The drift metric.
    pub metrics: Arc<Metrics>,
    /// How often to check.
    pub interval: Duration,
}

impl DriftCheck {
    /// Runs one check and records it: readiness (kube reachable + warnings), metric, log lines.
    pub async fn check_and_record(&self) {
        let sa_name = &self.service_account;
        match check(&self.client, &self.namespace, sa_name).await {
            Ok(drifts) => {
                let drifted: BTreeSet<(String, String)> = drifts
                    .iter()
                    .map(|d| (d.object.clone(), d.field.clone()))
                    .collect();
                for (object, field) in known_fields(sa_name) {
                    let v = i64::from(drifted.contains(&(object.clone(), field.clone())));
                    self.metrics
                        .contract_drift
                        .get_or_create(&DriftLabels { object, field })
                        .set(v);
                }
                for d in &drifts {
                    tracing::warn!(object = %d.object, field = %d.field, "contract drift: {}", d.message);
                }
                let mut r = self.readiness.write().expect("readiness lock");
                r.kube_reachable = true;
                r.warnings = drifts.into_iter().map(|d| d.message).collect();
            }
            Err(e) => {
                tracing::warn!(error = %e, "kube API check failed");
                let mut r = self.readiness.write().expect("readiness lock");
                r.kube_reachable = false;
            }
        }
    }

    /// Checks every `interval` until the process ends (the first check is the caller's, at start).
    pub async fn run(self) {
        loop {
            tokio::time::sleep(self.interval).await;
            self.check_and_record().await;
        }
    }
}
