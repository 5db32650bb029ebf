//! A minimal HTTPS client for the webhook's own endpoints: what the kube-apiserver does (TLS
//! verified against the `caBundle`, HTTP/1.1 keep-alive, POST an AdmissionReview). Used by the
//! benchmark and by tests that exercise the real TLS stack, including certificate rotation.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error::{Error, Result};

/// Connects to one webhook address, trusting one CA.
#[derive(Clone)]
pub struct WebhookClient {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    connector: TlsConnector,
}

impl std::fmt::Debug for WebhookClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookClient")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// One open keep-alive connection.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    /// The certificate the server presented.
    pub peer_certificate: CertificateDer<'static>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

impl WebhookClient {
    /// A client for `addr`, verifying the server as `server_name` against `ca_pem`.
    pub fn new(addr: SocketAddr, server_name: &str, ca_pem: &str) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| Error::Tls(format!("CA PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| Error::Tls(format!("CA certificate: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Every connection does a full handshake and sees the certificate served now, like the
        // apiserver's client (no session cache).
        config.resumption = rustls::client::Resumption::disabled();
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| Error::Tls(format!("server name: {e}")))?;
        Ok(WebhookClient {
            addr,
            server_name,
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// Opens a new TLS connection (full handshake).
    pub async fn connect(&self) -> Result<Connection> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| Error::Serve(format!("connect {}: {e}", self.addr)))?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| Error::Tls(format!("handshake: {e}")))?;
        let peer_certificate = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
            .ok_or_else(|| Error::Tls("no peer certificate".into()))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| Error::Serve(format!("HTTP handshake: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Connection {
            sender,
            peer_certificate,
        })
    }
}

impl Connection {
    /// POSTs `body` (JSON) to `path`; returns the status and body.
    pub async fn post(&mut self, path: &str, body: Bytes) -> Result<(u16, Bytes)> {
        self.sender
            .ready()
            .await
            .map_err(|e| Error::Serve(format!("connection not ready: {e}")))?;
        let req = hyper::Request::post(path)
            .header(hyper::header::HOST, "lumie-webhook")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| Error::Serve(e.to_string()))?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| Error::Serve(format!("request: {e}")))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::Serve(format!("response body: {e}")))?
            .to_bytes();
        Ok((status, body))
    }
}
