//! One leader among three real `lumie-server` processes on one real PostgreSQL (issue 15), on
//! the harness: the real kube-apiserver with the real lumie-webhook (in-process, over TLS), the
//! real kube-scheduler and the node simulator as kubelet, in namespace `lumie-dev`, the Lease in
//! `coder`.
//!
//! Until ten kills have hit builds in flight: three workspaces are created through a follower
//! (the leader finds them by its database poll), the leader is SIGKILLed while their builds run,
//! and the test measures how long until another replica holds the Lease and until the
//! interrupted builds are claimed again; the killed replica is then started again on its address
//! (its workspaces' agents call back there), so there are always at least two.
//! In the end every build ended once, `succeeded`, and every workspace has exactly one pod
//! (Running) and one home PVC: nothing duplicated, nothing orphaned.
//!
//! The lease is shortened by flag (`LUMIE_LEASE_DURATION_SECS=3`, `LUMIE_LEASE_RENEW_SECS=1`;
//! the build claims last as long) so ten hand-overs fit well within two minutes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::Api;
use kube::api::ListParams;
use lumie_contract::{labels, workspace};
use lumie_server::config::DatabaseConfig;
use lumie_server::db::Db;
use lumie_server::model::BuildStatus;
use lumie_tests::admission::Policies;
use lumie_tests::control_plane::Echo;
use lumie_tests::stack::{self, Postgres, WorkspaceClient};
use lumie_tests::workspace_pods::{self, StandInAgent};
use lumie_tests::{Cluster, admission, control_plane};
use serde_json::{Value, json};

const LEASE: &str = "leader-e2e";
const REPLICAS: usize = 3;
const ROUNDS: usize = 10;
const PER_ROUND: usize = 3;
/// How often a Lease holder or a build row is looked at: hand-overs are timed to it.
const POLL: Duration = Duration::from_millis(20);

/// The webhook (guarding `lumie-dev`), the overlay's Service and the stand-in agent, once per
/// process.
fn start_webhook() {
    static STARTED: OnceLock<SocketAddr> = OnceLock::new();
    STARTED.get_or_init(|| {
        let cluster = Cluster::shared();
        cluster.set_pod_action(Arc::new(StandInAgent::HEALTHY));
        control_plane::start_shared(move || async move {
            let dir = tempfile::tempdir().unwrap().keep();
            let policies = Policies::File(&[workspace::NAMESPACE]);
            let webhook = admission::start_webhook(cluster, &dir, policies)
                .await
                .unwrap();
            (webhook.addr, webhook)
        })
    });
}

/// One replica slot: its address stays, its process is replaced on every restart.
struct Replica {
    addr: SocketAddr,
    /// `POD_NAME` of the current process (its Lease identity starts with it).
    pod_name: String,
    child: Option<std::process::Child>,
}

impl Replica {
    fn spawn(slot: usize, generation: usize, addr: SocketAddr, env: &[(&str, String)]) -> Self {
        let pod_name = format!("replica{slot}-gen{generation}");
        let child = control_plane::spawn_until_listening(
            control_plane::server_command(Cluster::shared(), addr, true)
                .unwrap()
                .env("POD_NAME", &pod_name)
                .envs(env.iter().map(|(k, v)| (*k, v.as_str()))),
            Stdio::null(),
            Echo {
                label: pod_name.clone(),
                // What concerns leadership and builds; the rest would drown it.
                filter: |line| {
                    line.contains("lead")
                        || line.contains("build")
                        || line.contains("lease")
                        || line.contains("ERROR")
                },
                keep: None,
            },
        )
        .unwrap();
        Replica {
            addr,
            pod_name,
            child: Some(child),
        }
    }

    /// SIGKILL: no shutdown hook runs, the Lease is not handed back.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn is(&self, identity: &str) -> bool {
        self.child.is_some()
            && identity
                .strip_prefix(&self.pod_name)
                .is_some_and(|rest| rest.starts_with('-'))
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn call(
    http: &reqwest::Client,
    addr: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let api = WorkspaceClient {
        url: format!("http://{addr}"),
        token: token.to_string(),
        http: http.clone(),
    };
    api.call(method, path, body).await
}

/// The Lease holder, when there is one.
async fn holder(leases: &Api<Lease>) -> Option<String> {
    holder_of(leases, LEASE).await
}

/// The holder of Lease `name`, when there is one.
async fn holder_of(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

fn stats(name: &str, v: &[Duration]) -> String {
    let mut s: Vec<f64> = v.iter().map(|d| d.as_secs_f64()).collect();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mean = s.iter().sum::<f64>() / s.len() as f64;
    format!(
        "{name}: min {:.2}s, median {:.2}s, mean {mean:.2}s, max {:.2}s",
        s[0],
        s[s.len() / 2],
        s[s.len() - 1]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_mid_build_ten_times_hands_over_and_ends_every_build_once() {
    let started = Instant::now();
    start_webhook();
    let admin = Cluster::shared().client().await;
    workspace_pods::install_stable_service(&admin)
        .await
        .unwrap();
    let leases: Api<Lease> = Api::namespaced(admin.clone(), workspace::CONTROL_PLANE_NAMESPACE);
    let pg = Postgres::start().unwrap().url;
    let database = DatabaseConfig::Postgres(pg.clone());
    let db = Db::connect(&database).await.unwrap();
    let (_, token) = db.bootstrap_admin("admin").await.unwrap().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("CODER_PG_CONNECTION_URL", pg.clone()),
        ("LUMIE_DATA_DIR", dir.path().display().to_string()),
        ("LUMIE_LEASE_NAME", LEASE.to_string()),
        ("LUMIE_LEASE_DURATION_SECS", "3".to_string()),
        ("LUMIE_LEASE_RENEW_SECS", "1".to_string()),
    ];
    let mut replicas: Vec<Replica> = (0..REPLICAS)
        .map(|slot| {
            let addr = control_plane::free_loopback_addr().unwrap();
            Replica::spawn(slot, 0, addr, &env)
        })
        .collect();
    let http = reqwest::Client::new();
    let (s, v) = call(
        &http,
        replicas[0].addr,
        &token,
        "POST",
        "/api/v2/users",
        Some(json!({ "username": "erin" })),
    )
    .await;
    assert_eq!(s, 201, "{v}");

    let (mut to_lease, mut to_resume) = (vec![], vec![]);
    let mut ids = vec![];
    let mut generation = [0; REPLICAS];
    let mut mid_build = 0;
    // Until ten kills have hit builds in flight (a kill that finds the round's builds already
    // done is counted, not credited), at most five rounds more.
    let mut round = 0;
    while mid_build < ROUNDS {
        assert!(
            round < ROUNDS + 5,
            "only {mid_build} of {round} kills hit builds in flight"
        );
        let leader = stack::eventually(
            "a leader among the live replicas",
            Duration::from_secs(20),
            POLL,
            || async {
                let h = holder(&leases).await?;
                replicas.iter().position(|r| r.is(&h)).map(|slot| (slot, h))
            },
        )
        .await;
        let (slot, leader_id) = leader;
        // Three workspaces through a follower: the leader finds them at its next poll (no
        // cross-replica signal yet) and claims them in one batch, so they run at once.
        let via = (slot + 1) % REPLICAS;
        let mut round_ids = vec![];
        for i in 0..PER_ROUND {
            let (s, v) = call(
                &http,
                replicas[via].addr,
                &token,
                "POST",
                "/api/v2/users/erin/workspaces",
                Some(json!({ "name": format!("r{round}w{i}") })),
            )
            .await;
            assert_eq!(s, 201, "{v}");
            round_ids.push(v["id"].as_str().unwrap().to_string());
        }
        let builds: Vec<String> = {
            let mut b = vec![];
            for id in &round_ids {
                b.push(db.latest_build(id).await.unwrap().unwrap().id);
            }
            b
        };
        // Killed the moment one is seen running (polled tightly: a build takes a few hundred
        // ms); when all ended before one was seen, the kill finds none in flight and the final
        // count says so.
        let deadline = Instant::now() + Duration::from_secs(10);
        'running: loop {
            let mut ended = 0;
            for b in &builds {
                let status = db.build(b).await.unwrap().unwrap().status;
                if status == BuildStatus::Running {
                    break 'running;
                }
                ended += usize::from(!status.is_active());
            }
            if ended == builds.len() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no build of round {round} started"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        replicas[slot].kill();
        let killed = Instant::now();
        let mut interrupted = vec![];
        for b in &builds {
            if db.build(b).await.unwrap().unwrap().status.is_active() {
                interrupted.push(b.clone());
            }
        }
        if !interrupted.is_empty() {
            mid_build += 1;
        }
        let new_leader = stack::eventually(
            "another replica holding the Lease",
            Duration::from_secs(15),
            POLL,
            || async {
                holder(&leases)
                    .await
                    .filter(|h| *h != leader_id && replicas.iter().any(|r| r.is(h)))
            },
        )
        .await;
        to_lease.push(killed.elapsed());
        if !interrupted.is_empty() {
            stack::eventually(
                "the interrupted builds claimed by the new leader or ended",
                Duration::from_secs(15),
                POLL,
                || async {
                    for b in &interrupted {
                        let build = db.build(b).await.unwrap().unwrap();
                        let claim = db.build_claim(b).await.unwrap();
                        let resumed = !build.status.is_active()
                            || claim.is_some_and(|(holder, _)| holder == new_leader);
                        if !resumed {
                            return None;
                        }
                    }
                    Some(())
                },
            )
            .await;
            to_resume.push(killed.elapsed());
        }
        eprintln!(
            "round {round}: killed {leader_id} with {} of {PER_ROUND} builds in flight; {new_leader} took the Lease after {:?}",
            interrupted.len(),
            to_lease.last().unwrap()
        );
        // Back to three before the next round, on the same address.
        generation[slot] += 1;
        let addr = replicas[slot].addr;
        replicas[slot] = Replica::spawn(slot, generation[slot], addr, &env);
        stack::eventually(
            "the round's builds ended",
            Duration::from_secs(30),
            POLL,
            || async {
                for b in &builds {
                    if db.build(b).await.unwrap()?.status.is_active() {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await;
        ids.extend(round_ids);
        round += 1;
    }

    // Every build ended once and well; one pod (Running) and one PVC per workspace, nothing else.
    for id in &ids {
        let builds = db.list_builds(id).await.unwrap();
        assert_eq!(builds.len(), 1, "workspace {id}: one build");
        assert_eq!(
            (builds[0].status, builds[0].error.clone()),
            (BuildStatus::Succeeded, None),
            "workspace {id}"
        );
        assert!(builds[0].completed_at.is_some());
    }
    assert!(
        db.active_builds().await.unwrap().is_empty(),
        "no build stuck"
    );
    let want: BTreeMap<Option<String>, usize> =
        ids.iter().map(|id| (Some(id.clone()), 1)).collect();
    let lp = ListParams::default().labels(&labels::managed_selector());
    let pods_api = Api::<Pod>::namespaced(admin.clone(), workspace::NAMESPACE);
    let pvcs = Api::<PersistentVolumeClaim>::namespaced(admin.clone(), workspace::NAMESPACE)
        .list(&lp)
        .await
        .unwrap()
        .items;
    assert_eq!(
        stack::count_by_workspace(&pvcs),
        want,
        "one home PVC per workspace, nothing else"
    );
    let pods = stack::eventually(
        "every workspace pod Running",
        Duration::from_secs(30),
        POLL,
        || async {
            let pods = pods_api.list(&lp).await.unwrap().items;
            pods.iter()
                .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .then_some(pods)
        },
    )
    .await;
    assert_eq!(
        stack::count_by_workspace(&pods),
        want,
        "one pod per workspace, nothing else"
    );
    assert!(
        pods.iter().all(|p| p.metadata.deletion_timestamp.is_none()),
        "no pod being deleted"
    );

    // Metrics: exactly one live replica says it leads (the Lease holder), and hand-overs were
    // counted by those that took over.
    let holder_now = holder(&leases).await.expect("a leader at the end");
    let (mut leading, mut handovers) = (vec![], 0);
    for r in &replicas {
        let text = http
            .get(format!("http://{}/metrics", r.addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for line in text.lines() {
            if line.starts_with("lumie_leader{") && line.ends_with(" 1") {
                leading.push(line.to_string());
            }
            if let Some(n) = line.strip_prefix("lumie_leader_handovers_total ") {
                handovers += n.trim().parse::<u64>().unwrap();
            }
        }
    }
    assert_eq!(leading.len(), 1, "one replica leads: {leading:?}");
    assert!(
        leading[0].contains(&holder_now),
        "{leading:?} vs {holder_now}"
    );
    assert!(handovers >= 1, "the live replicas counted their take-overs");

    eprintln!(
        "hand-over over {round} kills ({mid_build} with builds in flight), lease {}s / renew {}s:",
        3, 1
    );
    eprintln!(
        "  {}",
        stats("kill -> another replica holds the Lease", &to_lease)
    );
    if !to_resume.is_empty() {
        eprintln!(
            "  {}",
            stats("kill -> interrupted builds resumed", &to_resume)
        );
    }
    eprintln!("  whole test: {:?}", started.elapsed());
    assert_eq!(mid_build, ROUNDS);
    assert!(
        to_lease.iter().all(|d| *d < Duration::from_secs(3 + 3)),
        "hand-over within the lease duration plus a few seconds: {to_lease:?}"
    );
    db.close().await;
}

/// SIGTERM (a rolling restart, a drain): the leader hands the Lease back on its way out, so the
/// other replica takes over at its next retry instead of when the lease expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_gracefully_hands_over_within_a_renew_interval() {
    const TERM_LEASE: &str = "leader-e2e-term";
    let admin = Cluster::shared().client().await;
    let leases: Api<Lease> = Api::namespaced(admin, workspace::CONTROL_PLANE_NAMESPACE);
    let pg = Postgres::start().unwrap().url;
    let db = Db::connect(&DatabaseConfig::Postgres(pg.clone()))
        .await
        .unwrap();
    db.bootstrap_admin("admin").await.unwrap();
    db.close().await;
    let dir = tempfile::tempdir().unwrap();
    // A long lease: a hand-over within it can only come from the release.
    let env = [
        ("CODER_PG_CONNECTION_URL", pg),
        ("LUMIE_DATA_DIR", dir.path().display().to_string()),
        ("LUMIE_LEASE_NAME", TERM_LEASE.to_string()),
        ("LUMIE_LEASE_DURATION_SECS", "30".to_string()),
        ("LUMIE_LEASE_RENEW_SECS", "1".to_string()),
    ];
    let mut replicas: Vec<Replica> = (0..2)
        .map(|slot| {
            Replica::spawn(
                slot + 10,
                0,
                control_plane::free_loopback_addr().unwrap(),
                &env,
            )
        })
        .collect();
    let (slot, old) = stack::eventually("a leader", Duration::from_secs(20), POLL, || async {
        let h = holder_of(&leases, TERM_LEASE).await?;
        replicas.iter().position(|r| r.is(&h)).map(|slot| (slot, h))
    })
    .await;
    let mut child = replicas[slot].child.take().unwrap();
    let stopped = Instant::now();
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let other = &replicas[1 - slot];
    let new = stack::eventually(
        "the other replica holding the Lease",
        Duration::from_secs(10),
        POLL,
        || async { holder_of(&leases, TERM_LEASE).await.filter(|h| other.is(h)) },
    )
    .await;
    let took = stopped.elapsed();
    let status = child.wait().unwrap();
    eprintln!("graceful hand-over {old} -> {new}: {took:?} (lease 30s, renew 1s); exit {status}");
    assert!(status.success(), "a clean exit on SIGTERM: {status}");
    assert!(
        took < Duration::from_secs(5),
        "handed over within a few renew intervals, not the 30s lease: {took:?}"
    );
}

/// A PostgreSQL server whose ServiceAccount may not use Leases where the election is asked to
/// run stops at start-up with one line naming the grant, rather than never leading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_lease_grant_stops_the_start_naming_it() {
    let pg = Postgres::start().unwrap().url;
    let dir = tempfile::tempdir().unwrap();
    let mut config = control_plane::server_config(dir.path()).unwrap();
    config.database = DatabaseConfig::Postgres(pg);
    // The harness grants Leases in `coder` only.
    config.leader.namespace = workspace::NAMESPACE.into();
    let err = match control_plane::start_server(Cluster::shared(), config).await {
        Ok(_) => panic!("started without the Lease grant"),
        Err(e) => e.to_string(),
    };
    for needle in [
        "leases",
        "lumie-dev",
        "get, create, update",
        "lumie-coder-leader",
    ] {
        assert!(err.contains(needle), "{needle:?} in: {err}");
    }
}
