//! Webhook TLS material: a private CA and serving certificates signed by it.
//!
//! `lumie-webhook certs generate` writes these for a cluster; the test harness uses the same code
//! for the kube-apiserver's and the webhook's certificates, so there is one way to make them.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// Why certificate generation failed.
#[derive(Debug, thiserror::Error)]
#[error("generating {what}: {source}")]
pub struct CertError {
    what: &'static str,
    #[source]
    source: rcgen::Error,
}

fn err(what: &'static str) -> impl FnOnce(rcgen::Error) -> CertError {
    move |source| CertError { what, source }
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, Debug)]
pub struct PemPair {
    /// The certificate (`-----BEGIN CERTIFICATE-----`).
    pub cert_pem: String,
    /// The private key, PKCS#8 (`-----BEGIN PRIVATE KEY-----`). Never log it.
    pub key_pem: String,
}

/// A private certificate authority that issues serving certificates.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    pair: PemPair,
}

impl CertificateAuthority {
    /// A new CA (ECDSA P-256) valid for `days` days from an hour ago.
    pub fn generate(common_name: &str, days: i64) -> Result<Self, CertError> {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(err("CA parameters"))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, days);
        let key = KeyPair::generate().map_err(err("CA key"))?;
        let cert = params.self_signed(&key).map_err(err("CA certificate"))?;
        let pair = PemPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(CertificateAuthority {
            issuer: Issuer::new(params, key),
            pair,
        })
    }

    /// The CA certificate, PEM (what goes, base64-encoded, into a webhook's `caBundle`).
    pub fn cert_pem(&self) -> &str {
        &self.pair.cert_pem
    }

    /// The CA certificate and key.
    pub fn pem_pair(&self) -> &PemPair {
        &self.pair
    }

    /// A serving certificate for `dns_names` and `ips`, valid for `days` days, with a fresh key.
    pub fn issue_server(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        days: i64,
    ) -> Result<PemPair, CertError> {
        let mut params =
            CertificateParams::new(dns_names.to_vec()).map_err(err("serving certificate names"))?;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let cn = dns_names
            .first()
            .cloned()
            .or_else(|| ips.first().map(ToString::to_string))
            .unwrap_or_else(|| "lumie".to_string());
        params.distinguished_name.push(DnType::CommonName, cn);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        set_validity(&mut params, days);
        let key = KeyPair::generate().map_err(err("serving key"))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(err("serving certificate"))?;
        Ok(PemPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The DNS names a Service is reached by from the apiserver: `svc`, `svc.ns`, `svc.ns.svc`, and the cluster-local FQDN.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// What `lumie-webhook certs generate` wrote.
#[derive(Clone, Debug)]
pub struct GeneratedFiles {
    /// `ca.crt`: the CA certificate (PEM).
    pub ca_cert: std::path::PathBuf,
    /// `tls.crt`: the serving certificate (PEM).
    pub tls_cert: std::path::PathBuf,
    /// `tls.key`: the serving key (PEM, mode 0600).
    pub tls_key: std::path::PathBuf,
    /// `ca-bundle.b64`: the CA certificate base64-encoded, for a webhook's `caBundle`.
    pub ca_bundle: std::path::PathBuf,
}

/// Generates a CA and a serving certificate for `service.namespace` (plus `ips`) and writes
/// `ca.crt`, `tls.crt`, `tls.key` and `ca-bundle.b64` into `out` (created if missing).
pub fn generate_files(
    service: &str,
    namespace: &str,
    ips: &[IpAddr],
    days: i64,
    out: &std::path::Path,
) -> crate::Result<GeneratedFiles> {
    use crate::Error;
    use base64::Engine as _;
    let ca = CertificateAuthority::generate(&format!("{service}.{namespace} webhook CA"), days)?;
    let leaf = ca.issue_server(&service_dns_names(service, namespace), ips, days)?;
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    let files = GeneratedFiles {
        ca_cert: out.join("ca.crt"),
        tls_cert: out.join("tls.crt"),
        tls_key: out.join("tls.key"),
        ca_bundle: out.join("ca-bundle.b64"),
    };
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca.cert_pem());
    for (path, contents) in [
        (&files.ca_cert, ca.cert_pem()),
        (&files.tls_cert, leaf.cert_pem.as_str()),
        (&files.ca_bundle, bundle.as_str()),
    ] {
        std::fs::write(path, contents).map_err(Error::io(path))?;
    }
    write_private(&files.tls_key, &leaf.key_pem)?;
    Ok(files)
}

/// Writes a private key readable by the owner only.
pub fn write_private(path: &std::path::Path, contents: &str) -> crate::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(crate::Error::io(path))?;
    f.write_all(contents.as_bytes())
        .map_err(crate::Error::io(path))
}

fn set_validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_a_serving_certificate_signed_by_the_ca() {
        let ca = CertificateAuthority::generate("lumie test CA", 1).unwrap();
        let names = service_dns_names("lumie-webhook", "coder");
        assert_eq!(names[2], "lumie-webhook.coder.svc");
        let leaf = ca
            .issue_server(&names, &["127.0.0.1".parse().unwrap()], 1)
            .unwrap();
        assert!(leaf.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(leaf.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_ne!(leaf.cert_pem, ca.cert_pem());
    }

    #[test]
    fn generate_files_writes_a_loadable_pair_and_bundle() {
        use base64::Engine as _;
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let f = generate_files("lumie-webhook", "coder", &[], 1, dir.path()).unwrap();
        let ca = std::fs::read_to_string(&f.ca_cert).unwrap();
        let bundle = std::fs::read_to_string(&f.ca_bundle).unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(bundle.trim())
            .unwrap();
        assert_eq!(decoded, ca.as_bytes());
        let mode = std::fs::metadata(&f.tls_key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let pair = crate::tls::certified_key(
            &std::fs::read(&f.tls_cert).unwrap(),
            &std::fs::read(&f.tls_key).unwrap(),
        )
        .unwrap();
        assert_eq!(pair.cert.len(), 1);
    }
}
