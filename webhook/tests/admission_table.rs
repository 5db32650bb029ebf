//! Table tests of the admission decisions, through the same `review()` the HTTPS endpoints and
//! `lumie-webhook review` use: validation rules, modes, exemptions, mutation patches (applied
//! with `json-patch` and re-reviewed for idempotency) and unreadable input.

use json_patch::Patch;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use lumie_contract::policy::{BreakGlass, PolicyMode, WorkspacePolicySpec};
use lumie_webhook::Error;
use lumie_webhook::metrics::Decision;
use lumie_webhook::policy::PolicySet;
use lumie_webhook::review::{Endpoint, review};
mod common;
use common::workspace_pod;
use serde_json::{Value, json};

const CONTROL_PLANE: &str = "system:serviceaccount:coder:coder";
const DEVELOPER: &str = "alice@lumie-infra.com";

/// A developer's plain pod (not a workspace pod).
fn plain_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "scratch", "namespace": "lumie-dev", "labels": {"app": "scratch"}},
        "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}]}
    })
}

struct Req {
    endpoint: Endpoint,
    operation: &'static str,
    user: &'static str,
    groups: Vec<&'static str>,
    namespace: &'static str,
    kind: (&'static str, &'static str),
    sub_resource: Option<&'static str>,
    object: Value,
    old: Option<Value>,
    dry_run: bool,
    /// `request.name` when it is not the object's (a CONNECT names the pod).
    name: Option<&'static str>,
    /// `userInfo.extra["authentication.kubernetes.io/pod-name"]`.
    pod_name: Option<&'static str>,
}

impl Req {
    fn validate(user: &'static str, object: Value) -> Self {
        Req {
            endpoint: Endpoint::Validate,
            operation: "CREATE",
            user,
            groups: vec!["system:authenticated"],
            namespace: "lumie-dev",
            kind: ("", "Pod"),
            sub_resource: None,
            object,
            old: None,
            dry_run: false,
            name: None,
            pod_name: None,
        }
    }
    fn mutate(user: &'static str, object: Value) -> Self {
        Req {
            endpoint: Endpoint::Mutate,
            ..Req::validate(user, object)
        }
    }
    fn body(&self) -> Vec<u8> {
        let name = self
            .name
            .map_or_else(|| self.object["metadata"]["name"].clone(), |n| json!(n));
        let mut user = json!({"username": self.user, "groups": self.groups});
        if let Some(p) = self.pod_name {
            user["extra"] = json!({"authentication.kubernetes.io/pod-name": [p],
                "authentication.kubernetes.io/pod-uid": ["0d4b"]});
        }
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": self.kind.0, "version": "v1", "kind": self.kind.1},
                "resource": {"group": self.kind.0, "version": "v1", "resource": "pods"},
                "subResource": self.sub_resource,
                "name": name,
                "namespace": self.namespace,
                "operation": self.operation,
                "userInfo": user,
                "object": self.object,
                "oldObject": self.old,
                "dryRun": self.dry_run
            }
        }))
        .unwrap()
    }
}

fn run(set: &PolicySet, req: &Req) -> Value {
    let out = review(set, req.endpoint, &req.body()).expect("readable review");
    let v: Value = serde_json::from_slice(&out.body).unwrap();
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    let resp = v["response"].clone();
    assert_eq!(
        resp["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002",
        "uid echoed"
    );
    assert_eq!(
        out.decision == Decision::Allowed,
        resp["allowed"].as_bool().unwrap()
    );
    if req.endpoint == Endpoint::Validate {
        assert!(resp.get("patch").is_none(), "validate never patches");
    }
    resp
}

fn builtin() -> PolicySet {
    PolicySet::builtin()
}

/// A break-glass lift for an hour: what a policy below the floor needs.
fn lift(spec: &mut WorkspacePolicySpec) {
    spec.break_glass = Some(BreakGlass {
        reason: "INC-1: table test".into(),
        expires: Time(Timestamp::now() + SignedDuration::from_secs(3600)),
    });
}

fn with_policy(edit: impl FnOnce(&mut WorkspacePolicySpec)) -> PolicySet {
    let mut spec = WorkspacePolicySpec::contract_default();
    edit(&mut spec);
    PolicySet::single("default", spec).unwrap()
}

#[derive(Debug)]
enum Want {
    Allow,
    Deny(&'static [&'static str]),
    Warn(&'static [&'static str]),
    Audit(&'static [&'static str]),
    Exempt(&'static str),
}

fn check(name: &str, resp: &Value, want: &Want) {
    let allowed = resp["allowed"].as_bool().unwrap();
    let message = resp["status"]["message"].as_str().unwrap_or("");
    let warnings = resp["warnings"].to_string();
    let audit = resp["auditAnnotations"].to_string();
    match want {
        Want::Allow => {
            assert!(allowed, "{name}: denied: {message}");
            assert!(
                resp.get("warnings").is_none(),
                "{name}: warnings {warnings}"
            );
            assert!(resp.get("auditAnnotations").is_none(), "{name}: {audit}");
        }
        Want::Deny(parts) => {
            assert!(!allowed, "{name}: allowed");
            assert_eq!(resp["status"]["code"], 403, "{name}");
            for p in *parts {
                assert!(message.contains(p), "{name}: {message:?} lacks {p:?}");
            }
        }
        Want::Warn(parts) => {
            assert!(allowed, "{name}: denied: {message}");
            for p in *parts {
                assert!(warnings.contains(p), "{name}: {warnings} lacks {p:?}");
            }
        }
        Want::Audit(parts) => {
            assert!(allowed, "{name}: denied: {message}");
            for p in *parts {
                assert!(audit.contains(p), "{name}: {audit} lacks {p:?}");
            }
        }
        Want::Exempt(part) => {
            assert!(allowed, "{name}: denied: {message}");
            assert!(
                resp["auditAnnotations"]["exempt"]
                    .as_str()
                    .unwrap_or("")
                    .contains(part),
                "{name}: {audit}"
            );
        }
    }
}

type Edit = fn(&mut Value);
type Verify = fn(Option<&Value>, &Value);

fn container(pod: &mut Value, name: &str) -> Value {
    pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap()
}

fn set_container(pod: &mut Value, name: &str, f: impl FnOnce(&mut Value)) {
    let c = pod["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == name)
        .unwrap();
    f(c);
}

fn dev_sc(pod: &mut Value, sc: Value) {
    set_container(pod, "dev", |c| c["securityContext"] = sc);
}

#[test]
fn validation_table_workspace_pods() {
    let cases: Vec<(&str, &'static str, Edit, Want)> = vec![
        (
            "compliant workspace pod",
            CONTROL_PLANE,
            |_| {},
            Want::Allow,
        ),
        (
            "dev privileged",
            CONTROL_PLANE,
            |p| dev_sc(p, json!({"privileged": true})),
            Want::Deny(&[
                r#"container "dev": securityContext.privileged=true is not allowed (only "dind" in workspace pods may be privileged, WorkspacePolicy "default (built-in)")"#,
            ]),
        ),
        (
            "dind with a non-dind image",
            CONTROL_PLANE,
            |p| set_container(p, "dind", |c| c["image"] = json!("ubuntu:22.04")),
            Want::Deny(&[
                r#"container "dind": securityContext.privileged=true is not allowed (image "ubuntu:22.04" is not an allowed image for "dind": docker:*dind*"#,
            ]),
        ),
        (
            "dind from a registry host named docker",
            CONTROL_PLANE,
            |p| {
                set_container(p, "dind", |c| {
                    c["image"] = json!("docker:5000/attacker/dind")
                })
            },
            Want::Deny(&[r#"image "docker:5000/attacker/dind" is not an allowed image"#]),
        ),
        (
            "dind with a look-alike registry",
            CONTROL_PLANE,
            |p| set_container(p, "dind", |c| c["image"] = json!("evil.io/docker:dind")),
            Want::Deny(&[r#"image "evil.io/docker:dind" is not an allowed image"#]),
        ),
        (
            "dind created by a developer",
            DEVELOPER,
            |_| {},
            Want::Deny(&[r#"created by workspaceCreators; "alice@lumie-infra.com" is not one"#]),
        ),
        (
            "a second privileged dind-image container",
            CONTROL_PLANE,
            |p| {
                let mut c = container(p, "dind");
                c["name"] = json!("dind2");
                p["spec"]["containers"].as_array_mut().unwrap().push(c);
            },
            Want::Deny(&[r#"container "dind2": securityContext.privileged=true"#]),
        ),
        (
            "privileged init container",
            CONTROL_PLANE,
            |p| {
                p["spec"]["initContainers"] = json!([{"name": "setup", "image": "busybox",
                    "securityContext": {"privileged": true}}])
            },
            Want::Deny(&[
                r#"init container "setup": securityContext.privileged=true is not allowed"#,
                "init and ephemeral containers never are",
            ]),
        ),
        (
            "init container named dind with a dind image",
            CONTROL_PLANE,
            |p| {
                let mut c = container(p, "dind");
                p["spec"]["containers"].as_array_mut().unwrap().pop();
                c["name"] = json!("dind");
                p["spec"]["initContainers"] = json!([c]);
            },
            Want::Deny(&[r#"init container "dind": securityContext.privileged=true"#]),
        ),
        (
            "privileged ephemeral container in the pod",
            CONTROL_PLANE,
            |p| {
                p["spec"]["ephemeralContainers"] = json!([{"name": "debug", "image": "busybox",
                    "securityContext": {"privileged": true}}])
            },
            Want::Deny(&[r#"ephemeral container "debug": securityContext.privileged=true"#]),
        ),
        (
            "ephemeral container adding SYS_PTRACE",
            CONTROL_PLANE,
            |p| {
                p["spec"]["ephemeralContainers"] = json!([{"name": "debug", "image": "busybox",
                    "securityContext": {"capabilities": {"add": ["SYS_PTRACE"]}}}])
            },
            Want::Deny(&[
                r#"ephemeral container "debug": securityContext.capabilities.add=["SYS_PTRACE"]"#,
            ]),
        ),
        (
            "allowPrivilegeEscalation true",
            CONTROL_PLANE,
            |p| dev_sc(p, json!({"allowPrivilegeEscalation": true})),
            Want::Deny(&[
                r#"container "dev": securityContext.allowPrivilegeEscalation=true is not allowed (Pod Security baseline"#,
            ]),
        ),
        (
            "allowPrivilegeEscalation false",
            CONTROL_PLANE,
            |p| dev_sc(p, json!({"allowPrivilegeEscalation": false})),
            Want::Allow,
        ),
        (
            "SYS_ADMIN",
            CONTROL_PLANE,
            |p| dev_sc(p, json!({"capabilities": {"add": ["SYS_ADMIN"]}})),
            Want::Deny(&[r#"securityContext.capabilities.add=["SYS_ADMIN"]"#]),
        ),
        (
            "NET_ADMIN and SYS_MODULE listed together, baseline ones not",
            CONTROL_PLANE,
            |p| {
                dev_sc(
                    p,
                    json!({"capabilities": {"add": ["CHOWN", "NET_ADMIN", "SYS_MODULE"]}}),
                )
            },
            Want::Deny(&[r#"add=["NET_ADMIN", "SYS_MODULE"]"#]),
        ),
        (
            "CAP_ prefix and lower case do not hide a capability",
            CONTROL_PLANE,
            |p| dev_sc(p, json!({"capabilities": {"add": ["cap_sys_admin"]}})),
            Want::Deny(&[r#"add=["cap_sys_admin"]"#]),
        ),
        (
            "ALL",
            CONTROL_PLANE,
            |p| dev_sc(p, json!({"capabilities": {"add": ["ALL"]}})),
            Want::Deny(&[r#"add=["ALL"]"#]),
        ),
        (
            "baseline capabilities",
            CONTROL_PLANE,
            |p| {
                dev_sc(
                    p,
                    json!({"capabilities": {"add": ["NET_BIND_SERVICE", "CHOWN"], "drop": ["ALL"]}}),
                )
            },
            Want::Allow,
        ),
        (
            "hostPort",
            CONTROL_PLANE,
            |p| {
                set_container(p, "agents", |c| {
                    c["ports"] = json!([{"containerPort": 3000, "hostPort": 3000}])
                })
            },
            Want::Deny(&[r#"container "agents": ports[0].hostPort=3000 is not allowed"#]),
        ),
        (
            "hostPort 0",
            CONTROL_PLANE,
            |p| {
                set_container(p, "agents", |c| {
                    c["ports"] = json!([{"containerPort": 3000, "hostPort": 0}])
                })
            },
            Want::Allow,
        ),
        (
            "hostPort on the excepted dind",
            CONTROL_PLANE,
            |p| {
                set_container(p, "dind", |c| {
                    c["ports"] = json!([{"containerPort": 2375, "hostPort": 2375}])
                })
            },
            Want::Deny(&[r#"container "dind": ports[0].hostPort=2375"#]),
        ),
        (
            "procMount Unmasked",
            CONTROL_PLANE,
            |p| dev_sc(p, json!({"procMount": "Unmasked"})),
            Want::Deny(&[r#"securityContext.procMount="Unmasked""#]),
        ),
        (
            "procMount Default",
            CONTROL_PLANE,
            |p| dev_sc(p, json!({"procMount": "Default"})),
            Want::Allow,
        ),
        (
            "container seccomp Unconfined",
            CONTROL_PLANE,
            |p| dev_sc(p, json!({"seccompProfile": {"type": "Unconfined"}})),
            Want::Deny(&[r#"container "dev": securityContext.seccompProfile.type="Unconfined""#]),
        ),
        (
            "pod seccomp Unconfined",
            CONTROL_PLANE,
            |p| p["spec"]["securityContext"] = json!({"seccompProfile": {"type": "Unconfined"}}),
            Want::Deny(&[r#"pod: spec.securityContext.seccompProfile.type="Unconfined""#]),
        ),
        (
            "seccomp RuntimeDefault",
            CONTROL_PLANE,
            |p| {
                p["spec"]["securityContext"] = json!({"seccompProfile": {"type": "RuntimeDefault"}})
            },
            Want::Allow,
        ),
        (
            "seccomp annotation unconfined",
            CONTROL_PLANE,
            |p| {
                p["metadata"]["annotations"] =
                    json!({"seccomp.security.alpha.kubernetes.io/pod": "unconfined"})
            },
            Want::Deny(&[r#"seccomp.security.alpha.kubernetes.io/pod"#]),
        ),
        (
            "container AppArmor Unconfined",
            CONTROL_PLANE,
            |p| dev_sc(p, json!({"appArmorProfile": {"type": "Unconfined"}})),
            Want::Deny(&[r#"securityContext.appArmorProfile.type="Unconfined""#]),
        ),
        (
            "AppArmor annotation unconfined",
            CONTROL_PLANE,
            |p| {
                p["metadata"]["annotations"] =
                    json!({"container.apparmor.security.beta.kubernetes.io/dev": "unconfined"})
            },
            Want::Deny(&[
                "container.apparmor.security.beta.kubernetes.io/dev",
                "AppArmor",
            ]),
        ),
        (
            "AppArmor annotation runtime/default",
            CONTROL_PLANE,
            |p| {
                p["metadata"]["annotations"] =
                    json!({"container.apparmor.security.beta.kubernetes.io/dev": "runtime/default"})
            },
            Want::Allow,
        ),
        (
            "AppArmor annotation unconfined on the excepted dind",
            CONTROL_PLANE,
            |p| {
                p["metadata"]["annotations"] =
                    json!({"container.apparmor.security.beta.kubernetes.io/dind": "unconfined"})
            },
            Want::Allow,
        ),
        (
            "Windows hostProcess",
            CONTROL_PLANE,
            |p| dev_sc(p, json!({"windowsOptions": {"hostProcess": true}})),
            Want::Deny(&["securityContext.windowsOptions.hostProcess=true"]),
        ),
        (
            "hostNetwork",
            CONTROL_PLANE,
            |p| p["spec"]["hostNetwork"] = json!(true),
            Want::Deny(&["pod: spec.hostNetwork=true is not allowed (Pod Security baseline"]),
        ),
        (
            "hostPID",
            CONTROL_PLANE,
            |p| p["spec"]["hostPID"] = json!(true),
            Want::Deny(&["spec.hostPID=true"]),
        ),
        (
            "hostIPC",
            CONTROL_PLANE,
            |p| p["spec"]["hostIPC"] = json!(true),
            Want::Deny(&["spec.hostIPC=true"]),
        ),
        (
            "hostPath volume",
            CONTROL_PLANE,
            |p| {
                p["spec"]["volumes"] =
                    json!([{"name": "sock", "hostPath": {"path": "/var/run/docker.sock"}}])
            },
            Want::Deny(&[
                r#"spec.volumes[0].hostPath="/var/run/docker.sock""#,
                r#"(volume "sock")"#,
            ]),
        ),
        (
            "unsafe sysctl",
            CONTROL_PLANE,
            |p| {
                p["spec"]["securityContext"] =
                    json!({"sysctls": [{"name": "kernel.msgmax", "value": "1"}]})
            },
            Want::Deny(&[r#"spec.securityContext.sysctls[0].name="kernel.msgmax""#]),
        ),
        (
            "safe sysctl",
            CONTROL_PLANE,
            |p| {
                p["spec"]["securityContext"] =
                    json!({"sysctls": [{"name": "net.ipv4.ping_group_range", "value": "0 1"}]})
            },
            Want::Allow,
        ),
        (
            "SELinux type spc_t",
            CONTROL_PLANE,
            |p| dev_sc(p, json!({"seLinuxOptions": {"type": "spc_t"}})),
            Want::Deny(&[r#"securityContext.seLinuxOptions.type="spc_t""#]),
        ),
        (
            "SELinux user",
            CONTROL_PLANE,
            |p| p["spec"]["securityContext"] = json!({"seLinuxOptions": {"user": "system_u"}}),
            Want::Deny(&[r#"spec.securityContext.seLinuxOptions.user="system_u""#]),
        ),
        (
            "workspace pod on the default service account",
            CONTROL_PLANE,
            |p| p["spec"]["serviceAccountName"] = json!("default"),
            Want::Deny(&[
                r#"pod: spec.serviceAccountName="default" is not allowed (workspace pods run as "dev-workspace""#,
            ]),
        ),
        (
            "workspace pod without anti-affinity",
            CONTROL_PLANE,
            |p| {
                p["spec"]
                    .as_object_mut()
                    .unwrap()
                    .remove("affinity")
                    .map(drop)
                    .unwrap()
            },
            Want::Deny(&[
                r#""node-role.kubernetes.io/control-plane" DoesNotExist in every nodeSelectorTerm is required"#,
                r#""node-role.kubernetes.io/master" DoesNotExist"#,
            ]),
        ),
        (
            "workspace pod with a second term that allows control-plane nodes",
            CONTROL_PLANE,
            |p| {
                let terms = &mut p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                    ["nodeSelectorTerms"];
                terms.as_array_mut().unwrap().push(json!({"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": ["control-plane-1"]}
                ]}));
            },
            Want::Deny(&["DoesNotExist in every nodeSelectorTerm"]),
        ),
        (
            "workspace pod without agents",
            CONTROL_PLANE,
            |p| {
                p["spec"]["containers"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|c| c["name"] != "agents")
            },
            Want::Deny(&[r#"pod: spec.containers["agents"] is required"#]),
        ),
        (
            "dind in a pod that is not a workspace pod",
            CONTROL_PLANE,
            |p| p["metadata"]["labels"] = json!({"app": "builder"}),
            Want::Deny(&[
                r#"container "dind": securityContext.privileged=true is not allowed (only "dind" in workspace pods may be privileged; this pod does not match workspaceSelector"#,
            ]),
        ),
        (
            "every violation in one message",
            CONTROL_PLANE,
            |p| {
                dev_sc(p, json!({"privileged": true}));
                p["spec"]["hostNetwork"] = json!(true);
                p["spec"]["volumes"] = json!([{"name": "root", "hostPath": {"path": "/"}}]);
            },
            Want::Deny(&[
                r#"container "dev": securityContext.privileged=true"#,
                "spec.hostNetwork=true",
                r#"spec.volumes[0].hostPath="/""#,
            ]),
        ),
    ];
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let set = builtin();
    for (name, user, edit, want) in &cases {
        let mut pod = workspace_pod();
        edit(&mut pod);
        let resp = run(&set, &Req::validate(user, pod));
        check(name, &resp, want);
    }
}

#[test]
fn violations_are_separate_and_counted() {
    let mut pod = workspace_pod();
    dev_sc(
        &mut pod,
        json!({"privileged": true, "allowPrivilegeEscalation": true}),
    );
    pod["spec"]["hostPID"] = json!(true);
    let resp = run(&builtin(), &Req::validate(CONTROL_PLANE, pod));
    let message = resp["status"]["message"].as_str().unwrap();
    assert_eq!(message.split("; ").count(), 3, "{message}");
}

#[test]
fn plain_pods_in_lumie_dev() {
    let cases: Vec<(&str, Edit, Want)> = vec![
        ("plain pod", |_| {}, Want::Allow),
        (
            "plain pod needs no service account or affinity",
            |p| p["spec"]["serviceAccountName"] = json!("default"),
            Want::Allow,
        ),
        (
            "plain pod privileged",
            |p| p["spec"]["containers"][0]["securityContext"] = json!({"privileged": true}),
            Want::Deny(&[r#"container "main": securityContext.privileged=true"#]),
        ),
        (
            "plain pod with dind, named dind",
            |p| {
                p["spec"]["containers"][0] = json!({"name": "dind", "image": "docker:dind",
                    "securityContext": {"privileged": true}})
            },
            Want::Deny(&["this pod does not match workspaceSelector"]),
        ),
    ];
    for (name, edit, want) in &cases {
        let mut pod = plain_pod();
        edit(&mut pod);
        check(name, &run(&builtin(), &Req::validate(DEVELOPER, pod)), want);
    }
}

#[test]
fn other_namespaces_are_not_covered() {
    let mut pod = plain_pod();
    pod["spec"]["hostNetwork"] = json!(true);
    let mut req = Req::validate(DEVELOPER, pod);
    req.namespace = "kube-system";
    let out = review(&builtin(), Endpoint::Validate, &req.body()).unwrap();
    assert_eq!(out.decision, Decision::Allowed);
    req.endpoint = Endpoint::Mutate;
    req.object = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "x", "labels": {"app.kubernetes.io/name": "dev-workspace"}},
        "spec": {"containers": [{"name": "a", "image": "b"}]}});
    let resp = run(&builtin(), &req);
    assert!(resp.get("patch").is_none(), "{resp}");
}

#[test]
fn modes_and_exemptions() {
    let mut privileged = plain_pod();
    privileged["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
    let cases: Vec<(&str, PolicySet, &'static str, Vec<&'static str>, Want)> = vec![
        (
            "Warn allows and warns",
            with_policy(|p| {
                p.mode = PolicyMode::Warn;
                lift(p);
            }),
            DEVELOPER,
            vec![],
            Want::Warn(&[r#"container \"main\": securityContext.privileged=true"#]),
        ),
        (
            "Audit allows and annotates",
            with_policy(|p| {
                p.mode = PolicyMode::Audit;
                lift(p);
            }),
            DEVELOPER,
            vec![],
            Want::Audit(&["violations", "securityContext.privileged=true"]),
        ),
        (
            "exempt user",
            with_policy(|p| p.exempt_users = vec!["root-breakglass".into()]),
            "root-breakglass",
            vec![],
            Want::Exempt(
                r#"user "root-breakglass" is exempt from WorkspacePolicy "default" (exemptUsers)"#,
            ),
        ),
        (
            "exempt group",
            with_policy(|p| p.exempt_groups = vec!["platform-admins".into()]),
            DEVELOPER,
            vec!["platform-admins"],
            Want::Exempt("exemptGroups \"platform-admins\""),
        ),
        (
            "group not exempt",
            with_policy(|p| p.exempt_groups = vec!["platform-admins".into()]),
            DEVELOPER,
            vec!["developers"],
            Want::Deny(&["securityContext.privileged=true"]),
        ),
    ];
    for (name, set, user, groups, want) in cases {
        let mut req = Req::validate(user, privileged.clone());
        req.groups = groups;
        check(name, &run(&set, &req), &want);
    }
}

#[test]
fn every_covering_policy_applies_most_secure_wins() {
    let enforce = WorkspacePolicySpec::contract_default();
    let mut warn = WorkspacePolicySpec::contract_default();
    warn.mode = PolicyMode::Warn;
    warn.exempt_users = vec![DEVELOPER.into()];
    lift(&mut warn);
    let set = PolicySet::from_objects([("a-warn", &warn), ("b-enforce", &enforce)], None);
    let mut pod = plain_pod();
    pod["spec"]["hostIPC"] = json!(true);
    let resp = run(&set, &Req::validate(DEVELOPER, pod));
    check(
        "exempt in one policy is not exempt in another",
        &resp,
        &Want::Deny(&[r#"WorkspacePolicy "b-enforce""#]),
    );
    assert!(
        resp["auditAnnotations"]["exempt"]
            .as_str()
            .unwrap()
            .contains("a-warn")
    );
}

#[test]
fn dry_run_gets_the_same_decision() {
    let mut pod = workspace_pod();
    dev_sc(&mut pod, json!({"privileged": true}));
    let mut req = Req::validate(CONTROL_PLANE, pod);
    let wet = run(&builtin(), &req);
    req.dry_run = true;
    let dry = run(&builtin(), &req);
    assert_eq!(wet, dry);
    assert_eq!(dry["allowed"], false);
}

#[test]
fn updates() {
    // A pod admitted under Audit keeps working when only its labels change.
    let mut old = plain_pod();
    old["spec"]["hostNetwork"] = json!(true);
    let mut new = old.clone();
    new["metadata"]["labels"]["extra"] = json!("1");
    let mut req = Req::validate(DEVELOPER, new);
    req.operation = "UPDATE";
    req.old = Some(old.clone());
    check("metadata-only update", &run(&builtin(), &req), &Want::Allow);

    // ... but a spec change is checked in full.
    let mut changed = old.clone();
    changed["spec"]["containers"][0]["image"] = json!("busybox:1.37");
    req.object = changed;
    check(
        "spec update",
        &run(&builtin(), &req),
        &Want::Deny(&["hostNetwork"]),
    );

    // A developer adding a debug container to a workspace pod keeps dind (unchanged).
    let old_ws = workspace_pod();
    let mut debugged = old_ws.clone();
    debugged["spec"]["ephemeralContainers"] = json!([{"name": "debug", "image": "busybox"}]);
    let mut req = Req::validate(DEVELOPER, debugged);
    req.operation = "UPDATE";
    req.sub_resource = Some("ephemeralcontainers");
    req.old = Some(old_ws.clone());
    check(
        "developer adds a compliant debug container",
        &run(&builtin(), &req),
        &Want::Allow,
    );

    // ... but may not swap the dind image.
    let mut swapped = old_ws.clone();
    set_container(&mut swapped, "dind", |c| {
        c["image"] = json!("docker:28-dind")
    });
    req.object = swapped;
    req.sub_resource = None;
    check(
        "developer changes dind's image",
        &run(&builtin(), &req),
        &Want::Deny(&["is not one"]),
    );
}

#[test]
fn ephemeral_containers_object_of_kubernetes_1_20() {
    let object = |sc: Value| {
        json!({"apiVersion": "v1", "kind": "EphemeralContainers",
            "metadata": {"name": "coder-alice-main", "namespace": "lumie-dev"},
            "ephemeralContainers": [{"name": "debug", "image": "busybox", "securityContext": sc}]})
    };
    let mut req = Req::validate(DEVELOPER, object(json!({})));
    req.kind = ("", "EphemeralContainers");
    req.sub_resource = Some("ephemeralcontainers");
    req.operation = "UPDATE";
    check(
        "plain debug container",
        &run(&builtin(), &req),
        &Want::Allow,
    );
    req.object = object(json!({"privileged": true}));
    check(
        "privileged debug container",
        &run(&builtin(), &req),
        &Want::Deny(&[r#"ephemeral container "debug": securityContext.privileged=true"#]),
    );
    req.endpoint = Endpoint::Mutate;
    let resp = run(&builtin(), &req);
    assert_eq!(
        resp["allowed"], true,
        "mutate lets the subresource through: {resp}"
    );
    assert!(resp.get("patch").is_none());
}

#[test]
fn workspace_policy_objects_are_validated() {
    let policy = |spec: Value| {
        json!({"apiVersion": "coder.lumie-infra.com/v1alpha1", "kind": "WorkspacePolicy",
            "metadata": {"name": "strict"}, "spec": spec})
    };
    let cases: Vec<(&str, Value, Want)> = vec![
        ("defaults", json!({}), Want::Allow),
        (
            "Warn on two namespaces, with break-glass",
            json!({"mode": "Warn", "namespaces": ["lumie-dev", "lumie-staging"],
                "breakGlass": {"reason": "INC-9", "expires": "2999-01-01T00:00:00Z"}}),
            Want::Allow,
        ),
        (
            "Warn on lumie-dev without break-glass",
            json!({"mode": "Warn"}),
            Want::Deny(&[
                r#"WorkspacePolicy "strict" is invalid: spec.mode: "Warn" leaves Enforce in "lumie-dev", below the floor"#,
                "set spec.breakGlass {reason, expires}",
            ]),
        ),
        (
            "Warn on another namespace only",
            json!({"mode": "Warn", "namespaces": ["lumie-staging"]}),
            Want::Allow,
        ),
        (
            "Audit with an expired break-glass",
            json!({"mode": "Audit",
                "breakGlass": {"reason": "INC-9", "expires": "2020-01-01T00:00:00Z"}}),
            Want::Deny(&["spec.breakGlass expired at 2020-01-01T00:00:00Z"]),
        ),
        (
            "exempting the workspace ServiceAccount's group",
            json!({"exemptGroups": ["system:serviceaccounts:lumie-dev"]}),
            Want::Deny(&[
                r#"spec.exemptGroups[0]: "system:serviceaccounts:lumie-dev" would exempt the workspace pods themselves"#,
            ]),
        ),
        (
            "exempting every authenticated user",
            json!({"exemptGroups": ["system:authenticated"]}),
            Want::Deny(&["below the floor"]),
        ),
        (
            "empty namespace list",
            json!({"namespaces": []}),
            Want::Deny(&[r#"WorkspacePolicy "strict" is invalid: spec.namespaces: must name"#]),
        ),
        (
            "bad glob",
            json!({"privilegedContainers": [{"name": "dind", "images": ["docker:[dind"]}]}),
            Want::Deny(&["spec.privilegedContainers[0].images[0]: bad glob"]),
        ),
        (
            "unknown mode",
            json!({"mode": "Relaxed"}),
            Want::Deny(&["cannot be read", "unknown variant `Relaxed`"]),
        ),
        (
            "every problem at once",
            json!({"namespaces": [], "privilegedContainers": [{"name": "dind", "images": ["*"]}]}),
            Want::Deny(&["spec.namespaces", "any image"]),
        ),
    ];
    for (name, spec, want) in cases {
        let mut req = Req::validate("admin", policy(spec));
        req.kind = ("coder.lumie-infra.com", "WorkspacePolicy");
        req.namespace = "";
        check(name, &run(&builtin(), &req), &want);
    }
    // An UPDATE that stops guarding lumie-dev needs break-glass; a new policy elsewhere not.
    let mut req = Req::validate("admin", policy(json!({"namespaces": ["team-b"]})));
    req.kind = ("coder.lumie-infra.com", "WorkspacePolicy");
    req.namespace = "";
    check("a new team-b policy", &run(&builtin(), &req), &Want::Allow);
    req.operation = "UPDATE";
    req.old = Some(policy(json!({})));
    check(
        "lumie-dev dropped",
        &run(&builtin(), &req),
        &Want::Deny(&[
            r#"spec.namespaces: stops covering "lumie-dev", which the previous version guarded"#,
        ]),
    );
    req.object = policy(json!({"namespaces": ["team-b"],
        "breakGlass": {"reason": "INC-9", "expires": "2999-01-01T00:00:00Z"}}));
    check(
        "lumie-dev dropped with break-glass",
        &run(&builtin(), &req),
        &Want::Allow,
    );
}

// ---------------------------------------------------------------------------------------------
// Mutation

/// Mutates `pod`, applies the patch, and checks a second round adds nothing.
fn mutate_roundtrip(set: &PolicySet, user: &'static str, pod: Value) -> (Option<Value>, Value) {
    let resp = run(set, &Req::mutate(user, pod.clone()));
    assert_eq!(resp["allowed"], true, "mutate never denies: {resp}");
    let Some(patch_b64) = resp["patch"].as_str() else {
        assert!(resp.get("patchType").is_none());
        return (None, pod);
    };
    assert_eq!(resp["patchType"], "JSONPatch");
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch_b64)
        .unwrap();
    let ops: Value = serde_json::from_slice(&bytes).unwrap();
    let patch: Patch = serde_json::from_value(ops.clone()).unwrap();
    let mut mutated = pod;
    json_patch::patch(&mut mutated, &patch).expect("patch applies to the pod it was made for");
    let again = run(set, &Req::mutate(user, mutated.clone()));
    assert!(
        again.get("patch").is_none(),
        "second mutation must be empty: {again}"
    );
    (Some(ops), mutated)
}

fn bare_workspace_pod() -> Value {
    let mut pod = workspace_pod();
    let spec = pod["spec"].as_object_mut().unwrap();
    spec.remove("serviceAccountName");
    spec.remove("affinity");
    pod
}

fn terms(pod: &Value) -> &Vec<Value> {
    pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"]
        .as_array()
        .unwrap()
}

fn avoids(term: &Value, key: &str) -> bool {
    term["matchExpressions"]
        .as_array()
        .is_some_and(|e| e.contains(&json!({"key": key, "operator": "DoesNotExist"})))
}

const CP: &str = "node-role.kubernetes.io/control-plane";
const MASTER: &str = "node-role.kubernetes.io/master";

#[test]
fn mutation_of_a_bare_workspace_pod_makes_it_valid() {
    let set = builtin();
    let (ops, mutated) = mutate_roundtrip(&set, CONTROL_PLANE, bare_workspace_pod());
    let ops = ops.expect("a patch");
    assert_eq!(
        ops,
        json!([
            {"op": "add", "path": "/spec/serviceAccountName", "value": "dev-workspace"},
            {"op": "add", "path": "/spec/affinity", "value": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [
                        {"key": CP, "operator": "DoesNotExist"},
                        {"key": MASTER, "operator": "DoesNotExist"}
                    ]}
                ]}
            }}},
            {"op": "add", "path": "/metadata/annotations",
             "value": {"coder.lumie-infra.com/created-by": CONTROL_PLANE}}
        ])
    );
    check(
        "mutated pod validates",
        &run(&set, &Req::validate(CONTROL_PLANE, mutated)),
        &Want::Allow,
    );
}

#[test]
fn mutation_table() {
    let cases: Vec<(&str, Edit, Verify)> = vec![
        (
            "already mutated: no patch",
            |p| *p = workspace_pod(),
            |ops, _| assert!(ops.is_none()),
        ),
        (
            "service account default is replaced, with its deprecated alias",
            |p| {
                p["spec"]["serviceAccountName"] = json!("default");
                p["spec"]["serviceAccount"] = json!("default");
            },
            |_, m| {
                assert_eq!(m["spec"]["serviceAccountName"], "dev-workspace");
                assert_eq!(m["spec"]["serviceAccount"], "dev-workspace");
            },
        ),
        (
            "a chosen service account is left for validation to judge",
            |p| p["spec"]["serviceAccountName"] = json!("builder"),
            |_, m| assert_eq!(m["spec"]["serviceAccountName"], "builder"),
        ),
        (
            "affinity: null",
            |p| p["spec"]["affinity"] = Value::Null,
            |_, m| assert!(avoids(&terms(m)[0], CP) && avoids(&terms(m)[0], MASTER)),
        ),
        (
            "pod anti-affinity only: nodeAffinity added beside it",
            |p| {
                p["spec"]["affinity"] = json!({"podAntiAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1,
                        "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}]}})
            },
            |_, m| {
                assert!(m["spec"]["affinity"]["podAntiAffinity"].is_object());
                assert!(avoids(&terms(m)[0], CP));
            },
        ),
        (
            "preferred node affinity only: required added, preferred kept",
            |p| {
                p["spec"]["affinity"] = json!({"nodeAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1,
                        "preference": {"matchExpressions": [
                            {"key": "disk", "operator": "In", "values": ["ssd"]}]}}]}})
            },
            |_, m| {
                assert!(
                    m["spec"]["affinity"]["nodeAffinity"]
                        ["preferredDuringSchedulingIgnoredDuringExecution"]
                        .is_array()
                );
                assert!(avoids(&terms(m)[0], MASTER));
            },
        ),
        (
            "user terms are kept and each gets the expressions",
            |p| {
                p["spec"]["affinity"] = json!({"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [
                        {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}]},
                    {"matchFields": [
                        {"key": "metadata.name", "operator": "In", "values": ["worker-2"]}]}
                ]}}})
            },
            |_, m| {
                let t = terms(m);
                assert_eq!(t.len(), 2, "no term dropped");
                assert_eq!(
                    t[0]["matchExpressions"][0]["key"],
                    "topology.kubernetes.io/zone"
                );
                assert_eq!(t[1]["matchFields"][0]["values"][0], "worker-2");
                assert!(t.iter().all(|t| avoids(t, CP) && avoids(t, MASTER)));
            },
        ),
        (
            "a term that already avoids one key only gets the other",
            |p| {
                p["spec"]["affinity"] = json!({"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": CP, "operator": "DoesNotExist"}]}
                ]}}})
            },
            |ops, m| {
                assert_eq!(
                    ops.unwrap().as_array().unwrap().len(),
                    2,
                    "sa + one expression"
                );
                assert_eq!(terms(m)[0]["matchExpressions"].as_array().unwrap().len(), 2);
            },
        ),
        (
            "empty term list gets one term",
            |p| {
                p["spec"]["affinity"] = json!({"nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}})
            },
            |_, m| assert_eq!(terms(m).len(), 1),
        ),
        (
            "not a workspace pod: no patch",
            |p| p["metadata"]["labels"] = json!({"app": "scratch"}),
            |ops, _| assert!(ops.is_none()),
        ),
        (
            "no labels at all: no patch",
            |p| {
                p["metadata"].as_object_mut().unwrap().remove("labels");
            },
            |ops, _| assert!(ops.is_none()),
        ),
        (
            "mutation does not judge: a privileged dev is still patched",
            |p| dev_sc(p, json!({"privileged": true})),
            |ops, _| assert!(ops.is_some()),
        ),
    ];
    let set = builtin();
    for (name, edit, verify) in cases {
        let mut pod = bare_workspace_pod();
        edit(&mut pod);
        let (ops, mutated) = mutate_roundtrip(&set, DEVELOPER, pod);
        eprintln!("case {name}");
        verify(ops.as_ref(), &mutated);
    }
}

#[test]
fn mutation_unions_the_keys_of_every_workspace_policy() {
    let a = WorkspacePolicySpec::contract_default();
    let mut b = WorkspacePolicySpec::contract_default();
    b.avoid_node_labels = vec!["lumie.io/no-workspaces".into()];
    let set = PolicySet::from_objects([("a", &a), ("b", &b)], None);
    let (_, m) = mutate_roundtrip(&set, CONTROL_PLANE, bare_workspace_pod());
    let t = &terms(&m)[0];
    assert!(avoids(t, CP) && avoids(t, MASTER) && avoids(t, "lumie.io/no-workspaces"));
}

#[test]
fn mutation_skips_exempt_users_updates_and_subresources() {
    let set = with_policy(|p| p.exempt_users = vec!["breakglass".into()]);
    let resp = run(&set, &Req::mutate("breakglass", bare_workspace_pod()));
    assert!(resp.get("patch").is_none());
    assert!(
        resp["auditAnnotations"]["exempt"]
            .as_str()
            .unwrap()
            .contains("breakglass")
    );
    let mut req = Req::mutate(CONTROL_PLANE, bare_workspace_pod());
    req.operation = "UPDATE";
    req.old = Some(bare_workspace_pod());
    assert!(run(&set, &req).get("patch").is_none());
}

// ---------------------------------------------------------------------------------------------
// Unreadable input

#[test]
fn unreadable_input_is_a_bad_request_never_an_allow() {
    let good = Req::validate(CONTROL_PLANE, workspace_pod()).body();
    let good: Value = serde_json::from_slice(&good).unwrap();
    let edit = |f: fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let mut huge = good.clone();
    huge["request"]["object"]["metadata"]["annotations"] =
        json!({"big": "x".repeat(3 * 1024 * 1024)});
    let cases: Vec<(&str, Endpoint, Vec<u8>, &str)> = vec![
        (
            "not JSON",
            Endpoint::Validate,
            b"<html>".to_vec(),
            "body is not JSON",
        ),
        ("empty", Endpoint::Validate, Vec::new(), "body is not JSON"),
        (
            "truncated",
            Endpoint::Mutate,
            good.to_string().as_bytes()[..50].to_vec(),
            "body is not JSON",
        ),
        (
            "JSON array",
            Endpoint::Validate,
            b"[]".to_vec(),
            "not an AdmissionReview",
        ),
        (
            "v1beta1",
            Endpoint::Validate,
            edit(|v| v["apiVersion"] = json!("admission.k8s.io/v1beta1")),
            r#"apiVersion "admission.k8s.io/v1beta1" is not served"#,
        ),
        (
            "no apiVersion",
            Endpoint::Validate,
            edit(|v| {
                v.as_object_mut().unwrap().remove("apiVersion");
            }),
            "apiVersion is missing",
        ),
        (
            "wrong kind",
            Endpoint::Validate,
            edit(|v| v["kind"] = json!("TokenReview")),
            r#"kind "TokenReview" is not "AdmissionReview""#,
        ),
        (
            "no request",
            Endpoint::Validate,
            edit(|v| {
                v.as_object_mut().unwrap().remove("request");
            }),
            "request is missing",
        ),
        (
            "no uid",
            Endpoint::Mutate,
            edit(|v| {
                v["request"].as_object_mut().unwrap().remove("uid");
            }),
            "request.uid is missing",
        ),
        (
            "uid is a number",
            Endpoint::Validate,
            edit(|v| v["request"]["uid"] = json!(7)),
            "not an AdmissionReview: invalid type: integer",
        ),
        (
            "a Service where a Pod is expected",
            Endpoint::Validate,
            edit(|v| {
                v["request"]["kind"]["kind"] = json!("Service");
            }),
            r#"request.kind "Service" is not handled by /validate"#,
        ),
        (
            "a Service object labelled Pod",
            Endpoint::Mutate,
            edit(|v| v["request"]["object"] = json!({"apiVersion": "v1", "kind": "Service"})),
            "request.object is not a Pod",
        ),
        (
            "spec.securityContext is an array",
            Endpoint::Validate,
            edit(|v| v["request"]["object"]["spec"]["securityContext"] = json!([])),
            "request.object is not a Pod: spec.securityContext: invalid type: sequence, expected a JSON object",
        ),
        (
            "a container's securityContext is an array, on /mutate",
            Endpoint::Mutate,
            edit(|v| {
                v["request"]["object"]["spec"]["containers"][2]["securityContext"] = json!([true])
            }),
            "request.object is not a Pod: spec.containers[2].securityContext: invalid type: sequence",
        ),
        (
            "metadata is a string",
            Endpoint::Validate,
            edit(|v| v["request"]["object"]["metadata"] = json!("coder-alice-main")),
            "request.object is not a Pod: metadata: invalid type: string",
        ),
        (
            "a volume is an array",
            Endpoint::Validate,
            edit(|v| v["request"]["object"]["spec"]["volumes"] = json!([["home"]])),
            "request.object is not a Pod: spec.volumes[0]: invalid type: sequence",
        ),
        (
            "a CONNECT without the pod's name",
            Endpoint::Validate,
            edit(|v| {
                v["request"]["kind"] =
                    json!({"group": "", "version": "v1", "kind": "PodExecOptions"});
                v["request"]["operation"] = json!("CONNECT");
                v["request"]["object"] = json!({"kind": "PodExecOptions", "apiVersion": "v1"});
                v["request"].as_object_mut().unwrap().remove("name");
            }),
            "request.name is missing",
        ),
        (
            "containers is not a list",
            Endpoint::Validate,
            edit(|v| v["request"]["object"]["spec"]["containers"] = json!("dev")),
            "request.object is not a Pod",
        ),
        (
            "no object",
            Endpoint::Validate,
            edit(|v| {
                v["request"].as_object_mut().unwrap().remove("object");
            }),
            "request.object is missing",
        ),
        (
            "over 3 MiB",
            Endpoint::Validate,
            serde_json::to_vec(&huge).unwrap(),
            "over the 3145728 byte limit",
        ),
    ];
    for (name, endpoint, body, want) in cases {
        match review(&builtin(), endpoint, &body) {
            Err(Error::BadRequest(m)) => assert!(m.contains(want), "{name}: {m:?} lacks {want:?}"),
            Err(e) => panic!("{name}: wrong error {e}"),
            Ok(r) => panic!("{name}: answered {}", String::from_utf8_lossy(&r.body)),
        }
    }
}

/// A review of a Pod is read in one pass with both objects parsed as pods; an object that pass
/// cannot read but the review does not need (the old object of a CREATE) must not change the
/// answer, whichever endpoint, whatever the decision.
#[test]
fn an_unreadable_object_the_review_does_not_need_changes_nothing() {
    let mut privileged_dev = workspace_pod();
    set_container(&mut privileged_dev, "dev", |c| {
        c["securityContext"] = json!({"privileged": true});
    });
    for (name, req) in [
        (
            "validate, allowed",
            Req::validate(CONTROL_PLANE, workspace_pod()),
        ),
        (
            "validate, denied",
            Req::validate(CONTROL_PLANE, privileged_dev),
        ),
        ("mutate", Req::mutate(CONTROL_PLANE, bare_workspace_pod())),
    ] {
        let want = review(&builtin(), req.endpoint, &req.body()).unwrap();
        assert_eq!(
            want.decision == Decision::Denied,
            name.ends_with("denied"),
            "{name}"
        );
        let mut body: Value = serde_json::from_slice(&req.body()).unwrap();
        body["request"]["oldObject"] = json!({"spec": {"containers": "not a list"}});
        let got = review(
            &builtin(),
            req.endpoint,
            &serde_json::to_vec(&body).unwrap(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            String::from_utf8_lossy(&got.body),
            String::from_utf8_lossy(&want.body),
            "{name}"
        );
        assert_eq!(got.decision, want.decision, "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// Workspace isolation: no developer can become another

const WORKSPACE_SA: &str = "system:serviceaccount:lumie-dev:dev-workspace";

/// Workspace `alice/dev`'s pod as the control plane creates it, after mutation: its identity
/// labels, the stamp, its own home volume and agent token.
fn identity_pod() -> Value {
    let mut pod = workspace_pod();
    pod["metadata"]["name"] = json!("coder-alice-dev");
    pod["metadata"]["labels"] = json!({
        "app.kubernetes.io/name": "dev-workspace",
        "app.kubernetes.io/managed-by": "lumie-coder",
        "coder.lumie-infra.com/owner": "alice",
        "coder.lumie-infra.com/workspace": "dev",
        "coder.lumie-infra.com/workspace-id": "7b0c1d2e-0000-4000-8000-000000000001"
    });
    pod["metadata"]["annotations"] = json!({"coder.lumie-infra.com/created-by": CONTROL_PLANE});
    pod["spec"]["volumes"] = json!([
        {"name": "home", "persistentVolumeClaim": {"claimName": "coder-alice-dev-home"}},
        {"name": "docker", "emptyDir": {}}
    ]);
    set_container(&mut pod, "dev", |c| {
        c["env"] = json!([
            {"name": "CODER_AGENT_URL", "value": "http://coder.coder.svc.cluster.local"},
            {"name": "CODER_AGENT_TOKEN", "valueFrom": {"secretKeyRef":
                {"name": "coder-alice-dev-agent", "key": "token"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
        ])
    });
    pod
}

fn add_volume(pod: &mut Value, volume: Value) {
    pod["spec"]["volumes"].as_array_mut().unwrap().push(volume);
}

#[test]
fn isolation_table_pod_create() {
    type Case = (&'static str, &'static str, fn() -> Value, Edit, Want);
    let cases: Vec<Case> = vec![
        (
            "own workspace pod",
            CONTROL_PLANE,
            identity_pod,
            |_| {},
            Want::Allow,
        ),
        (
            "another workspace's home volume",
            CONTROL_PLANE,
            identity_pod,
            |p| {
                add_volume(
                    p,
                    json!({"name": "bob", "persistentVolumeClaim": {"claimName": "coder-bob-dev-home"}}),
                )
            },
            Want::Deny(&[
                r#"pod: spec.volumes[2].persistentVolumeClaim.claimName="coder-bob-dev-home" is not allowed (workspace isolation: a workspace's home volume is read only by its own pod; this is workspace alice/dev's pod)"#,
            ]),
        ),
        (
            "another workspace's token through env",
            CONTROL_PLANE,
            identity_pod,
            |p| {
                set_container(p, "agents", |c| {
                    c["env"] = json!([{"name": "T", "valueFrom": {"secretKeyRef":
                        {"name": "coder-bob-dev-agent", "key": "token"}}}])
                })
            },
            Want::Deny(&[
                r#"container "agents": env[0].valueFrom.secretKeyRef.name="coder-bob-dev-agent" is not allowed (workspace isolation: a workspace's agent token Secret"#,
            ]),
        ),
        (
            "another workspace's token through envFrom",
            CONTROL_PLANE,
            identity_pod,
            |p| {
                set_container(p, "dev", |c| {
                    c["envFrom"] = json!([{"secretRef": {"name": "coder-bob-dev-agent"}}])
                })
            },
            Want::Deny(&[r#"container "dev": envFrom[0].secretRef.name="coder-bob-dev-agent""#]),
        ),
        (
            "another workspace's token as a secret volume",
            CONTROL_PLANE,
            identity_pod,
            |p| {
                add_volume(
                    p,
                    json!({"name": "t", "secret": {"secretName": "coder-bob-dev-agent"}}),
                )
            },
            Want::Deny(&[r#"spec.volumes[2].secret.secretName="coder-bob-dev-agent""#]),
        ),
        (
            "another workspace's token as a projected source",
            CONTROL_PLANE,
            identity_pod,
            |p| {
                add_volume(
                    p,
                    json!({"name": "t", "projected": {"sources": [
                        {"serviceAccountToken": {"path": "sa"}},
                        {"secret": {"name": "coder-bob-dev-agent"}}
                    ]}}),
                )
            },
            Want::Deny(&[
                r#"spec.volumes[2].projected.sources[1].secret.name="coder-bob-dev-agent""#,
            ]),
        ),
        (
            "another workspace's token as a CSI secret",
            CONTROL_PLANE,
            identity_pod,
            |p| {
                add_volume(
                    p,
                    json!({"name": "t", "csi": {"driver": "x",
                        "nodePublishSecretRef": {"name": "coder-bob-dev-agent"}}}),
                )
            },
            Want::Deny(&[r#"spec.volumes[2].csi.nodePublishSecretRef.name="coder-bob-dev-agent""#]),
        ),
        (
            "another workspace's token in an init container",
            CONTROL_PLANE,
            identity_pod,
            |p| {
                p["spec"]["initContainers"] = json!([{"name": "setup", "image": "busybox",
                    "envFrom": [{"secretRef": {"name": "coder-bob-dev-agent"}}]}])
            },
            Want::Deny(&[r#"init container "setup": envFrom[0].secretRef.name"#]),
        ),
        (
            "a long, shortened name is still protected",
            CONTROL_PLANE,
            identity_pod,
            |p| {
                add_volume(
                    p,
                    json!({"name": "x", "persistentVolumeClaim":
                        {"claimName": "coder-oooooooooooooooooooooooooooooooooooooo-0123456789-home"}}),
                )
            },
            Want::Deny(&["claimName"]),
        ),
        (
            "other claims and Secrets are fine",
            CONTROL_PLANE,
            identity_pod,
            |p| {
                add_volume(
                    p,
                    json!({"name": "d", "persistentVolumeClaim": {"claimName": "shared-cache"}}),
                );
                add_volume(
                    p,
                    json!({"name": "s", "secret": {"secretName": "coder-tls"}}),
                );
            },
            Want::Allow,
        ),
        (
            "no stamp: the mutating webhook did not run",
            CONTROL_PLANE,
            identity_pod,
            |p| {
                p["metadata"].as_object_mut().unwrap().remove("annotations");
            },
            Want::Deny(&["is /mutate registered?"]),
        ),
        (
            "a stamp naming someone else",
            CONTROL_PLANE,
            identity_pod,
            |p| p["metadata"]["annotations"]["coder.lumie-infra.com/created-by"] = json!("bob"),
            Want::Deny(&["coder.lumie-infra.com/created-by"]),
        ),
        (
            "a name that is not the workspace's",
            CONTROL_PLANE,
            identity_pod,
            |p| p["metadata"]["name"] = json!("coder-bob-dev"),
            Want::Deny(&[
                r#"pod: metadata.name="coder-bob-dev" is not allowed (workspace isolation: workspace alice/dev's pod is named "coder-alice-dev""#,
            ]),
        ),
        (
            "identity labels half set",
            CONTROL_PLANE,
            identity_pod,
            |p| {
                p["metadata"]["labels"]
                    .as_object_mut()
                    .unwrap()
                    .remove("coder.lumie-infra.com/owner");
            },
            Want::Deny(&[
                r#"pod: metadata.labels=["coder.lumie-infra.com/workspace=dev", "#,
                r#"a workspace pod carries all of the labels"#,
                r#""coder.lumie-infra.com/owner" missing"#,
            ]),
        ),
        (
            "a developer creating a workspace pod",
            WORKSPACE_SA,
            identity_pod,
            |_| {},
            Want::Deny(&[
                r#"pod: metadata.labels["coder.lumie-infra.com/workspace-id"]="7b0c1d2e-0000-4000-8000-000000000001" is not allowed (workspace isolation: only the control plane ("system:serviceaccount:coder:coder") creates workspace pods)"#,
                r#"metadata.labels["coder.lumie-infra.com/owner"]"#,
                r#"metadata.annotations["coder.lumie-infra.com/created-by"]"#,
                r#"pod: metadata.name="coder-alice-dev" is not allowed"#,
            ]),
        ),
        (
            "a plain pod mounting a home volume",
            WORKSPACE_SA,
            plain_pod,
            |p| {
                p["spec"]["volumes"] = json!([{"name": "h",
                    "persistentVolumeClaim": {"claimName": "coder-alice-dev-home"}}])
            },
            Want::Deny(&[
                r#"pod: spec.volumes[0].persistentVolumeClaim.claimName="coder-alice-dev-home" is not allowed (workspace isolation: a workspace's home volume is read only by its own pod; this is no workspace pod)"#,
            ]),
        ),
        (
            "a plain pod reading an agent token",
            WORKSPACE_SA,
            plain_pod,
            |p| {
                p["spec"]["containers"][0]["env"] = json!([{"name": "T", "valueFrom":
                    {"secretKeyRef": {"name": "coder-alice-dev-agent", "key": "token"}}}])
            },
            Want::Deny(&[
                r#"container "main": env[0].valueFrom.secretKeyRef.name="coder-alice-dev-agent""#,
            ]),
        ),
        (
            "a plain pod with its own volumes",
            WORKSPACE_SA,
            plain_pod,
            |p| {
                p["spec"]["volumes"] = json!([{"name": "c",
                    "persistentVolumeClaim": {"claimName": "my-cache"}}])
            },
            Want::Allow,
        ),
        (
            "a plain pod named like a workspace pod",
            WORKSPACE_SA,
            plain_pod,
            |p| p["metadata"]["name"] = json!("coder-bob-dev"),
            Want::Deny(&[r#"pod names starting with "coder-" are workspace pods"#]),
        ),
        (
            "a plain pod with a workspace generateName",
            WORKSPACE_SA,
            plain_pod,
            |p| {
                p["metadata"]["generateName"] = json!("coder-");
                p["metadata"].as_object_mut().unwrap().remove("name");
            },
            Want::Deny(&[r#"metadata.generateName="coder-""#]),
        ),
        (
            "a plain pod carrying another workspace's id",
            WORKSPACE_SA,
            plain_pod,
            |p| p["metadata"]["labels"]["coder.lumie-infra.com/workspace-id"] = json!("7b0c"),
            Want::Deny(&[r#"metadata.labels["coder.lumie-infra.com/workspace-id"]="7b0c""#]),
        ),
        (
            "a plain pod stamping itself",
            "lumie-admin",
            plain_pod,
            |p| {
                p["metadata"]["annotations"] =
                    json!({"coder.lumie-infra.com/created-by": CONTROL_PLANE})
            },
            Want::Deny(&["the webhook sets it"]),
        ),
    ];
    let set = builtin();
    for (name, user, base, edit, want) in &cases {
        let mut pod = base();
        edit(&mut pod);
        check(name, &run(&set, &Req::validate(user, pod)), want);
    }
}

#[test]
fn isolation_holds_whatever_the_policy_mode_or_exemptions() {
    let mut pod = plain_pod();
    pod["spec"]["volumes"] = json!([{"name": "h",
        "persistentVolumeClaim": {"claimName": "coder-alice-dev-home"}}]);
    for (name, set) in [
        (
            "Audit",
            with_policy(|p| {
                p.mode = PolicyMode::Audit;
                lift(p);
            }),
        ),
        (
            "exempt user",
            with_policy(|p| p.exempt_users = vec![DEVELOPER.into()]),
        ),
        (
            "a policy for another namespace only",
            with_policy(|p| p.namespaces = vec!["team-b".into()]),
        ),
    ] {
        let resp = run(&set, &Req::validate(DEVELOPER, pod.clone()));
        check(name, &resp, &Want::Deny(&["workspace isolation"]));
    }
    // Outside the guarded namespaces nothing applies.
    let mut req = Req::validate(DEVELOPER, pod);
    req.namespace = "kube-system";
    check("kube-system", &run(&builtin(), &req), &Want::Allow);
}

#[test]
fn isolation_table_pod_update() {
    let update = |user: &'static str, old: Value, new: Value| {
        let mut req = Req::validate(user, new);
        req.operation = "UPDATE";
        req.old = Some(old);
        req
    };
    let relabel = |key: &str, value: Option<&str>| {
        let mut p = identity_pod();
        let labels = p["metadata"]["labels"].as_object_mut().unwrap();
        match value {
            Some(v) => labels.insert(key.into(), json!(v)),
            None => labels.remove(key),
        };
        p
    };
    let unstamped = {
        let mut p = identity_pod();
        p["metadata"]["annotations"] = json!({});
        p
    };
    let mut plain_with_id = plain_pod();
    plain_with_id["metadata"]["labels"]["coder.lumie-infra.com/workspace-id"] = json!("7b0c");
    let mut mounted = plain_pod();
    mounted["spec"]["volumes"] = json!([{"name": "h",
        "persistentVolumeClaim": {"claimName": "coder-alice-dev-home"}}]);
    let mut mounted_relabelled = mounted.clone();
    mounted_relabelled["metadata"]["labels"]["team"] = json!("x");
    let mut other_label = identity_pod();
    other_label["metadata"]["labels"]["team"] = json!("a");
    let cases = vec![
        (
            "a developer points a pod at another workspace",
            update(
                WORKSPACE_SA,
                identity_pod(),
                relabel("coder.lumie-infra.com/workspace-id", Some("bob-id")),
            ),
            Want::Deny(&[
                r#"metadata.labels["coder.lumie-infra.com/workspace-id"]="bob-id" is not allowed (workspace isolation: only the control plane ("system:serviceaccount:coder:coder") changes a pod's workspace labels (was "7b0c1d2e-0000-4000-8000-000000000001"))"#,
            ]),
        ),
        (
            "a developer adds a workspace label to a plain pod",
            update(WORKSPACE_SA, plain_pod(), plain_with_id),
            Want::Deny(&["changes a pod's workspace labels"]),
        ),
        (
            "a developer removes the owner label",
            update(
                WORKSPACE_SA,
                identity_pod(),
                relabel("coder.lumie-infra.com/owner", None),
            ),
            Want::Deny(&[r#"metadata.labels["coder.lumie-infra.com/owner"]"#]),
        ),
        (
            "an admin removes the stamp",
            update("lumie-admin", identity_pod(), unstamped.clone()),
            Want::Deny(&[r#"metadata.annotations["coder.lumie-infra.com/created-by"]"#]),
        ),
        (
            "a developer stamps a pod",
            update(WORKSPACE_SA, unstamped, identity_pod()),
            Want::Deny(&["coder.lumie-infra.com/created-by"]),
        ),
        (
            "other labels may change",
            update(WORKSPACE_SA, identity_pod(), other_label),
            Want::Allow,
        ),
        (
            "the control plane may relabel",
            update(
                CONTROL_PLANE,
                identity_pod(),
                relabel("coder.lumie-infra.com/workspace-id", Some("new-id")),
            ),
            Want::Allow,
        ),
        (
            "a pod admitted before the rules is not wedged by a label change",
            update(WORKSPACE_SA, mounted, mounted_relabelled),
            Want::Allow,
        ),
    ];
    for (name, req, want) in cases {
        check(name, &run(&builtin(), &req), &want);
    }
}

#[test]
fn mutation_stamps_control_plane_workspace_pods_only() {
    let mut bare = identity_pod();
    bare["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    let (_, mutated) = mutate_roundtrip(&builtin(), CONTROL_PLANE, bare.clone());
    assert_eq!(
        mutated["metadata"]["annotations"]["coder.lumie-infra.com/created-by"],
        CONTROL_PLANE
    );
    check(
        "the mutated pod validates",
        &run(&builtin(), &Req::validate(CONTROL_PLANE, mutated)),
        &Want::Allow,
    );
    // Other annotations are kept; a forged stamp is overwritten with the real creator.
    let mut forged = bare.clone();
    forged["metadata"]["annotations"] =
        json!({"note": "x", "coder.lumie-infra.com/created-by": "mallory"});
    let (_, m) = mutate_roundtrip(&builtin(), CONTROL_PLANE, forged);
    assert_eq!(m["metadata"]["annotations"]["note"], "x");
    assert_eq!(
        m["metadata"]["annotations"]["coder.lumie-infra.com/created-by"],
        CONTROL_PLANE
    );
    // Nobody else's pods are stamped, nor plain pods of the control plane.
    let (_, m) = mutate_roundtrip(&builtin(), WORKSPACE_SA, bare);
    assert!(m["metadata"].get("annotations").is_none(), "{m}");
    let (ops, _) = mutate_roundtrip(&builtin(), CONTROL_PLANE, plain_pod());
    assert!(ops.is_none());
}

#[test]
fn connect_table_exec_attach_portforward() {
    let connect = |kind: &'static str,
                   sub: &'static str,
                   user: &'static str,
                   groups: Vec<&'static str>,
                   target: &'static str,
                   pod_name: Option<&'static str>| {
        let mut req = Req::validate(
            user,
            json!({"kind": kind, "apiVersion": "v1",
            "stdin": true, "tty": true, "container": "dind", "command": ["sh"]}),
        );
        req.kind = ("", kind);
        req.operation = "CONNECT";
        req.sub_resource = Some(sub);
        req.name = Some(target);
        req.groups = groups;
        req.pod_name = pod_name;
        req
    };
    let sa = || {
        vec![
            "system:serviceaccounts",
            "system:serviceaccounts:lumie-dev",
            "system:authenticated",
        ]
    };
    let cases = vec![
        (
            "exec into another workspace's pod",
            connect(
                "PodExecOptions",
                "exec",
                WORKSPACE_SA,
                sa(),
                "coder-bob-dev",
                Some("coder-alice-dev"),
            ),
            Want::Deny(&[
                r#"exec into workspace pod lumie-dev/coder-bob-dev is allowed only to the control plane ("system:serviceaccount:coder:coder"), admins (groups "system:masters") and the workspace's own pod; "system:serviceaccount:lumie-dev:dev-workspace" from pod "coder-alice-dev" is none of them"#,
            ]),
        ),
        (
            "attach to another workspace's pod",
            connect(
                "PodAttachOptions",
                "attach",
                WORKSPACE_SA,
                sa(),
                "coder-bob-dev",
                Some("coder-alice-dev"),
            ),
            Want::Deny(&["attach into workspace pod lumie-dev/coder-bob-dev"]),
        ),
        (
            "port-forward to another workspace's pod",
            connect(
                "PodPortForwardOptions",
                "portforward",
                WORKSPACE_SA,
                sa(),
                "coder-bob-dev",
                None,
            ),
            Want::Deny(&["portforward into workspace pod"]),
        ),
        (
            "exec into its own pod",
            connect(
                "PodExecOptions",
                "exec",
                WORKSPACE_SA,
                sa(),
                "coder-alice-dev",
                Some("coder-alice-dev"),
            ),
            Want::Allow,
        ),
        (
            "the control plane",
            connect(
                "PodExecOptions",
                "exec",
                CONTROL_PLANE,
                sa(),
                "coder-bob-dev",
                None,
            ),
            Want::Allow,
        ),
        (
            "an admin",
            connect(
                "PodPortForwardOptions",
                "portforward",
                "lumie-admin",
                vec!["system:masters"],
                "coder-bob-dev",
                None,
            ),
            Want::Allow,
        ),
        (
            "exec into a plain pod",
            connect(
                "PodExecOptions",
                "exec",
                WORKSPACE_SA,
                sa(),
                "scratch",
                None,
            ),
            Want::Allow,
        ),
    ];
    for (name, req, want) in cases {
        check(name, &run(&builtin(), &req), &want);
    }
    // Outside the guarded namespaces nothing applies; admin groups are configurable.
    let mut req = connect(
        "PodExecOptions",
        "exec",
        WORKSPACE_SA,
        sa(),
        "coder-bob-dev",
        None,
    );
    req.namespace = "kube-system";
    check("kube-system", &run(&builtin(), &req), &Want::Allow);
    let ids = lumie_webhook::isolation::Identities {
        control_plane: vec!["system:serviceaccount:coder:lumie-server".into()],
        admin_groups: vec!["platform-admins".into()],
    };
    let set = builtin();
    let reviewer = lumie_webhook::review::Reviewer {
        policies: &set,
        identities: &ids,
        now: None,
    };
    for (user, groups, allowed) in [
        ("lumie-admin", vec!["platform-admins"], true),
        ("lumie-admin", vec!["system:masters"], false),
        ("system:serviceaccount:coder:lumie-server", vec![], true),
        (CONTROL_PLANE, vec![], false),
    ] {
        let req = connect(
            "PodExecOptions",
            "exec",
            user,
            groups.clone(),
            "coder-bob-dev",
            None,
        );
        let out = reviewer.review(Endpoint::Validate, &req.body()).unwrap();
        assert_eq!(
            out.decision == Decision::Allowed,
            allowed,
            "{user} {groups:?}"
        );
    }
}

#[test]
fn an_expired_break_glass_reverts_to_enforce_with_the_floor() {
    let now = Timestamp::now();
    let mut spec = WorkspacePolicySpec::contract_default();
    spec.mode = PolicyMode::Warn;
    spec.exempt_groups = vec!["system:serviceaccounts:lumie-dev".into()];
    spec.break_glass = Some(BreakGlass {
        reason: "INC-3".into(),
        expires: Time(now + SignedDuration::from_secs(600)),
    });
    let set = PolicySet::single("default", spec).unwrap();
    let mut pod = plain_pod();
    pod["spec"]["hostPID"] = json!(true);
    let req = Req::validate(WORKSPACE_SA, pod);
    let mut req = req;
    req.groups = vec!["system:serviceaccounts:lumie-dev"];
    let ids = lumie_webhook::isolation::Identities::default();
    let at = |t: Timestamp| {
        let out = lumie_webhook::review::Reviewer {
            policies: &set,
            identities: &ids,
            now: Some(t),
        }
        .review(Endpoint::Validate, &req.body())
        .unwrap();
        serde_json::from_slice::<Value>(&out.body).unwrap()["response"].clone()
    };
    check("during the lift", &at(now), &Want::Exempt("exemptGroups"));
    check(
        "after it",
        &at(now + SignedDuration::from_secs(601)),
        &Want::Deny(&[
            r#"pod: spec.hostPID=true is not allowed (Pod Security baseline: host namespaces may not be shared, WorkspacePolicy "default")"#,
        ]),
    );
}
