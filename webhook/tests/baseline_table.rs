//! Pod Security "baseline", check by check, as upstream `k8s.io/pod-security-admission` defines
//! it at `lumie_webhook::validate::BASELINE_KUBERNETES_RELEASE`: for each check, pods upstream
//! admits and pods it refuses (each recent change included), through the same `review()` the
//! endpoint uses, on a plain (non-workspace) pod under the built-in policy. Then the rules where
//! the webhook is deliberately stricter, marked as such in the denial.

use lumie_webhook::policy::PolicySet;
use lumie_webhook::review::{Endpoint, review};
use lumie_webhook::validate::{
    BASELINE_CAPABILITIES, BASELINE_KUBERNETES_RELEASE, SAFE_SYSCTLS, STRICTER,
};
mod common;
use common::workspace_pod;
use serde_json::{Value, json};

const CONTROL_PLANE: &str = "system:serviceaccount:coder:coder";

/// A plain pod with one regular container `main`, which the edits below change.
fn plain_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "scratch", "namespace": "lumie-dev", "labels": {"app": "scratch"}},
        "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}]}
    })
}

/// `(allowed, status message)` of a CREATE by the control plane.
fn validate(pod: &Value) -> (bool, String) {
    let body = serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "3e0c1b9a-0000-4000-8000-000000000016",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"]["name"],
            "namespace": "lumie-dev",
            "operation": "CREATE",
            "userInfo": {"username": CONTROL_PLANE, "groups": ["system:authenticated"]},
            "object": pod
        }
    }))
    .unwrap();
    let out = review(&PolicySet::builtin(), Endpoint::Validate, &body).expect("readable");
    let v: Value = serde_json::from_slice(&out.body).unwrap();
    let resp = &v["response"];
    (
        resp["allowed"].as_bool().unwrap(),
        resp["status"]["message"].as_str().unwrap_or("").to_string(),
    )
}

fn main_container(pod: &mut Value) -> &mut Value {
    &mut pod["spec"]["containers"][0]
}

fn sc(pod: &mut Value, sc: Value) {
    main_container(pod)["securityContext"] = sc;
}

fn pod_sc(pod: &mut Value, sc: Value) {
    pod["spec"]["securityContext"] = sc;
}

fn init(pod: &mut Value, c: Value) {
    pod["spec"]["initContainers"] = json!([c]);
}

fn ephemeral(pod: &mut Value, c: Value) {
    pod["spec"]["ephemeralContainers"] = json!([c]);
}

enum Want {
    Allow,
    /// Every fragment appears in the denial.
    Deny(&'static [&'static str]),
}

type Edit = fn(&mut Value);

fn run_table(base: fn() -> Value, cases: Vec<(&str, Edit, Want)>) {
    let mut failures = Vec::new();
    for (name, edit, want) in cases {
        let mut pod = base();
        edit(&mut pod);
        let (allowed, message) = validate(&pod);
        match want {
            Want::Allow if !allowed => failures.push(format!("{name}: denied: {message}")),
            Want::Deny(_) if allowed => failures.push(format!("{name}: allowed")),
            Want::Deny(parts) => {
                for p in parts {
                    if !message.contains(p) {
                        failures.push(format!("{name}: {message:?} lacks {p:?}"));
                    }
                }
            }
            Want::Allow => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn follows_a_recent_release() {
    let minor: u32 = BASELINE_KUBERNETES_RELEASE
        .strip_prefix("1.")
        .and_then(|m| m.parse().ok())
        .expect("a 1.x release");
    assert!(
        minor >= 37,
        "probe host (1.34), userns procMount (1.35), ulimits (1.37)"
    );
    assert_eq!(SAFE_SYSCTLS.len(), 12);
    assert_eq!(BASELINE_CAPABILITIES.len(), 13);
}

#[test]
fn host_namespaces_privileged_host_path_host_ports() {
    run_table(
        plain_pod,
        vec![
            ("plain pod", |_| {}, Want::Allow),
            (
                "hostNetwork",
                |p| p["spec"]["hostNetwork"] = json!(true),
                Want::Deny(&[
                    "pod: spec.hostNetwork=true is not allowed (Pod Security baseline: host namespaces",
                ]),
            ),
            (
                "hostPID",
                |p| p["spec"]["hostPID"] = json!(true),
                Want::Deny(&["spec.hostPID=true"]),
            ),
            (
                "hostIPC",
                |p| p["spec"]["hostIPC"] = json!(true),
                Want::Deny(&["spec.hostIPC=true"]),
            ),
            (
                "host namespaces false",
                |p| {
                    p["spec"]["hostNetwork"] = json!(false);
                    p["spec"]["hostPID"] = json!(false);
                    p["spec"]["hostIPC"] = json!(false);
                },
                Want::Allow,
            ),
            (
                "privileged",
                |p| sc(p, json!({"privileged": true})),
                Want::Deny(&[r#"container "main": securityContext.privileged=true"#]),
            ),
            (
                "privileged false",
                |p| sc(p, json!({"privileged": false})),
                Want::Allow,
            ),
            (
                "hostPath",
                |p| p["spec"]["volumes"] = json!([{"name": "root", "hostPath": {"path": "/"}}]),
                Want::Deny(&[
                    r#"pod: spec.volumes[0].hostPath="/" is not allowed (Pod Security baseline: hostPath volumes are not allowed (volume "root")"#,
                ]),
            ),
            (
                "emptyDir",
                |p| p["spec"]["volumes"] = json!([{"name": "scratch", "emptyDir": {}}]),
                Want::Allow,
            ),
            (
                "hostPort",
                |p| main_container(p)["ports"] = json!([{"containerPort": 80, "hostPort": 8080}]),
                Want::Deny(&[r#"container "main": ports[0].hostPort=8080 is not allowed"#]),
            ),
            (
                "hostPort 0 and unset",
                |p| {
                    main_container(p)["ports"] =
                        json!([{"containerPort": 80, "hostPort": 0}, {"containerPort": 81}])
                },
                Want::Allow,
            ),
            (
                "init container hostPort",
                |p| {
                    init(
                        p,
                        json!({"name": "i", "image": "busybox",
                            "ports": [{"containerPort": 80, "hostPort": 80}]}),
                    )
                },
                Want::Deny(&[r#"init container "i": ports[0].hostPort=80"#]),
            ),
        ],
    );
}

#[test]
fn capabilities_exact_strings() {
    run_table(
        plain_pod,
        vec![
            (
                "all thirteen baseline capabilities",
                |p| sc(p, json!({"capabilities": {"add": BASELINE_CAPABILITIES}})),
                Want::Allow,
            ),
            (
                "drop is not restricted",
                |p| {
                    sc(
                        p,
                        json!({"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}),
                    )
                },
                Want::Allow,
            ),
            (
                "CAP_ prefix is not stripped",
                |p| sc(p, json!({"capabilities": {"add": ["CAP_CHOWN"]}})),
                Want::Deny(&[
                    r#"container "main": securityContext.capabilities.add=["CAP_CHOWN"] is not allowed (Pod Security baseline: only the baseline capabilities"#,
                ]),
            ),
            (
                "lower case is not folded",
                |p| sc(p, json!({"capabilities": {"add": ["chown", "KILL"]}})),
                Want::Deny(&[r#"add=["chown"]"#]),
            ),
            (
                "surrounding space is not trimmed",
                |p| sc(p, json!({"capabilities": {"add": [" KILL"]}})),
                Want::Deny(&[r#"add=[" KILL"]"#]),
            ),
            (
                "NET_RAW (not in baseline's list)",
                |p| sc(p, json!({"capabilities": {"add": ["NET_RAW"]}})),
                Want::Deny(&[r#"add=["NET_RAW"]"#]),
            ),
            (
                "SYS_ADMIN in an ephemeral container",
                |p| {
                    ephemeral(
                        p,
                        json!({"name": "debug", "image": "busybox",
                            "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}),
                    )
                },
                Want::Deny(&[
                    r#"ephemeral container "debug": securityContext.capabilities.add=["SYS_ADMIN"]"#,
                ]),
            ),
        ],
    );
}

#[test]
fn apparmor_annotations_and_fields() {
    run_table(
        plain_pod,
        vec![
            (
                "annotation unconfined",
                |p| {
                    p["metadata"]["annotations"] =
                        json!({"container.apparmor.security.beta.kubernetes.io/main": "unconfined"})
                },
                Want::Deny(&[
                    r#"metadata.annotations["container.apparmor.security.beta.kubernetes.io/main"]="unconfined" is not allowed (Pod Security baseline: AppArmor"#,
                ]),
            ),
            (
                "annotation runtime/default, localhost/*, empty",
                |p| {
                    p["metadata"]["annotations"] = json!({
                        "container.apparmor.security.beta.kubernetes.io/main": "runtime/default",
                        "container.apparmor.security.beta.kubernetes.io/other": "localhost/k8s-nginx",
                        "container.apparmor.security.beta.kubernetes.io/third": ""
                    })
                },
                Want::Allow,
            ),
            (
                "pod appArmorProfile Unconfined",
                |p| pod_sc(p, json!({"appArmorProfile": {"type": "Unconfined"}})),
                Want::Deny(&[r#"pod: spec.securityContext.appArmorProfile.type="Unconfined""#]),
            ),
            (
                "container appArmorProfile Unconfined",
                |p| sc(p, json!({"appArmorProfile": {"type": "Unconfined"}})),
                Want::Deny(&[
                    r#"container "main": securityContext.appArmorProfile.type="Unconfined""#,
                ]),
            ),
            (
                "appArmorProfile of an unknown type",
                |p| sc(p, json!({"appArmorProfile": {"type": "unconfined"}})),
                Want::Deny(&[r#"appArmorProfile.type="unconfined""#]),
            ),
            (
                "ephemeral container appArmorProfile Unconfined",
                |p| {
                    ephemeral(
                        p,
                        json!({"name": "debug", "image": "busybox",
                            "securityContext": {"appArmorProfile": {"type": "Unconfined"}}}),
                    )
                },
                Want::Deny(&[r#"ephemeral container "debug": securityContext.appArmorProfile"#]),
            ),
            (
                "RuntimeDefault and Localhost",
                |p| {
                    pod_sc(p, json!({"appArmorProfile": {"type": "RuntimeDefault"}}));
                    sc(
                        p,
                        json!({"appArmorProfile": {"type": "Localhost", "localhostProfile": "k8s-nginx"}}),
                    );
                },
                Want::Allow,
            ),
        ],
    );
}

#[test]
fn selinux() {
    run_table(
        plain_pod,
        vec![
            (
                "container_t, container_init_t, container_kvm_t",
                |p| {
                    pod_sc(
                        p,
                        json!({"seLinuxOptions": {"type": "container_t", "level": "s0:c1"}}),
                    );
                    sc(p, json!({"seLinuxOptions": {"type": "container_init_t"}}));
                    init(
                        p,
                        json!({"name": "i", "image": "busybox",
                            "securityContext": {"seLinuxOptions": {"type": "container_kvm_t"}}}),
                    );
                },
                Want::Allow,
            ),
            (
                "container_engine_t (1.31)",
                |p| sc(p, json!({"seLinuxOptions": {"type": "container_engine_t"}})),
                Want::Allow,
            ),
            (
                "empty type, user and role",
                |p| {
                    sc(
                        p,
                        json!({"seLinuxOptions": {"type": "", "user": "", "role": ""}}),
                    )
                },
                Want::Allow,
            ),
            (
                "spc_t",
                |p| sc(p, json!({"seLinuxOptions": {"type": "spc_t"}})),
                Want::Deny(&[
                    r#"container "main": securityContext.seLinuxOptions.type="spc_t" is not allowed (Pod Security baseline: SELinux type"#,
                ]),
            ),
            (
                "type compared exactly",
                |p| sc(p, json!({"seLinuxOptions": {"type": "Container_t"}})),
                Want::Deny(&[r#"seLinuxOptions.type="Container_t""#]),
            ),
            (
                "pod-level user",
                |p| pod_sc(p, json!({"seLinuxOptions": {"user": "system_u"}})),
                Want::Deny(&[r#"pod: spec.securityContext.seLinuxOptions.user="system_u""#]),
            ),
            (
                "container role",
                |p| sc(p, json!({"seLinuxOptions": {"role": "system_r"}})),
                Want::Deny(&[r#"securityContext.seLinuxOptions.role="system_r""#]),
            ),
        ],
    );
}

#[test]
fn proc_mount_and_user_namespaces() {
    run_table(
        plain_pod,
        vec![
            (
                "Default",
                |p| sc(p, json!({"procMount": "Default"})),
                Want::Allow,
            ),
            (
                "Unmasked",
                |p| sc(p, json!({"procMount": "Unmasked"})),
                Want::Deny(&[
                    r#"container "main": securityContext.procMount="Unmasked" is not allowed (Pod Security baseline: procMount must be Default"#,
                ]),
            ),
            (
                "Unmasked with hostUsers: true",
                |p| {
                    p["spec"]["hostUsers"] = json!(true);
                    sc(p, json!({"procMount": "Unmasked"}));
                },
                Want::Deny(&[r#"securityContext.procMount="Unmasked""#]),
            ),
            (
                "Unmasked in a user namespace (hostUsers: false, 1.35)",
                |p| {
                    p["spec"]["hostUsers"] = json!(false);
                    sc(p, json!({"procMount": "Unmasked"}));
                    init(
                        p,
                        json!({"name": "i", "image": "busybox",
                            "securityContext": {"procMount": "Unmasked"}}),
                    );
                },
                Want::Allow,
            ),
            (
                "a user namespace relaxes procMount only",
                |p| {
                    p["spec"]["hostUsers"] = json!(false);
                    sc(p, json!({"procMount": "Unmasked", "privileged": true}));
                },
                Want::Deny(&["securityContext.privileged=true"]),
            ),
        ],
    );
}

#[test]
fn seccomp_fields() {
    run_table(
        plain_pod,
        vec![
            (
                "pod Unconfined",
                |p| pod_sc(p, json!({"seccompProfile": {"type": "Unconfined"}})),
                Want::Deny(&[
                    r#"pod: spec.securityContext.seccompProfile.type="Unconfined" is not allowed (Pod Security baseline: seccomp may not be disabled"#,
                ]),
            ),
            (
                "container Unconfined",
                |p| sc(p, json!({"seccompProfile": {"type": "Unconfined"}})),
                Want::Deny(&[
                    r#"container "main": securityContext.seccompProfile.type="Unconfined""#,
                ]),
            ),
            (
                "init container Unconfined",
                |p| {
                    init(
                        p,
                        json!({"name": "i", "image": "busybox",
                            "securityContext": {"seccompProfile": {"type": "Unconfined"}}}),
                    )
                },
                Want::Deny(&[r#"init container "i": securityContext.seccompProfile"#]),
            ),
            (
                "RuntimeDefault and Localhost",
                |p| {
                    pod_sc(p, json!({"seccompProfile": {"type": "RuntimeDefault"}}));
                    sc(
                        p,
                        json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}}),
                    );
                },
                Want::Allow,
            ),
        ],
    );
}

#[test]
fn sysctls_current_safe_list() {
    run_table(
        plain_pod,
        vec![
            (
                "every safe sysctl",
                |p| {
                    let all: Vec<Value> = SAFE_SYSCTLS
                        .iter()
                        .map(|n| json!({"name": n, "value": "1"}))
                        .collect();
                    pod_sc(p, json!({"sysctls": all}));
                },
                Want::Allow,
            ),
            (
                "ip_local_reserved_ports (1.27)",
                |p| {
                    pod_sc(
                        p,
                        json!({"sysctls": [{"name": "net.ipv4.ip_local_reserved_ports", "value": "30000"}]}),
                    )
                },
                Want::Allow,
            ),
            (
                "tcp keepalive and fin timeout (1.29)",
                |p| {
                    pod_sc(
                        p,
                        json!({"sysctls": [
                            {"name": "net.ipv4.tcp_keepalive_time", "value": "600"},
                            {"name": "net.ipv4.tcp_fin_timeout", "value": "30"},
                            {"name": "net.ipv4.tcp_keepalive_intvl", "value": "60"},
                            {"name": "net.ipv4.tcp_keepalive_probes", "value": "5"}]}),
                    )
                },
                Want::Allow,
            ),
            (
                "tcp_rmem and tcp_wmem (1.32)",
                |p| {
                    pod_sc(
                        p,
                        json!({"sysctls": [
                            {"name": "net.ipv4.tcp_rmem", "value": "4096 87380 16777216"},
                            {"name": "net.ipv4.tcp_wmem", "value": "4096 65536 16777216"}]}),
                    )
                },
                Want::Allow,
            ),
            (
                "net.core.somaxconn",
                |p| {
                    pod_sc(
                        p,
                        json!({"sysctls": [{"name": "net.ipv4.tcp_rmem", "value": "1 2 3"},
                            {"name": "net.core.somaxconn", "value": "1024"}]}),
                    )
                },
                Want::Deny(&[
                    r#"pod: spec.securityContext.sysctls[1].name="net.core.somaxconn" is not allowed (Pod Security baseline: only safe sysctls"#,
                ]),
            ),
            (
                "tcp_mem is not tcp_rmem",
                |p| {
                    pod_sc(
                        p,
                        json!({"sysctls": [{"name": "net.ipv4.tcp_mem", "value": "1 2 3"}]}),
                    )
                },
                Want::Deny(&[r#"sysctls[0].name="net.ipv4.tcp_mem""#]),
            ),
        ],
    );
}

#[test]
fn ulimits() {
    run_table(
        plain_pod,
        vec![
            (
                "ulimits set",
                |p| {
                    sc(
                        p,
                        json!({"ulimits": [{"name": "memlock", "soft": -1, "hard": -1},
                            {"name": "nofile", "soft": 1024, "hard": 4096}]}),
                    )
                },
                Want::Deny(&[
                    r#"container "main": securityContext.ulimits=["memlock", "nofile"] is not allowed (Pod Security baseline: container ulimits"#,
                ]),
            ),
            (
                "init container ulimits",
                |p| {
                    init(
                        p,
                        json!({"name": "i", "image": "busybox",
                            "securityContext": {"ulimits": [{"name": "nofile", "soft": 1, "hard": 1}]}}),
                    )
                },
                Want::Deny(&[r#"init container "i": securityContext.ulimits"#]),
            ),
            (
                "ulimits empty",
                |p| sc(p, json!({"ulimits": []})),
                Want::Allow,
            ),
        ],
    );
}

#[test]
fn windows_host_process() {
    run_table(
        plain_pod,
        vec![
            (
                "pod hostProcess",
                |p| pod_sc(p, json!({"windowsOptions": {"hostProcess": true}})),
                Want::Deny(&["pod: spec.securityContext.windowsOptions.hostProcess=true"]),
            ),
            (
                "container hostProcess",
                |p| sc(p, json!({"windowsOptions": {"hostProcess": true}})),
                Want::Deny(&[
                    r#"container "main": securityContext.windowsOptions.hostProcess=true"#,
                ]),
            ),
            (
                "hostProcess false",
                |p| {
                    pod_sc(p, json!({"windowsOptions": {"hostProcess": false}}));
                    sc(p, json!({"windowsOptions": {"hostProcess": false}}));
                },
                Want::Allow,
            ),
        ],
    );
}

#[test]
fn probe_and_lifecycle_hosts() {
    run_table(
        plain_pod,
        vec![
            (
                "probes and handlers without a host",
                |p| {
                    let c = main_container(p);
                    c["livenessProbe"] = json!({"httpGet": {"path": "/healthz", "port": 8080}});
                    c["readinessProbe"] = json!({"tcpSocket": {"port": 8080, "host": ""}});
                    c["startupProbe"] = json!({"exec": {"command": ["true"]}});
                    c["lifecycle"] = json!({"preStop": {"httpGet": {"port": 8080, "host": ""}},
                        "postStart": {"exec": {"command": ["true"]}}});
                },
                Want::Allow,
            ),
            (
                "livenessProbe.httpGet.host",
                |p| {
                    main_container(p)["livenessProbe"] =
                        json!({"httpGet": {"host": "169.254.169.254", "path": "/", "port": 80}})
                },
                Want::Deny(&[
                    r#"container "main": livenessProbe.httpGet.host="169.254.169.254" is not allowed (Pod Security baseline: probes and lifecycle handlers may not set a host"#,
                ]),
            ),
            (
                "readinessProbe.tcpSocket.host",
                |p| {
                    main_container(p)["readinessProbe"] =
                        json!({"tcpSocket": {"host": "127.0.0.1", "port": 10250}})
                },
                Want::Deny(&[r#"readinessProbe.tcpSocket.host="127.0.0.1""#]),
            ),
            (
                "startupProbe.httpGet.host",
                |p| {
                    main_container(p)["startupProbe"] =
                        json!({"httpGet": {"host": "localhost", "port": 10255}})
                },
                Want::Deny(&[r#"startupProbe.httpGet.host="localhost""#]),
            ),
            (
                "lifecycle.postStart.httpGet.host",
                |p| {
                    main_container(p)["lifecycle"] =
                        json!({"postStart": {"httpGet": {"host": "10.0.0.1", "port": 2379}}})
                },
                Want::Deny(&[r#"lifecycle.postStart.httpGet.host="10.0.0.1""#]),
            ),
            (
                "lifecycle.preStop.tcpSocket.host (deprecated, still read)",
                |p| {
                    main_container(p)["lifecycle"] =
                        json!({"preStop": {"tcpSocket": {"host": "10.0.0.1", "port": 2379}}})
                },
                Want::Deny(&[r#"lifecycle.preStop.tcpSocket.host="10.0.0.1""#]),
            ),
            (
                "init container probe host",
                |p| {
                    init(
                        p,
                        json!({"name": "i", "image": "busybox",
                            "livenessProbe": {"tcpSocket": {"host": "node", "port": 22}}}),
                    )
                },
                Want::Deny(&[r#"init container "i": livenessProbe.tcpSocket.host="node""#]),
            ),
            (
                "ephemeral container lifecycle host, as upstream reads it",
                |p| {
                    ephemeral(
                        p,
                        json!({"name": "debug", "image": "busybox",
                            "lifecycle": {"preStop": {"httpGet": {"host": "node", "port": 1}}}}),
                    )
                },
                Want::Deny(&[
                    r#"ephemeral container "debug": lifecycle.preStop.httpGet.host="node""#,
                ]),
            ),
            (
                "every host is named",
                |p| {
                    let c = main_container(p);
                    c["livenessProbe"] = json!({"httpGet": {"host": "a", "port": 1}});
                    c["readinessProbe"] = json!({"httpGet": {"host": "b", "port": 1}});
                },
                Want::Deny(&[
                    r#"livenessProbe.httpGet.host="a""#,
                    r#"readinessProbe.httpGet.host="b""#,
                ]),
            ),
        ],
    );
}

#[test]
fn the_privileged_exception_does_not_cover_probe_hosts() {
    run_table(
        workspace_pod,
        vec![
            ("workspace pod", |_| {}, Want::Allow),
            (
                "dind with a probe host",
                |p| {
                    p["spec"]["containers"][2]["livenessProbe"] =
                        json!({"tcpSocket": {"host": "127.0.0.1", "port": 10250}})
                },
                Want::Deny(&[r#"container "dind": livenessProbe.tcpSocket.host="127.0.0.1""#]),
            ),
        ],
    );
}

#[test]
fn stricter_than_upstream_and_marked_so() {
    assert_eq!(
        STRICTER, "lumie-coder, stricter than upstream",
        "the fragments below"
    );
    run_table(
        plain_pod,
        vec![
            (
                "allowPrivilegeEscalation true (upstream: restricted only)",
                |p| sc(p, json!({"allowPrivilegeEscalation": true})),
                Want::Deny(&[
                    r#"container "main": securityContext.allowPrivilegeEscalation=true is not allowed (Pod Security baseline (lumie-coder, stricter than upstream): privilege escalation"#,
                ]),
            ),
            (
                "seccomp pod annotation unconfined (upstream: before 1.19 only)",
                |p| {
                    p["metadata"]["annotations"] =
                        json!({"seccomp.security.alpha.kubernetes.io/pod": "unconfined"})
                },
                Want::Deny(&[
                    r#"metadata.annotations["seccomp.security.alpha.kubernetes.io/pod"]="unconfined" is not allowed (Pod Security baseline (lumie-coder, stricter than upstream): seccomp"#,
                ]),
            ),
            (
                "seccomp container annotation unconfined",
                |p| {
                    p["metadata"]["annotations"] =
                        json!({"container.seccomp.security.alpha.kubernetes.io/main": "unconfined"})
                },
                Want::Deny(&["container.seccomp.security.alpha.kubernetes.io/main"]),
            ),
            (
                "seccomp annotation runtime/default",
                |p| {
                    p["metadata"]["annotations"] =
                        json!({"seccomp.security.alpha.kubernetes.io/pod": "runtime/default"})
                },
                Want::Allow,
            ),
            (
                "gitRepo volume",
                |p| p["spec"]["volumes"] = json!([{"name": "src", "gitRepo": {"repository": "https://example.com/r.git"}}]),
                Want::Deny(&[
                    r#"pod: spec.volumes[0].gitRepo="https://example.com/r.git" is not allowed (Pod Security baseline (lumie-coder, stricter than upstream): gitRepo volumes"#,
                ]),
            ),
        ],
    );
}
