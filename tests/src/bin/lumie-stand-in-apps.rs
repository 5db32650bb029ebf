//! `lumie-stand-in-apps [--host 127.0.0.1] [--watch-pid PID] [slug…]`: the harness's stand-ins
//! for Tilt, code-server and the agents UI ([`StandInApps`]) as a process of their own, for a
//! workspace template's startup script to start inside the workspace (as a real template starts
//! code-server). Serves until killed (the agent stops the script's process group on shutdown)
//! or, with `--watch-pid`, until that process (the agent) is gone, so a killed agent leaves no
//! stand-in holding the contract ports.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use lumie_tests::workspace_pods::StandInApps;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut host: IpAddr = [127, 0, 0, 1].into();
    let mut watch: Option<u32> = None;
    let mut slugs: Vec<&'static str> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--host" => host = args.next().context("--host needs an address")?.parse()?,
            "--watch-pid" => watch = Some(args.next().context("--watch-pid needs a pid")?.parse()?),
            slug => match lumie_contract::apps::by_slug(slug) {
                Some(app) => slugs.push(app.slug),
                None => bail!("unknown app {slug:?}"),
            },
        }
    }
    if slugs.is_empty() {
        slugs = lumie_contract::apps::ALL.iter().map(|a| a.slug).collect();
    }
    let apps = StandInApps::empty(host);
    for slug in &slugs {
        apps.start_one(slug).await?;
        println!("{slug} stand-in listening on {host}");
    }
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(pid) = watch
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            println!("process {pid} is gone; stopping");
            return Ok(());
        }
    }
}
