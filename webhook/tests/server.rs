//! The HTTP layer in-process (`router(...).oneshot(...)`), and the real HTTPS server on
//! 127.0.0.1 with a certificate rotated while a client keeps opening connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use bytes::Bytes;
use lumie_contract::policy::{PolicyMode, WorkspacePolicySpec};
use lumie_webhook::certs::{CertificateAuthority, PemPair, write_private};
use lumie_webhook::client::WebhookClient;
use lumie_webhook::policy::PolicySet;
use lumie_webhook::server::{AppState, ServeConfig, health_router, router, start};
use serde_json::{Value, json};
use tower::ServiceExt as _;

fn review(object: Value, user: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "e911857d-c318-11e8-bbad-025000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "lumie-dev",
            "operation": "CREATE",
            "userInfo": {"username": user},
            "object": object,
            "dryRun": false
        }
    }))
    .unwrap()
}

fn privileged_pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "main", "image": "busybox",
            "securityContext": {"privileged": true}}]}})
}

fn workspace_pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "ws", "labels": {"app.kubernetes.io/name": "dev-workspace"}},
        "spec": {"containers": [
            {"name": "dev", "image": "dev"}, {"name": "agents", "image": "agents"},
            {"name": "dind", "image": "docker:dind", "securityContext": {"privileged": true}}]}})
}

async fn call(app: axum::Router, method: &str, path: &str, body: Vec<u8>) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn validate_and_mutate_over_http() {
    let state = AppState::new(PolicySet::builtin(), true);
    let (status, body) = call(
        router(state.clone()),
        "POST",
        "/validate",
        review(privileged_pod(), "alice"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["response"]["uid"], "e911857d-c318-11e8-bbad-025000000001");
    assert_eq!(v["response"]["allowed"], false);
    assert!(
        v["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("securityContext.privileged=true")
    );

    let (status, body) = call(
        router(state.clone()),
        "POST",
        "/mutate",
        review(workspace_pod(), "system:serviceaccount:coder:coder"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["response"]["allowed"], true);
    assert_eq!(v["response"]["patchType"], "JSONPatch");

    // A policy change applies to the next request.
    let mut warn = WorkspacePolicySpec::contract_default();
    warn.mode = PolicyMode::Warn;
    warn.break_glass = Some(lumie_contract::policy::BreakGlass {
        reason: "INC-5".into(),
        expires: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2999-01-01T00:00:00Z".parse().unwrap(),
        ),
    });
    state.set_policies(PolicySet::from_objects(
        [("relaxed", &warn)],
        Some(&state.policies()),
    ));
    let (_, body) = call(
        router(state.clone()),
        "POST",
        "/validate",
        review(privileged_pod(), "alice"),
    )
    .await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["response"]["allowed"], true, "{v}");
    assert!(
        v["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("relaxed")
    );
}

#[tokio::test]
async fn bad_input_is_http_400_with_a_message() {
    let app = router(AppState::new(PolicySet::builtin(), true));
    let (status, body) = call(app.clone(), "POST", "/validate", b"{not json".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("body is not JSON"), "{body}");

    let mut huge = serde_json::from_slice::<Value>(&review(privileged_pod(), "a")).unwrap();
    huge["request"]["object"]["metadata"]["annotations"] =
        json!({"pad": "x".repeat(3 * 1024 * 1024 + 10)});
    let (status, body) = call(
        app.clone(),
        "POST",
        "/mutate",
        serde_json::to_vec(&huge).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("3145728 byte limit"), "{body}");

    let (status, body) = call(
        app.clone(),
        "POST",
        "/validate",
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("request is missing"), "{body}");

    let (status, _) = call(app, "GET", "/validate", Vec::new()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let state = AppState::new(PolicySet::builtin(), false);
    let health = health_router(state.clone());
    assert_eq!(
        call(health.clone(), "GET", "/healthz", vec![]).await.0,
        StatusCode::OK
    );
    let (status, body) = call(health.clone(), "GET", "/readyz", vec![]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    state.mark_synced();
    assert_eq!(
        call(health.clone(), "GET", "/readyz", vec![]).await.0,
        StatusCode::OK
    );

    call(
        router(state.clone()),
        "POST",
        "/validate",
        review(privileged_pod(), "a"),
    )
    .await;
    call(router(state.clone()), "POST", "/validate", b"nope".to_vec()).await;
    state.set_policies(PolicySet::from_objects([], Some(&state.policies())));
    let (status, text) = call(health, "GET", "/metrics", vec![]).await;
    assert_eq!(status, StatusCode::OK);
    for want in [
        r#"lumie_webhook_requests_total{endpoint="validate",decision="denied",mode="Enforce"} 1"#,
        r#"lumie_webhook_requests_total{endpoint="validate",decision="invalid",mode="none"} 1"#,
        r#"lumie_webhook_request_duration_seconds_count{endpoint="validate"} 2"#,
        "lumie_webhook_policy_generation 1",
    ] {
        assert!(text.contains(want), "metrics lack {want}:\n{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Real TLS

struct TlsFiles {
    _dir: tempfile::TempDir,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

impl TlsFiles {
    fn new(pair: &PemPair) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let f = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            _dir: dir,
        };
        f.write(pair);
        f
    }

    /// Writes like the kubelet updates a Secret volume: each file replaced atomically.
    fn write(&self, pair: &PemPair) {
        let tmp = self.cert.with_extension("tmp");
        std::fs::write(&tmp, &pair.cert_pem).unwrap();
        std::fs::rename(&tmp, &self.cert).unwrap();
        write_private(&tmp, &pair.key_pem).unwrap();
        std::fs::rename(&tmp, &self.key).unwrap();
    }
}

fn der(pem: &str) -> Vec<u8> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_drops_no_request() {
    let ca = CertificateAuthority::generate("rotation test CA", 1).unwrap();
    let names = vec!["localhost".to_string()];
    let ips = ["127.0.0.1".parse().unwrap()];
    let first = ca.issue_server(&names, &ips, 1).unwrap();
    let second = ca.issue_server(&names, &ips, 1).unwrap();
    let files = TlsFiles::new(&first);
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut config = ServeConfig::new(any, any, files.cert.clone(), files.key.clone());
    config.cert_poll = Duration::from_millis(200);
    let server = start(config).await.unwrap();
    let client = WebhookClient::new(server.addr, "127.0.0.1", ca.cert_pem()).unwrap();

    // A keep-alive connection opened before the rotation must keep working after it.
    let mut long_lived = client.connect().await.unwrap();
    assert_eq!(long_lived.peer_certificate.to_vec(), der(&first.cert_pem));

    let plain = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]}});
    let body = Bytes::from(review(plain, "alice"));
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let new_cert_seen = Arc::new(AtomicUsize::new(0));
    let second_der = der(&second.cert_pem);
    let mut loops = Vec::new();
    for _ in 0..2 {
        let (client, body, stop, ok, seen, second_der) = (
            client.clone(),
            body.clone(),
            stop.clone(),
            ok.clone(),
            new_cert_seen.clone(),
            second_der.clone(),
        );
        loops.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                // A new connection (and handshake) for every request.
                match client.connect().await {
                    Ok(mut conn) => {
                        if conn.peer_certificate.to_vec() == second_der {
                            seen.fetch_add(1, Ordering::Relaxed);
                        }
                        match conn.post("/validate", body.clone()).await {
                            Ok((200, b)) if b.windows(14).any(|w| w == b"\"allowed\":true") => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok((s, b)) => {
                                failures.push(format!("{s}: {}", String::from_utf8_lossy(&b)))
                            }
                            Err(e) => failures.push(e.to_string()),
                        }
                    }
                    Err(e) => failures.push(e.to_string()),
                }
            }
            failures
        }));
    }

    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = ok.load(Ordering::Relaxed);
    assert!(before > 0, "requests flow before the rotation");
    files.write(&second);
    let deadline = Instant::now() + Duration::from_secs(5);
    while new_cert_seen.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "new certificate never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for l in loops {
        failures.extend(l.await.unwrap());
    }
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(
        ok.load(Ordering::Relaxed) > before,
        "requests flow after the rotation"
    );
    assert_eq!(server.certs.reloads(), 1);
    let (status, _) = long_lived.post("/validate", body.clone()).await.unwrap();
    assert_eq!(status, 200, "open connection survives the rotation");

    // A half-written rotation (key of another pair) is not loaded: the current pair stays.
    let third = ca.issue_server(&names, &ips, 1).unwrap();
    std::fs::write(&files.cert, &third.cert_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let conn = client.connect().await.unwrap();
    assert_eq!(conn.peer_certificate.to_vec(), second_der);
    server.shutdown().await;
}

#[tokio::test]
async fn serves_tls_and_health_on_separate_ports() {
    let ca = CertificateAuthority::generate("test CA", 1).unwrap();
    let pair = ca
        .issue_server(&["localhost".into()], &["127.0.0.1".parse().unwrap()], 1)
        .unwrap();
    let files = TlsFiles::new(&pair);
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = start(ServeConfig::new(
        any,
        any,
        files.cert.clone(),
        files.key.clone(),
    ))
    .await
    .unwrap();
    assert_ne!(server.addr, server.health_addr);
    let client = WebhookClient::new(server.addr, "localhost", ca.cert_pem()).unwrap();
    let mut conn = client.connect().await.unwrap();
    let (status, body) = conn
        .post("/validate", Bytes::from_static(b"garbage"))
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("not JSON"));
    // Plain HTTP on the health port.
    let mut tcp = tokio::net::TcpStream::connect(server.health_addr)
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // A plain-HTTP client on the TLS port gets no answer but does not disturb the server.
    let mut plain = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(b"GET /validate HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert!(!String::from_utf8_lossy(&buf[..n]).contains("200"));
    let mut conn = client.connect().await.unwrap();
    assert_eq!(
        conn.post("/validate", Bytes::from_static(b"{}"))
            .await
            .unwrap()
            .0,
        400
    );
    server.shutdown().await;
}
