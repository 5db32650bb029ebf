//! The edge in front of the server (Teleport): the access URL, which client address to believe,
//! and whether a request arrived with the access URL's `Host` (and a WebSocket with its `Origin`),
//! or with the `Host` of a subdomain app ([`WildcardHost`], `CODER_WILDCARD_ACCESS_URL`), which
//! only the app proxy serves.
//!
//! The decisions are pure functions over headers and addresses, table-tested; the axum
//! middleware at the bottom applies them ([`client_ip_middleware`], [`host_guard_middleware`]).
//!
//! Forwarding headers (`CODER_PROXY_TRUSTED_HEADERS`) are honoured only when the direct peer is
//! in `CODER_PROXY_TRUSTED_ORIGINS`: anyone else could write them. In a list such as
//! `X-Forwarded-For: spoofed, client, proxy` the client is the rightmost address that is not a
//! trusted proxy, since each trusted hop appends the address it saw and earlier entries are
//! whatever the client sent.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{HOST, ORIGIN};
use axum::http::{HeaderMap, HeaderName, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use openidconnect::url::Url;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use super::IdentityError;

/// The URL developers reach the server at (`CODER_ACCESS_URL`), parsed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessUrl {
    url: Url,
    host: String,
    port: u16,
}

impl AccessUrl {
    /// Parses an http(s) URL with a host; a trailing `/` is dropped.
    pub fn parse(value: &str) -> Result<Self, IdentityError> {
        let invalid = |message: String| IdentityError::InvalidSetting {
            setting: "CODER_ACCESS_URL",
            message,
        };
        let url = Url::parse(value.trim().trim_end_matches('/'))
            .map_err(|e| invalid(format!("{value:?} is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(format!("{value:?} is not an http(s) URL")));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid(format!("{value:?} has no host")))?
            .to_ascii_lowercase();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| invalid(format!("{value:?} has no port")))?;
        Ok(AccessUrl { url, host, port })
    }

    /// Whether it is https (cookies get `Secure`).
    pub fn is_https(&self) -> bool {
        self.url.scheme() == "https"
    }

    /// Host name (lowercase; IPv6 in brackets), without port.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `host` or `host:port` when the port is not the scheme's default: what browsers send as `Host`.
    pub fn authority(&self) -> String {
        match self.url.port() {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }

    /// `scheme://authority`: what browsers send as `Origin`.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.url.scheme(), self.authority())
    }

    /// The access URL followed by `path` (which starts with `/`).
    pub fn join(&self, path: &str) -> String {
        format!("{}{path}", self.url.as_str().trim_end_matches('/'))
    }

    /// Whether a `Host` header value names this host (case-insensitive, default port implied).
    pub fn matches_host(&self, received: &str) -> bool {
        let Some((host, port)) = split_host_port(received.trim()) else {
            return false;
        };
        host.trim_end_matches('.').eq_ignore_ascii_case(&self.host)
            && port.unwrap_or(default_port(self.url.scheme())) == self.port
    }

    /// Whether an `Origin` header value is this URL's origin.
    pub fn matches_origin(&self, received: &str) -> bool {
        let Ok(origin) = Url::parse(received.trim()) else {
            return false;
        };
        origin.scheme() == self.url.scheme()
            && origin
                .host_str()
                .is_some_and(|h| h.eq_ignore_ascii_case(&self.host))
            && origin.port_or_known_default() == Some(self.port)
    }
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" { 443 } else { 80 }
}

/// The hosts subdomain apps live on (`CODER_WILDCARD_ACCESS_URL=*.apps.example.com`): one label
/// in front of the suffix names the app (`<slug>--<workspace>--<owner>`), so every app is its
/// own origin. Scheme and port are the access URL's unless the value names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WildcardHost {
    scheme: String,
    suffix: String,
    port: u16,
}

impl WildcardHost {
    /// Parses `*.suffix`, `*.suffix:port` or `http(s)://*.suffix[:port]`.
    pub fn parse(value: &str, access: &AccessUrl) -> Result<Self, IdentityError> {
        let invalid = |message: String| IdentityError::InvalidSetting {
            setting: "CODER_WILDCARD_ACCESS_URL",
            message,
        };
        let v = value.trim().trim_end_matches('/');
        let (scheme, rest) = match v.split_once("://") {
            Some((s @ ("http" | "https"), rest)) => (s.to_string(), rest),
            Some(_) => return Err(invalid(format!("{value:?} is not an http(s) URL"))),
            None => (access.url.scheme().to_string(), v),
        };
        let Some(host_port) = rest.strip_prefix("*.") else {
            return Err(invalid(format!(
                "{value:?} must start with \"*.\", like *.apps.example.com"
            )));
        };
        let (host, port) = split_host_port(host_port)
            .ok_or_else(|| invalid(format!("{value:?} has no usable host")))?;
        let suffix = host.trim_end_matches('.').to_ascii_lowercase();
        let valid_label =
            |l: &str| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if (!suffix.contains('.') && suffix != "localhost") || !suffix.split('.').all(valid_label) {
            return Err(invalid(format!(
                "{value:?}: {suffix:?} is not a domain to put app hosts under"
            )));
        }
        let port = match port {
            Some(p) => p,
            None if scheme == access.url.scheme() => access.port,
            None => default_port(&scheme),
        };
        Ok(WildcardHost {
            scheme,
            suffix,
            port,
        })
    }

    /// The app label of a `Host` value under this wildcard (lowercase), if it is one.
    pub fn label_of(&self, received: &str) -> Option<String> {
        let (host, port) = split_host_port(received.trim())?;
        if port.unwrap_or(default_port(&self.scheme)) != self.port {
            return None;
        }
        self.label_of_name(host)
    }

    /// The app label of a host name (no port) under this wildcard.
    fn label_of_name(&self, host: &str) -> Option<String> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let label = host.strip_suffix(&self.suffix)?.strip_suffix('.')?;
        (!label.is_empty() && !label.contains('.')).then(|| label.to_string())
    }

    /// `scheme://label.suffix[:port]`: the app host's origin (and base URL).
    pub fn origin_of(&self, label: &str) -> String {
        if self.port == default_port(&self.scheme) {
            format!("{}://{label}.{}", self.scheme, self.suffix)
        } else {
            format!("{}://{label}.{}:{}", self.scheme, self.suffix, self.port)
        }
    }

    /// Whether app cookies get `Secure`.
    pub fn is_https(&self) -> bool {
        self.scheme == "https"
    }

    /// The app label of an absolute URL on one of these hosts (scheme and port must match).
    pub fn label_of_url(&self, url: &Url) -> Option<String> {
        if url.scheme() != self.scheme || url.port_or_known_default() != Some(self.port) {
            return None;
        }
        if !url.username().is_empty() || url.password().is_some() {
            return None;
        }
        self.label_of_name(url.host_str()?)
    }
}

/// `host[:port]` → (host, port); IPv6 hosts keep their brackets like [`Url::host_str`].
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    if s.is_empty() {
        return None;
    }
    if s.starts_with('[') {
        let end = s.find(']')?;
        let (host, rest) = s.split_at(end + 1);
        return match rest {
            "" => Some((host, None)),
            _ => Some((host, Some(rest.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host, Some(port.parse().ok()?))),
        Some(_) => None,
        None => Some((s, None)),
    }
}

/// The host a request names: its `Host` header, or the URI authority (HTTP/2 `:authority`).
pub fn request_host<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

/// Refuses a request whose host is not the access URL's, naming both.
pub fn check_host(access: &AccessUrl, headers: &HeaderMap, uri: &Uri) -> Result<(), IdentityError> {
    match request_host(headers, uri) {
        Some(h) if access.matches_host(h) => Ok(()),
        other => Err(IdentityError::HostMismatch {
            expected: access.authority(),
            received: other.unwrap_or("(none)").to_string(),
        }),
    }
}

/// Whether the request asks to become a WebSocket.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Refuses a WebSocket opened by a page of another origin (cross-site WebSocket hijacking rides
/// on the session cookie). No `Origin` at all means a non-browser client, which the cookie
/// cannot be borrowed from, and is allowed; `null` is refused.
pub fn check_websocket_origin(
    access: &AccessUrl,
    headers: &HeaderMap,
) -> Result<(), IdentityError> {
    match headers.get(ORIGIN).map(|v| v.to_str().unwrap_or("")) {
        None => Ok(()),
        Some(o) if access.matches_origin(o) => Ok(()),
        Some(o) => Err(IdentityError::OriginMismatch {
            expected: access.origin(),
            received: o.to_string(),
        }),
    }
}

/// Which forwarding headers to believe, and from whom.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxy {
    headers: Vec<HeaderName>,
    origins: Vec<IpNet>,
}

impl TrustedProxy {
    /// From the `CODER_PROXY_TRUSTED_HEADERS` and `CODER_PROXY_TRUSTED_ORIGINS` lists (blank entries
    /// ignored; an origin may be a CIDR or a single address).
    pub fn new(headers: &[String], origins: &[String]) -> Result<Self, IdentityError> {
        let headers = headers
            .iter()
            .map(|h| h.trim())
            .filter(|h| !h.is_empty())
            .map(|h| {
                HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).map_err(|_| {
                    IdentityError::InvalidSetting {
                        setting: "CODER_PROXY_TRUSTED_HEADERS",
                        message: format!("{h:?} is not a header name"),
                    }
                })
            })
            .collect::<Result<_, _>>()?;
        let origins = origins
            .iter()
            .map(|o| o.trim())
            .filter(|o| !o.is_empty())
            .map(|o| {
                o.parse::<IpNet>()
                    .or_else(|_| o.parse::<IpAddr>().map(IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| IdentityError::InvalidSetting {
                        setting: "CODER_PROXY_TRUSTED_ORIGINS",
                        message: format!("{o:?} is not a CIDR (like 10.0.0.0/8) or an IP address"),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(TrustedProxy { headers, origins })
    }

    /// Whether an address is one of the trusted proxies.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.origins.iter().any(|n| n.contains(&ip))
    }

    /// The client's address: the direct peer, unless the peer is a trusted proxy and one of the
    /// trusted headers (in configured order) names the client.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.is_trusted(peer) {
            return peer;
        }
        for name in &self.headers {
            let forwarded = name == "forwarded";
            let entries: Vec<Option<IpAddr>> = headers
                .get_all(name)
                .iter()
                .flat_map(|v| v.to_str().unwrap_or("").split(','))
                .map(|e| {
                    if forwarded {
                        forwarded_for(e).and_then(parse_forwarded_ip)
                    } else {
                        parse_forwarded_ip(e)
                    }
                })
                .collect();
            if entries.is_empty() {
                continue;
            }
            // Walk back from the hop nearest to us; stop at the first address no trusted proxy
            // vouches for. An unreadable entry ends the trusted chain: the last good one wins.
            let mut last_trusted = None;
            for entry in entries.iter().rev() {
                match entry {
                    Some(ip) if self.is_trusted(*ip) => last_trusted = Some(*ip),
                    Some(ip) => return *ip,
                    None => break,
                }
            }
            if let Some(ip) = last_trusted {
                return ip;
            }
        }
        peer
    }
}

/// The `for=` parameter of one `Forwarded` element (RFC 7239).
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
    })
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:80`,
/// optionally quoted.
fn parse_forwarded_ip(raw: &str) -> Option<IpAddr> {
    let s = raw.trim().trim_matches('"');
    if let Some(rest) = s.strip_prefix('[') {
        return rest[..rest.find(']')?]
            .parse::<IpAddr>()
            .ok()
            .map(|i| i.to_canonical());
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The client address of a request, as resolved by [`client_ip_middleware`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// The client address of a request: [`ClientIp`] when the middleware ran, else the peer address
/// through `proxy`, else none (in-process tests without a socket).
pub fn client_ip_of(
    extensions: &axum::http::Extensions,
    headers: &HeaderMap,
    proxy: &TrustedProxy,
) -> Option<IpAddr> {
    if let Some(ClientIp(ip)) = extensions.get::<ClientIp>() {
        return Some(*ip);
    }
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| proxy.client_ip(peer.ip(), headers))
}

/// Middleware: stores the resolved [`ClientIp`] in the request's extensions (needs the server to
/// be served with `into_make_service_with_connect_info::<SocketAddr>()`).
pub async fn client_ip_middleware(
    State(proxy): State<Arc<TrustedProxy>>,
    mut req: Request,
    next: Next,
) -> Response {
    if let Some(ip) = client_ip_of(req.extensions(), req.headers(), &proxy) {
        req.extensions_mut().insert(ClientIp(ip));
    }
    next.run(req).await
}

/// Probes and metrics answer whatever the `Host`: the deployment is healthy even when the proxy is not.
pub const DEFAULT_HOST_EXEMPT_PREFIXES: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// The `Host`/`Origin` check for browser-facing routes, with a counter of refused requests.
#[derive(Clone, Debug)]
pub struct HostGuard {
    access: AccessUrl,
    wildcard: Option<WildcardHost>,
    exempt: Arc<[String]>,
    mismatches: Counter,
}

/// Which host a request that passed the [`HostGuard`] arrived at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostKind {
    /// The access URL (or an exempt path): the API, the login, path-based apps.
    Access,
    /// A subdomain app host: only the app proxy may serve it.
    App(AppHost),
}

/// Request extension set by [`host_guard_middleware`] on requests to a subdomain app host: the
/// host's app label (`<slug>--<workspace>--<owner>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppHost(pub String);

impl HostGuard {
    /// A guard for the access URL, with probes and metrics exempt.
    pub fn new(access: AccessUrl) -> Self {
        HostGuard {
            access,
            wildcard: None,
            exempt: DEFAULT_HOST_EXEMPT_PREFIXES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            mismatches: Counter::default(),
        }
    }

    /// Also exempts these path prefixes (for example the agent API, reached by pods at the
    /// in-cluster URL).
    pub fn exempt(mut self, prefixes: &[&str]) -> Self {
        let mut all: Vec<String> = self.exempt.iter().cloned().collect();
        all.extend(prefixes.iter().map(|s| s.to_string()));
        self.exempt = all.into();
        self
    }

    /// Also accepts the subdomain app hosts under `wildcard` (for the app proxy only).
    pub fn with_wildcard(mut self, wildcard: Option<WildcardHost>) -> Self {
        self.wildcard = wildcard;
        self
    }

    /// Registers `lumie_host_mismatch_requests_total`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "lumie_host_mismatch_requests",
            "Requests refused because their Host (or WebSocket Origin) is not the access URL's",
            self.mismatches.clone(),
        );
    }

    /// How many requests were refused so far.
    pub fn mismatches(&self) -> u64 {
        self.mismatches.get()
    }

    /// The check itself: a subdomain app host passes as [`HostKind::App`] whatever the path
    /// (a WebSocket there needs that app's own origin); exempt paths pass, others need the access
    /// URL's host, and WebSocket upgrades also its origin.
    pub fn check(&self, uri: &Uri, headers: &HeaderMap) -> Result<HostKind, IdentityError> {
        let host = request_host(headers, uri);
        if let Some(w) = &self.wildcard
            && let Some(h) = host.filter(|h| !self.access.matches_host(h))
            && let Some(label) = w.label_of(h)
        {
            if is_websocket_upgrade(headers) {
                let own = w.origin_of(&label);
                match headers.get(ORIGIN).map(|v| v.to_str().unwrap_or("")) {
                    None => {}
                    Some(o) if o.eq_ignore_ascii_case(&own) => {}
                    Some(o) => {
                        return Err(IdentityError::OriginMismatch {
                            expected: own,
                            received: o.to_string(),
                        });
                    }
                }
            }
            return Ok(HostKind::App(AppHost(label)));
        }
        if self
            .exempt
            .iter()
            .any(|p| uri.path().starts_with(p.as_str()))
        {
            return Ok(HostKind::Access);
        }
        check_host(&self.access, headers, uri)?;
        if is_websocket_upgrade(headers) {
            check_websocket_origin(&self.access, headers)?;
        }
        Ok(HostKind::Access)
    }
}

/// Middleware applying a [`HostGuard`]: a refused request gets the error naming the expected and
/// received host (HTML for browsers, JSON otherwise), a `warn` log line and a counted metric. A
/// request to a subdomain app host carries [`AppHost`] onwards.
pub async fn host_guard_middleware(
    State(guard): State<HostGuard>,
    mut req: Request,
    next: Next,
) -> Response {
    match guard.check(req.uri(), req.headers()) {
        Ok(HostKind::Access) => next.run(req).await,
        Ok(HostKind::App(app)) => {
            req.extensions_mut().insert(app);
            next.run(req).await
        }
        Err(err) => {
            guard.mismatches.inc();
            tracing::warn!(kind = err.kind(), path = %req.uri().path(), error = %err, "request refused at the edge");
            let wants_html = req
                .headers()
                .get(axum::http::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("text/html"));
            if wants_html {
                err.page()
            } else {
                err.into_response()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn access_url_parts() {
        let a = AccessUrl::parse("https://Coder.Lumie-Infra.com/").unwrap();
        assert_eq!(a.host(), "coder.lumie-infra.com");
        assert_eq!(a.authority(), "coder.lumie-infra.com");
        assert_eq!(a.origin(), "https://coder.lumie-infra.com");
        assert_eq!(
            a.join("/api/v2/users/oidc/callback"),
            "https://coder.lumie-infra.com/api/v2/users/oidc/callback"
        );
        assert!(a.is_https());
        let b = AccessUrl::parse("http://127.0.0.1:3000").unwrap();
        assert_eq!(b.authority(), "127.0.0.1:3000");
        assert_eq!(b.origin(), "http://127.0.0.1:3000");
        assert!(!b.is_https());
        for bad in ["coder.example.com", "ftp://x", "http://", ""] {
            let e = AccessUrl::parse(bad).unwrap_err().to_string();
            assert!(e.contains("CODER_ACCESS_URL"), "{bad}: {e}");
        }
    }

    #[test]
    fn host_check_table() {
        let https = AccessUrl::parse("https://coder.lumie-infra.com").unwrap();
        let port = AccessUrl::parse("http://127.0.0.1:3000").unwrap();
        let v6 = AccessUrl::parse("http://[::1]:8080").unwrap();
        let cases: &[(&AccessUrl, &str, bool)] = &[
            (&https, "coder.lumie-infra.com", true),
            (&https, "CODER.lumie-infra.com", true),
            (&https, "coder.lumie-infra.com:443", true),
            (&https, "coder.lumie-infra.com.", true),
            (&https, "coder.lumie-infra.com:8443", false),
            (&https, "coder.coder.svc.cluster.local", false),
            (&https, "10.0.0.5:8080", false),
            (&https, "evil.com/coder.lumie-infra.com", false),
            (&https, "", false),
            (&port, "127.0.0.1:3000", true),
            (&port, "127.0.0.1", false),
            (&port, "localhost:3000", false),
            (&v6, "[::1]:8080", true),
            (&v6, "[::1]", false),
            (&v6, "::1:8080", false),
        ];
        let uri: Uri = "/api/v2/workspaces".parse().unwrap();
        for (access, host, ok) in cases {
            let h = headers(&[("host", host)]);
            let got = check_host(access, &h, &uri);
            assert_eq!(got.is_ok(), *ok, "{host:?} against {}", access.authority());
            if let Err(e) = got {
                let text = e.to_string();
                assert!(text.contains(&access.authority()), "{text}");
                assert!(text.contains(&format!("{host:?}")), "{text}");
            }
        }
        // HTTP/2: no Host header, the authority is in the URI.
        let uri: Uri = "https://coder.lumie-infra.com/x".parse().unwrap();
        assert!(check_host(&https, &HeaderMap::new(), &uri).is_ok());
        let e = check_host(&https, &HeaderMap::new(), &"/x".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("(none)"), "{e}");
    }

    #[test]
    fn websocket_origin_table() {
        let a = AccessUrl::parse("https://coder.lumie-infra.com").unwrap();
        let cases: &[(Option<&str>, bool)] = &[
            (Some("https://coder.lumie-infra.com"), true),
            (Some("https://coder.lumie-infra.com:443"), true),
            (Some("http://coder.lumie-infra.com"), false),
            (Some("https://evil.example"), false),
            (Some("https://coder.lumie-infra.com.evil.example"), false),
            (Some("https://app--ws--alice.coder.lumie-infra.com"), false),
            (Some("null"), false),
            (None, true),
        ];
        for (origin, ok) in cases {
            let mut pairs = vec![("upgrade", "websocket")];
            if let Some(o) = origin {
                pairs.push(("origin", o));
            }
            let h = headers(&pairs);
            assert!(is_websocket_upgrade(&h));
            let got = check_websocket_origin(&a, &h);
            assert_eq!(got.is_ok(), *ok, "{origin:?}");
            if let Err(e) = got {
                assert!(
                    e.to_string().contains("https://coder.lumie-infra.com"),
                    "{e}"
                );
            }
        }
        assert!(!is_websocket_upgrade(&headers(&[("upgrade", "h2c")])));
    }

    #[test]
    fn client_ip_table() {
        let proxy = TrustedProxy::new(
            &["X-Forwarded-For".into(), " ".into()],
            &["10.0.0.0/8".into(), "fd00::/8".into(), "127.0.0.1".into()],
        )
        .unwrap();
        let forwarded_too = TrustedProxy::new(
            &["Forwarded".into(), "X-Real-IP".into()],
            &["10.0.0.0/8".into()],
        )
        .unwrap();
        let none = TrustedProxy::default();
        /// (proxy settings, direct peer, headers, expected client IP)
        type Case<'a> = (&'a TrustedProxy, &'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            // Spoofed header from an untrusted peer: ignored.
            (
                &proxy,
                "203.0.113.9",
                &[("x-forwarded-for", "1.2.3.4")],
                "203.0.113.9",
            ),
            (
                &none,
                "10.1.2.3",
                &[("x-forwarded-for", "1.2.3.4")],
                "10.1.2.3",
            ),
            // Trusted peer: the header names the client.
            (
                &proxy,
                "10.1.2.3",
                &[("x-forwarded-for", "198.51.100.7")],
                "198.51.100.7",
            ),
            // Client-supplied entries before the one our proxy appended are not believed.
            (
                &proxy,
                "10.1.2.3",
                &[("x-forwarded-for", "1.2.3.4, 198.51.100.7")],
                "198.51.100.7",
            ),
            // Two trusted hops: skip both.
            (
                &proxy,
                "10.1.2.3",
                &[("x-forwarded-for", "198.51.100.7, 10.9.9.9")],
                "198.51.100.7",
            ),
            // Repeated header lines count as one list.
            (
                &proxy,
                "10.1.2.3",
                &[
                    ("x-forwarded-for", "1.2.3.4"),
                    ("x-forwarded-for", "198.51.100.8"),
                ],
                "198.51.100.8",
            ),
            // Only trusted hops: the leftmost.
            (
                &proxy,
                "10.1.2.3",
                &[("x-forwarded-for", "10.7.7.7, 10.8.8.8")],
                "10.7.7.7",
            ),
            // Ports and IPv6, bracketed or not.
            (
                &proxy,
                "10.1.2.3",
                &[("x-forwarded-for", "198.51.100.7:51000")],
                "198.51.100.7",
            ),
            (
                &proxy,
                "10.1.2.3",
                &[("x-forwarded-for", "2001:db8::7")],
                "2001:db8::7",
            ),
            (
                &proxy,
                "10.1.2.3",
                &[("x-forwarded-for", "[2001:db8::7]:443")],
                "2001:db8::7",
            ),
            // IPv6 trusted peer; IPv4-mapped peer address counts as IPv4.
            (
                &proxy,
                "fd00::1",
                &[("x-forwarded-for", "2001:db8::9")],
                "2001:db8::9",
            ),
            (
                &proxy,
                "::ffff:10.1.2.3",
                &[("x-forwarded-for", "198.51.100.7")],
                "198.51.100.7",
            ),
            (
                &proxy,
                "::ffff:203.0.113.9",
                &[("x-forwarded-for", "1.2.3.4")],
                "203.0.113.9",
            ),
            // Garbage: the peer.
            (
                &proxy,
                "10.1.2.3",
                &[("x-forwarded-for", "not-an-ip")],
                "10.1.2.3",
            ),
            (&proxy, "10.1.2.3", &[("x-forwarded-for", "")], "10.1.2.3"),
            // Garbage in front of a good hop: the good hop.
            (
                &proxy,
                "10.1.2.3",
                &[("x-forwarded-for", "junk, 10.4.4.4")],
                "10.4.4.4",
            ),
            // A header that is not configured is not believed.
            (&proxy, "10.1.2.3", &[("x-real-ip", "1.2.3.4")], "10.1.2.3"),
            // RFC 7239 and the fallback to the next configured header.
            (
                &forwarded_too,
                "10.1.2.3",
                &[(
                    "forwarded",
                    "for=\"[2001:db8::5]:80\";proto=https, for=10.2.2.2",
                )],
                "2001:db8::5",
            ),
            (
                &forwarded_too,
                "10.1.2.3",
                &[("x-real-ip", "198.51.100.1")],
                "198.51.100.1",
            ),
            (
                &forwarded_too,
                "10.1.2.3",
                &[("forwarded", "for=unknown"), ("x-real-ip", "198.51.100.1")],
                "198.51.100.1",
            ),
        ];
        for (i, (p, peer, hs, want)) in cases.iter().enumerate() {
            assert_eq!(
                p.client_ip(ip(peer), &headers(hs)),
                ip(want),
                "case {i}: peer {peer} {hs:?}"
            );
        }
    }

    #[test]
    fn trusted_proxy_settings_errors_name_the_setting() {
        let e = TrustedProxy::new(&[], &["10.0.0.0/33".into()]).unwrap_err();
        assert!(e.to_string().contains("CODER_PROXY_TRUSTED_ORIGINS"), "{e}");
        assert!(e.to_string().contains("10.0.0.0/33"), "{e}");
        let e = TrustedProxy::new(&["X Forwarded".into()], &[]).unwrap_err();
        assert!(e.to_string().contains("CODER_PROXY_TRUSTED_HEADERS"), "{e}");
        // Host bits in a CIDR are dropped rather than refused.
        let p = TrustedProxy::new(&[], &["10.1.2.3/8".into()]).unwrap();
        assert!(p.is_trusted(ip("10.200.0.1")));
    }

    #[test]
    fn wildcard_hosts_table() {
        let https = AccessUrl::parse("https://coder.lumie-infra.com").unwrap();
        let local = AccessUrl::parse("http://127.0.0.1:3000").unwrap();
        let w = WildcardHost::parse("*.apps.lumie-infra.com", &https).unwrap();
        assert_eq!(
            w.origin_of("tilt--dev--alice"),
            "https://tilt--dev--alice.apps.lumie-infra.com"
        );
        assert!(w.is_https());
        let cases: &[(&str, Option<&str>)] = &[
            (
                "tilt--dev--alice.apps.lumie-infra.com",
                Some("tilt--dev--alice"),
            ),
            (
                "TILT--dev--alice.Apps.lumie-infra.com.",
                Some("tilt--dev--alice"),
            ),
            (
                "tilt--dev--alice.apps.lumie-infra.com:443",
                Some("tilt--dev--alice"),
            ),
            ("tilt--dev--alice.apps.lumie-infra.com:8443", None),
            ("a.b.apps.lumie-infra.com", None),
            ("apps.lumie-infra.com", None),
            (".apps.lumie-infra.com", None),
            ("coder.lumie-infra.com", None),
            ("tilt--dev--alice.apps.lumie-infra.com.evil.example", None),
            ("tilt--dev--aliceapps.lumie-infra.com", None),
            ("", None),
        ];
        for (host, want) in cases {
            assert_eq!(w.label_of(host).as_deref(), *want, "{host:?}");
        }
        // Port from the access URL unless given; scheme likewise.
        let l = WildcardHost::parse("*.apps.localhost", &local).unwrap();
        assert_eq!(l.origin_of("x"), "http://x.apps.localhost:3000");
        assert_eq!(l.label_of("x.apps.localhost:3000").as_deref(), Some("x"));
        assert_eq!(l.label_of("x.apps.localhost"), None);
        let p = WildcardHost::parse("http://*.apps.localhost:8081/", &https).unwrap();
        assert_eq!(p.origin_of("x"), "http://x.apps.localhost:8081");
        let url = Url::parse("http://x.apps.localhost:8081/a?b").unwrap();
        assert_eq!(p.label_of_url(&url).as_deref(), Some("x"));
        for bad_url in [
            "https://x.apps.localhost:8081/",
            "http://x.apps.localhost/",
            "http://u:p@x.apps.localhost:8081/",
            "http://evil.example:8081/",
        ] {
            assert_eq!(
                p.label_of_url(&Url::parse(bad_url).unwrap()),
                None,
                "{bad_url}"
            );
        }
        for bad in [
            "apps.example.com",
            "ftp://*.x.com",
            "*.",
            "*.com",
            "*.a b.com",
            "https://x.*.com",
        ] {
            let e = WildcardHost::parse(bad, &https).unwrap_err().to_string();
            assert!(e.contains("CODER_WILDCARD_ACCESS_URL"), "{bad}: {e}");
        }
    }

    #[test]
    fn host_guard_sends_app_hosts_to_the_proxy_only() {
        let access = AccessUrl::parse("https://coder.lumie-infra.com").unwrap();
        let w = WildcardHost::parse("*.apps.lumie-infra.com", &access).unwrap();
        let guard = HostGuard::new(access.clone()).with_wildcard(Some(w));
        let app = headers(&[("host", "tilt--dev--alice.apps.lumie-infra.com")]);
        for path in ["/", "/api/v2/users/me", "/healthz"] {
            assert_eq!(
                guard.check(&path.parse().unwrap(), &app).unwrap(),
                HostKind::App(AppHost("tilt--dev--alice".into())),
                "{path}"
            );
        }
        let main = headers(&[("host", "coder.lumie-infra.com")]);
        assert_eq!(
            guard
                .check(&"/api/v2/users/me".parse().unwrap(), &main)
                .unwrap(),
            HostKind::Access
        );
        // A WebSocket on an app host needs that app's own origin.
        let ws = |origin: &str| {
            headers(&[
                ("host", "tilt--dev--alice.apps.lumie-infra.com"),
                ("upgrade", "websocket"),
                ("origin", origin),
            ])
        };
        let uri: Uri = "/ws".parse().unwrap();
        assert!(
            guard
                .check(&uri, &ws("https://tilt--dev--alice.apps.lumie-infra.com"))
                .is_ok()
        );
        for other in [
            "https://tilt--dev--bob.apps.lumie-infra.com",
            "https://coder.lumie-infra.com",
            "http://tilt--dev--alice.apps.lumie-infra.com",
        ] {
            assert_eq!(
                guard.check(&uri, &ws(other)).unwrap_err().kind(),
                "origin_mismatch",
                "{other}"
            );
        }
        // The access URL's own host stays the access URL's, even under the wildcard.
        let under = AccessUrl::parse("https://coder.apps.lumie-infra.com").unwrap();
        let w = WildcardHost::parse("*.apps.lumie-infra.com", &under).unwrap();
        let g = HostGuard::new(under).with_wildcard(Some(w));
        let own = headers(&[("host", "coder.apps.lumie-infra.com")]);
        assert_eq!(
            g.check(&"/api/v2/users/me".parse().unwrap(), &own).unwrap(),
            HostKind::Access
        );
        // Without a wildcard an app host is just a wrong host.
        let plain = HostGuard::new(access);
        assert!(plain.check(&"/".parse().unwrap(), &app).is_err());
    }

    #[test]
    fn host_guard_exempts_probes_and_counts_refusals() {
        let guard = HostGuard::new(AccessUrl::parse("https://coder.lumie-infra.com").unwrap())
            .exempt(&["/api/v2/workspaceagents/"]);
        let wrong = headers(&[("host", "coder.coder.svc.cluster.local")]);
        for path in [
            "/readyz",
            "/healthz",
            "/metrics",
            "/api/v2/workspaceagents/me/heartbeat",
        ] {
            assert!(
                guard.check(&path.parse().unwrap(), &wrong).is_ok(),
                "{path}"
            );
        }
        assert!(
            guard
                .check(&"/api/v2/users/me".parse().unwrap(), &wrong)
                .is_err()
        );
        let ws = headers(&[
            ("host", "coder.lumie-infra.com"),
            ("upgrade", "websocket"),
            ("origin", "https://evil.example"),
        ]);
        let e = guard
            .check(&"/@alice/ws/apps/x/".parse().unwrap(), &ws)
            .unwrap_err();
        assert_eq!(e.kind(), "origin_mismatch");
    }
}
