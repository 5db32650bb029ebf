//! Pod validation against one policy, as pure functions: the privileged exception, Pod Security
//! "baseline" for every other container (regular, init and ephemeral), and the workspace pod
//! requirements. Every violation is returned, each naming the container, field, value and rule.
//!
//! Baseline follows the upstream `k8s.io/pod-security-admission` checks at the level
//! `baseline:latest` has in Kubernetes [`BASELINE_KUBERNETES_RELEASE`], check by check (the
//! fields each reads, the values each allows, exact string comparison, the fields that relax a
//! check such as `hostUsers: false`). Where this module is deliberately stricter than upstream,
//! the rule says so ([`STRICTER`]) and `webhook/README.md` gives the reason.
//!
//! Deciding what to do with violations (deny, warn, audit, exempt) is the caller's job
//! ([`crate::review`]); this module only says what is wrong.

use std::fmt;
use std::sync::Arc;

use crate::podview::{
    AffinityView, ContainerView as PodContainer, PodView, PortView, ProbeView, ProfileView,
    SeLinuxView, SecurityView, SpecView, Str, TermView,
};

use crate::policy::CompiledPolicy;

/// The upstream Kubernetes release whose Pod Security `baseline` these rules follow, as a macro
/// so the `--version` text can be built from the same literal at compile time.
#[macro_export]
#[doc(hidden)]
macro_rules! baseline_kubernetes_release {
    () => {
        "1.37"
    };
}

/// The upstream Kubernetes release whose Pod Security `baseline` these rules follow (what
/// `pod-security.kubernetes.io/enforce: baseline` with `enforce-version: latest` means there).
pub const BASELINE_KUBERNETES_RELEASE: &str = baseline_kubernetes_release!();

/// How a rule that goes beyond upstream baseline is marked, so an admin reading a denial can
/// tell lumie's own policy from the Pod Security Standards.
pub const STRICTER: &str = "lumie-coder, stricter than upstream";

/// Capabilities Pod Security baseline allows adding, compared exactly as upstream does (no case
/// folding, no `CAP_` stripping: `CAP_CHOWN` and `chown` are not on the list). Anything else
/// (`SYS_ADMIN`, `NET_ADMIN`, `ALL`…) is a step towards the node.
pub const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Sysctls Pod Security baseline calls safe (namespaced, no effect outside the pod): the 1.0
/// five, `ip_local_reserved_ports` (1.27), the TCP keepalive and FIN timeout four (1.29),
/// `tcp_rmem` and `tcp_wmem` (1.32).
pub const SAFE_SYSCTLS: [&str; 12] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

/// SELinux types Pod Security baseline allows (plus unset or empty); `container_engine_t` since
/// 1.31.
pub const SELINUX_TYPES: [&str; 4] = [
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

/// AppArmor profile types baseline allows in the `appArmorProfile` fields (1.30+).
const APPARMOR_TYPES: [&str; 2] = ["RuntimeDefault", "Localhost"];

const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";
const SECCOMP_POD_ANNOTATION: &str = "seccomp.security.alpha.kubernetes.io/pod";
const SECCOMP_CONTAINER_ANNOTATION_PREFIX: &str = "container.seccomp.security.alpha.kubernetes.io/";

/// How the privileged rule ends when the pod is not a workspace pod; `check` explains what
/// would make it one after a violation ending so.
pub const NOT_WORKSPACE: &str = "; this pod does not match workspaceSelector";

/// What a violation is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// The pod as a whole (`spec.hostNetwork`, volumes, the workspace requirements).
    Pod,
    /// A regular container.
    Container(String),
    /// An init container.
    InitContainer(String),
    /// An ephemeral (debug) container.
    EphemeralContainer(String),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Pod => f.write_str("pod"),
            Subject::Container(n) => write!(f, "container {n:?}"),
            Subject::InitContainer(n) => write!(f, "init container {n:?}"),
            Subject::EphemeralContainer(n) => write!(f, "ephemeral container {n:?}"),
        }
    }
}

/// One broken rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Pod or container.
    pub subject: Subject,
    /// Field path, relative to the container for container subjects.
    pub field: String,
    /// The offending value, rendered; `None` when something required is missing.
    pub value: Option<String>,
    /// The rule, in words.
    pub rule: String,
    /// The policy that set the rule; empty for the rules no policy changes
    /// ([`crate::isolation`]).
    pub policy: Arc<str>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}: {}={} is not allowed", self.subject, self.field, v)?,
            None => write!(f, "{}: {} is required", self.subject, self.field)?,
        }
        if self.policy.is_empty() {
            write!(f, " ({})", self.rule)
        } else {
            write!(f, " ({}, WorkspacePolicy {:?})", self.rule, &*self.policy)
        }
    }
}

/// Collects violations for one policy.
struct Findings<'p> {
    policy: &'p CompiledPolicy,
    out: Vec<Violation>,
}

/// What a finding is about: the pod, or a container whose subject is built on demand.
#[derive(Clone, Copy)]
enum On<'v, 'a> {
    Pod,
    Container(&'v ContainerView<'a>),
}

impl On<'_, '_> {
    fn subject(self) -> Subject {
        match self {
            On::Pod => Subject::Pod,
            On::Container(v) => v.subject(),
        }
    }
}

impl Findings<'_> {
    fn push(&mut self, on: On<'_, '_>, field: &str, value: Option<String>, rule: &str) {
        self.out.push(Violation {
            subject: on.subject(),
            field: field.to_string(),
            value,
            rule: rule.to_string(),
            policy: Arc::clone(&self.policy.name),
        });
    }

    fn baseline(&mut self, on: On<'_, '_>, field: &str, value: String, what: &str) {
        let rule = format!("Pod Security baseline: {what}");
        self.push(on, field, Some(value), &rule);
    }

    /// A rule beyond upstream baseline, marked as lumie's own ([`STRICTER`]).
    fn stricter(&mut self, on: On<'_, '_>, field: &str, value: String, what: &str) {
        let rule = format!("Pod Security baseline ({STRICTER}): {what}");
        self.push(on, field, Some(value), &rule);
    }
}

/// Which list a container is in.
#[derive(Clone, Copy)]
enum ContainerKind {
    Regular,
    Init,
    Ephemeral,
}

/// The parts of a container that matter here; regular, init and ephemeral containers alike.
/// Borrowed, so checking a compliant pod allocates nothing.
struct ContainerView<'a> {
    kind: ContainerKind,
    name: &'a str,
    image: &'a str,
    security: Option<&'a SecurityView<'a>>,
    ports: &'a [PortView],
    container: &'a PodContainer<'a>,
}

impl<'a> ContainerView<'a> {
    fn of(c: &'a PodContainer<'a>, kind: ContainerKind) -> Self {
        ContainerView {
            kind,
            name: &c.name[..],
            image: c.image.as_deref().unwrap_or(""),
            security: c.security_context.as_ref(),
            ports: c.ports.as_deref().unwrap_or(&[]),
            container: c,
        }
    }

    fn of_ephemeral(c: &'a PodContainer<'a>) -> Self {
        Self::of(c, ContainerKind::Ephemeral)
    }

    fn privileged(&self) -> bool {
        self.security.and_then(|s| s.privileged) == Some(true)
    }

    /// The subject of a violation, built only when there is one.
    fn subject(&self) -> Subject {
        let name = self.name.to_string();
        match self.kind {
            ContainerKind::Regular => Subject::Container(name),
            ContainerKind::Init => Subject::InitContainer(name),
            ContainerKind::Ephemeral => Subject::EphemeralContainer(name),
        }
    }
}

/// Who is asking and what changes: the context the privileged exception depends on.
#[derive(Clone, Copy, Debug)]
pub struct RequestContext<'a> {
    /// `userInfo.username` of the request.
    pub username: &'a str,
    /// The object before an UPDATE (`oldObject`).
    pub old: Option<&'a PodView<'a>>,
}

/// Validates a pod (CREATE, UPDATE, or the ephemeral containers subresource in its Pod form)
/// against one policy. The caller only calls this for policies covering the pod's namespace.
///
/// An UPDATE that leaves the spec and the security annotations untouched (labels, finalizers,
/// owner references) has nothing to check: the pod already runs as it is, and checking it would
/// only wedge deletion of pods admitted under `Warn`/`Audit`.
pub fn validate_pod(
    policy: &CompiledPolicy,
    pod: &PodView<'_>,
    ctx: RequestContext<'_>,
) -> Vec<Violation> {
    let mut f = Findings {
        policy,
        out: Vec::new(),
    };
    if let Some(old) = ctx.old
        && old.spec == pod.spec
        && security_annotations(old).eq(security_annotations(pod))
    {
        return f.out;
    }
    static EMPTY_SPEC: std::sync::LazyLock<SpecView<'static>> =
        std::sync::LazyLock::new(SpecView::default);
    let spec = pod.spec.as_ref().unwrap_or(&EMPTY_SPEC);
    let workspace = policy.is_workspace(pod.metadata.labels.as_ref());

    check_pod_level(&mut f, spec);
    // Upstream relaxes procMount for a pod in a user namespace (1.35+): its /proc is the
    // namespace's, not the node's.
    let userns = spec.host_users == Some(false);

    for c in spec.containers() {
        let view = ContainerView::of(c, ContainerKind::Regular);
        let excepted = if view.privileged() {
            privileged_exception(&mut f, &view, workspace, ctx)
        } else {
            exception_applies(policy, &view, workspace, ctx).is_ok()
        };
        if !excepted {
            check_container(&mut f, &view, false, userns);
        } else {
            check_container_host_access(&mut f, &view);
        }
    }
    for c in spec.init_containers.iter().flatten() {
        let view = ContainerView::of(c, ContainerKind::Init);
        check_container(&mut f, &view, true, userns);
    }
    for c in spec.ephemeral_containers.iter().flatten() {
        check_container(&mut f, &ContainerView::of_ephemeral(c), true, userns);
    }
    check_annotations(&mut f, pod, spec, workspace, ctx);

    if workspace {
        check_workspace_requirements(&mut f, spec);
    }
    f.out
}

/// Validates ephemeral containers sent on their own (the `EphemeralContainers` object of the
/// `pods/ephemeralcontainers` subresource before Kubernetes 1.22): baseline, no exception. That
/// object does not carry `hostUsers`, so `procMount` is judged as for a pod on the host's users.
pub fn validate_ephemeral_containers(
    policy: &CompiledPolicy,
    containers: &[PodContainer<'_>],
) -> Vec<Violation> {
    let mut f = Findings {
        policy,
        out: Vec::new(),
    };
    for c in containers {
        check_container(&mut f, &ContainerView::of_ephemeral(c), true, false);
    }
    f.out
}

/// Why the privileged exception does not apply to a container. The message is only formatted
/// when a violation is recorded, so compliant pods allocate nothing here.
enum Miss<'p> {
    NoEntry,
    NotWorkspace,
    Image(&'p crate::policy::PrivilegedException),
    NotCreator,
}

impl Miss<'_> {
    fn rule(&self, policy: &CompiledPolicy, view: &ContainerView<'_>, user: &str) -> String {
        match self {
            Miss::NoEntry => policy.privileged_rule.clone(),
            Miss::NotWorkspace => format!("{}{NOT_WORKSPACE}", policy.privileged_rule),
            Miss::Image(ex) => format!(
                "image {:?} is not an allowed image for {:?}: {}",
                view.image,
                ex.name,
                ex.images.join(", ")
            ),
            Miss::NotCreator => format!(
                "{} created by workspaceCreators; {user:?} is not one",
                policy.privileged_rule
            ),
        }
    }
}

/// Whether the privileged exception applies to a regular container, or why not.
fn exception_applies<'p>(
    policy: &'p CompiledPolicy,
    view: &ContainerView<'_>,
    workspace: bool,
    ctx: RequestContext<'_>,
) -> Result<(), Miss<'p>> {
    let Some(ex) = policy.privileged.iter().find(|p| p.name == view.name) else {
        return Err(Miss::NoEntry);
    };
    if !workspace {
        return Err(Miss::NotWorkspace);
    }
    if !ex.image_allowed(view.image) {
        return Err(Miss::Image(ex));
    }
    if !policy.is_creator(ctx.username) && !unchanged_from_old(view, ctx.old) {
        return Err(Miss::NotCreator);
    }
    Ok(())
}

/// Records why a privileged regular container is not excepted; true when it is.
fn privileged_exception(
    f: &mut Findings<'_>,
    view: &ContainerView<'_>,
    workspace: bool,
    ctx: RequestContext<'_>,
) -> bool {
    match exception_applies(f.policy, view, workspace, ctx) {
        Ok(()) => true,
        Err(miss) => {
            let rule = miss.rule(f.policy, view, ctx.username);
            f.push(
                On::Container(view),
                "securityContext.privileged",
                Some("true".into()),
                &rule,
            );
            false
        }
    }
}

/// An UPDATE by someone else (a developer adding a debug container, a controller editing the
/// spec) keeps a privileged container that was already there, unchanged: it adds no privilege.
fn unchanged_from_old(view: &ContainerView<'_>, old: Option<&PodView<'_>>) -> bool {
    old.and_then(|o| o.spec.as_ref())
        .map(|s| {
            s.containers().iter().any(|c| {
                c.name == view.name
                    && c.image.as_deref().unwrap_or("") == view.image
                    && c.security_context.as_ref() == view.security
            })
        })
        .unwrap_or(false)
}

fn check_pod_level(f: &mut Findings<'_>, spec: &SpecView<'_>) {
    let p = On::Pod;
    for (field, value) in [
        ("spec.hostNetwork", spec.host_network),
        ("spec.hostPID", spec.host_pid),
        ("spec.hostIPC", spec.host_ipc),
    ] {
        if value == Some(true) {
            f.baseline(p, field, "true".into(), "host namespaces may not be shared");
        }
    }
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if let Some(hp) = &v.host_path {
            f.baseline(
                p,
                &format!("spec.volumes[{i}].hostPath"),
                format!("{:?}", hp.path),
                &format!("hostPath volumes are not allowed (volume {:?})", v.name),
            );
        }
        if let Some(git) = &v.git_repo {
            f.stricter(
                p,
                &format!("spec.volumes[{i}].gitRepo"),
                format!("{:?}", git.repository),
                &format!(
                    "gitRepo volumes are not allowed: the kubelet runs git on the node (volume {:?})",
                    v.name
                ),
            );
        }
    }
    let Some(sc) = &spec.security_context else {
        return;
    };
    for (i, s) in sc.sysctls.iter().flatten().enumerate() {
        if !SAFE_SYSCTLS.contains(&&*s.name) {
            f.baseline(
                p,
                &format!("spec.securityContext.sysctls[{i}].name"),
                format!("{:?}", s.name),
                "only safe sysctls may be set",
            );
        }
    }
    check_confinement(
        f,
        p,
        "spec.securityContext",
        sc.seccomp_profile.as_ref(),
        sc.app_armor_profile.as_ref(),
        sc.se_linux_options.as_ref(),
    );
    if sc.windows_options.as_ref().and_then(|w| w.host_process) == Some(true) {
        f.baseline(
            p,
            "spec.securityContext.windowsOptions.hostProcess",
            "true".into(),
            "Windows HostProcess pods are not allowed",
        );
    }
}

/// seccomp, AppArmor and SELinux at pod or container level (`prefix`): none may be switched off.
fn check_confinement(
    f: &mut Findings<'_>,
    subject: On<'_, '_>,
    prefix: &str,
    seccomp: Option<&ProfileView<'_>>,
    app_armor: Option<&ProfileView<'_>>,
    selinux: Option<&SeLinuxView<'_>>,
) {
    if let Some(p) = seccomp
        && p.type_ == "Unconfined"
    {
        f.baseline(
            subject,
            &format!("{prefix}.seccompProfile.type"),
            "\"Unconfined\"".into(),
            "seccomp may not be disabled",
        );
    }
    if let Some(p) = app_armor
        && !APPARMOR_TYPES.contains(&&*p.type_)
    {
        f.baseline(
            subject,
            &format!("{prefix}.appArmorProfile.type"),
            format!("{:?}", p.type_),
            "AppArmor may not be disabled (RuntimeDefault or Localhost only)",
        );
    }
    if let Some(se) = selinux {
        check_selinux(f, subject, &format!("{prefix}.seLinuxOptions"), se);
    }
}

fn check_selinux(f: &mut Findings<'_>, subject: On<'_, '_>, prefix: &str, se: &SeLinuxView<'_>) {
    if let Some(t) = se.type_.as_deref()
        && !t.is_empty()
        && !SELINUX_TYPES.contains(&t)
    {
        f.baseline(
            subject,
            &format!("{prefix}.type"),
            format!("{t:?}"),
            "SELinux type must be container_t, container_init_t, container_kvm_t or container_engine_t",
        );
    }
    for (name, value) in [("user", &se.user), ("role", &se.role)] {
        if let Some(v) = value.as_deref()
            && !v.is_empty()
        {
            f.baseline(
                subject,
                &format!("{prefix}.{name}"),
                format!("{v:?}"),
                "SELinux user and role may not be set",
            );
        }
    }
}

/// Baseline for one container. `never_excepted` (init and ephemeral containers) only changes
/// the wording of the privileged rule; `userns` (`hostUsers: false`) allows any `procMount`.
fn check_container(
    f: &mut Findings<'_>,
    view: &ContainerView<'_>,
    never_excepted: bool,
    userns: bool,
) {
    let s = On::Container(view);
    if view.privileged() && never_excepted {
        let rule = format!(
            "{}; init and ephemeral containers never are",
            f.policy.privileged_rule
        );
        f.push(s, "securityContext.privileged", Some("true".into()), &rule);
    }
    check_container_host_access(f, view);
    let Some(sc) = view.security else {
        return;
    };
    if sc.allow_privilege_escalation == Some(true) {
        // Upstream checks this at restricted only; see webhook/README.md.
        f.stricter(
            s,
            "securityContext.allowPrivilegeEscalation",
            "true".into(),
            "privilege escalation may not be allowed",
        );
    }
    if let Some(add) = sc.capabilities.as_ref().and_then(|c| c.add.as_ref()) {
        let extra: Vec<&str> = add
            .iter()
            .map(|c| &**c)
            .filter(|cap| !BASELINE_CAPABILITIES.contains(cap))
            .collect();
        if !extra.is_empty() {
            f.baseline(
                s,
                "securityContext.capabilities.add",
                format!("{extra:?}"),
                "only the baseline capabilities may be added",
            );
        }
    }
    if let Some(pm) = sc.proc_mount.as_deref()
        && pm != "Default"
        && !userns
    {
        f.baseline(
            s,
            "securityContext.procMount",
            format!("{pm:?}"),
            "procMount must be Default unless the pod sets hostUsers: false",
        );
    }
    if let Some(limits) = sc.ulimits.as_deref()
        && !limits.is_empty()
    {
        let names: Vec<&str> = limits.iter().map(|l| &*l.name).collect();
        f.baseline(
            s,
            "securityContext.ulimits",
            format!("{names:?}"),
            "container ulimits may not be set",
        );
    }
    check_confinement(
        f,
        s,
        "securityContext",
        sc.seccomp_profile.as_ref(),
        sc.app_armor_profile.as_ref(),
        sc.se_linux_options.as_ref(),
    );
}

/// The checks that hold even for the privileged exception: a host port, a probe or lifecycle
/// host, or a Windows HostProcess container reaches the node in a way `dind` never needs.
fn check_container_host_access(f: &mut Findings<'_>, view: &ContainerView<'_>) {
    check_probe_hosts(f, view);
    let s = On::Container(view);
    for (i, p) in view.ports.iter().enumerate() {
        if let Some(hp) = p.host_port
            && hp != 0
        {
            f.baseline(
                s,
                &format!("ports[{i}].hostPort"),
                hp.to_string(),
                "host ports are not allowed",
            );
        }
    }
    if view
        .security
        .and_then(|sc| sc.windows_options.as_ref())
        .and_then(|w| w.host_process)
        == Some(true)
    {
        f.baseline(
            s,
            "securityContext.windowsOptions.hostProcess",
            "true".into(),
            "Windows HostProcess containers are not allowed",
        );
    }
}

/// Probe and lifecycle handler hosts (upstream "probe or lifecycle host", 1.34+): the kubelet
/// makes these connections from the node's network, so any non-empty host reaches what the
/// node reaches (its loopback, the cloud metadata endpoint) in the pod's name.
fn check_probe_hosts(f: &mut Findings<'_>, view: &ContainerView<'_>) {
    let c = view.container;
    let lifecycle = c.lifecycle.as_ref();
    let handlers: [(&str, Option<&ProbeView<'_>>); 5] = [
        ("livenessProbe", c.liveness_probe.as_ref()),
        ("readinessProbe", c.readiness_probe.as_ref()),
        ("startupProbe", c.startup_probe.as_ref()),
        (
            "lifecycle.postStart",
            lifecycle.and_then(|l| l.post_start.as_ref()),
        ),
        (
            "lifecycle.preStop",
            lifecycle.and_then(|l| l.pre_stop.as_ref()),
        ),
    ];
    for (field, handler) in handlers {
        let Some(h) = handler else { continue };
        for (action, target) in [("httpGet", &h.http_get), ("tcpSocket", &h.tcp_socket)] {
            if let Some(host) = target.as_ref().and_then(|t| t.host.as_deref())
                && !host.is_empty()
            {
                f.baseline(
                    On::Container(view),
                    &format!("{field}.{action}.host"),
                    format!("{host:?}"),
                    "probes and lifecycle handlers may not set a host (the kubelet connects from the node)",
                );
            }
        }
    }
}

fn security_annotations<'p, 'a>(
    pod: &'p PodView<'a>,
) -> impl Iterator<Item = (&'p Str<'a>, &'p Str<'a>)> {
    pod.metadata.annotations.iter().flatten().filter(|(k, _)| {
        k.starts_with(APPARMOR_ANNOTATION_PREFIX)
            || k.starts_with(SECCOMP_CONTAINER_ANNOTATION_PREFIX)
            || &***k == SECCOMP_POD_ANNOTATION
    })
}

/// The pre-field AppArmor and seccomp annotations. Upstream still reads the AppArmor ones
/// (empty, `runtime/default` and `localhost/*` allowed); the seccomp ones only before 1.19, and
/// the webhook keeps them ([`STRICTER`]): a kubelet that still honours them would run unconfined.
fn check_annotations(
    f: &mut Findings<'_>,
    pod: &PodView<'_>,
    spec: &SpecView<'_>,
    workspace: bool,
    ctx: RequestContext<'_>,
) {
    let policy = f.policy;
    // The privileged exception runs unconfined anyway; its annotation is not a new hole.
    let excepted = |name: &str| {
        spec.containers().iter().any(|c| {
            c.name == name
                && exception_applies(
                    policy,
                    &ContainerView::of(c, ContainerKind::Regular),
                    workspace,
                    ctx,
                )
                .is_ok()
        })
    };
    for (key, value) in security_annotations(pod) {
        if let Some(container) = key.strip_prefix(APPARMOR_ANNOTATION_PREFIX) {
            if value.is_empty() || value == "runtime/default" || value.starts_with("localhost/") {
                continue;
            }
            if !excepted(container) {
                f.baseline(
                    On::Pod,
                    &format!("metadata.annotations[{key:?}]"),
                    format!("{value:?}"),
                    "AppArmor may not be disabled (runtime/default or localhost/* only)",
                );
            }
        } else if value == "unconfined" {
            let container = key.strip_prefix(SECCOMP_CONTAINER_ANNOTATION_PREFIX);
            if !container.is_some_and(excepted) {
                // Upstream reads these annotations only for versions before 1.19.
                f.stricter(
                    On::Pod,
                    &format!("metadata.annotations[{key:?}]"),
                    format!("{value:?}"),
                    "seccomp may not be disabled",
                );
            }
        }
    }
}

fn check_workspace_requirements(f: &mut Findings<'_>, spec: &SpecView<'_>) {
    let policy = f.policy;
    let p = On::Pod;
    let sa = spec.service_account_name.as_deref().unwrap_or("default");
    if sa != policy.spec.service_account_name {
        let rule = format!(
            "workspace pods run as {:?}",
            policy.spec.service_account_name
        );
        f.push(p, "spec.serviceAccountName", Some(format!("{sa:?}")), &rule);
    }
    for key in &policy.spec.avoid_node_labels {
        if !avoids_everywhere(spec.affinity.as_ref(), key) {
            let rule = format!("workspace pods must not run on nodes labelled {key:?}");
            f.push(
                p,
                &format!(
                    "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution: \
                     {key:?} DoesNotExist in every nodeSelectorTerm"
                ),
                None,
                &rule,
            );
        }
    }
    for name in lumie_contract::workspace::REQUIRED_CONTAINERS {
        if !spec.containers().iter().any(|c| c.name == name) {
            f.push(
                p,
                &format!("spec.containers[{name:?}]"),
                None,
                "workspace pods have the containers \"dev\", \"agents\" and \"dind\"",
            );
        }
    }
}

/// Whether every required node selector term keeps the pod off nodes carrying `key`.
pub fn avoids_everywhere(affinity: Option<&AffinityView<'_>>, key: &str) -> bool {
    let terms = affinity
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| n.required.as_ref())
        .and_then(|r| r.node_selector_terms.as_deref())
        .unwrap_or(&[]);
    !terms.is_empty() && terms.iter().all(|t| term_avoids(t, key))
}

/// Whether one node selector term requires `key` to be absent.
pub fn term_avoids(term: &TermView<'_>, key: &str) -> bool {
    term.match_expressions
        .iter()
        .flatten()
        .any(|e| e.key == key && e.operator == "DoesNotExist")
}
