//! The admin pages (admins only: members get the not-found page, and the navigation shows them
//! no link):
//! - `/admin/users`: users and their roles, read-only (the role comes from the groups claim at
//!   each OIDC sign-in, or was set when a token user was created);
//! - `/admin/policy`: the WorkspacePolicy in force as YAML, saved by the page's JS through
//!   `PUT /api/v2/policy` (YAML body, [`crate::policy_api`]) with the resourceVersion it was
//!   opened at, so the API's validation messages and its 409 reach the editor unchanged;
//! - `/admin/audit`: the audit log with its filters (a GET form);
//! - `/admin/health`: the `doctor` checks ([`crate::doctor`]) run with the server's own kube
//!   client and permissions; reads it is not allowed show as the doctor words them.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use kube::Api;
use lumie_contract::policy::{DEFAULT_POLICY_NAME, WorkspacePolicy};
use maud::{Markup, html};
use serde::Deserialize;

use super::{Nav, Viewer, error_page, html_response, layout, when};
use crate::caller::Principal;
use crate::db::AuditFilter;
use crate::doctor::{DoctorOptions, Status};
use crate::model::AuditEntry;
use crate::policy_api::{PolicyJson, PolicySource, policy_json};
use crate::state::AppState;

/// The admin pages, in navigation order: (path, label).
pub const PAGES: &[(&str, &str)] = &[
    ("/admin/users", "Users"),
    ("/admin/policy", "Policy"),
    ("/admin/audit", "Audit log"),
    ("/admin/health", "Health"),
];

/// How long each of the doctor's network probes may take from the health page.
pub const DOCTOR_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Members get exactly the page an unknown path would give, so the pages confirm nothing:
/// `Some` is that page.
fn refused_unless_admin(p: &Principal, path: &str) -> Option<Response> {
    (!p.user.is_admin).then(|| not_found(p, path))
}

/// The dashboard's not-found page for `path`.
pub fn not_found(p: &Principal, path: &str) -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        Some(&p.user),
        &format!("There is no page at {path}."),
    )
}

fn admin_layout(p: &Principal, title: &str, current: &str, body: Markup) -> Markup {
    layout(
        title,
        Some(&p.user),
        Nav::Admin,
        html! {
            nav.subnav aria-label="Admin" {
                @for (path, label) in PAGES {
                    a href=(path) aria-current=[(*path == current).then_some("page")] { (label) }
                }
            }
            (body)
        },
    )
}

/// `GET /admin/users`.
pub async fn users(State(state): State<AppState>, Viewer(p): Viewer) -> Response {
    if let Some(r) = refused_unless_admin(&p, "/admin/users") {
        return r;
    }
    let users = match state.db.list_users().await {
        Ok(u) => u,
        Err(e) => return error_page(e.status(), Some(&p.user), &e.to_string()),
    };
    let claim = state
        .config
        .oidc
        .as_ref()
        .map(|o| (o.group_field.clone(), o.admin_group.clone()));
    html_response(
        StatusCode::OK,
        admin_layout(
            &p,
            "Users",
            "/admin/users",
            html! {
                div.page-head { h1 { "Users and roles" } }
                section.card {
                    @match &claim {
                        Some((field, group)) => p.hint {
                            "Roles come from the " code { (field) } " claim at each sign-in: members of "
                            code { (group) } " are admins, everyone else a member. Change them in Keycloak; "
                            "this list is read-only."
                        },
                        None => p.hint { "No OIDC sign-in is configured: roles were set when each token user was created. This list is read-only." },
                    }
                    table.users #users {
                        thead { tr {
                            th scope="col" { "User" } th scope="col" { "Role" } th scope="col" { "E-mail" }
                            th scope="col" { "Sign-in" } th scope="col" { "Since" }
                        } }
                        tbody {
                            @for u in &users {
                                tr data-user=(u.username) {
                                    td data-label="User" { (u.username) }
                                    td data-label="Role" {
                                        @if u.is_admin { span.badge.admin { "admin" } } @else { span.badge { "member" } }
                                    }
                                    td data-label="E-mail" { @if u.email.is_empty() { span.muted { "—" } } @else { (u.email) } }
                                    td data-label="Sign-in" { (if u.login_type == "oidc" { "Keycloak (OIDC)" } else { "API token" }) }
                                    td data-label="Since" { (when(Some(u.created_at))) }
                                }
                            }
                        }
                    }
                }
            },
        ),
    )
}

/// The policy as the editor shows it: YAML of the spec, or why it cannot be read.
async fn read_policy(state: &AppState) -> Result<PolicyJson, String> {
    let Some(client) = state.kube.clone() else {
        return Err(
            "This server has no Kubernetes API client, so the WorkspacePolicy cannot be read or written here."
                .into(),
        );
    };
    let api: Api<WorkspacePolicy> = Api::all(client);
    api.get_opt(DEFAULT_POLICY_NAME)
        .await
        .map(policy_json)
        .map_err(|e| format!("Reading WorkspacePolicy {DEFAULT_POLICY_NAME} failed: {e}"))
}

/// `GET /admin/policy`.
pub async fn policy(State(state): State<AppState>, Viewer(p): Viewer) -> Response {
    if let Some(r) = refused_unless_admin(&p, "/admin/policy") {
        return r;
    }
    let policy = read_policy(&state).await;
    let yaml = policy
        .as_ref()
        .ok()
        .map(|pj| serde_yaml::to_string(&pj.spec).unwrap_or_default());
    html_response(
        StatusCode::OK,
        admin_layout(
            &p,
            "Policy",
            "/admin/policy",
            html! {
                div.page-head {
                    h1 { "WorkspacePolicy" }
                    span.live #live-state role="status" aria-live="polite" { "" }
                }
                @match &policy {
                    Err(why) => section.card { p.alert #policy-error role="alert" { (why) } },
                    Ok(pj) => section.card {
                        p.hint #policy-source {
                            @match pj.source {
                                PolicySource::Cluster => {
                                    "In force: WorkspacePolicy " code { (DEFAULT_POLICY_NAME) } " in the cluster, resourceVersion "
                                    code #policy-version { (pj.resource_version.as_deref().unwrap_or("?")) } "."
                                }
                                PolicySource::Builtin => {
                                    "No WorkspacePolicy object exists: the contract's built-in default is in force. "
                                    "Saving creates " code { (DEFAULT_POLICY_NAME) } "."
                                }
                            }
                        }
                        form #policy-form data-resource-version=(pj.resource_version.as_deref().unwrap_or("")) novalidate {
                            label for="policy-yaml" { "Spec (YAML)" }
                            textarea #policy-yaml name="spec" rows="22" wrap="off" spellcheck="false" autocomplete="off"
                                aria-describedby="policy-error policy-hint" { (yaml.as_deref().unwrap_or("")) }
                            p.alert #policy-error role="alert" aria-live="assertive" hidden {}
                            p.hint #policy-hint {
                                "Checked with the webhook's own rules before it is applied; every change is in the "
                                a href="/admin/audit?action=policy.update" { "audit log" } "."
                            }
                            div.toolbar {
                                button.primary type="submit" #policy-save { "Save policy" }
                                " "
                                a.button #policy-reload href="/admin/policy" hidden { "Reload" }
                            }
                            p.hint.good #policy-saved role="status" aria-live="polite" {}
                        }
                    },
                }
            },
        ),
    )
}

/// `GET /admin/audit` query (the API's filters; times as the form's `datetime-local`, UTC).
#[derive(Debug, Default, Deserialize)]
pub struct AuditPageQuery {
    /// Actor (name or id).
    pub user: Option<String>,
    /// Action, or a prefix ending in `*`.
    pub action: Option<String>,
    /// Workspace id.
    pub workspace_id: Option<String>,
    /// From (UTC).
    pub since: Option<String>,
    /// Until (UTC).
    pub until: Option<String>,
}

/// Most lines the audit page shows.
pub const AUDIT_PAGE_LIMIT: i64 = 200;

/// A form time (`2026-12-01T12:30`, `…:45`, or RFC 3339) in ms, read as UTC.
pub fn form_time(v: &str) -> Option<Result<i64, String>> {
    let v = v.trim();
    if v.is_empty() {
        return None;
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v) {
        return Some(Ok(t.timestamp_millis()));
    }
    for fmt in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(v, fmt) {
            return Some(Ok(t.and_utc().timestamp_millis()));
        }
    }
    Some(Err(format!(
        "{v:?} is not a time: use 2026-12-01T12:30 (UTC) or RFC 3339"
    )))
}

/// The query as the repository's filter, or the sentence saying which field is wrong.
pub fn audit_filter(q: &AuditPageQuery) -> Result<AuditFilter, String> {
    let text = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
    };
    let time = |name: &str, v: &Option<String>| match v.as_deref().and_then(form_time) {
        None => Ok(None),
        Some(Ok(t)) => Ok(Some(t)),
        Some(Err(e)) => Err(format!("{name}: {e}")),
    };
    Ok(AuditFilter {
        user: text(&q.user),
        action: text(&q.action),
        workspace_id: text(&q.workspace_id),
        since: time("From", &q.since)?,
        until: time("Until", &q.until)?,
        limit: AUDIT_PAGE_LIMIT,
    })
}

/// `GET /admin/audit`.
pub async fn audit(
    State(state): State<AppState>,
    Viewer(p): Viewer,
    Query(q): Query<AuditPageQuery>,
) -> Response {
    if let Some(r) = refused_unless_admin(&p, "/admin/audit") {
        return r;
    }
    let (entries, problem) = match audit_filter(&q) {
        Ok(f) => match state.db.audit_query(&f).await {
            Ok(e) => (e, None),
            Err(e) => return error_page(e.status(), Some(&p.user), &e.to_string()),
        },
        Err(why) => (vec![], Some(why)),
    };
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    html_response(
        if problem.is_some() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        },
        admin_layout(
            &p,
            "Audit log",
            "/admin/audit",
            html! {
                div.page-head { h1 { "Audit log" } }
                form.filters #audit-filters method="get" action="/admin/audit" role="search" {
                    div.field { label for="f-user" { "User" } input #f-user name="user" type="text" value=(v(&q.user)) placeholder="name or id"; }
                    div.field { label for="f-action" { "Action" } input #f-action name="action" type="text" value=(v(&q.action)) placeholder="build.* or policy.update"; }
                    div.field { label for="f-ws" { "Workspace id" } input #f-ws name="workspace_id" type="text" value=(v(&q.workspace_id)); }
                    div.field { label for="f-since" { "From (UTC)" } input #f-since name="since" type="datetime-local" value=(v(&q.since)); }
                    div.field { label for="f-until" { "Until (UTC)" } input #f-until name="until" type="datetime-local" value=(v(&q.until)); }
                    button type="submit" { "Filter" }
                    a href="/admin/audit" { "Clear" }
                }
                @if let Some(why) = &problem { p.alert #audit-error role="alert" { (why) } }
                (audit_table(&entries))
            },
        ),
    )
}

/// A before/after value for people: JSON indented, anything else as it is.
pub fn pretty(value: &str) -> String {
    serde_json::from_str::<serde_json::Value>(value)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| value.to_string())
}

/// The lines only one side has (`-` before, `+` after), in order: a longest-common-subsequence
/// diff of the two texts' lines, so a changed policy shows as the few lines that changed.
pub fn changed_lines(before: &str, after: &str) -> Vec<(char, String)> {
    let a: Vec<&str> = before.lines().collect();
    let b: Vec<&str> = after.lines().collect();
    // lcs[i][j]: common lines of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, vec![]);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(('+', b[j].trim_end().to_string()));
            j += 1;
        } else {
            out.push(('-', a[i].trim_end().to_string()));
            i += 1;
        }
    }
    out
}

fn audit_table(entries: &[AuditEntry]) -> Markup {
    html! {
        @if entries.is_empty() {
            p.empty { "No audit entries match." }
        } @else {
            table.audit #audit {
                thead { tr {
                    th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "Action" }
                    th scope="col" { "What" } th scope="col" { "From" }
                } }
                tbody {
                    @for e in entries {
                        tr data-action=(e.action) {
                            td data-label="When" { (when(Some(e.at))) }
                            td data-label="Who" { (e.actor_name) }
                            td data-label="Action" { code { (e.action) } }
                            td data-label="What" {
                                (e.detail)
                                @if let Some(ws) = &e.workspace_id {
                                    " " a.muted href={ "/admin/audit?workspace_id=" (ws) } title="Only this workspace" { "(workspace)" }
                                }
                                @if e.before.is_some() || e.after.is_some() {
                                    @let before = e.before.as_deref().map(pretty).unwrap_or_default();
                                    @let after = e.after.as_deref().map(pretty).unwrap_or_default();
                                    details {
                                        summary { "What changed" }
                                        pre.diff {
                                            @for (sign, line) in changed_lines(&before, &after) {
                                                span class={ "diff-" (if sign == '+' { "add" } else { "del" }) } { (sign) " " (line) "\n" }
                                            }
                                        }
                                        details {
                                            summary { "Before and after in full" }
                                            @if e.before.is_some() { p.muted { "Before" } pre { (before) } }
                                            @if e.after.is_some() { p.muted { "After" } pre { (after) } }
                                        }
                                    }
                                }
                            }
                            td data-label="From" { @match &e.client_ip { Some(ip) => { (ip) }, None => { span.muted { "—" } } } }
                        }
                    }
                }
            }
            @if entries.len() as i64 == AUDIT_PAGE_LIMIT {
                p.hint { "The newest " (AUDIT_PAGE_LIMIT) " entries; narrow the filters for older ones." }
            }
        }
    }
}

/// `GET /admin/health`: the doctor's checks with the server's own permissions.
pub async fn health(State(state): State<AppState>, Viewer(p): Viewer) -> Response {
    if let Some(r) = refused_unless_admin(&p, "/admin/health") {
        return r;
    }
    let options = DoctorOptions {
        workspace_namespace: state.config.namespace.clone(),
        timeout: DOCTOR_PROBE_TIMEOUT,
        ..DoctorOptions::default()
    };
    let report = match state.kube.clone() {
        Some(client) => match crate::doctor::run_with_client(client, &options).await {
            Ok(r) => r,
            Err(e) => crate::doctor::unreachable_report(&e),
        },
        None => crate::doctor::unreachable_report(&crate::error::StartupError::Kube(
            "this server has no Kubernetes API client".into(),
        )),
    };
    let count = |s: Status| report.checks.iter().filter(|c| c.status == s).count();
    html_response(
        StatusCode::OK,
        admin_layout(
            &p,
            "Health",
            "/admin/health",
            html! {
                div.page-head { h1 { "Operator health" } }
                section.card {
                    p #health-summary {
                        strong class={ "check-" (report.status().as_str()) } { (report.status().as_str()) } ": "
                        (count(Status::Ok)) " ok, " (count(Status::Warning)) " warnings, " (count(Status::Failure)) " failures."
                    }
                    p.hint {
                        "These are " code { "lumie-server doctor" } "'s checks, run now with the server's own \
                         identity. What that identity may not read shows as a forbidden warning; run the doctor \
                         with an admin kubeconfig for those."
                    }
                    table.checks #checks {
                        thead { tr { th scope="col" { "Result" } th scope="col" { "Check" } th scope="col" { "What was seen" } th scope="col" { "What to do" } } }
                        tbody {
                            @for c in &report.checks {
                                tr data-check=(c.id) data-status=(c.status.as_str()) {
                                    td data-label="Result" { span class={ "check check-" (c.status.as_str()) } { (c.status.as_str()) } }
                                    td data-label="Check" { code { (c.id) } }
                                    td.reason data-label="What was seen" { (c.summary) }
                                    td data-label="What to do" { @match &c.fix { Some(f) => { (f) }, None => { span.muted { "—" } } } }
                                }
                            }
                        }
                    }
                }
            },
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_filters_from_the_form() {
        let q = AuditPageQuery {
            user: Some(" alice ".into()),
            action: Some("".into()),
            workspace_id: None,
            since: Some("2026-12-01T12:30".into()),
            until: Some("2026-12-01T13:00:00Z".into()),
        };
        let f = audit_filter(&q).unwrap();
        assert_eq!(f.user.as_deref(), Some("alice"));
        assert_eq!(f.action, None);
        assert_eq!(f.since, Some(1_796_128_200_000));
        assert_eq!(f.until, Some(1_796_130_000_000));
        assert_eq!(f.limit, AUDIT_PAGE_LIMIT);
        let bad = AuditPageQuery {
            since: Some("yesterday".into()),
            ..Default::default()
        };
        let e = audit_filter(&bad).unwrap_err();
        assert!(e.starts_with("From:") && e.contains("yesterday"), "{e}");
        assert_eq!(pretty(r#"{"a":[1]}"#), "{\n  \"a\": [\n    1\n  ]\n}");
        assert_eq!(pretty("plain <text>"), "plain <text>");
    }

    /// (before, after, the changed lines).
    type DiffCase<'a> = (&'a str, &'a str, &'a [(char, &'a str)]);

    #[test]
    fn changed_lines_table() {
        let cases: &[DiffCase] = &[
            ("a\nb\nc", "a\nb\nc", &[]),
            ("a\nc", "a\nb\nc", &[('+', "b")]),
            ("a\nb\nc", "a\nc", &[('-', "b")]),
            ("a\nb", "a\nB", &[('+', "B"), ('-', "b")]),
            ("", "x", &[('+', "x")]),
            ("x", "", &[('-', "x")]),
        ];
        for (before, after, want) in cases {
            let got = changed_lines(before, after);
            let want: Vec<(char, String)> = want.iter().map(|(c, l)| (*c, l.to_string())).collect();
            assert_eq!(got, want, "{before:?} → {after:?}");
        }
    }
}
