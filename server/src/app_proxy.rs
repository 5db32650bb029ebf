//! The app proxy: `/@{owner}/{workspace}/apps/{tilt|code-server|agents}/…` to the workspace pod's
//! IP on the app's port, HTTP and WebSocket (any `Upgrade`), bodies streamed both ways, the
//! prefix stripped or kept per [`lumie_contract::apps`]. Only the owner or an admin gets through;
//! a workspace that is not running answers with a page that says so instead of a 502.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use lumie_contract::apps::{self, WorkspaceApp};

use crate::api::html_page;
use crate::caller::SESSION_COOKIE;
use crate::error::Error;
use crate::model::{DesiredState, WorkspaceStatus};
use crate::state::AppState;

/// Query parameter a browser link may carry the session token in once; it becomes the session
/// cookie. The same name as the cookie, as in Coder: one name for the token wherever it travels.
pub const TOKEN_QUERY: &str = SESSION_COOKIE;

/// The routes of this module (a fallback: app paths start with `/@`).
pub fn routes() -> Router<AppState> {
    Router::new().fallback(proxy)
}

/// A parsed app path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppPath {
    /// Owner name.
    pub owner: String,
    /// Workspace name.
    pub workspace: String,
    /// The app.
    pub app: WorkspaceApp,
    /// `/@owner/ws/apps/slug`.
    pub prefix: String,
    /// What follows the prefix (`/…`), empty when nothing does.
    pub rest: String,
}

/// Parses `/@owner/workspace/apps/slug[/rest]`. `None` for any other path (or unknown app).
pub fn parse_app_path(path: &str) -> Option<AppPath> {
    let p = path.strip_prefix("/@")?;
    let mut it = p.splitn(4, '/');
    let owner = it.next().filter(|s| !s.is_empty())?;
    let workspace = it.next().filter(|s| !s.is_empty())?;
    if it.next()? != "apps" {
        return None;
    }
    let tail = it.next()?;
    let (slug, rest) = match tail.find('/') {
        Some(i) => (&tail[..i], &tail[i..]),
        None => (tail, ""),
    };
    let app = apps::by_slug(slug)?;
    Some(AppPath {
        owner: owner.into(),
        workspace: workspace.into(),
        app,
        prefix: format!("/@{owner}/{workspace}/apps/{slug}"),
        rest: rest.into(),
    })
}

/// The path the app sees: the rest (at least `/`) when the app wants the prefix stripped,
/// the full path otherwise.
pub fn upstream_path(p: &AppPath) -> String {
    if p.app.strip_prefix {
        if p.rest.is_empty() {
            "/".into()
        } else {
            p.rest.clone()
        }
    } else {
        format!("{}{}", p.prefix, p.rest)
    }
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn is_upgrade(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
        && headers.contains_key(http::header::UPGRADE)
}

/// Cookies minus the session cookie (the app must never see the user's token).
fn strip_session_cookie(v: &str) -> Option<String> {
    let kept: Vec<&str> = v
        .split(';')
        .map(str::trim)
        .filter(|kv| !kv.starts_with(&format!("{SESSION_COOKIE}=")))
        .filter(|kv| !kv.is_empty())
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

fn token_from_query(uri: &Uri) -> Option<(String, String)> {
    let q = uri.query()?;
    let mut token = None;
    let mut rest = vec![];
    for kv in q.split('&') {
        match kv.split_once('=') {
            Some((k, v)) if k == TOKEN_QUERY => token = Some(v.to_string()),
            _ => rest.push(kv),
        }
    }
    let token = token?;
    let path = if rest.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{}", uri.path(), rest.join("&"))
    };
    Some((token, path))
}

async fn proxy(State(state): State<AppState>, req: Request) -> Response {
    let Some(app_path) = parse_app_path(req.uri().path()) else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(crate::error::ErrorBody {
                message: format!("no route for {} {}", req.method(), req.uri().path()),
                detail: String::new(),
            }),
        )
            .into_response();
    };
    // A link carrying the token once: set the cookie and drop it from the URL.
    if let Some((token, clean)) = token_from_query(req.uri()) {
        let cookie = format!(
            "{SESSION_COOKIE}={token}; Path=/@{}/{}/; HttpOnly; SameSite=Lax",
            app_path.owner, app_path.workspace
        );
        return Response::builder()
            .status(StatusCode::SEE_OTHER)
            .header(http::header::LOCATION, clean)
            .header(http::header::SET_COOKIE, cookie)
            .body(Body::empty())
            .expect("static response");
    }
    if app_path.rest.is_empty() {
        // Apps use relative URLs: `/apps/tilt` must become `/apps/tilt/`.
        let q = req
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        return Response::builder()
            .status(StatusCode::PERMANENT_REDIRECT)
            .header(http::header::LOCATION, format!("{}/{q}", app_path.prefix))
            .body(Body::empty())
            .expect("static response");
    }
    let (parts, body) = req.into_parts();
    let principal = match state.auth.authenticate(&parts).await {
        Ok(p) => p,
        Err(e) => {
            return html_page(
                StatusCode::UNAUTHORIZED,
                "Sign in required",
                &format!(
                    "{e}. Open this app from the lumie-coder dashboard, or add ?{TOKEN_QUERY}=<token> to the link once."
                ),
            );
        }
    };
    let title = format!("{}/{}", app_path.owner, app_path.workspace);
    let ws = match state.db.user_by_name(&app_path.owner).await {
        Ok(Some(owner)) => match state
            .db
            .workspace_by_owner_and_name(&owner.id, &app_path.workspace)
            .await
        {
            Ok(ws) => ws,
            Err(e) => return e.into_response(),
        },
        Ok(None) => None,
        Err(e) => return e.into_response(),
    };
    let Some(ws) = ws else {
        return html_page(
            StatusCode::NOT_FOUND,
            "Workspace not found",
            &format!("There is no workspace {title}."),
        );
    };
    if !principal.may_act_for(&ws.owner_id) {
        return html_page(
            StatusCode::FORBIDDEN,
            "Not your workspace",
            &format!("Only the owner of {title} (or an admin) may open its apps."),
        );
    }
    let pod_ip = state.cluster.pod_ip(&ws.id);
    let not_running = ws.desired_state != DesiredState::Running
        || matches!(
            ws.status,
            WorkspaceStatus::Stopped
                | WorkspaceStatus::Stopping
                | WorkspaceStatus::Deleting
                | WorkspaceStatus::Deleted
        );
    let Some(pod_ip) = pod_ip.filter(|_| !not_running) else {
        let why = if ws.status_reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", ws.status_reason)
        };
        return html_page(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("Workspace {title} is {}", ws.status),
            &format!(
                "{} cannot be opened: the workspace is {}{why}. Start it from the dashboard or with POST /api/v2/workspaces/{}/builds {{\"transition\":\"start\"}}, then reload this page.",
                app_path.app.display_name, ws.status, ws.id
            ),
        );
    };
    let upgrade = is_upgrade(&parts.headers);
    forward(app_path, pod_ip, parts, body, upgrade).await
}

async fn forward(
    app_path: AppPath,
    pod_ip: String,
    parts: http::request::Parts,
    body: Body,
    upgrade: bool,
) -> Response {
    let mut req = Request::from_parts(parts, body);
    let on_client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let addr = format!("{pod_ip}:{}", app_path.app.port);
    let bad_gateway = |why: String| {
        html_page(
            StatusCode::BAD_GATEWAY,
            &format!("{} is not answering", app_path.app.display_name),
            &format!(
                "The workspace {}/{} is running, but {} did not answer on {addr}: {why}. It may still be starting; reload in a moment.",
                app_path.owner, app_path.workspace, app_path.app.display_name
            ),
        )
    };
    let stream = match tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return bad_gateway(e.to_string()),
        Err(_) => return bad_gateway("connect timed out after 5s".into()),
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(x) => x,
        Err(e) => return bad_gateway(e.to_string()),
    };
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "app proxy upstream connection ended");
        }
    });
    let path_q = match parts.uri.query() {
        Some(q) => format!("{}?{q}", upstream_path(&app_path)),
        None => upstream_path(&app_path),
    };
    let mut out = http::Request::builder()
        .method(parts.method.clone())
        .uri(path_q)
        .version(http::Version::HTTP_11);
    let headers = out.headers_mut().expect("builder without errors");
    for (k, v) in parts.headers.iter() {
        let name = k.as_str();
        if HOP_BY_HOP.contains(&name)
            || name.eq_ignore_ascii_case(lumie_contract::agent_api::AGENT_TOKEN_HEADER)
            || k == http::header::AUTHORIZATION
            || k == http::header::HOST
        {
            continue;
        }
        if k == http::header::COOKIE {
            if let Some(v) = v
                .to_str()
                .ok()
                .and_then(strip_session_cookie)
                .and_then(|c| HeaderValue::from_str(&c).ok())
            {
                headers.append(k, v);
            }
            continue;
        }
        headers.append(k, v.clone());
    }
    if upgrade {
        headers.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
        if let Some(u) = parts.headers.get(http::header::UPGRADE) {
            headers.insert(http::header::UPGRADE, u.clone());
        }
    }
    if let Ok(h) = HeaderValue::from_str(&addr) {
        headers.insert(http::header::HOST, h);
    }
    if let Some(h) = parts.headers.get(http::header::HOST) {
        headers.insert("x-forwarded-host", h.clone());
    }
    if let Ok(v) = HeaderValue::from_str(&app_path.prefix) {
        headers.insert("x-forwarded-prefix", v);
    }
    let out = match out.body(body) {
        Ok(r) => r,
        Err(e) => return Error::BadRequest(e.to_string()).into_response(),
    };
    let mut resp = match sender.send_request(out).await {
        Ok(r) => r,
        Err(e) => return bad_gateway(e.to_string()),
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client) = on_client_upgrade else {
            return bad_gateway("the app switched protocols unasked".into());
        };
        let upstream = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match (client.await, upstream.await) {
                (Ok(c), Ok(u)) => {
                    let mut c = TokioIo::new(c);
                    let mut u = TokioIo::new(u);
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                }
                (c, u) => tracing::debug!(
                    client = c.is_ok(),
                    upstream = u.is_ok(),
                    "app proxy upgrade failed"
                ),
            }
        });
        let (rp, _) = resp.into_parts();
        return Response::from_parts(rp, Body::empty());
    }
    let (mut rp, rb) = resp.into_parts();
    for h in HOP_BY_HOP {
        if *h != "transfer-encoding" {
            rp.headers.remove(*h);
        }
    }
    Response::from_parts(rp, Body::new(rb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_paths() {
        let p = parse_app_path("/@alice/dev/apps/tilt/r/x?y").unwrap();
        assert_eq!((p.owner.as_str(), p.workspace.as_str()), ("alice", "dev"));
        assert_eq!(p.app, apps::TILT);
        assert_eq!(p.prefix, "/@alice/dev/apps/tilt");
        assert_eq!(p.rest, "/r/x?y");
        let p = parse_app_path("/@alice/dev/apps/code-server").unwrap();
        assert_eq!(p.rest, "");
        assert_eq!(upstream_path(&p), "/");
        for bad in [
            "/@alice/dev/apps/nope/",
            "/alice/dev/apps/tilt/",
            "/@/dev/apps/tilt/",
            "/@alice/dev/app/tilt/",
            "/api/v2/x",
        ] {
            assert_eq!(parse_app_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn prefix_kept_when_the_app_wants_it() {
        let mut p = parse_app_path("/@a/w/apps/agents/ws").unwrap();
        assert_eq!(upstream_path(&p), "/ws");
        p.app.strip_prefix = false;
        assert_eq!(upstream_path(&p), "/@a/w/apps/agents/ws");
    }

    #[test]
    fn session_cookie_never_reaches_the_app() {
        assert_eq!(
            strip_session_cookie("a=1; coder_session_token=secret; b=2").as_deref(),
            Some("a=1; b=2")
        );
        assert_eq!(strip_session_cookie("coder_session_token=secret"), None);
    }

    #[test]
    fn token_query_becomes_a_cookie_redirect() {
        let uri: Uri = "/@a/w/apps/tilt/?x=1&coder_session_token=abc"
            .parse()
            .unwrap();
        assert_eq!(
            token_from_query(&uri),
            Some(("abc".into(), "/@a/w/apps/tilt/?x=1".into()))
        );
        let uri: Uri = "/@a/w/apps/tilt/?x=1".parse().unwrap();
        assert_eq!(token_from_query(&uri), None);
    }
}
