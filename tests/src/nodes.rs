//! Fake nodes: one control-plane node and three workers, Ready with capacity, plus helpers to
//! cordon or fill a worker for "workers under pressure" tests.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use crate::HarnessError;

/// The control-plane node (labelled `node-role.kubernetes.io/control-plane` and `…/master`).
pub const CONTROL_PLANE_NODE: &str = "control-plane-1";
/// The worker nodes.
pub const WORKERS: [&str; 3] = ["worker-1", "worker-2", "worker-3"];

/// Creates every node and makes it schedulable.
pub async fn create_all(client: &Client) -> Result<(), HarnessError> {
    create(client, CONTROL_PLANE_NODE, true).await?;
    for w in WORKERS {
        create(client, w, false).await?;
    }
    Ok(())
}

async fn create(client: &Client, name: &str, control_plane: bool) -> Result<(), HarnessError> {
    let api = Api::<Node>::all(client.clone());
    let mut labels = json!({
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
    });
    if control_plane {
        labels["node-role.kubernetes.io/control-plane"] = json!("");
        labels["node-role.kubernetes.io/master"] = json!("");
    } else {
        labels["node-role.kubernetes.io/worker"] = json!("");
    }
    let node: Node = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
        .expect("static node");
    let err = |what: &str| {
        let what = format!("{what} node {name}");
        move |e| HarnessError::Kube(what, e)
    };
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(err("creating")(e)),
    }
    // The apiserver taints new nodes not-ready; the node lifecycle controller would lift it.
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"taints": null}})),
    )
    .await
    .map_err(err("untainting"))?;
    set_capacity(client, name, 110).await
}

/// Marks a node Ready with 8 CPUs, 32 GiB and room for `pods` pods (0 fills it).
pub async fn set_capacity(client: &Client, name: &str, pods: u32) -> Result<(), HarnessError> {
    let now = now_rfc3339();
    let resources = json!({"cpu": "8", "memory": "32Gi", "pods": pods.to_string(), "ephemeral-storage": "100Gi"});
    let status = json!({"status": {
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "lumie harness node",
             "lastHeartbeatTime": now, "lastTransitionTime": now},
            {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
             "lastHeartbeatTime": now, "lastTransitionTime": now},
            {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure",
             "lastHeartbeatTime": now, "lastTransitionTime": now},
            {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID",
             "lastHeartbeatTime": now, "lastTransitionTime": now}
        ],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
        "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "lumie harness",
                     "containerRuntimeVersion": "lumie-sim://0", "kubeletVersion": "v1.20.2", "kubeProxyVersion": "v1.20.2",
                     "operatingSystem": "linux", "architecture": "amd64"}
    }});
    Api::<Node>::all(client.clone())
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .map(|_| ())
        .map_err(|e| HarnessError::Kube(format!("setting status of node {name}"), e))
}

/// Cordons (`true`) or uncordons a node.
pub async fn cordon(client: &Client, name: &str, unschedulable: bool) -> Result<(), HarnessError> {
    Api::<Node>::all(client.clone())
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": unschedulable}})),
        )
        .await
        .map(|_| ())
        .map_err(|e| HarnessError::Kube(format!("cordoning node {name}"), e))
}

/// Cordons or uncordons every worker. Cordoning returns once the scheduler acts on it, so a pod
/// created next is refused rather than bound (see [`wait_until_the_scheduler_sees_the_cordon`]).
pub async fn cordon_workers(client: &Client, unschedulable: bool) -> Result<(), HarnessError> {
    for w in WORKERS {
        cordon(client, w, unschedulable).await?;
    }
    if unschedulable {
        wait_until_the_scheduler_sees_the_cordon(client).await?;
    }
    Ok(())
}

/// The scheduler learns of a cordon through its node watch, which on a busy machine can lag
/// behind the API's answer and behind the watch that brings it a new pod: a pod created in that
/// moment is still bound to a worker. A probe pod only a worker could take shows when the
/// scheduler has seen every cordon: once a probe is refused, so is every later pod. A probe bound
/// in the meantime is deleted and another one tried.
async fn wait_until_the_scheduler_sees_the_cordon(client: &Client) -> Result<(), HarnessError> {
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    let probe: Pod = serde_json::from_value(json!({
        "metadata": {"generateName": "cordon-probe-"},
        "spec": {
            "containers": [{"name": "main", "image": "busybox:1.36"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "node-role.kubernetes.io/worker", "operator": "Exists"}
                ]}]
            }}}
        }
    }))
    .expect("static probe pod");
    let kube_err = |what: &'static str| move |e| HarnessError::Kube(what.to_string(), e);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let created = pods
            .create(&PostParams::default(), &probe)
            .await
            .map_err(kube_err("creating the cordon probe pod"))?;
        let name = created.metadata.name.expect("generated name");
        let refused = loop {
            let pod = pods
                .get(&name)
                .await
                .map_err(kube_err("reading the cordon probe pod"))?;
            if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()) {
                eprintln!(
                    "cordon probe {name} bound to {node} before the scheduler saw the cordon"
                );
                break false;
            }
            let unschedulable = pod
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "PodScheduled" && c.reason.as_deref() == Some("Unschedulable"));
            if unschedulable {
                break true;
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Timeout(format!(
                    "the scheduler neither refused nor bound pod default/{name} within 60 s of \
                     every worker being cordoned"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        pods.delete(&name, &DeleteParams::default().grace_period(0))
            .await
            .map_err(kube_err("deleting the cordon probe pod"))?;
        if refused {
            return Ok(());
        }
    }
}

/// Now, as RFC 3339 (what Kubernetes timestamps look like).
pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
