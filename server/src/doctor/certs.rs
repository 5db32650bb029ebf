//! Whether a webhook configuration's `caBundle` verifies the serving certificate in the
//! webhook's TLS Secret: the same judgement the apiserver makes when it calls the webhook, done
//! offline (signature chain, validity period, the name the apiserver dials).
//!
//! Pure over PEM bytes and a clock, so it is table-tested with generated certificates.

use std::net::IpAddr;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;
use x509_parser::time::ASN1Time;

/// Fewer days left than this is a warning: rotation should have happened by now.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// A serving certificate the bundle verifies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trusted {
    /// Subject of the bundle certificate that signed the chain.
    pub signed_by: String,
    /// Whole days until the serving certificate expires.
    pub days_left: i64,
}

fn pems(bytes: &[u8], what: &str) -> Result<Vec<Pem>, String> {
    let mut out = Vec::new();
    for pem in Pem::iter_from_buffer(bytes) {
        let pem = pem.map_err(|e| format!("{what} is not valid PEM: {e}"))?;
        if pem.label == "CERTIFICATE" {
            out.push(pem);
        }
    }
    if out.is_empty() {
        return Err(format!("{what} holds no PEM certificate"));
    }
    Ok(out)
}

fn parse<'a>(pems: &'a [Pem], what: &str) -> Result<Vec<X509Certificate<'a>>, String> {
    pems.iter()
        .map(|p| {
            p.parse_x509()
                .map_err(|e| format!("{what} holds an unreadable certificate: {e}"))
        })
        .collect()
}

/// The names (DNS and IP) a certificate is valid for.
fn names(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => Some(IpAddr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
                16 => Some(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Whether a SAN entry covers `host` (exact, or a `*.` wildcard for one label).
fn name_matches(san: &str, host: &str) -> bool {
    let san = san.trim_end_matches('.').to_ascii_lowercase();
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if san == host {
        return true;
    }
    match (san.strip_prefix("*."), host.split_once('.')) {
        (Some(suffix), Some((_, rest))) => suffix == rest,
        _ => false,
    }
}

/// Checks that `chain_pem` (the Secret's `tls.crt`: the serving certificate, then any
/// intermediates) is signed — directly or through those intermediates — by a certificate in
/// `bundle_pem`, is valid at `now_unix`, and names `host` (what the apiserver dials: the
/// Service's `<name>.<namespace>.svc`, or the URL's host).
pub fn verify_serving_cert(
    bundle_pem: &[u8],
    chain_pem: &[u8],
    host: &str,
    now_unix: i64,
) -> Result<Trusted, String> {
    let bundle_pems = pems(bundle_pem, "the caBundle")?;
    let bundle = parse(&bundle_pems, "the caBundle")?;
    let chain_pems = pems(chain_pem, "tls.crt")?;
    let chain = parse(&chain_pems, "tls.crt")?;
    let leaf = &chain[0];

    // Walk up: the current certificate is signed by a bundle certificate (done) or by one of
    // the intermediates the Secret carries (continue from it). Bounded by the chain length.
    let mut current = leaf;
    let mut signed_by = None;
    for _ in 0..chain.len() {
        if let Some(ca) = bundle
            .iter()
            .find(|ca| current.verify_signature(Some(ca.public_key())).is_ok())
        {
            signed_by = Some(ca.subject().to_string());
            break;
        }
        match chain[1..]
            .iter()
            .find(|i| current.verify_signature(Some(i.public_key())).is_ok())
        {
            Some(next) if !std::ptr::eq(next, current) => current = next,
            _ => break,
        }
    }
    let Some(signed_by) = signed_by else {
        let subjects: Vec<String> = bundle.iter().map(|c| c.subject().to_string()).collect();
        return Err(format!(
            "tls.crt ({}, issued by {}) is not signed by the caBundle ({})",
            display_name(leaf),
            leaf.issuer(),
            subjects.join("; ")
        ));
    };

    let now = ASN1Time::from_timestamp(now_unix).map_err(|e| format!("clock: {e}"))?;
    let validity = leaf.validity();
    if now < validity.not_before {
        return Err(format!(
            "tls.crt is not valid before {} (check the clock of whoever issued it)",
            validity.not_before
        ));
    }
    if now > validity.not_after {
        return Err(format!("tls.crt expired on {}", validity.not_after));
    }

    let names = names(leaf);
    if !names.iter().any(|n| name_matches(n, host)) {
        return Err(format!(
            "tls.crt is for [{}] but the apiserver calls {host}",
            names.join(", ")
        ));
    }
    Ok(Trusted {
        signed_by,
        days_left: (validity.not_after.timestamp() - now_unix) / 86_400,
    })
}

fn display_name(cert: &X509Certificate<'_>) -> String {
    let subject = cert.subject().to_string();
    if subject.is_empty() {
        "no subject".to_string()
    } else {
        subject
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType,
    };

    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
        params: CertificateParams,
    }

    fn ca(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.clone().self_signed(&key).unwrap();
        Ca { cert, key, params }
    }

    fn intermediate(parent: &Ca, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let key = KeyPair::generate().unwrap();
        let issuer = rcgen::Issuer::from_params(&parent.params, &parent.key);
        let cert = params.clone().signed_by(&key, &issuer).unwrap();
        Ca { cert, key, params }
    }

    fn leaf(issuer: &Ca, dns: &[&str], days: (i64, i64)) -> String {
        let mut params =
            CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params
            .distinguished_name
            .push(DnType::CommonName, "lumie-webhook.coder.svc");
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(days.0);
        params.not_after = now + time::Duration::days(days.1);
        let key = KeyPair::generate().unwrap();
        let i = rcgen::Issuer::from_params(&issuer.params, &issuer.key);
        params.signed_by(&key, &i).unwrap().pem()
    }

    const SVC: &str = "lumie-webhook.coder.svc";

    #[test]
    fn verdict_table() {
        let root = ca("lumie-webhook-ca");
        let other = ca("someone else");
        let inter = intermediate(&root, "intermediate");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let good = leaf(&root, &[SVC, "lumie-webhook"], (-1, 365));
        let via_inter = format!("{}{}", leaf(&inter, &[SVC], (-1, 30)), inter.cert.pem());
        let both = format!("{}{}", other.cert.pem(), root.cert.pem());
        type Case = (
            &'static str,
            String,
            String,
            &'static str,
            Result<(), &'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "signed by the bundle",
                root.cert.pem(),
                good.clone(),
                SVC,
                Ok(()),
            ),
            (
                "bundle of two, second signs",
                both,
                good.clone(),
                SVC,
                Ok(()),
            ),
            (
                "through an intermediate in tls.crt",
                root.cert.pem(),
                via_inter,
                SVC,
                Ok(()),
            ),
            (
                "IP SAN for a loopback url",
                root.cert.pem(),
                good.clone(),
                "127.0.0.1",
                Ok(()),
            ),
            (
                "wrong CA bundle",
                other.cert.pem(),
                good.clone(),
                SVC,
                Err("is not signed by the caBundle (CN=someone else)"),
            ),
            (
                "intermediate missing from tls.crt",
                root.cert.pem(),
                leaf(&inter, &[SVC], (-1, 30)),
                SVC,
                Err("is not signed by the caBundle"),
            ),
            (
                "expired",
                root.cert.pem(),
                leaf(&root, &[SVC], (-30, -1)),
                SVC,
                Err("tls.crt expired on"),
            ),
            (
                "not yet valid",
                root.cert.pem(),
                leaf(&root, &[SVC], (2, 30)),
                SVC,
                Err("not valid before"),
            ),
            (
                "wrong name",
                root.cert.pem(),
                good.clone(),
                "other.coder.svc",
                Err("but the apiserver calls other.coder.svc"),
            ),
            (
                "empty bundle",
                String::new(),
                good.clone(),
                SVC,
                Err("caBundle holds no PEM certificate"),
            ),
            (
                "garbage bundle",
                "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n".into(),
                good.clone(),
                SVC,
                Err("the caBundle is not valid PEM"),
            ),
            (
                "empty tls.crt",
                root.cert.pem(),
                String::new(),
                SVC,
                Err("tls.crt holds no PEM"),
            ),
        ];
        for (name, bundle, chain, host, want) in cases {
            let got = verify_serving_cert(bundle.as_bytes(), chain.as_bytes(), host, now);
            match (got, want) {
                (Ok(t), Ok(())) => assert!(t.days_left >= 29, "{name}: {t:?}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{name}: {e:?} lacks {w:?}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn trusted_names_the_signer_and_days_left() {
        let root = ca("lumie-webhook-ca");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let t = verify_serving_cert(
            root.cert.pem().as_bytes(),
            leaf(&root, &[SVC], (-1, 10)).as_bytes(),
            SVC,
            now,
        )
        .unwrap();
        assert_eq!(t.signed_by, "CN=lumie-webhook-ca");
        assert!((9..=10).contains(&t.days_left), "{t:?}");
    }

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_matches("*.coder.svc", "lumie-webhook.coder.svc"));
        assert!(name_matches(
            "Lumie-Webhook.coder.svc.",
            "lumie-webhook.coder.svc"
        ));
        assert!(!name_matches("*.coder.svc", "a.b.coder.svc"));
        assert!(!name_matches("*.coder.svc", "coder.svc"));
        assert!(!name_matches("lumie-webhook", "lumie-webhook.coder.svc"));
    }
}
