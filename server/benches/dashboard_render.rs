//! The dashboard's budgets (issue 11), measured rather than asserted:
//! - the workspaces page (`/`) for an admin with 1,000 workspaces (10 owners × 100; its first
//!   page of rows), rendered in-process by the real router (authentication, the database reads,
//!   the template): p50 and p99 against 20 ms, on SQLite and on PostgreSQL
//!   (`scripts/start-postgres.sh`);
//! - a first visit's total transfer: the sign-in page a signed-out visitor lands on, then the
//!   workspaces page (a developer's, and the admin's), and every asset those pages load, against
//!   150 KB.
//!
//! `cargo bench -p lumie-server --bench dashboard_render` (release build) prints the figures.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use axum::body::Body;
use http::Request;
use http_body_util::BodyExt;
use lumie_server::config::Config;
use lumie_server::dashboard::workspaces::PAGE_SIZE;
use lumie_server::db::Db;
use lumie_server::state::AppState;
use lumie_server::template::Template;
use tower::ServiceExt;

const OWNERS: usize = 10;
const PER_OWNER: usize = 100;
const RUNS: usize = 300;
const BUDGET_MS: f64 = 20.0;
const TRANSFER_BUDGET_BYTES: usize = 150 * 1024;

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

struct Tokens {
    admin: String,
    developer: String,
}

/// 1,000 workspaces of ten owners, and a developer with two of their own.
async fn seed(db: &Db) -> Tokens {
    let (_, admin) = db.bootstrap_admin("admin").await.unwrap().unwrap();
    for o in 0..OWNERS {
        let owner = db
            .create_user(&format!("user{o}"), "", false)
            .await
            .unwrap();
        for w in 0..PER_OWNER {
            db.create_workspace(
                &owner,
                &format!("ws{w}"),
                &format!("coder-user{o}-ws{w}"),
                None,
            )
            .await
            .unwrap();
        }
    }
    let dev = db.create_user("dev", "", false).await.unwrap();
    for name in ["web", "api"] {
        db.create_workspace(&dev, name, &format!("coder-dev-{name}"), None)
            .await
            .unwrap();
    }
    let developer = db.create_api_token(&dev.id, "bench").await.unwrap();
    Tokens { admin, developer }
}

async fn get(router: &axum::Router, path: &str, token: Option<&str>) -> (u16, Vec<u8>) {
    let mut b = Request::builder().uri(path);
    if let Some(t) = token {
        b = b.header("Coder-Session-Token", t);
    }
    let resp = router
        .clone()
        .oneshot(b.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, body)
}

/// The `/assets/…` files a page loads (stylesheet links and scripts).
fn assets_of(html: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for attr in ["href=\"/assets/", "src=\"/assets/"] {
        let mut rest = html;
        while let Some(i) = rest.find(attr) {
            let start = i + attr.len() - "/assets/".len();
            let tail = &rest[start..];
            let end = tail.find('"').unwrap_or(tail.len());
            out.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    out
}

async fn run(label: &str, db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let tokens = seed(&db).await;
    println!(
        "{label}: {} workspaces seeded in {:.1}s",
        OWNERS * PER_OWNER + 2,
        t.elapsed().as_secs_f64()
    );
    let state = AppState::new(
        Config::for_tests(dir.path().into()),
        db,
        Template::default(),
        None,
    )
    .await
    .unwrap();
    let router = lumie_server::router(state);

    // The admin's list: every workspace, rendered.
    let (status, page) = get(&router, "/", Some(&tokens.admin)).await;
    assert_eq!(status, 200);
    let page = String::from_utf8(page).unwrap();
    let rows = page.matches("<tr id=\"ws-").count();
    assert_eq!(rows, PAGE_SIZE, "the first page of rows");
    let of = format!("1–{PAGE_SIZE} of {}", OWNERS * PER_OWNER + 2);
    assert!(page.contains(&of), "the page says which rows of how many");
    for _ in 0..20 {
        get(&router, "/", Some(&tokens.admin)).await;
    }
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t = Instant::now();
        let (status, _) = get(&router, "/", Some(&tokens.admin)).await;
        times.push(t.elapsed());
        assert_eq!(status, 200);
    }
    times.sort();
    let (p50, p99) = (percentile(&times, 0.50), percentile(&times, 0.99));
    println!(
        "{label}: GET / as admin over {} workspaces (first page, {rows} rows), {:.0} KB of HTML: \
         p50 {p50:.2} ms, p99 {p99:.2} ms (budget p99 {BUDGET_MS} ms: {})",
        OWNERS * PER_OWNER + 2,
        page.len() as f64 / 1024.0,
        if p99 <= BUDGET_MS { "within" } else { "OVER" }
    );

    // A first visit: signed out, the sign-in page; then the developer's list; each asset once
    // (the browser caches them: `Cache-Control: no-cache` revalidates, it does not refetch).
    let (_, login) = get(&router, "/login", None).await;
    let (status, list) = get(&router, "/", Some(&tokens.developer)).await;
    assert_eq!(status, 200);
    let mut assets = assets_of(&String::from_utf8_lossy(&login));
    assets.extend(assets_of(&String::from_utf8_lossy(&list)));
    let mut asset_bytes = 0;
    for a in &assets {
        let (status, body) = get(&router, a, None).await;
        assert_eq!(status, 200, "{a}");
        asset_bytes += body.len();
    }
    let verdict = |total: usize| {
        if total <= TRANSFER_BUDGET_BYTES {
            "within"
        } else {
            "OVER"
        }
    };
    for (who, list) in [
        ("a developer (2 workspaces)", list.len()),
        ("the admin (1,002 workspaces)", page.len()),
    ] {
        let total = login.len() + list + asset_bytes;
        println!(
            "{label}: first visit of {who}: /login {:.1} KB + / {:.1} KB + {} assets {:.1} KB = \
             {:.1} KB (budget {} KB: {}), uncompressed",
            login.len() as f64 / 1024.0,
            list as f64 / 1024.0,
            assets.len(),
            asset_bytes as f64 / 1024.0,
            total as f64 / 1024.0,
            TRANSFER_BUDGET_BYTES / 1024,
            verdict(total),
        );
    }
}

#[tokio::main]
async fn main() {
    let (sqlite, _dir) = common::sqlite_db().await;
    run("SQLite", sqlite).await;
    run("PostgreSQL", common::pg_db().await).await;
}
