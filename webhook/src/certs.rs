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
}
