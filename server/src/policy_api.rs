//! The policy API: `GET` and `PUT /api/v2/policy`, so platform admins read and set the
//! cluster-scoped `WorkspacePolicy` named `default` without kubectl.
//!
//! The cluster object stays the one source of truth (`kubectl apply` is equally valid): writes
//! are server-side apply under the field manager [`FIELD_MANAGER`], with the client's
//! `resourceVersion` as an optimistic-concurrency precondition, and validated with the same
//! [`WorkspacePolicySpec::validate`] the webhook runs, so both refuse a policy with the same
//! messages. The body is JSON, or the same document as YAML (`Content-Type: application/yaml`,
//! what the dashboard's editor sends). Every change is audited (`policy.update`) with the spec before and after.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use kube::Api;
use kube::api::{Patch, PatchParams};
use lumie_contract::policy::{DEFAULT_POLICY_NAME, WorkspacePolicy, WorkspacePolicySpec};
use serde::{Deserialize, Serialize};

use crate::caller::Principal;
use crate::db::AuditEvent;
use crate::error::{Error, Result};
use crate::state::AppState;

/// Field manager of the server's policy writes (distinct from the workspace spawner's).
pub const FIELD_MANAGER: &str = "lumie-server";

/// The routes of the policy API.
pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v2/policy", get(get_policy).put(put_policy))
}

/// Where the policy in force comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicySource {
    /// The `WorkspacePolicy` object `default` in the cluster.
    Cluster,
    /// No object: the contract's built-in default is in force.
    Builtin,
}

/// `GET /api/v2/policy` (and the `PUT` answer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyJson {
    /// The policy in force.
    pub spec: WorkspacePolicySpec,
    /// The object's version, to send back with a `PUT` (absent for the built-in default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Cluster object or built-in default.
    pub source: PolicySource,
}

/// `PUT /api/v2/policy` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PutPolicyRequest {
    /// The new policy.
    pub spec: WorkspacePolicySpec,
    /// The version the client read; when given, the write fails if the policy changed since.
    #[serde(default)]
    pub resource_version: Option<String>,
}

fn policies(state: &AppState) -> Result<Api<WorkspacePolicy>> {
    let client = state.kube.clone().ok_or_else(|| {
        Error::Unavailable(
            "the Kubernetes API is not available to this server (no kube client), so the \
             WorkspacePolicy cannot be read or written"
                .into(),
        )
    })?;
    Ok(Api::all(client))
}

/// The answer for the object read (or its absence: the built-in default).
pub fn policy_json(obj: Option<WorkspacePolicy>) -> PolicyJson {
    match obj {
        Some(p) => PolicyJson {
            spec: p.spec,
            resource_version: p.metadata.resource_version,
            source: PolicySource::Cluster,
        },
        None => PolicyJson {
            spec: WorkspacePolicySpec::contract_default(),
            resource_version: None,
            source: PolicySource::Builtin,
        },
    }
}

/// Parses a `PUT` body: serde's message for a body that is not a policy at all.
pub fn parse_put(body: &[u8]) -> Result<PutPolicyRequest> {
    serde_json::from_slice(body).map_err(|e| Error::BadRequest(format!("not a valid policy: {e}")))
}

/// Parses a `PUT` body sent as YAML (`Content-Type: application/yaml`, the dashboard's policy
/// editor): the same document as the JSON body, with serde's message and position.
pub fn parse_put_yaml(body: &[u8]) -> Result<PutPolicyRequest> {
    serde_yaml::from_slice(body).map_err(|e| Error::BadRequest(format!("not a valid policy: {e}")))
}

/// Whether a request's `Content-Type` says YAML.
pub fn is_yaml(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            matches!(
                t.trim().to_ascii_lowercase().as_str(),
                "application/yaml" | "application/x-yaml" | "text/yaml"
            )
        })
}

/// Validates a new spec as a change from `previous` (the webhook's own rule for an UPDATE): every
/// problem in the webhook's words, so the admin reads it here instead of from the apiserver.
pub fn validate_put(
    spec: &WorkspacePolicySpec,
    previous: Option<&WorkspacePolicySpec>,
) -> Result<()> {
    spec.validate_change(previous, k8s_openapi::jiff::Timestamp::now())
        .map_err(|problems| {
            Error::BadRequest(format!("invalid WorkspacePolicy: {}", problems.join("; ")))
        })
}

fn conflict(rv: &str) -> Error {
    Error::Conflict(format!(
        "the policy changed since you read it (resourceVersion {rv}); GET it again"
    ))
}

async fn get_policy(State(state): State<AppState>, p: Principal) -> Result<Json<PolicyJson>> {
    p.require_admin()?;
    let api = policies(&state)?;
    Ok(Json(policy_json(api.get_opt(DEFAULT_POLICY_NAME).await?)))
}

async fn put_policy(
    State(state): State<AppState>,
    p: Principal,
    headers: http::HeaderMap,
    body: Bytes,
) -> Result<Json<PolicyJson>> {
    p.require_admin()?;
    let req = if is_yaml(&headers) {
        parse_put_yaml(&body)?
    } else {
        parse_put(&body)?
    };
    // Problems that need no cluster first (a 400 without a kube client too).
    validate_put(&req.spec, None)?;
    let api = policies(&state)?;
    let before = api.get_opt(DEFAULT_POLICY_NAME).await?;
    validate_put(&req.spec, before.as_ref().map(|b| &b.spec))?;
    if let (None, Some(rv)) = (&before, &req.resource_version) {
        // Read at some version, deleted since: applying would silently re-create it.
        return Err(conflict(rv));
    }
    let mut obj = WorkspacePolicy::new(DEFAULT_POLICY_NAME, req.spec);
    obj.metadata.resource_version = req.resource_version.clone();
    let applied = api
        .patch(
            DEFAULT_POLICY_NAME,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&obj),
        )
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 409 => {
                conflict(req.resource_version.as_deref().unwrap_or("?"))
            }
            kube::Error::Api(s) if s.code == 422 || s.code == 400 => Error::BadRequest(format!(
                "the Kubernetes API refused the policy: {}",
                s.message
            )),
            e => Error::Kube(e),
        })?;
    let to_json = |s: &WorkspacePolicySpec| serde_json::to_string(s).ok();
    let detail = if before.is_some() {
        format!("WorkspacePolicy {DEFAULT_POLICY_NAME}")
    } else {
        format!(
            "WorkspacePolicy {DEFAULT_POLICY_NAME} (created; the built-in default was in force)"
        )
    };
    state
        .db
        .record(&AuditEvent {
            actor: Some(&p.user),
            client_ip: p.client_ip,
            action: "policy.update",
            detail: &detail,
            before: before.as_ref().and_then(|b| to_json(&b.spec)),
            after: to_json(&applied.spec),
            ..AuditEvent::default()
        })
        .await?;
    Ok(Json(policy_json(Some(applied))))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::config::{Config, DatabaseConfig};
    use crate::db::Db;
    use crate::error::ErrorBody;
    use crate::template::Template;

    struct Fixture {
        state: AppState,
        admin: String,
        member: String,
        _dir: tempfile::TempDir,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&DatabaseConfig::Sqlite(dir.path().join("lumie.db")))
            .await
            .unwrap();
        let (_, admin) = db.bootstrap_admin("admin").await.unwrap().unwrap();
        let bob = db.create_user("bob", "", false).await.unwrap();
        let member = db.create_api_token(&bob.id, "api").await.unwrap();
        let config = Config::for_tests(dir.path().to_path_buf());
        let state = AppState::new(config, db, Template::default(), None)
            .await
            .unwrap();
        Fixture {
            state,
            admin,
            member,
            _dir: dir,
        }
    }

    async fn call(f: &Fixture, method: &str, token: &str, body: &str) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri("/api/v2/policy")
            .header("Coder-Session-Token", token)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let resp = crate::router(f.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body: ErrorBody = serde_json::from_slice(&bytes).unwrap();
        (status, body.message)
    }

    fn valid_put() -> String {
        serde_json::to_string(&PutPolicyRequest {
            spec: WorkspacePolicySpec::contract_default(),
            resource_version: None,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn members_are_forbidden_both_ways() {
        let f = fixture().await;
        assert_eq!(
            call(&f, "GET", &f.member, "").await.0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            call(&f, "PUT", &f.member, &valid_put()).await.0,
            StatusCode::FORBIDDEN
        );
    }

    #[tokio::test]
    async fn without_a_kube_client_admins_get_503_naming_the_kube_api() {
        let f = fixture().await;
        for (method, body) in [("GET", String::new()), ("PUT", valid_put())] {
            let (status, message) = call(&f, method, &f.admin, &body).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{method}");
            assert!(message.contains("Kubernetes API"), "{method}: {message}");
        }
    }

    #[test]
    fn a_put_that_stops_covering_the_workspace_namespace_is_refused_as_a_change() {
        let previous = WorkspacePolicySpec::contract_default();
        let mut elsewhere = previous.clone();
        elsewhere.namespaces = vec!["lumie-dev-staging".into()];
        // (case, spec, previous, refused)
        let cases = [
            ("same spec again", &previous, Some(&previous), false),
            ("first write elsewhere", &elsewhere, None, false),
            ("moving off lumie-dev", &elsewhere, Some(&previous), true),
            ("already elsewhere", &elsewhere, Some(&elsewhere), false),
        ];
        for (name, spec, prev, refused) in cases {
            let r = validate_put(spec, prev);
            assert_eq!(r.is_err(), refused, "{name}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("lumie-dev"), "{name}: {e}");
                assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{name}");
            }
        }
    }

    #[tokio::test]
    async fn invalid_bodies_are_400_before_any_kube_call() {
        let f = fixture().await;
        let (status, message) = call(&f, "PUT", &f.admin, r#"{"spec":{"mode":"Sometimes"}}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message.contains("unknown variant `Sometimes`"), "{message}");

        let mut spec = WorkspacePolicySpec::contract_default();
        spec.namespaces.clear();
        spec.privileged_containers[0].images = vec!["docker:[dind".into()];
        let problems = spec
            .validate(k8s_openapi::jiff::Timestamp::now())
            .unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        let body = serde_json::json!({ "spec": spec }).to_string();
        let (status, message) = call(&f, "PUT", &f.admin, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        for p in &problems {
            assert!(message.contains(p.as_str()), "{p:?} missing from {message}");
        }
    }

    #[test]
    fn a_yaml_body_is_the_same_document() {
        let yaml = "spec:\n  mode: Sometimes\nresourceVersion: \"7\"\n";
        let e = parse_put_yaml(yaml.as_bytes()).unwrap_err().to_string();
        assert!(
            e.contains("unknown variant `Sometimes`") && e.contains("line 2"),
            "{e}"
        );
        let spec = serde_yaml::to_string(&WorkspacePolicySpec::contract_default()).unwrap();
        let indented: String = spec.lines().map(|l| format!("  {l}\n")).collect();
        let req = parse_put_yaml(format!("spec:\n{indented}resourceVersion: \"7\"\n").as_bytes())
            .unwrap();
        assert_eq!(req.spec, WorkspacePolicySpec::contract_default());
        assert_eq!(req.resource_version.as_deref(), Some("7"));
        let mut h = http::HeaderMap::new();
        for (ct, yaml) in [
            ("application/yaml", true),
            ("application/yaml; charset=utf-8", true),
            ("text/yaml", true),
            ("application/json", false),
        ] {
            h.insert(http::header::CONTENT_TYPE, ct.parse().unwrap());
            assert_eq!(is_yaml(&h), yaml, "{ct}");
        }
        assert!(!is_yaml(&http::HeaderMap::new()));
    }

    #[test]
    fn answers_name_their_source_and_hide_an_absent_version() {
        let builtin = serde_json::to_value(policy_json(None)).unwrap();
        assert_eq!(builtin["source"], "builtin");
        assert!(builtin.get("resourceVersion").is_none());
        let mut obj = WorkspacePolicy::new(DEFAULT_POLICY_NAME, Default::default());
        obj.metadata.resource_version = Some("42".into());
        let cluster = serde_json::to_value(policy_json(Some(obj))).unwrap();
        assert_eq!(cluster["source"], "cluster");
        assert_eq!(cluster["resourceVersion"], "42");
    }
}
