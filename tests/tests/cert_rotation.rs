//! Serving-certificate renewal under load, on the real kube-apiserver (1.20): dry-run creates of
//! workspace pods in lumie-dev (the server's own pod template, as the control plane's
//! ServiceAccount) keep going while the webhook's serving certificate is renewed the way
//! cert-manager renews it (a new key) and delivered the way the kubelet updates a mounted Secret
//! (a new `..data` directory swapped in), with the webhook registered like the chart does
//! (`failurePolicy: Fail`).
//!
//! - A CA chain (the chart's certManager mode): the root CA is the `caBundle` and signs the
//!   serving certificate, so a renewal changes only the served pair. Then the root itself renews
//!   with its key (`rotationPolicy: Never`) and cainjector injects it: the apiserver, which kept
//!   its connection across the serving renewal (TLS verifies at the handshake), makes a new one
//!   and verifies the renewed serving certificate against the renewed root. Not one create may
//!   fail.
//! - The contrast, what the chart's self-signed serving certificate did: each renewal is a new
//!   CA, cainjector puts it into `caBundle` at once, and the webhook serves the old pair until the
//!   kubelet updates the volume. Creates fail with an x509 error until the webhook reloads, which
//!   shows the traffic check above can fail.
//!
//! Both tests register the one pair of webhook configurations, so they run one at a time.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use lumie_contract::naming::WorkspaceNames;
use lumie_contract::workspace;
use lumie_server::template::{Template, WorkspaceRef};
use lumie_tests::{Cluster, Identity, admission};
use lumie_webhook::certs::{CertificateAuthority, PemPair, write_private};
use lumie_webhook::server::{RunningServer, ServeConfig, start};
use tokio::sync::watch;

/// The tests share the cluster's one webhook registration.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Creates before the renewal, to see the webhook admitting under the first pair.
const WARM_UP: usize = 50;
/// Creates after each step (the renewed pair loaded, the renewed root injected).
const AFTER_STEP: usize = 100;
/// Failures the contrast waits for before the kubelet "catches up".
const CONTRAST_FAILURES: usize = 20;
/// The traffic never runs longer than this, nor sends more creates.
const TRAFFIC_LIMIT: Duration = Duration::from_secs(120);
const MAX_CREATES: usize = 5_000;
/// How long any one step may take.
const STEP: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The mounted Secret, the webhook, the traffic
// ---------------------------------------------------------------------------------------------

/// A Secret volume as the kubelet's atomic writer keeps it: the files live in a timestamped
/// `..<time>` directory, `..data` links to it, and `tls.crt`/`tls.key` link through `..data`. An
/// update writes a new directory and renames a new `..data` link over the old one, so a reader
/// of the two paths sees the old pair or the new one (or, between its two reads, one of each,
/// which the webhook refuses until they agree).
struct SecretVolume {
    dir: PathBuf,
    generation: u32,
}

impl SecretVolume {
    fn new(dir: &Path, pair: &PemPair) -> Self {
        let mut volume = SecretVolume {
            dir: dir.to_path_buf(),
            generation: 0,
        };
        volume.update(pair);
        for file in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{file}"), dir.join(file)).unwrap();
        }
        volume
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }

    fn update(&mut self, pair: &PemPair) {
        self.generation += 1;
        let name = format!(
            "..{}.{:09}",
            chrono::Utc::now().format("%Y_%m_%d_%H_%M_%S"),
            self.generation
        );
        let data = self.dir.join(&name);
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("tls.crt"), &pair.cert_pem).unwrap();
        write_private(&data.join("tls.key"), &pair.key_pem).unwrap();
        let link = self.dir.join("..data");
        let old = std::fs::read_link(&link).ok();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
    }
}

/// A serving pair for the loopback address the apiserver calls, with a fresh key.
fn serving_pair(ca: &CertificateAuthority) -> PemPair {
    ca.issue_server(&["localhost".into()], &["127.0.0.1".parse().unwrap()], 1)
        .unwrap()
}

struct Webhook {
    server: RunningServer,
    volume: SecretVolume,
    url: String,
    _dir: tempfile::TempDir,
}

/// Starts the webhook on `pair` (built-in policy, certificate files checked every 200 ms),
/// registers it for lumie-dev trusting `bundle_pem`, and waits until the apiserver calls it.
async fn start_webhook(pair: &PemPair, bundle_pem: &str) -> Webhook {
    let dir = tempfile::tempdir().unwrap();
    let volume = SecretVolume::new(dir.path(), pair);
    let any = "127.0.0.1:0".parse().unwrap();
    let mut config = ServeConfig::new(any, any, volume.cert(), volume.key());
    config.cert_poll = Duration::from_millis(200);
    let server = start(config).await.unwrap();
    let url = format!("https://{}", server.addr);
    let admin = Cluster::shared().client().await;
    admission::register_webhooks(&admin, &url, bundle_pem, &[])
        .await
        .unwrap();
    let webhook = Webhook {
        server,
        volume,
        url,
        _dir: dir,
    };
    // The apiserver picks the configuration up from its own watch: until then pods are admitted
    // without the webhook.
    let pods = pods().await;
    let deadline = Instant::now() + STEP;
    while validated(&webhook.server) == 0 {
        assert!(
            Instant::now() < deadline,
            "the apiserver never called the webhook"
        );
        let _ = pods.create(&dry_run(), &workspace_pod(0)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    webhook
}

impl Webhook {
    async fn stop(self) {
        admission::unregister_webhooks(&Cluster::shared().client().await).await;
        self.server.shutdown().await;
    }

    /// Waits until the webhook serves a pair it had not loaded before `reloads`; how long after
    /// `since` it did.
    async fn wait_reloaded(&self, reloads: u64, since: Instant) -> Duration {
        let started = Instant::now();
        // The reloader has no notification to wait on: poll its counter.
        while self.server.certs.reloads() <= reloads {
            assert!(
                started.elapsed() < STEP,
                "the renewed pair was never loaded"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        since.elapsed()
    }
}

/// Admission reviews the webhook answered on `/validate` with "allowed".
fn validated(server: &RunningServer) -> u64 {
    server
        .state
        .metrics()
        .encode()
        .lines()
        .filter(|l| {
            l.starts_with("lumie_webhook_requests_total{")
                && l.contains(r#"endpoint="validate""#)
                && l.contains(r#"decision="allowed""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn pods() -> Api<Pod> {
    let client = Cluster::shared().client_as(Identity::ControlPlane).await;
    Api::namespaced(client, workspace::NAMESPACE)
}

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..Default::default()
    }
}

/// The workspace pod the server creates (dry-run: the apiserver runs admission, stores nothing).
fn workspace_pod(i: usize) -> Pod {
    let names = WorkspaceNames::new("rotation", &format!("w{i}")).unwrap();
    let ws = WorkspaceRef {
        id: "rotation",
        names: &names,
    };
    Template::default().pod(&ws, workspace::NAMESPACE, workspace::IN_CLUSTER_URL)
}

/// What the traffic saw so far.
#[derive(Clone, Debug, Default)]
struct Counts {
    ok: usize,
    failed: usize,
    /// Successes since the last failure.
    ok_in_a_row: usize,
    /// Failures whose error is not a TLS verification failure.
    not_x509: usize,
    /// The first few distinct failure messages.
    errors: Vec<String>,
}

impl Counts {
    fn total(&self) -> usize {
        self.ok + self.failed
    }
}

struct Traffic {
    counts: watch::Receiver<Counts>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Counts>,
}

/// Dry-run creates one after another until stopped (or [`TRAFFIC_LIMIT`] / [`MAX_CREATES`]).
fn start_traffic(pods: Api<Pod>) -> Traffic {
    let (tx, counts) = watch::channel(Counts::default());
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let started = Instant::now();
        for i in 1..=MAX_CREATES {
            if stopped.try_recv().is_ok() || started.elapsed() > TRAFFIC_LIMIT {
                break;
            }
            let result = pods.create(&dry_run(), &workspace_pod(i)).await;
            tx.send_modify(|c| match result {
                Ok(_) => {
                    c.ok += 1;
                    c.ok_in_a_row += 1;
                }
                Err(e) => {
                    let msg = match e {
                        kube::Error::Api(status) => status.message,
                        e => e.to_string(),
                    };
                    c.failed += 1;
                    c.ok_in_a_row = 0;
                    if !msg.contains("x509: certificate signed by unknown authority") {
                        c.not_x509 += 1;
                    }
                    if c.errors.len() < 3 && !c.errors.contains(&msg) {
                        c.errors.push(msg);
                    }
                }
            });
        }
        tx.borrow().clone()
    });
    Traffic { counts, stop, task }
}

impl Traffic {
    async fn wait_for(&mut self, what: &str, f: impl FnMut(&Counts) -> bool) -> Counts {
        let waited = tokio::time::timeout(STEP, self.counts.wait_for(f))
            .await
            .map(|r| r.map(|c| c.clone()));
        match waited {
            Ok(Ok(c)) => c,
            Ok(Err(_)) => panic!("traffic ended before {what}: {:?}", self.counts.borrow()),
            Err(_) => panic!("timed out waiting for {what}: {:?}", self.counts.borrow()),
        }
    }

    async fn finish(self) -> Counts {
        let _ = self.stop.send(());
        self.task.await.unwrap()
    }
}

/// The `caBundle` the apiserver holds for the mutating webhook.
async fn registered_bundle() -> Vec<u8> {
    let admin = Cluster::shared().client().await;
    let config = Api::<MutatingWebhookConfiguration>::all(admin)
        .get(admission::CONFIGURATION_NAME)
        .await
        .unwrap();
    config.webhooks.unwrap()[0]
        .client_config
        .ca_bundle
        .clone()
        .expect("a caBundle")
        .0
}

/// A new TLS connection that trusts exactly `bundle_pem`, as the apiserver's next connection
/// to the webhook does: the served certificate (DER) or why the handshake failed.
async fn handshake_trusting(bundle_pem: &[u8], url: &str) -> Result<Vec<u8>, String> {
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(bundle_pem).unwrap())
        .tls_info(true)
        .build()
        .unwrap();
    let response = client
        .get(format!("{url}/healthz"))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let info = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("TLS info asked for");
    Ok(info
        .peer_certificate()
        .expect("a server certificate")
        .to_vec())
}

/// The root renewed the way cert-manager renews it with `rotationPolicy: Never`: the same name
/// and key in a new certificate (another validity period), so certificates the old one signed
/// verify against it. (Renewed with a new key, the apiserver refuses the serving certificate
/// once it reconnects, with the contrast's x509 error: why the chart's root keeps its key.)
fn renew_keeping_key(root: &CertificateAuthority, common_name: &str) -> String {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let key = KeyPair::from_pem(&root.pem_pair().key_pem).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.self_signed(&key).unwrap().pem()
}

fn der(pem: &str) -> Vec<u8> {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .expect("PEM certificate")
        .1
        .contents
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_under_a_root_ca_fails_no_pod_create() {
    let _one = ONE_AT_A_TIME.lock().await;
    let root = CertificateAuthority::generate("lumie-webhook-ca", 30).unwrap();
    let first = serving_pair(&root);
    let mut hook = start_webhook(&first, root.cert_pem()).await;
    let validated_before = validated(&hook.server);
    let admin = Cluster::shared().client().await;
    let mut traffic = start_traffic(pods().await);

    let warm = traffic
        .wait_for("the first creates", |c| c.total() >= WARM_UP)
        .await;
    // cert-manager renews the serving certificate: a new key, signed by the same root; the
    // kubelet swaps it into the volume; cainjector injects the root again, which is what the
    // bundle already holds.
    let renewed = serving_pair(&root);
    let reloads = hook.server.certs.reloads();
    let updated = Instant::now();
    hook.volume.update(&renewed);
    admission::register_webhooks(&admin, &hook.url, root.cert_pem(), &[])
        .await
        .unwrap();
    let took = hook.wait_reloaded(reloads, updated).await;
    let bundle = registered_bundle().await;
    assert_eq!(bundle, root.cert_pem().as_bytes(), "caBundle is the root");
    let served = handshake_trusting(&bundle, &hook.url)
        .await
        .expect("the renewed certificate verifies against the registered caBundle");
    assert_eq!(served, der(&renewed.cert_pem), "the renewed pair is served");
    assert_ne!(served, der(&first.cert_pem));
    traffic
        .wait_for("creates after the reload", |c| {
            c.total() >= warm.total() + AFTER_STEP
        })
        .await;

    // Years later the root renews with its key and cainjector injects it. A new bundle makes the
    // apiserver connect anew (the contrast below fails on exactly that), and the serving
    // certificate the old root signed verifies against the new one.
    let renewed_root = renew_keeping_key(&root, "lumie-webhook-ca");
    assert_ne!(renewed_root, root.cert_pem());
    admission::register_webhooks(&admin, &hook.url, &renewed_root, &[])
        .await
        .unwrap();
    assert_eq!(registered_bundle().await, renewed_root.as_bytes());
    let served = handshake_trusting(renewed_root.as_bytes(), &hook.url)
        .await
        .expect("the serving certificate verifies against the renewed root");
    assert_eq!(served, der(&renewed.cert_pem));
    let at_root = traffic.counts.borrow().total();
    traffic
        .wait_for("creates after the root renewal", |c| {
            c.total() >= at_root + AFTER_STEP
        })
        .await;

    let counts = traffic.finish().await;
    let validated = validated(&hook.server) - validated_before;
    hook.stop().await;
    eprintln!(
        "root CA chain: {} pod creates ({} before the serving renewal, {} after it with the new pair loaded {took:?} after the volume update, {} after the root renewal), {} failed",
        counts.total(),
        warm.total(),
        at_root - warm.total(),
        counts.total() - at_root,
        counts.failed
    );
    assert_eq!(counts.failed, 0, "{counts:?}");
    assert!(
        validated >= counts.ok as u64,
        "every create went through the webhook: {validated} validated, {} admitted",
        counts.ok
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_to_a_new_ca_fails_creates_until_the_webhook_reloads() {
    let _one = ONE_AT_A_TIME.lock().await;
    let old_ca = CertificateAuthority::generate("lumie-webhook.coder.svc", 30).unwrap();
    let old_pair = serving_pair(&old_ca);
    let mut hook = start_webhook(&old_pair, old_ca.cert_pem()).await;
    let mut traffic = start_traffic(pods().await);

    let warm = traffic
        .wait_for("the first creates", |c| c.total() >= WARM_UP)
        .await;
    assert_eq!(warm.failed, 0, "{warm:?}");
    // A self-signed issuer's renewal is a new CA. cainjector writes it into caBundle at once;
    // the webhook still serves the old pair, as the kubelet has not updated the volume yet.
    let new_ca = CertificateAuthority::generate("lumie-webhook.coder.svc", 30).unwrap();
    let new_pair = serving_pair(&new_ca);
    let admin = Cluster::shared().client().await;
    let injected = Instant::now();
    admission::register_webhooks(&admin, &hook.url, new_ca.cert_pem(), &[])
        .await
        .unwrap();
    let failing = traffic
        .wait_for("creates failing on the new bundle", |c| {
            c.failed >= CONTRAST_FAILURES
        })
        .await;
    let err = handshake_trusting(new_ca.cert_pem().as_bytes(), &hook.url)
        .await
        .expect_err("the old pair does not verify against the new bundle");
    // Same subject as the new CA (a renewal keeps the name), another key: a bad signature.
    assert!(err.contains("InvalidCertificate("), "{err}");

    // The kubelet catches up and the webhook reloads: creates succeed again.
    let reloads = hook.server.certs.reloads();
    hook.volume.update(&new_pair);
    let window = hook.wait_reloaded(reloads, injected).await;
    let recovered = traffic
        .wait_for("creates succeeding again", |c| c.ok_in_a_row >= WARM_UP)
        .await;
    let counts = traffic.finish().await;
    hook.stop().await;
    eprintln!(
        "new CA renewal: {} pod creates, {} failed (the webhook reloaded {window:?} after the bundle change; {} failures seen before the kubelet update), then {} in a row succeeded; first errors: {:?}",
        counts.total(),
        counts.failed,
        failing.failed,
        recovered.ok_in_a_row,
        counts.errors
    );
    assert!(counts.failed >= CONTRAST_FAILURES, "{counts:?}");
    assert_eq!(
        counts.not_x509, 0,
        "every failure is the apiserver refusing the old certificate: {counts:?}"
    );
}
