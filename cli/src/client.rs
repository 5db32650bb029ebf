//! The REST client for lumie-server's `/api/v2`: the calls the commands make, each turning a
//! transport failure into "cannot reach the server at URL", a 401 into "run `lumie login`", and
//! a 404 on a workspace into "no workspace WS"; and the workspace watch (server-sent events).

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::credentials::Credentials;
use crate::error::{Error, Result};
use crate::wire::{Build, User, Workspace, Workspaces, error_message};

/// The header the server reads the session token from (Coder's).
pub const TOKEN_HEADER: &str = "Coder-Session-Token";

/// A workspace as the user names it: `ws` (theirs) or `owner/ws` (an admin's view of another's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkspaceName {
    /// The owner, when given.
    pub owner: Option<String>,
    /// The workspace.
    pub name: String,
}

impl WorkspaceName {
    /// Parses `ws` or `owner/ws`.
    pub fn parse(s: &str) -> Result<WorkspaceName> {
        let bad = || {
            Error::Usage(format!(
                "{s:?} is not a workspace name: give NAME (yours) or OWNER/NAME"
            ))
        };
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        match s.split_once('/') {
            None if part_ok(s) => Ok(WorkspaceName {
                owner: None,
                name: s.into(),
            }),
            Some((o, n)) if part_ok(o) && part_ok(n) => Ok(WorkspaceName {
                owner: Some(o.into()),
                name: n.into(),
            }),
            _ => Err(bad()),
        }
    }

    /// The owner path segment (`me` for the caller).
    pub fn owner_or_me(&self) -> &str {
        self.owner.as_deref().unwrap_or("me")
    }
}

impl fmt::Display for WorkspaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.owner {
            Some(o) => write!(f, "{o}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A signed-in client of one server.
#[derive(Clone)]
pub struct Client {
    creds: Credentials,
    http: reqwest::Client,
}

#[derive(Serialize)]
struct CreateWorkspace<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct CreateBuild<'a> {
    transition: &'a str,
}

impl Client {
    /// A client for `creds`.
    pub fn new(creds: Credentials) -> Result<Client> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("lumie/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Usage(format!("setting up HTTP: {e}")))?;
        Ok(Client { creds, http })
    }

    /// The credentials in use.
    pub fn credentials(&self) -> &Credentials {
        &self.creds
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.creds.url)
    }

    fn transport(&self, e: reqwest::Error) -> Error {
        // The innermost cause says it best ("Connection refused", "dns error: …").
        let mut cause = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            cause = s.to_string();
            source = s.source();
        }
        Error::Unreachable {
            url: self.creds.url.clone(),
            cause,
        }
    }

    /// Sends a request; a 2xx answer, or the error its status means.
    async fn send(
        &self,
        what: &str,
        req: reqwest::RequestBuilder,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response> {
        let mut req = req.header(TOKEN_HEADER, &self.creds.token);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.bytes().await.unwrap_or_default();
        let message = error_message(status.as_u16(), &body);
        Err(if status == reqwest::StatusCode::UNAUTHORIZED {
            Error::Unauthorized {
                url: self.creds.url.clone(),
                message,
            }
        } else {
            Error::Api {
                what: what.into(),
                status: status.as_u16(),
                message,
            }
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<T> {
        let resp = self.send(what, req, Some(Duration::from_secs(60))).await?;
        let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Protocol {
            what: what.into(),
            cause: format!("{e} (is {} a lumie server?)", self.creds.url),
        })
    }

    /// Who the token belongs to.
    pub async fn me(&self) -> Result<User> {
        self.json(
            "checking the session token",
            self.http.get(self.url("/api/v2/users/me")),
        )
        .await
    }

    /// The caller's workspaces (every one an admin may see with `all`).
    pub async fn workspaces(&self, all: bool) -> Result<Vec<Workspace>> {
        let mut req = self.http.get(self.url("/api/v2/workspaces"));
        if !all {
            req = req.query(&[("owner", "me")]);
        }
        let list: Workspaces = self.json("listing workspaces", req).await?;
        Ok(list.workspaces)
    }

    /// One workspace by name.
    pub async fn workspace(&self, name: &WorkspaceName) -> Result<Workspace> {
        let path = format!(
            "/api/v2/users/{}/workspace/{}",
            name.owner_or_me(),
            name.name
        );
        self.json(
            &format!("looking up {name}"),
            self.http.get(self.url(&path)),
        )
        .await
        .map_err(|e| not_found_is_no_such(e, name))
    }

    /// One workspace by id (`None` once it is gone).
    pub async fn workspace_by_id(&self, id: &str) -> Result<Option<Workspace>> {
        let path = format!("/api/v2/workspaces/{id}");
        match self
            .json("reading the workspace", self.http.get(self.url(&path)))
            .await
        {
            Ok(ws) => Ok(Some(ws)),
            Err(Error::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a workspace (and its first build).
    pub async fn create(&self, name: &WorkspaceName) -> Result<Workspace> {
        let path = format!("/api/v2/users/{}/workspaces", name.owner_or_me());
        let req = self
            .http
            .post(self.url(&path))
            .json(&CreateWorkspace { name: &name.name });
        self.json(&format!("creating {name}"), req).await
    }

    /// Starts a build (`start`, `stop`, `delete`).
    pub async fn build(
        &self,
        ws: &Workspace,
        name: &WorkspaceName,
        transition: &str,
    ) -> Result<Build> {
        let path = format!("/api/v2/workspaces/{}/builds", ws.id);
        let req = self
            .http
            .post(self.url(&path))
            .json(&CreateBuild { transition });
        self.json(&format!("asking to {transition} {name}"), req)
            .await
            .map_err(|e| not_found_is_no_such(e, name))
    }

    /// Opens the watch of one workspace: its state now, then each change.
    pub async fn watch(&self, id: &str) -> Result<Watch> {
        let path = format!("/api/v2/workspaces/{id}/watch");
        let resp = self
            .send(
                "watching the workspace",
                self.http.get(self.url(&path)),
                None,
            )
            .await?;
        Ok(Watch {
            resp,
            parser: SseParser::default(),
            url: self.creds.url.clone(),
        })
    }
}

fn not_found_is_no_such(e: Error, name: &WorkspaceName) -> Error {
    match e {
        Error::Api {
            status: 404,
            message,
            ..
        } => Error::NoSuchWorkspace {
            name: name.to_string(),
            message,
        },
        e => e,
    }
}

/// An open workspace watch.
pub struct Watch {
    resp: reqwest::Response,
    parser: SseParser,
    url: String,
}

impl Watch {
    /// The next state, or `None` when the server ends the stream.
    pub async fn next(&mut self) -> Result<Option<Workspace>> {
        loop {
            while let Some(ev) = self.parser.next_event() {
                if ev.event == "workspace" {
                    let ws = serde_json::from_str(&ev.data).map_err(|e| Error::Protocol {
                        what: "watching the workspace".into(),
                        cause: e.to_string(),
                    })?;
                    return Ok(Some(ws));
                }
            }
            match self.resp.chunk().await {
                Ok(Some(chunk)) => self.parser.push(&chunk),
                Ok(None) => return Ok(None),
                Err(e) => {
                    return Err(Error::Unreachable {
                        url: self.url.clone(),
                        cause: format!("the watch broke off: {e}"),
                    });
                }
            }
        }
    }
}

/// One server-sent event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` (`message` when none).
    pub event: String,
    /// The `data:` lines, joined with newlines.
    pub data: String,
}

/// A server-sent events parser over arbitrary chunks (the text/event-stream format: fields per
/// line, an event per blank line, `:` comments for keep-alives).
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: String,
    data: Vec<String>,
}

impl SseParser {
    /// Adds received bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete event, if one has arrived.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if self.data.is_empty() {
                    self.event.clear();
                    continue;
                }
                let event = std::mem::take(&mut self.event);
                return Some(SseEvent {
                    event: if event.is_empty() {
                        "message".into()
                    } else {
                        event
                    },
                    data: std::mem::take(&mut self.data).join("\n"),
                });
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "event" => self.event = value.to_string(),
                "data" => self.data.push(value.to_string()),
                _ => {}
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_names() {
        type Parsed<'a> = Option<(Option<&'a str>, &'a str)>;
        let cases: &[(&str, Parsed)] = &[
            ("dev", Some((None, "dev"))),
            ("bob/dev", Some((Some("bob"), "dev"))),
            ("a-b_c", Some((None, "a-b_c"))),
            ("a.b", None),
            ("", None),
            ("/dev", None),
            ("bob/", None),
            ("a/b/c", None),
            ("dev x", None),
            ("../x", None),
        ];
        for (input, want) in cases {
            let got = WorkspaceName::parse(input).ok();
            let want = want.map(|(o, n)| WorkspaceName {
                owner: o.map(String::from),
                name: n.into(),
            });
            assert_eq!(got, want, "{input:?}");
            if let Some(w) = got {
                assert_eq!(w.to_string(), *input);
            }
        }
        assert_eq!(WorkspaceName::parse("dev").unwrap().owner_or_me(), "me");
    }

    #[test]
    fn sse_events_across_chunks_with_comments_and_crlf() {
        let stream = "event: workspace\ndata: {\"a\":1}\n\n: keep-alive\n\nevent: workspace\r\ndata: x\r\ndata: y\r\n\r\ndata: plain\n\n";
        // Any chunking gives the same events.
        for size in [1, 2, 3, 7, stream.len()] {
            let mut p = SseParser::default();
            let mut got = vec![];
            for chunk in stream.as_bytes().chunks(size) {
                p.push(chunk);
                while let Some(e) = p.next_event() {
                    got.push(e);
                }
            }
            assert_eq!(
                got,
                vec![
                    SseEvent {
                        event: "workspace".into(),
                        data: "{\"a\":1}".into()
                    },
                    SseEvent {
                        event: "workspace".into(),
                        data: "x\ny".into()
                    },
                    SseEvent {
                        event: "message".into(),
                        data: "plain".into()
                    },
                ],
                "chunks of {size}"
            );
        }
    }
}
