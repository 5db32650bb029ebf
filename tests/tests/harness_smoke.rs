//! The harness itself: the real scheduler keeps workspace-like pods off the control-plane node,
//! the simulator runs them, and with every worker cordoned a pod stays Pending with the
//! scheduler's reason in a `FailedScheduling` event.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use lumie_tests::{Cluster, Identity, nodes};
use serde_json::json;

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "containers": [{"name": "main", "image": "busybox:1.36"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist"},
                    {"key": "node-role.kubernetes.io/master", "operator": "DoesNotExist"}
                ]}]
            }}}
        }
    }))
    .unwrap()
}

/// Polls `f` for up to 30 s; on timeout the panic carries the scheduler's last log lines and the
/// pods in `default`, since a stuck pod is usually explained there.
async fn wait_for<T>(cluster: &Cluster, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..150 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let client = cluster.client().await;
    let pods = Api::<Pod>::namespaced(client, "default")
        .list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .iter()
                .map(|p| format!("{:?} {:?}\n", p.metadata.name, p.status))
                .collect::<String>()
        });
    panic!(
        "timed out waiting for {what}\npods: {pods:?}\nkube-scheduler log:\n{}",
        cluster.log_tail("kube-scheduler", 40)
    );
}

async fn scheduled_on_a_worker_and_running(cluster: &Cluster, client: &Client) {
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    let mut ips = Vec::new();
    for i in 0..4 {
        let name = format!("smoke-{i}");
        pods.create(&PostParams::default(), &pod(&name))
            .await
            .unwrap();
        let running = wait_for(cluster, "the pod to run", async || {
            let p = pods.get(&name).await.ok()?;
            (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
        })
        .await;
        let node = running.spec.unwrap().node_name.unwrap();
        assert!(nodes::WORKERS.contains(&node.as_str()), "bound to {node}");
        let ip = running.status.unwrap().pod_ip.unwrap();
        assert!(ip.starts_with("127."), "{ip}");
        ips.push(ip);
    }
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 4, "pod IPs are distinct");
    for i in 0..4 {
        pods.delete(&format!("smoke-{i}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    wait_for(cluster, "the pods to be gone", async || {
        pods.list(&ListParams::default().labels(""))
            .await
            .ok()
            .filter(|l| {
                !l.items.iter().any(|p| {
                    p.metadata
                        .name
                        .as_deref()
                        .unwrap_or("")
                        .starts_with("smoke-")
                })
            })
    })
    .await;
}

async fn pending_with_the_schedulers_reason_when_workers_are_cordoned(
    cluster: &Cluster,
    client: &Client,
) {
    nodes::cordon_workers(client, true).await.unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    let events = Api::<Event>::namespaced(client.clone(), "default");
    let created = pods
        .create(&PostParams::default(), &pod("stuck"))
        .await
        .unwrap();
    let uid = created.metadata.uid.unwrap();
    let message = wait_for(cluster, "a FailedScheduling event", async || {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("FailedScheduling")
                    && e.involved_object.uid.as_deref() == Some(uid.as_str())
            })
            .and_then(|e| e.message)
    })
    .await;
    assert!(message.starts_with("0/4 nodes are available"), "{message}");
    assert!(message.contains("unschedulable"), "{message}");
    let p = pods.get("stuck").await.unwrap();
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Pending"));
    nodes::cordon_workers(client, false).await.unwrap();
    let node = wait_for(
        cluster,
        "the pod to be bound after uncordoning",
        async || pods.get("stuck").await.ok()?.spec?.node_name,
    )
    .await;
    assert!(nodes::WORKERS.contains(&node.as_str()));
    pods.delete("stuck", &DeleteParams::default())
        .await
        .unwrap();
}

/// One test, run in order: cordoning every worker would disturb anything scheduled beside it.
#[tokio::test]
async fn scheduler_and_simulator_behave_like_a_cluster() {
    let cluster = Cluster::shared();
    let client = cluster.client().await;
    scheduled_on_a_worker_and_running(cluster, &client).await;
    pending_with_the_schedulers_reason_when_workers_are_cordoned(cluster, &client).await;
}

#[tokio::test]
async fn identities_have_the_rbac_of_a_real_cluster() {
    let cluster = Cluster::shared();
    let dev = cluster.client_as(Identity::Developer).await;
    // The developer account is admin in lumie-dev (aggregated admin role) and nothing elsewhere.
    Api::<Pod>::namespaced(dev.clone(), "lumie-dev")
        .list(&ListParams::default())
        .await
        .unwrap();
    let err = Api::<Pod>::namespaced(dev, "kube-system")
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 403),
        "{err}"
    );
    let cp = cluster.client_as(Identity::ControlPlane).await;
    Api::<Pod>::namespaced(cp.clone(), "lumie-dev")
        .list(&ListParams::default())
        .await
        .unwrap();
    let err = Api::<Pod>::namespaced(cp, "coder")
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 403),
        "{err}"
    );
}
