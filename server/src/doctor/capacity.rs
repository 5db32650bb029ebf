//! Scheduling: workspace pods stuck in Pending (with the scheduler's own words), and whether a
//! worker has room for one more workspace. Pure over nodes, pods, events and the template.
//!
//! The capacity model is deliberately simple, and says so in its output: a worker is a node
//! that is Ready, not cordoned, without `NoSchedule`/`NoExecute` taints, and without any of the
//! policy's avoided (control-plane) labels; its free room is allocatable minus the requests of
//! the non-terminated pods bound to it (containers summed, init containers as their maximum);
//! one more workspace needs the template's summed requests and one pod slot.

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::jiff::Timestamp;

use super::checks::id;
use super::report::Check;

/// The `dind` image of the server's built-in workspace template (server `template.rs`,
/// `Images::default`), used when no template ConfigMap overrides it.
pub const BUILTIN_DIND_IMAGE: &str = "docker:27-dind";

/// Parses a Kubernetes quantity (`100m`, `2`, `1.5`, `32Gi`, `1e3`, `129M`) into base units
/// (cores, bytes).
pub fn parse_quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || *c == '.' || (*i == 0 && (*c == '+' || *c == '-'))))
        .map_or(s.len(), |(i, _)| i);
    let (number, suffix) = s.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => 10f64.powi(exp[1..].parse::<i32>().ok()?),
        _ => return None,
    };
    Some(number * factor)
}

/// What one more workspace needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Need {
    /// CPU cores requested.
    pub cpu: f64,
    /// Memory bytes requested.
    pub memory: f64,
    /// Where the numbers come from, for the report.
    pub source: String,
}

/// What the doctor takes from the workspace template.
#[derive(Clone, Debug, PartialEq)]
pub struct TemplateFacts {
    /// The summed requests of `dev`, `agents` and `dind`.
    pub need: Need,
    /// The `dind` image.
    pub dind_image: String,
}

/// Reads the template config (`LUMIE_TEMPLATE_FILE` YAML: `resources.<container>.requests`,
/// `images.dind`); `None` is the built-in template, which requests nothing.
pub fn template_facts(yaml: Option<&str>, source: &str) -> Result<TemplateFacts, String> {
    let Some(yaml) = yaml else {
        return Ok(TemplateFacts {
            need: Need {
                cpu: 0.0,
                memory: 0.0,
                source: "the built-in template (no requests; one pod slot)".into(),
            },
            dind_image: BUILTIN_DIND_IMAGE.into(),
        });
    };
    let doc: serde_yaml::Value =
        serde_yaml::from_str(yaml).map_err(|e| format!("{source} is not YAML: {e}"))?;
    let mut cpu = 0.0;
    let mut memory = 0.0;
    for container in lumie_contract::workspace::REQUIRED_CONTAINERS {
        let requests = &doc["resources"][container]["requests"];
        for (key, total) in [("cpu", &mut cpu), ("memory", &mut memory)] {
            let v = &requests[key];
            let text = match v {
                serde_yaml::Value::Null => continue,
                serde_yaml::Value::String(s) => s.clone(),
                serde_yaml::Value::Number(n) => n.to_string(),
                other => {
                    return Err(format!(
                        "{source}: resources.{container}.requests.{key} is {other:?}"
                    ));
                }
            };
            *total += parse_quantity(&text).ok_or_else(|| {
                format!("{source}: resources.{container}.requests.{key} {text:?} is not a quantity")
            })?;
        }
    }
    let dind_image = doc["images"]["dind"]
        .as_str()
        .unwrap_or(BUILTIN_DIND_IMAGE)
        .to_string();
    Ok(TemplateFacts {
        need: Need {
            cpu,
            memory,
            source: format!(
                "{source} (requests {} CPU, {} memory; one pod slot)",
                cores(cpu),
                bytes(memory)
            ),
        },
        dind_image,
    })
}

fn cores(c: f64) -> String {
    let s = format!("{c:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn bytes(b: f64) -> String {
    let gi = 1024f64.powi(3);
    if b.abs() >= gi {
        format!("{:.1}Gi", b / gi)
    } else {
        format!("{:.0}Mi", b / 1024f64.powi(2))
    }
}

/// Effective requests of a pod: containers summed, at least the largest init container.
fn pod_requests(pod: &Pod) -> (f64, f64) {
    let Some(spec) = &pod.spec else {
        return (0.0, 0.0);
    };
    let req = |c: &k8s_openapi::api::core::v1::Container, key: &str| {
        c.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get(key))
            .and_then(|q| parse_quantity(&q.0))
            .unwrap_or(0.0)
    };
    let sum = |key| spec.containers.iter().map(|c| req(c, key)).sum::<f64>();
    let init_max = |key| {
        spec.init_containers
            .iter()
            .flatten()
            .map(|c| req(c, key))
            .fold(0.0, f64::max)
    };
    (
        sum("cpu").max(init_max("cpu")),
        sum("memory").max(init_max("memory")),
    )
}

fn terminated(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

/// Why a node is not a worker for workspaces, if it is not.
fn not_a_worker(node: &Node, avoid_labels: &[String]) -> Option<String> {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    if let Some(l) = avoid_labels.iter().find(|l| labels.contains_key(*l)) {
        return Some(format!("control plane ({l})"));
    }
    let spec = node.spec.as_ref();
    if spec.and_then(|s| s.unschedulable) == Some(true) {
        return Some("cordoned".into());
    }
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    if !ready {
        return Some("not Ready".into());
    }
    if let Some(t) = spec
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .find(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
    {
        return Some(format!("tainted {}:{}", t.key, t.effect));
    }
    None
}

struct Room {
    node: String,
    cpu: f64,
    memory: f64,
    pods: f64,
}

/// Whether some worker can take one more workspace.
pub fn worker_capacity(
    nodes: &[Node],
    pods: &[Pod],
    avoid_labels: &[String],
    need: &Need,
) -> Check {
    let mut rooms = Vec::new();
    let mut excluded = Vec::new();
    for node in nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        if let Some(why) = not_a_worker(node, avoid_labels) {
            excluded.push(format!("{name}: {why}"));
            continue;
        }
        let alloc = node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.clone())
            .unwrap_or_default();
        let q = |k: &str| {
            alloc
                .get(k)
                .and_then(|q| parse_quantity(&q.0))
                .unwrap_or(0.0)
        };
        let mut room = Room {
            node: name.clone(),
            cpu: q("cpu"),
            memory: q("memory"),
            pods: q("pods"),
        };
        for pod in pods.iter().filter(|p| {
            !terminated(p) && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&name)
        }) {
            let (c, m) = pod_requests(pod);
            room.cpu -= c;
            room.memory -= m;
            room.pods -= 1.0;
        }
        rooms.push(room);
    }
    let fits = |r: &&Room| r.cpu >= need.cpu && r.memory >= need.memory && r.pods >= 1.0;
    let describe = |r: &Room| {
        format!(
            "{}: {} CPU, {} memory, {} pod slots free",
            r.node,
            cores(r.cpu),
            bytes(r.memory),
            r.pods.max(0.0)
        )
    };
    let assumed = format!("a workspace needs {}", need.source);
    let fitting: Vec<&Room> = rooms.iter().filter(fits).collect();
    if let Some(best) = fitting
        .iter()
        .max_by(|a, b| a.cpu.total_cmp(&b.cpu).then(a.memory.total_cmp(&b.memory)))
    {
        return Check::ok(
            id::WORKER_CAPACITY,
            format!(
                "{} of {} worker(s) can take one more workspace (most room: {}); {assumed}",
                fitting.len(),
                rooms.len(),
                describe(best)
            ),
        );
    }
    let mut why: Vec<String> = rooms.iter().map(describe).collect();
    why.extend(excluded);
    Check::failure(
        id::WORKER_CAPACITY,
        format!(
            "no worker has room for one more workspace ({assumed}): {}",
            if why.is_empty() {
                "no nodes".to_string()
            } else {
                why.join("; ")
            }
        ),
        "uncordon or add a worker, free capacity on one, or lower the template's requests",
    )
}

fn event_time(e: &Event) -> Option<Timestamp> {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// Workspace pods in Pending, each with the scheduler's reason (the latest `FailedScheduling`
/// event's message, verbatim, or the PodScheduled condition's).
pub fn pending_workspaces(namespace: &str, pods: &[Pod], events: &[Event]) -> Check {
    let mut unschedulable = Vec::new();
    let mut waiting = Vec::new();
    let mut total = 0;
    for pod in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        total += 1;
        let status = pod.status.as_ref();
        if status.and_then(|s| s.phase.as_deref()) != Some("Pending") {
            continue;
        }
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.as_deref();
        let scheduled_cond = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"));
        let event = events
            .iter()
            .filter(|e| e.reason.as_deref() == Some("FailedScheduling"))
            .filter(|e| {
                e.involved_object.name.as_deref() == Some(&name)
                    && (uid.is_none()
                        || e.involved_object.uid.is_none()
                        || e.involved_object.uid.as_deref() == uid)
            })
            .max_by_key(|e| event_time(e));
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let unscheduled = node.is_none()
            && (event.is_some() || scheduled_cond.is_some_and(|c| c.status == "False"));
        if unscheduled {
            let reason = event
                .and_then(|e| e.message.clone())
                .or_else(|| scheduled_cond.and_then(|c| c.message.clone()))
                .unwrap_or_else(|| "unschedulable".into());
            unschedulable.push(format!("{namespace}/{name}: {}", reason.trim()));
        } else {
            let detail = match node {
                Some(n) => format!("scheduled on {n}, containers not started"),
                None => "not yet scheduled".into(),
            };
            waiting.push(format!("{namespace}/{name} ({detail})"));
        }
    }
    if !unschedulable.is_empty() {
        return Check::failure(
            id::PENDING_WORKSPACES,
            format!(
                "{} workspace pod(s) cannot be scheduled: {}",
                unschedulable.len(),
                unschedulable.join("; ")
            ),
            format!(
                "act on the scheduler's reason (uncordon or add workers, free capacity, fix taints/affinity); kubectl -n {namespace} describe pod NAME"
            ),
        );
    }
    if !waiting.is_empty() {
        return Check::warning(
            id::PENDING_WORKSPACES,
            format!(
                "{} workspace pod(s) Pending: {}",
                waiting.len(),
                waiting.join("; ")
            ),
            format!("if it lasts, kubectl -n {namespace} describe pod NAME (image pulls, volumes)"),
        );
    }
    Check::ok(
        id::PENDING_WORKSPACES,
        format!("no workspace pod Pending ({total} workspace pod(s) in {namespace})"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::fixtures::{assert_verdict, from, node};
    use crate::doctor::report::Status;
    use serde_json::json;

    #[test]
    fn quantities() {
        let cases: &[(&str, Option<f64>)] = &[
            ("100m", Some(0.1)),
            ("2", Some(2.0)),
            ("1.5", Some(1.5)),
            ("32Gi", Some(32.0 * 1024f64.powi(3))),
            ("256Mi", Some(256.0 * 1024f64.powi(2))),
            ("1k", Some(1000.0)),
            ("129M", Some(129e6)),
            ("1e3", Some(1000.0)),
            ("1E", Some(1e18)),
            ("5Ki", Some(5120.0)),
            ("", None),
            ("abc", None),
            ("1Xi", None),
        ];
        for (s, want) in cases {
            match (parse_quantity(s), want) {
                (Some(got), Some(w)) => {
                    assert!((got - w).abs() < 1e-6 * w.max(1.0), "{s}: {got} != {w}")
                }
                (None, None) => {}
                (got, w) => panic!("{s}: {got:?} != {w:?}"),
            }
        }
    }

    #[test]
    fn template_facts_sum_requests() {
        let builtin = template_facts(None, "x").unwrap();
        assert_eq!(builtin.need.cpu, 0.0);
        assert_eq!(builtin.dind_image, BUILTIN_DIND_IMAGE);
        let t = template_facts(
            Some("images:\n  dind: docker:28-dind\nresources:\n  dev:\n    requests:\n      cpu: \"2\"\n      memory: 4Gi\n  dind:\n    requests:\n      cpu: 500m\n"),
            "ConfigMap coder/coder-workspace-template",
        )
        .unwrap();
        assert!((t.need.cpu - 2.5).abs() < 1e-9);
        assert_eq!(t.need.memory, 4.0 * 1024f64.powi(3));
        assert_eq!(t.dind_image, "docker:28-dind");
        assert!(
            t.need.source.contains("requests 2.5 CPU, 4.0Gi memory"),
            "{}",
            t.need.source
        );
        assert!(
            template_facts(
                Some("resources:\n  dev:\n    requests:\n      cpu: lots\n"),
                "f"
            )
            .unwrap_err()
            .contains("not a quantity")
        );
        assert!(
            template_facts(Some("[\n"), "f")
                .unwrap_err()
                .contains("not YAML")
        );
    }

    fn bound(node: &str, cpu: &str, memory: &str, phase: &str) -> Pod {
        from(json!({
            "metadata": {"name": format!("p-{node}-{cpu}")},
            "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": memory}}}],
                     "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "100m"}}}]},
            "status": {"phase": phase}
        }))
    }

    fn need(cpu: f64, gib: f64) -> Need {
        Need {
            cpu,
            memory: gib * 1024f64.powi(3),
            source: "test".into(),
        }
    }

    #[test]
    fn capacity_table() {
        let avoid = vec!["node-role.kubernetes.io/control-plane".to_string()];
        let cp = node(
            "cp",
            json!({"metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}}}),
        );
        let w1 = node("w1", json!({}));
        let cordoned = node("w2", json!({"spec": {"unschedulable": true}}));
        let not_ready = node(
            "w3",
            json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
        );
        let tainted = node(
            "w4",
            json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
        );
        let full_pods = node("w5", json!({"status": {"allocatable": {"pods": "1"}}}));
        type Case = (
            &'static str,
            Vec<Node>,
            Vec<Pod>,
            Need,
            Status,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            (
                "room",
                vec![cp.clone(), w1.clone()],
                vec![],
                need(2.0, 4.0),
                Status::Ok,
                "1 of 1 worker(s)",
            ),
            (
                "control plane never counts",
                vec![cp.clone()],
                vec![],
                need(0.0, 0.0),
                Status::Failure,
                "cp: control plane",
            ),
            (
                "requests fill it",
                vec![w1.clone()],
                vec![bound("w1", "3", "1Gi", "Running")],
                need(2.0, 1.0),
                Status::Failure,
                "w1: 1 CPU",
            ),
            (
                "finished pods free it",
                vec![w1.clone()],
                vec![bound("w1", "3", "1Gi", "Succeeded")],
                need(2.0, 1.0),
                Status::Ok,
                "w1: 4 CPU",
            ),
            (
                "memory",
                vec![w1.clone()],
                vec![bound("w1", "1", "7Gi", "Running")],
                need(1.0, 2.0),
                Status::Failure,
                "1.0Gi memory",
            ),
            (
                "cordoned",
                vec![cordoned],
                vec![],
                need(0.0, 0.0),
                Status::Failure,
                "w2: cordoned",
            ),
            (
                "not ready",
                vec![not_ready],
                vec![],
                need(0.0, 0.0),
                Status::Failure,
                "w3: not Ready",
            ),
            (
                "tainted",
                vec![tainted],
                vec![],
                need(0.0, 0.0),
                Status::Failure,
                "w4: tainted dedicated:NoSchedule",
            ),
            (
                "pod slots",
                vec![full_pods],
                vec![bound("w5", "0", "0", "Running")],
                need(0.0, 0.0),
                Status::Failure,
                "0 pod slots",
            ),
            (
                "no nodes",
                vec![],
                vec![],
                need(0.0, 0.0),
                Status::Failure,
                "no nodes",
            ),
        ];
        for (name, nodes, pods, need, status, text) in cases {
            let c = worker_capacity(&nodes, &pods, &avoid, &need);
            assert_verdict(name, &c, status, text);
            assert!(
                c.summary.contains("a workspace needs test"),
                "{name}: says what it assumed"
            );
        }
    }

    #[test]
    fn init_containers_count_as_their_maximum() {
        let p: Pod = from(json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "100m"}}}, {"name": "b", "resources": {"requests": {"cpu": "200m"}}}],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "1", "memory": "1Mi"}}}]
        }}));
        let (cpu, mem) = pod_requests(&p);
        assert!((cpu - 1.0).abs() < 1e-9);
        assert_eq!(mem, 1024.0 * 1024.0);
    }

    fn pending(name: &str, node: Option<&str>, cond: Option<(&str, &str)>) -> Pod {
        let mut p = json!({
            "metadata": {"name": name, "uid": format!("uid-{name}")},
            "spec": {"containers": [{"name": "dev"}]},
            "status": {"phase": "Pending"}
        });
        if let Some(n) = node {
            p["spec"]["nodeName"] = json!(n);
        }
        if let Some((status, message)) = cond {
            p["status"]["conditions"] = json!([{"type": "PodScheduled", "status": status, "reason": "Unschedulable", "message": message}]);
        }
        from(p)
    }

    fn failed_scheduling(pod: &str, message: &str, at: &str) -> Event {
        from(json!({
            "metadata": {"name": format!("{pod}.{at}"), "creationTimestamp": at},
            "involvedObject": {"kind": "Pod", "name": pod, "uid": format!("uid-{pod}")},
            "reason": "FailedScheduling", "message": message, "type": "Warning"
        }))
    }

    #[test]
    fn pending_table() {
        let running: Pod =
            from(json!({"metadata": {"name": "ok"}, "status": {"phase": "Running"}}));
        let msg = "0/4 nodes are available: 1 node(s) had taint {node-role.kubernetes.io/master: }, that the pod didn't tolerate, 3 node(s) were unschedulable.";
        type Case = (&'static str, Vec<Pod>, Vec<Event>, Status, &'static str);
        let cases: Vec<Case> = vec![
            (
                "none",
                vec![running.clone()],
                vec![],
                Status::Ok,
                "no workspace pod Pending (1 workspace pod(s) in lumie-dev)",
            ),
            (
                "latest event verbatim",
                vec![pending("ws-a", None, Some(("False", "condition text")))],
                vec![
                    failed_scheduling("ws-a", "old", "2024-01-01T00:00:00Z"),
                    failed_scheduling("ws-a", msg, "2024-01-01T00:01:00Z"),
                ],
                Status::Failure,
                msg,
            ),
            (
                "condition when events expired",
                vec![pending(
                    "ws-a",
                    None,
                    Some(("False", "0/4 nodes are available: 4 Insufficient cpu.")),
                )],
                vec![],
                Status::Failure,
                "lumie-dev/ws-a: 0/4 nodes are available: 4 Insufficient cpu.",
            ),
            (
                "another pod's event is not ours",
                vec![pending("ws-a", None, None)],
                vec![failed_scheduling("ws-b", msg, "2024-01-01T00:00:00Z")],
                Status::Warning,
                "ws-a (not yet scheduled)",
            ),
            (
                "scheduled, pulling",
                vec![pending("ws-a", Some("worker-1"), Some(("True", "")))],
                vec![],
                Status::Warning,
                "scheduled on worker-1",
            ),
        ];
        for (name, pods, events, status, text) in cases {
            let c = pending_workspaces("lumie-dev", &pods, &events);
            assert_verdict(name, &c, status, text);
        }
    }
}
