//! AdmissionReview in, AdmissionReview out: reading the request (every way it can be unreadable
//! is a [`Error::BadRequest`], never an allow), deciding with the policies in force, and writing
//! the response. Shared by the HTTPS endpoints and `lumie-webhook review`, so both answer the
//! same bytes.
//!
//! Decisions across policies: every policy covering the namespace is applied (the most secure
//! outcome wins). Per policy, an exempt requester is skipped (and audited); otherwise its
//! violations deny (`Enforce`), warn (`Warn`) or are recorded as audit annotations (`Audit`).
//! The workspace isolation rules ([`crate::isolation`]) hold in every guarded namespace on top
//! of the policies, whatever their mode or exemptions, and always deny; they also decide the
//! `exec`, `attach` and `portforward` CONNECT requests.

use std::borrow::Cow;
use std::collections::BTreeMap;

use std::sync::LazyLock;

use base64::Engine as _;
use json_patch::{AddOperation, PatchOperation};
use jsonptr::PointerBuf;
use k8s_openapi::jiff::Timestamp;
use lumie_contract::labels;
use lumie_contract::policy::{GROUP as POLICY_GROUP, PolicyMode, WorkspacePolicy};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::Error;
use crate::isolation::{self, Caller, Identities, PodIdentity};
use crate::metrics::{Decision, ModeLabel};
use crate::mutate::mutate_pod;
use crate::podview::{ContainerView, PodView};
use crate::policy::{CompiledPolicy, PolicySet};
use crate::validate::{RequestContext, Violation, validate_ephemeral_containers, validate_pod};

/// The largest AdmissionReview accepted (the apiserver's own request limit is 3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
/// The only AdmissionReview version served.
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// The AdmissionReview kind.
pub const KIND: &str = "AdmissionReview";

/// Which endpoint a review is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /mutate`: patches, never denies a readable request.
    Mutate,
    /// `POST /validate`: decides, never patches.
    Validate,
}

impl Endpoint {
    /// `mutate` or `validate`.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Mutate => "mutate",
            Endpoint::Validate => "validate",
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mutate" => Ok(Endpoint::Mutate),
            "validate" => Ok(Endpoint::Validate),
            other => Err(format!("unknown endpoint {other:?} (mutate or validate)")),
        }
    }
}

/// An AdmissionReview as read; `O` is how `request.object` and `request.oldObject` are held
/// (see [`read_review`]).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn<'a, O = ObjectIn<'a>> {
    #[serde(borrow)]
    api_version: Option<Cow<'a, str>>,
    #[serde(borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    request: Option<RequestIn<'a, O>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn<'a, O = ObjectIn<'a>> {
    #[serde(borrow)]
    uid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    kind: Option<GroupVersionKind<'a>>,
    #[serde(borrow, default)]
    sub_resource: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    namespace: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    operation: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    user_info: UserInfo<'a>,
    #[serde(default = "none")]
    object: Option<O>,
    #[serde(default = "none")]
    old_object: Option<O>,
    #[serde(default)]
    dry_run: Option<bool>,
}

/// `#[serde(default)]` on a generic field would ask for `O: Default`.
fn none<O>() -> Option<O> {
    None
}

/// `request.object` or `request.oldObject` as read: a pod view when the review was read in one
/// pass as a pod's, the raw JSON otherwise.
#[expect(
    clippy::large_enum_variant,
    reason = "two per review, on the stack; boxing would add an allocation per review"
)]
enum ObjectIn<'a> {
    Pod(PodView<'a>),
    Raw(&'a RawValue),
}

impl<'a, O> ReviewIn<'a, O> {
    fn map_objects<P>(self, f: impl Fn(O) -> P) -> ReviewIn<'a, P> {
        ReviewIn {
            api_version: self.api_version,
            kind: self.kind,
            request: self.request.map(|r| RequestIn {
                uid: r.uid,
                kind: r.kind,
                sub_resource: r.sub_resource,
                name: r.name,
                namespace: r.namespace,
                operation: r.operation,
                user_info: r.user_info,
                object: r.object.map(&f),
                old_object: r.old_object.map(&f),
                dry_run: r.dry_run,
            }),
        }
    }
}

/// Reads a review. A review of a Pod (nearly every request) is read in one pass, its objects
/// parsed into pod views on the way, instead of scanning them once as raw JSON and again as
/// pods: that second scan was a third of a review's cost. Any other kind, or a body the one
/// pass cannot read, is read again with the objects kept raw; that read gives the precise error
/// (which part is unreadable, and why), so both ways answer alike.
fn read_review(body: &[u8]) -> Result<ReviewIn<'_>, Error> {
    if let Ok(input) = serde_json::from_slice::<ReviewIn<'_, PodView<'_>>>(body)
        && input
            .request
            .as_ref()
            .and_then(|r| r.kind.as_ref())
            .is_some_and(GroupVersionKind::is_pod)
    {
        return Ok(input.map_objects(ObjectIn::Pod));
    }
    let input: ReviewIn<'_, &RawValue> = serde_json::from_slice(body).map_err(|e| {
        if e.classify() == serde_json::error::Category::Data {
            bad(format!("not an AdmissionReview: {e}"))
        } else {
            bad(format!("body is not JSON: {e}"))
        }
    })?;
    Ok(input.map_objects(ObjectIn::Raw))
}

#[derive(Deserialize)]
struct GroupVersionKind<'a> {
    #[serde(borrow, default)]
    group: Cow<'a, str>,
    #[serde(borrow, default)]
    kind: Cow<'a, str>,
}

impl GroupVersionKind<'_> {
    fn is_pod(&self) -> bool {
        self.group.is_empty() && self.kind == "Pod"
    }
}

#[derive(Deserialize, Default)]
struct UserInfo<'a> {
    #[serde(borrow, default)]
    username: Cow<'a, str>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    extra: Extra,
}

/// `userInfo.extra`: only the pod a bound ServiceAccount token was issued for.
#[derive(Deserialize, Default)]
struct Extra {
    #[serde(default, rename = "authentication.kubernetes.io/pod-name")]
    pod_name: Option<Vec<String>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: ResponseOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StatusOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    audit_annotations: BTreeMap<&'static str, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

#[derive(Serialize)]
struct StatusOut {
    status: &'static str,
    code: u16,
    reason: &'static str,
    message: String,
}

/// What a denial was about, for the one log line per denial.
#[derive(Clone, Debug)]
pub struct Denial {
    /// Namespace of the object.
    pub namespace: String,
    /// Object name (or `generateName*`).
    pub name: String,
    /// Requesting user.
    pub user: String,
    /// The message returned to the user.
    pub message: String,
    /// Whether the request was a dry run.
    pub dry_run: bool,
}

/// The answer to one review.
#[derive(Debug)]
pub struct Reviewed {
    /// The response AdmissionReview, JSON.
    pub body: Vec<u8>,
    /// Allowed or denied.
    pub decision: Decision,
    /// The mode the decision was taken under, for metrics.
    pub mode: ModeLabel,
    /// Set when denied.
    pub denial: Option<Denial>,
}

/// Reviews one AdmissionReview body for `endpoint` under `policies`, with the default
/// identities ([`Identities::default`]) and the clock.
pub fn review(policies: &PolicySet, endpoint: Endpoint, body: &[u8]) -> Result<Reviewed, Error> {
    static DEFAULT: LazyLock<Identities> = LazyLock::new(Identities::default);
    Reviewer {
        policies,
        identities: &DEFAULT,
        now: None,
    }
    .review(endpoint, body)
}

/// What a review is decided with.
#[derive(Clone, Copy, Debug)]
pub struct Reviewer<'a> {
    /// The policies in force.
    pub policies: &'a PolicySet,
    /// Who the control plane and the admins are.
    pub identities: &'a Identities,
    /// The time break-glass expiries are judged at; `None` reads the clock (only when some
    /// policy has one).
    pub now: Option<Timestamp>,
}

impl Reviewer<'_> {
    /// Reviews one AdmissionReview body for `endpoint`.
    pub fn review(&self, endpoint: Endpoint, body: &[u8]) -> Result<Reviewed, Error> {
        review_inner(self, endpoint, body)
    }

    /// The time to judge expiries at. Without a break-glass policy in force nothing depends
    /// on it, and the clock is not read.
    fn clock(&self) -> Timestamp {
        match self.now {
            Some(t) => t,
            None if self.policies.is_timed() => Timestamp::now(),
            None => Timestamp::UNIX_EPOCH,
        }
    }
}

fn review_inner(r: &Reviewer<'_>, endpoint: Endpoint, body: &[u8]) -> Result<Reviewed, Error> {
    if body.len() > MAX_BODY_BYTES {
        return Err(bad(format!(
            "body is {} bytes, over the {} byte limit",
            body.len(),
            MAX_BODY_BYTES
        )));
    }
    let input = read_review(body)?;
    match input.api_version.as_deref() {
        Some(API_VERSION) => {}
        Some(other) => {
            return Err(bad(format!(
                "apiVersion {other:?} is not served (want {API_VERSION:?})"
            )));
        }
        None => return Err(bad(format!("apiVersion is missing (want {API_VERSION:?})"))),
    }
    match input.kind.as_deref() {
        Some(KIND) => {}
        Some(other) => return Err(bad(format!("kind {other:?} is not {KIND:?}"))),
        None => return Err(bad(format!("kind is missing (want {KIND:?})"))),
    }
    let mut req = input
        .request
        .ok_or_else(|| bad("request is missing".into()))?;
    let uid = match req.uid.as_deref() {
        Some(u) if !u.is_empty() => u,
        _ => return Err(bad("request.uid is missing".into())),
    };
    let kind = req
        .kind
        .as_ref()
        .ok_or_else(|| bad("request.kind is missing".into()))?;
    let operation = req
        .operation
        .as_deref()
        .ok_or_else(|| bad("request.operation is missing".into()))?;

    let mut out = Answer::new(uid);
    let is_pod = kind.is_pod();
    match endpoint {
        Endpoint::Mutate => {
            // The ephemeral containers subresource (an EphemeralContainers object before
            // Kubernetes 1.22) is registered for both webhooks; there is nothing to inject.
            let ephemeral = kind.group.is_empty() && kind.kind == "EphemeralContainers";
            if !is_pod && !ephemeral {
                return Err(not_handled(endpoint, kind));
            }
            if is_pod && operation == "CREATE" && req.sub_resource.is_none() {
                let pod = parse_pod(req.object.take(), "request.object")?;
                mutate(r, &req, &pod, &mut out)?;
            }
        }
        Endpoint::Validate => {
            if is_pod {
                if matches!(operation, "CREATE" | "UPDATE") {
                    let pod = parse_pod(req.object.take(), "request.object")?;
                    let old = match (operation, req.old_object.take()) {
                        ("UPDATE", Some(o)) => Some(parse_pod(Some(o), "request.oldObject")?),
                        _ => None,
                    };
                    validate(r, &req, &pod, old.as_ref(), &mut out)?;
                }
            } else if kind.group.is_empty() && kind.kind == "EphemeralContainers" {
                if matches!(operation, "CREATE" | "UPDATE") {
                    let obj: EphemeralContainersObject = parse(
                        raw(req.object.as_ref()),
                        "request.object",
                        "an EphemeralContainers object",
                    )?;
                    validate_ephemeral(r, &req, &obj.ephemeral_containers, &mut out)?;
                }
            } else if let Some(subresource) = connect_subresource(kind) {
                if operation == "CONNECT" {
                    validate_connect(r, &req, subresource, &mut out)?;
                }
            } else if kind.group == POLICY_GROUP && kind.kind == "WorkspacePolicy" {
                if matches!(operation, "CREATE" | "UPDATE") {
                    validate_policy_object(&req, &mut out)?;
                }
            } else {
                return Err(not_handled(endpoint, kind));
            }
        }
    }
    Ok(out.finish(&req))
}

/// The CONNECT subresource whose options `kind` is.
fn connect_subresource(kind: &GroupVersionKind<'_>) -> Option<&'static str> {
    if !kind.group.is_empty() {
        return None;
    }
    match &*kind.kind {
        "PodExecOptions" => Some("exec"),
        "PodAttachOptions" => Some("attach"),
        "PodPortForwardOptions" => Some("portforward"),
        _ => None,
    }
}

fn bad(message: String) -> Error {
    Error::BadRequest(message)
}

fn not_handled(endpoint: Endpoint, kind: &GroupVersionKind<'_>) -> Error {
    let what = if kind.group.is_empty() {
        kind.kind.to_string()
    } else {
        format!("{}/{}", kind.group, kind.kind)
    };
    let want = match endpoint {
        Endpoint::Mutate => "Pod or EphemeralContainers",
        Endpoint::Validate => {
            "Pod, EphemeralContainers, WorkspacePolicy, or the exec, attach and portforward options"
        }
    };
    bad(format!(
        "request.kind {what:?} is not handled by /{} (want {want})",
        endpoint.as_str()
    ))
}

fn parse<'a, T: Deserialize<'a>>(
    raw: Option<&'a RawValue>,
    field: &str,
    what: &str,
) -> Result<T, Error> {
    let raw = raw.ok_or_else(|| bad(format!("{field} is missing")))?;
    serde_json::from_str(raw.get()).map_err(|e| bad(format!("{field} is not {what}: {e}")))
}

fn parse_pod<'a>(object: Option<ObjectIn<'a>>, field: &str) -> Result<PodView<'a>, Error> {
    let pod = match object.ok_or_else(|| bad(format!("{field} is missing")))? {
        ObjectIn::Pod(pod) => pod.check_kind().map(|()| pod),
        ObjectIn::Raw(raw) => PodView::parse(raw.get()),
    };
    pod.map_err(|e| bad(format!("{field} is not a Pod: {e}")))
}

/// The raw JSON of an object that is not a pod: [`read_review`] keeps every object of a review
/// that is not about a Pod raw.
fn raw<'a>(object: Option<&ObjectIn<'a>>) -> Option<&'a RawValue> {
    match object? {
        ObjectIn::Raw(raw) => Some(raw),
        ObjectIn::Pod(_) => None,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EphemeralContainersObject<'a> {
    #[serde(borrow, default)]
    ephemeral_containers: Vec<ContainerView<'a>>,
}

/// Who is asking.
#[derive(Clone, Copy, Debug)]
pub struct Requester<'a> {
    /// `userInfo.username`.
    pub username: &'a str,
    /// `userInfo.groups`.
    pub groups: &'a [String],
}

/// The outcome of applying every covering policy to one object.
#[derive(Debug)]
pub struct Evaluation {
    /// Violations of `Enforce` policies: the request is denied.
    pub denied: Vec<Violation>,
    /// Violations of `Warn` policies: returned as warnings.
    pub warnings: Vec<Violation>,
    /// Violations of `Audit` policies: recorded as audit annotations.
    pub audited: Vec<Violation>,
    /// Why the requester is exempt from some policies.
    pub exempt: Vec<String>,
    /// The strictest mode applied.
    pub mode: ModeLabel,
}

impl Default for Evaluation {
    fn default() -> Self {
        Evaluation {
            denied: Vec::new(),
            warnings: Vec::new(),
            audited: Vec::new(),
            exempt: Vec::new(),
            mode: ModeLabel::None,
        }
    }
}

impl Evaluation {
    /// Whether the request is allowed.
    pub fn allowed(&self) -> bool {
        self.denied.is_empty()
    }

    /// Notes the strictest mode a policy was applied under.
    fn applied(&mut self, mode: PolicyMode) {
        // Labels are ordered strictest first; Exempt and None sort last.
        self.mode = self.mode.min(ModeLabel::from(mode));
    }

    fn exempted(&mut self, why: String) {
        if self.mode == ModeLabel::None {
            self.mode = ModeLabel::Exempt;
        }
        self.exempt.push(why);
    }

    fn add(&mut self, mode: PolicyMode, violations: Vec<Violation>) {
        self.applied(mode);
        match mode {
            PolicyMode::Enforce => self.denied.extend(violations),
            PolicyMode::Warn => self.warnings.extend(violations),
            PolicyMode::Audit => self.audited.extend(violations),
        }
    }

    /// The covering policies, as enforced at `now`, that apply to this requester; exemptions
    /// are recorded.
    fn applicable<'p>(
        &mut self,
        policies: &'p PolicySet,
        namespace: &'p str,
        who: Requester<'_>,
        now: Timestamp,
    ) -> Vec<&'p CompiledPolicy> {
        let mut list = Vec::new();
        for p in policies.covering_at(namespace, now) {
            match p.exemption(who.username, who.groups) {
                Some(why) => self.exempted(why),
                None => list.push(p),
            }
        }
        list
    }
}

/// Applies every policy covering `namespace`, as enforced at `now`, to a pod (CREATE, or
/// UPDATE with `old`).
pub fn evaluate_pod(
    policies: &PolicySet,
    namespace: &str,
    pod: &PodView<'_>,
    old: Option<&PodView<'_>>,
    who: Requester<'_>,
    now: Timestamp,
) -> Evaluation {
    let mut ev = Evaluation::default();
    let ctx = RequestContext {
        username: who.username,
        old,
    };
    for p in ev.applicable(policies, namespace, who, now) {
        let violations = validate_pod(p, pod, ctx);
        ev.add(p.mode(), violations);
    }
    ev
}

/// The mutation of a pod CREATE under every policy covering `namespace` (exempt requesters
/// are not mutated). Never denies.
pub fn mutation(
    policies: &PolicySet,
    namespace: &str,
    pod: &PodView<'_>,
    who: Requester<'_>,
    now: Timestamp,
) -> (Vec<json_patch::PatchOperation>, Evaluation) {
    let mut ev = Evaluation::default();
    let list = ev.applicable(policies, namespace, who, now);
    for p in &list {
        ev.applied(p.mode());
    }
    (mutate_pod(list.iter().copied(), pod), ev)
}

/// The response being built.
struct Answer<'a> {
    uid: &'a str,
    ev: Evaluation,
    /// Denials that are not pod violations (a broken WorkspacePolicy).
    deny_messages: Vec<String>,
    patch: Option<String>,
}

impl<'a> Answer<'a> {
    fn new(uid: &'a str) -> Self {
        Answer {
            uid,
            ev: Evaluation::default(),
            deny_messages: Vec::new(),
            patch: None,
        }
    }

    fn finish(self, req: &RequestIn<'_>) -> Reviewed {
        let ev = self.ev;
        let mut deny: Vec<String> = ev.denied.iter().map(ToString::to_string).collect();
        deny.extend(self.deny_messages);
        let allowed = deny.is_empty();
        let message = (!allowed).then(|| deny.join("; "));
        let mut audit_annotations = BTreeMap::new();
        if !ev.exempt.is_empty() {
            audit_annotations.insert("exempt", ev.exempt.join("; "));
        }
        if !ev.audited.is_empty() {
            let audited: Vec<String> = ev.audited.iter().map(ToString::to_string).collect();
            audit_annotations.insert("violations", audited.join("; "));
        }
        let out = ReviewOut {
            api_version: API_VERSION,
            kind: KIND,
            response: ResponseOut {
                uid: self.uid,
                allowed,
                status: message.as_ref().map(|m| StatusOut {
                    status: "Failure",
                    code: 403,
                    reason: "Forbidden",
                    message: m.clone(),
                }),
                patch_type: self.patch.as_ref().map(|_| "JSONPatch"),
                patch: self.patch,
                audit_annotations,
                warnings: ev.warnings.iter().map(ToString::to_string).collect(),
            },
        };
        let body = serde_json::to_vec(&out).expect("response types always serialize");
        let denial = message.map(|message| Denial {
            namespace: req.namespace.as_deref().unwrap_or("").to_string(),
            name: req.name.as_deref().unwrap_or("").to_string(),
            user: req.user_info.username.to_string(),
            message,
            dry_run: req.dry_run.unwrap_or(false),
        });
        Reviewed {
            body,
            decision: if allowed {
                Decision::Allowed
            } else {
                Decision::Denied
            },
            mode: ev.mode,
            denial,
        }
    }
}

fn namespace_of<'r>(
    req: &'r RequestIn<'_>,
    pod: Option<&'r PodView<'_>>,
) -> Result<&'r str, Error> {
    req.namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .or_else(|| pod.and_then(|p| p.metadata.namespace.as_deref()))
        .ok_or_else(|| bad("request.namespace is missing".into()))
}

fn requester<'r>(req: &'r RequestIn<'_>) -> Requester<'r> {
    Requester {
        username: &req.user_info.username,
        groups: &req.user_info.groups,
    }
}

fn caller<'r>(req: &'r RequestIn<'_>) -> Caller<'r> {
    let pod_name = match req.user_info.extra.pod_name.as_deref() {
        Some([one]) => Some(one.as_str()),
        _ => None,
    };
    Caller {
        username: &req.user_info.username,
        groups: &req.user_info.groups,
        pod_name,
    }
}

/// Whether the webhook stamps [`labels::CREATED_BY`] on this pod: a workspace pod (by its
/// identity labels or a covering policy's selector) created by the control plane.
fn stamps_creator(r: &Reviewer<'_>, ns: &str, pod: &PodView<'_>, username: &str) -> bool {
    r.identities.is_control_plane(username)
        && r.policies.guards(ns)
        && (isolation::pod_identity(pod.metadata.labels.as_ref()) != PodIdentity::None
            || r.policies
                .covering(ns)
                .any(|p| p.is_workspace(pod.metadata.labels.as_ref())))
}

fn mutate(
    r: &Reviewer<'_>,
    req: &RequestIn<'_>,
    pod: &PodView<'_>,
    out: &mut Answer<'_>,
) -> Result<(), Error> {
    let ns = namespace_of(req, Some(pod))?;
    let (mut ops, ev) = mutation(r.policies, ns, pod, requester(req), r.clock());
    out.ev = ev;
    let user = &*req.user_info.username;
    if stamps_creator(r, ns, pod, user) {
        let annotations = pod.metadata.annotations.as_ref();
        match annotations {
            None => ops.push(add(
                &["metadata", "annotations"],
                serde_json::json!({ labels::CREATED_BY: user }),
            )),
            Some(a) if a.get(labels::CREATED_BY).map(|v| &**v) != Some(user) => ops.push(add(
                &["metadata", "annotations", labels::CREATED_BY],
                serde_json::json!(user),
            )),
            Some(_) => {}
        }
    }
    if !ops.is_empty() {
        let json = serde_json::to_vec(&ops).expect("patch operations always serialize");
        out.patch = Some(base64::engine::general_purpose::STANDARD.encode(json));
    }
    Ok(())
}

fn add(tokens: &[&str], value: serde_json::Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(tokens.iter().copied()),
        value,
    })
}

fn validate(
    r: &Reviewer<'_>,
    req: &RequestIn<'_>,
    pod: &PodView<'_>,
    old: Option<&PodView<'_>>,
    out: &mut Answer<'_>,
) -> Result<(), Error> {
    let ns = namespace_of(req, Some(pod))?;
    out.ev = evaluate_pod(r.policies, ns, pod, old, requester(req), r.clock());
    if r.policies.guards(ns) {
        let violations = isolation::check_pod(r.identities, caller(req), pod, old);
        if !violations.is_empty() {
            out.ev.add(PolicyMode::Enforce, violations);
        }
    }
    Ok(())
}

fn validate_ephemeral(
    r: &Reviewer<'_>,
    req: &RequestIn<'_>,
    containers: &[ContainerView<'_>],
    out: &mut Answer<'_>,
) -> Result<(), Error> {
    let ns = namespace_of(req, None)?;
    let mut ev = Evaluation::default();
    for p in ev.applicable(r.policies, ns, requester(req), r.clock()) {
        let violations = validate_ephemeral_containers(p, containers);
        ev.add(p.mode(), violations);
    }
    if r.policies.guards(ns) {
        let violations = isolation::check_ephemeral_containers(containers);
        if !violations.is_empty() {
            ev.add(PolicyMode::Enforce, violations);
        }
    }
    out.ev = ev;
    Ok(())
}

/// `exec`, `attach` or `portforward` into a pod: the pod is named by `request.name`.
fn validate_connect(
    r: &Reviewer<'_>,
    req: &RequestIn<'_>,
    subresource: &str,
    out: &mut Answer<'_>,
) -> Result<(), Error> {
    let ns = namespace_of(req, None)?;
    let name = req
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| bad("request.name is missing (the pod of a CONNECT)".into()))?;
    if !r.policies.guards(ns) {
        return Ok(());
    }
    out.ev.applied(PolicyMode::Enforce);
    if let Err(message) = isolation::check_connect(r.identities, caller(req), ns, name, subresource)
    {
        out.deny_messages.push(message);
    }
    Ok(())
}

/// A broken policy is denied at `kubectl apply` with every problem, instead of being ignored
/// later by the watch. An UPDATE is judged as a change from the old object (a policy may not
/// stop guarding `lumie-dev` without a break-glass lift).
fn validate_policy_object(req: &RequestIn<'_>, out: &mut Answer<'_>) -> Result<(), Error> {
    let raw_object =
        raw(req.object.as_ref()).ok_or_else(|| bad("request.object is missing".into()))?;
    let name = req.name.as_deref().unwrap_or("");
    out.ev.mode = ModeLabel::Enforce;
    // An old object that cannot be read is no evidence of what was guarded: judged as new.
    let previous = raw(req.old_object.as_ref())
        .and_then(|o| serde_json::from_str::<WorkspacePolicy>(o.get()).ok());
    match serde_json::from_str::<WorkspacePolicy>(raw_object.get()) {
        Err(e) => out
            .deny_messages
            .push(format!("WorkspacePolicy {name:?} cannot be read: {e}")),
        Ok(policy) => {
            let previous = previous.as_ref().map(|p| &p.spec);
            if let Err(problems) = policy.spec.validate_change(previous, Timestamp::now()) {
                out.deny_messages.push(format!(
                    "WorkspacePolicy {name:?} is invalid: {}",
                    problems.join("; ")
                ));
            }
        }
    }
    Ok(())
}
