//! Build claims (issue 15) against SQLite and a real PostgreSQL server: the SQL carries out the
//! rule `lumie_server::builds::claimable` states, and two replicas racing for the same builds on
//! PostgreSQL never both get one, nor both record its end.

mod common;

use std::collections::BTreeSet;

use lumie_server::builds::claimable;
use lumie_server::config::DatabaseConfig;
use lumie_server::db::Db;
use lumie_server::model::{BuildStatus, now_ms};

async fn workspaces_with_pending_builds(db: &Db, n: usize) -> Vec<String> {
    let (admin, _) = db.bootstrap_admin("admin").await.unwrap().unwrap();
    let mut ids = vec![];
    for i in 0..n {
        let c = db
            .create_workspace(&admin, &format!("w{i}"), &format!("coder-admin-w{i}"), None)
            .await
            .unwrap();
        ids.push(c.build.id);
    }
    ids
}

fn ids(builds: &[lumie_server::model::BuildRecord]) -> BTreeSet<String> {
    builds.iter().map(|b| b.id.clone()).collect()
}

/// Each step checks the database against the pure rule as well as against the expected ids.
async fn claims_follow_the_rule(db: Db) {
    let all: BTreeSet<String> = workspaces_with_pending_builds(&db, 3)
        .await
        .into_iter()
        .collect();
    let t0 = now_ms();
    let ttl = 10_000;
    let a = db.claim_builds("a", t0, t0 + ttl, 10).await.unwrap();
    assert_eq!(ids(&a), all, "free builds go to the first claimant");
    for b in &a {
        assert!(claimable(b.status, None, None, t0));
        assert_eq!(
            db.build_claim(&b.id).await.unwrap(),
            Some(("a".into(), t0 + ttl))
        );
    }
    // B is refused while A's claims live, and the rule says the same.
    assert!(
        db.claim_builds("b", t0 + 1, t0 + ttl, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(!claimable(
        BuildStatus::Pending,
        Some("a"),
        Some(t0 + ttl),
        t0 + 1
    ));
    // Nor does A get its own live claims again (they are in flight there)...
    assert!(
        db.claim_builds("a", t0 + 1, t0 + ttl, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // ... until it releases them (a restarted single replica, a new term), then it does.
    assert_eq!(db.release_build_claims("a").await.unwrap(), 3);
    assert_eq!(db.release_build_claims("b").await.unwrap(), 0);
    // Limits are honoured, oldest first.
    let two = db.claim_builds("a", t0 + 2, t0 + ttl, 2).await.unwrap();
    assert_eq!(two.len(), 2);
    let rest = db.claim_builds("a", t0 + 2, t0 + ttl, 10).await.unwrap();
    assert_eq!(rest.len(), 1, "the rest");
    assert!(two.iter().all(|b| b.created_at <= rest[0].created_at));
    // A starts one and renews it.
    let first = a[0].id.clone();
    assert!(db.start_claimed_build(&first, "a").await.unwrap());
    assert!(
        !db.start_claimed_build(&first, "b").await.unwrap(),
        "not B's"
    );
    assert!(db.renew_build_claim(&first, "a", t0 + ttl).await.unwrap());
    // Once A's claims expire, B takes all of them (running or pending)...
    assert!(claimable(
        BuildStatus::Running,
        Some("a"),
        Some(t0 + ttl),
        t0 + ttl
    ));
    let b = db
        .claim_builds("b", t0 + ttl, t0 + 2 * ttl, 10)
        .await
        .unwrap();
    assert_eq!(ids(&b), all);
    // ... and A can neither renew, nor start, nor finish them any more.
    assert!(
        !db.renew_build_claim(&first, "a", t0 + 3 * ttl)
            .await
            .unwrap()
    );
    assert!(
        !db.finish_claimed_build(&first, "a", BuildStatus::Failed, Some("late"))
            .await
            .unwrap()
    );
    assert!(db.start_claimed_build(&first, "b").await.unwrap());
    assert!(
        db.finish_claimed_build(&first, "b", BuildStatus::Succeeded, None)
            .await
            .unwrap()
    );
    assert!(
        !db.finish_claimed_build(&first, "b", BuildStatus::Failed, None)
            .await
            .unwrap(),
        "a build ends once"
    );
    let ended = db.build(&first).await.unwrap().unwrap();
    assert_eq!((ended.status, ended.error), (BuildStatus::Succeeded, None));
    // A finished build is never claimable again, whoever asks and whenever.
    let later = db
        .claim_builds("c", t0 + 10 * ttl, t0 + 11 * ttl, 10)
        .await
        .unwrap();
    assert!(!ids(&later).contains(&first));
    assert_eq!(later.len(), 2);
    assert!(!claimable(BuildStatus::Succeeded, None, None, t0));
}

#[tokio::test]
async fn sqlite_claims_follow_the_rule() {
    let (db, _dir) = common::sqlite_db().await;
    claims_follow_the_rule(db).await;
}

#[tokio::test]
async fn postgres_claims_follow_the_rule() {
    claims_follow_the_rule(common::pg_db().await).await;
}

/// One replica's executor reduced to its database steps: claim a batch, start and finish each
/// build it got. Returns the builds it claimed and those whose end it recorded.
async fn race(db: Db, me: &'static str) -> (Vec<String>, Vec<String>) {
    let (mut claimed, mut ended) = (vec![], vec![]);
    loop {
        let now = now_ms();
        let batch = db.claim_builds(me, now, now + 60_000, 3).await.unwrap();
        if batch.is_empty() {
            return (claimed, ended);
        }
        for b in batch {
            claimed.push(b.id.clone());
            if db.start_claimed_build(&b.id, me).await.unwrap()
                && db
                    .finish_claimed_build(&b.id, me, BuildStatus::Succeeded, None)
                    .await
                    .unwrap()
            {
                ended.push(b.id);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_racing_on_postgres_never_share_a_build() {
    let (db, url) = common::pg_db_with_url().await;
    let all: BTreeSet<String> = workspaces_with_pending_builds(&db, 60)
        .await
        .into_iter()
        .collect();
    // Two pools, as two processes would have.
    let other = Db::connect_with_acquire_timeout(
        &DatabaseConfig::Postgres(url),
        Some(std::time::Duration::from_secs(10)),
    )
    .await
    .unwrap();
    let (a, b, c) = tokio::join!(
        tokio::spawn(race(db.clone(), "a")),
        tokio::spawn(race(other.clone(), "b")),
        tokio::spawn(race(other, "c")),
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    eprintln!("claimed: a {}, b {}, c {}", a.0.len(), b.0.len(), c.0.len());
    let mut seen = BTreeSet::new();
    for id in a.0.iter().chain(&b.0).chain(&c.0) {
        assert!(seen.insert(id.clone()), "build {id} claimed twice");
    }
    assert_eq!(seen, all, "every build claimed");
    let ended: Vec<&String> = a.1.iter().chain(&b.1).chain(&c.1).collect();
    assert_eq!(ended.len(), all.len(), "every build ended exactly once");
    assert!(db.active_builds().await.unwrap().is_empty());
}
