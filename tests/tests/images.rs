//! The OCI images (issue 14), built once per test binary the way `make images` builds them
//! (`scripts/build-static.sh`, then `scripts/build-images.sh`) and unpacked with plain tar from
//! the OCI archive: the tag is the chart's default image reference; the config runs as 65532
//! with the entrypoint the chart expects and the OCI labels; the file tree is exactly
//! `images/<name>.files` (byte for byte the build output, no shell); every entrypoint's
//! `--version` runs from the unpacked root, read-only, as 65532, with no host library; the
//! compressed layers fit their budgets; the Dockerfiles copy exactly the manifests; and
//! lumie-server, run from its image root against the harness with only the chart's volumes
//! writable, hands the agent to a workspace pod, whose agent reaches `connected`.
//!
//! Runs as root (CI does): unpacking keeps the files' owners, and the runs use a private mount
//! namespace (`unshare -m`) for the read-only bind of the root and `chroot --userspec`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use lumie_server::api::ReadyJson;
use lumie_server::config::DatabaseConfig;
use lumie_tests::control_plane::Echo;
use lumie_tests::stack::{self, WorkspaceClient, agent_connected};
use lumie_tests::tools::repo_root;
use lumie_tests::workspace_pods::DevContainerRunner;
use lumie_tests::{Cluster, Identity, control_plane};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Compressed layer budgets (issue 14), bytes.
const BUDGETS: &[(&str, u64)] = &[("server", 30_000_000), ("webhook", 15_000_000)];
const NONROOT: u32 = 65532;

// ----- the manifests (images/<name>.files) and configs (images/<name>.config) -----

/// Where a manifest line's content comes from.
#[derive(Debug, Clone, PartialEq)]
enum Src {
    /// `$TARGET/…`: under the cargo target dir (the static binaries).
    Target(String),
    /// A path in the repository.
    Repo(String),
    /// An absolute path on the build machine.
    Host(String),
    /// `-`: an empty directory.
    Dir,
}

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    src: Src,
    dst: String,
    mode: u32,
    owner: (u32, u32),
}

fn parse_manifest(text: &str) -> Result<Vec<Entry>, String> {
    let mut out = vec![];
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let [src, dst, mode, owner] = f[..] else {
            return Err(format!("line {}: want `src dst mode owner`: {line}", n + 1));
        };
        let mode = u32::from_str_radix(mode, 8).map_err(|e| format!("line {}: {e}", n + 1))?;
        let (uid, gid) = owner
            .split_once(':')
            .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
            .ok_or_else(|| format!("line {}: owner is uid:gid: {owner}", n + 1))?;
        if !dst.starts_with('/') {
            return Err(format!("line {}: dst must be absolute: {dst}", n + 1));
        }
        let src = match src {
            "-" => Src::Dir,
            s if s.starts_with("$TARGET/") => Src::Target(s["$TARGET/".len()..].into()),
            s if s.starts_with('/') => Src::Host(s.into()),
            s => Src::Repo(s.into()),
        };
        out.push(Entry {
            src,
            dst: dst.into(),
            mode,
            owner: (uid, gid),
        });
    }
    Ok(out)
}

/// The Dockerfile COPY line a manifest entry must have: the build stage's repository is at
/// /src, its cargo target dir /src/target, and /empty is an empty directory.
fn copy_line(e: &Entry) -> String {
    let (src, dst) = match &e.src {
        Src::Target(p) => (format!("/src/target/{p}"), e.dst.clone()),
        Src::Repo(p) => (format!("/src/{p}"), e.dst.clone()),
        Src::Host(p) => (p.clone(), e.dst.clone()),
        Src::Dir => ("/empty/".into(), format!("{}/", e.dst)),
    };
    format!(
        "COPY --from=build --chmod={:04o} --chown={}:{} {src} {dst}",
        e.mode, e.owner.0, e.owner.1
    )
}

/// `key value` lines of images/<name>.config, in order.
fn image_config(name: &str) -> Vec<(String, String)> {
    let text = read(&repo_root().join(format!("images/{name}.config")));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap_or((l, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn config_values(name: &str, key: &str) -> Vec<String> {
    image_config(name)
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn manifest(name: &str) -> Vec<Entry> {
    parse_manifest(&read(&repo_root().join(format!("images/{name}.files"))))
        .unwrap_or_else(|e| panic!("images/{name}.files: {e}"))
}

/// The chart's default image reference for `name` (values.yaml repository, Chart appVersion).
fn chart_reference(name: &str) -> String {
    let chart: serde_yaml::Value =
        serde_yaml::from_str(&read(&repo_root().join("charts/lumie-coder/Chart.yaml"))).unwrap();
    let values: serde_yaml::Value =
        serde_yaml::from_str(&read(&repo_root().join("charts/lumie-coder/values.yaml"))).unwrap();
    let repo = values[name]["image"]["repository"].as_str().unwrap();
    assert_eq!(
        values[name]["image"]["tag"].as_str(),
        Some(""),
        "no tag override"
    );
    format!("{repo}:{}", chart["appVersion"].as_str().unwrap())
}

fn app_version() -> String {
    let chart: serde_yaml::Value =
        serde_yaml::from_str(&read(&repo_root().join("charts/lumie-coder/Chart.yaml"))).unwrap();
    chart["appVersion"].as_str().unwrap().to_string()
}

// ----- building and unpacking, once per process -----

/// The cargo target dir of this build (target/<profile>/deps/<test> → target).
fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

/// A command without what `cargo test` set for this process, so cargo inside the scripts sees
/// the same environment as a plain `make images` (no rebuild from changed variables).
fn script(path: &str) -> Command {
    let mut c = Command::new("bash");
    c.arg(repo_root().join(path)).current_dir(repo_root());
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().to_string();
        let keep = ["CARGO_HOME", "CARGO_TARGET_DIR"].contains(&k.as_str());
        if (k.starts_with("CARGO_") && !keep) || k == "LD_LIBRARY_PATH" || k == "OUT_DIR" {
            c.env_remove(&k);
        }
    }
    c.env("CARGO_TARGET_DIR", target_dir());
    c
}

struct Image {
    /// server or webhook.
    name: &'static str,
    /// The unpacked root file system.
    root: PathBuf,
    /// The OCI image config (`config` holds User, Entrypoint, Labels…).
    config: Value,
    /// The OCI image manifest.
    manifest: Value,
    /// The archive's `org.opencontainers.image.ref.name`.
    ref_name: String,
    /// What build-images.sh printed as the digest.
    digest: String,
}

struct Built {
    images: Vec<Image>,
    _dir: tempfile::TempDir,
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        assert_eq!(
            run_ok(Command::new("id").arg("-u")).trim(),
            "0",
            "the image tests run as root (they unpack with owners and use mount namespaces)"
        );
        // The static binaries (the shipped set, one build shared with `static_agent`), then
        // the images: what `make images` runs.
        let t = Instant::now();
        lumie_tests::static_bins::build(lumie_tests::static_bins::SHIPPED)
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("scripts/build-static.sh: {:.1?}", t.elapsed());
        let t = Instant::now();
        let printed = run_ok(&mut script("scripts/build-images.sh"));
        eprintln!("build-images.sh: {:.1?}\n{printed}", t.elapsed());

        let dir = tempfile::tempdir().unwrap();
        let images = ["server", "webhook"]
            .into_iter()
            .map(|name| unpack(name, dir.path()))
            .collect();
        Built { images, _dir: dir }
    })
}

fn image(name: &str) -> &'static Image {
    built().images.iter().find(|i| i.name == name).unwrap()
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    layout.join("blobs/sha256").join(hex)
}

fn json_file(p: &Path) -> Value {
    serde_json::from_str(&read(p)).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Unpacks `target/images/lumie-<name>.tar` with tar alone: the OCI layout, then each layer in
/// order over an empty root (owners and modes kept: we are root).
fn unpack(name: &'static str, under: &Path) -> Image {
    let archive = target_dir().join(format!("images/lumie-{name}.tar"));
    let layout = under.join(format!("{name}-oci"));
    let root = under.join(format!("{name}-root"));
    std::fs::create_dir_all(&layout).unwrap();
    std::fs::create_dir_all(&root).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&layout),
    );
    let index = json_file(&layout.join("index.json"));
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "one image in {}", archive.display());
    let digest = manifests[0]["digest"].as_str().unwrap().to_string();
    let ref_name = manifests[0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let manifest = json_file(&blob(&layout, &digest));
    let config = json_file(&blob(
        &layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ));
    for layer in manifest["layers"].as_array().unwrap() {
        let media = layer["mediaType"].as_str().unwrap();
        assert!(media.ends_with("tar+gzip"), "gzip layers: {media}");
        run_ok(
            Command::new("tar")
                .args(["-xzpf"])
                .arg(blob(&layout, layer["digest"].as_str().unwrap()))
                .args(["--numeric-owner", "-C"])
                .arg(&root),
        );
    }
    let printed = read(&target_dir().join(format!("images/lumie-{name}.digest")));
    assert_eq!(
        printed.trim(),
        digest,
        "the .digest file names the manifest"
    );
    Image {
        name,
        root,
        config,
        manifest,
        ref_name,
        digest,
    }
}

/// Every path under `root` (relative, with a leading `/`) with (is_dir, mode bits, uid, gid).
fn tree(root: &Path) -> BTreeMap<String, (bool, u32, u32, u32)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (bool, u32, u32, u32)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            assert!(
                m.is_dir() || m.is_file(),
                "{}: only files and directories",
                p.display()
            );
            let rel = format!("/{}", p.strip_prefix(root).unwrap().display());
            out.insert(rel, (m.is_dir(), m.mode() & 0o7777, m.uid(), m.gid()));
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The tree a manifest describes: its entries and their parent directories (0755, root).
fn expected_tree(entries: &[Entry]) -> BTreeMap<String, (bool, u32, u32, u32)> {
    let mut out = BTreeMap::new();
    for e in entries {
        let mut p = Path::new(&e.dst).parent();
        while let Some(dir) = p.filter(|d| *d != Path::new("/")) {
            out.entry(dir.display().to_string())
                .or_insert((true, 0o755, 0, 0));
            p = dir.parent();
        }
        let is_dir = e.src == Src::Dir;
        out.insert(e.dst.clone(), (is_dir, e.mode, e.owner.0, e.owner.1));
    }
    out
}

fn source_path(src: &Src) -> Option<PathBuf> {
    match src {
        Src::Target(p) => Some(target_dir().join(p)),
        Src::Repo(p) => Some(repo_root().join(p)),
        Src::Host(p) => Some(PathBuf::from(p)),
        Src::Dir => None,
    }
}

// ----- running from the unpacked root -----

/// `argv` from `root` in a private mount namespace: the root bind-mounted read-only over
/// itself, each `(host dir, image path)` volume bind-mounted writable, then `chroot` as
/// 65532:65532 with exactly `env` (no host library or file is reachable).
fn in_image(
    root: &Path,
    volumes: &[(&Path, &str)],
    env: &[(String, String)],
    argv: &[&str],
) -> Command {
    let script = r#"set -e
r="$1"; shift
/usr/bin/mount --bind "$r" "$r"
/usr/bin/mount -o remount,bind,ro "$r"
while [ "$1" != "--" ]; do /usr/bin/mount --bind "$1" "$r$2"; shift 2; done
shift
exec /usr/sbin/chroot --userspec=65532:65532 --groups=65532 "$r" "$@""#;
    let mut c = Command::new("/usr/bin/unshare");
    c.args([
        "--mount",
        "--propagation",
        "private",
        "/bin/sh",
        "-c",
        script,
        "sh",
    ])
    .arg(root);
    for (host, dst) in volumes {
        c.arg(host).arg(dst);
    }
    c.arg("--").args(argv);
    c.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
    c
}

/// The image config's `Env` as pairs.
fn image_env(img: &Image) -> Vec<(String, String)> {
    img.config["config"]["Env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str()?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn entrypoint(img: &Image) -> Vec<String> {
    serde_json::from_value(img.config["config"]["Entrypoint"].clone()).unwrap()
}

// ----- the tests -----

#[test]
fn manifest_lines_parse_and_map_to_dockerfile_copies() {
    let cases = [
        (
            "$TARGET/static/linux-amd64/lumie-server /usr/local/bin/lumie-server 0755 0:0",
            "COPY --from=build --chmod=0755 --chown=0:0 /src/target/static/linux-amd64/lumie-server /usr/local/bin/lumie-server",
        ),
        (
            "images/passwd /etc/passwd 0644 0:0  # comment",
            "COPY --from=build --chmod=0644 --chown=0:0 /src/images/passwd /etc/passwd",
        ),
        (
            "/etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt 0644 0:0",
            "COPY --from=build --chmod=0644 --chown=0:0 /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt",
        ),
        (
            "- /var/lib/lumie-coder 0755 65532:65532",
            "COPY --from=build --chmod=0755 --chown=65532:65532 /empty/ /var/lib/lumie-coder/",
        ),
        (
            "- /tmp 1777 0:0",
            "COPY --from=build --chmod=1777 --chown=0:0 /empty/ /tmp/",
        ),
    ];
    for (line, want) in cases {
        let e = parse_manifest(line).unwrap();
        assert_eq!(e.len(), 1, "{line}");
        assert_eq!(copy_line(&e[0]), want, "{line}");
    }
    for bad in [
        "a /b 0755",
        "a b 0755 0:0",
        "a /b 9 0:0",
        "a /b 0755 root",
        "a /b 0755 0:0 extra",
    ] {
        assert!(parse_manifest(bad).is_err(), "{bad} is refused");
    }
    assert_eq!(parse_manifest("# only a comment\n\n").unwrap(), vec![]);
}

/// The Dockerfile path gives the same tree and config as `make images` by construction: its
/// final stage copies exactly the manifest, in order, and sets the config's user, env,
/// entrypoint and cmd, and the chart's version label.
#[test]
fn dockerfiles_copy_exactly_the_manifests() {
    for name in ["server", "webhook"] {
        let text = read(&repo_root().join(format!("images/{name}.Dockerfile")));
        let last_from = text.rfind("\nFROM ").expect("a multi-stage Dockerfile");
        let final_stage = &text[last_from + 1..];
        assert!(
            final_stage.starts_with("FROM scratch\n"),
            "{name}: the final stage is FROM scratch"
        );
        let lines: Vec<&str> = final_stage.lines().map(str::trim).collect();
        let copies: Vec<String> = lines
            .iter()
            .filter(|l| l.starts_with("COPY "))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        let want: Vec<String> = manifest(name).iter().map(copy_line).collect();
        assert_eq!(
            copies, want,
            "{name}.Dockerfile COPY lines = images/{name}.files"
        );
        assert!(
            !lines.iter().any(|l| l.starts_with("RUN ")),
            "{name}: nothing runs in the final stage"
        );

        let one = |key: &str| config_values(name, key).into_iter().next();
        assert!(lines.contains(&format!("USER {}", one("user").unwrap()).as_str()));
        let envs: Vec<String> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("ENV "))
            .map(String::from)
            .collect();
        assert_eq!(envs, config_values(name, "env"), "{name}: ENV = config env");
        let ep = format!(r#"ENTRYPOINT ["{}"]"#, one("entrypoint").unwrap());
        assert!(lines.contains(&ep.as_str()), "{name}: {ep}");
        match one("cmd") {
            Some(cmd) => assert!(lines.contains(&format!(r#"CMD ["{cmd}"]"#).as_str())),
            None => assert!(!lines.iter().any(|l| l.starts_with("CMD "))),
        }
        let version = format!(r#"org.opencontainers.image.version="{}""#, app_version());
        assert!(final_stage.contains(&version), "{name}: {version}");
        assert!(final_stage.contains(r#"org.opencontainers.image.revision="${REVISION}""#));
    }
}

#[test]
fn images_are_tagged_as_the_chart_pulls_them_and_configured_to_run_as_nonroot() {
    let revision = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(repo_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    for img in &built().images {
        let name = img.name;
        assert_eq!(img.ref_name, chart_reference(name), "{name}: tag");
        let c = &img.config["config"];
        assert_eq!(c["User"], "65532:65532", "{name}: user");
        assert_eq!(img.config["os"], "linux");
        assert_eq!(img.config["architecture"], "amd64");
        assert_eq!(
            entrypoint(img),
            config_values(name, "entrypoint"),
            "{name}: entrypoint"
        );
        let cmd: Vec<String> = serde_json::from_value(c["Cmd"].clone()).unwrap_or_default();
        assert_eq!(cmd, config_values(name, "cmd"), "{name}: cmd");
        let env: Vec<String> = image_env(img)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(env, config_values(name, "env"), "{name}: env");
        let label = |k: &str| c["Labels"][format!("org.opencontainers.image.{k}")].clone();
        assert_eq!(
            label("source"),
            "https://github.com/lumie-infra/lumie-coder"
        );
        assert_eq!(label("version"), app_version().as_str());
        assert_eq!(label("title"), format!("lumie-{name}").as_str());
        if let Some(rev) = &revision {
            assert_eq!(label("revision"), rev.as_str(), "{name}: revision label");
        }
        assert_eq!(label("created"), img.config["created"], "{name}: created");
        eprintln!("{name}: {} {}", img.ref_name, img.digest);
    }
}

/// The unpacked tree is exactly the manifest (parents 0755 root), each file byte for byte what
/// the build produced, and nothing else: no shell, no /bin at all.
#[test]
fn image_trees_are_exactly_their_manifests_with_no_shell() {
    for img in &built().images {
        let entries = manifest(img.name);
        assert_eq!(
            tree(&img.root),
            expected_tree(&entries),
            "{}: the tree is images/{}.files",
            img.name,
            img.name
        );
        for e in &entries {
            if let Some(src) = source_path(&e.src) {
                let got = std::fs::read(img.root.join(e.dst.trim_start_matches('/'))).unwrap();
                let want = std::fs::read(&src).unwrap();
                assert!(got == want, "{}: {} is {}", img.name, e.dst, src.display());
            }
        }
        let shells = ["sh", "bash", "dash", "ash", "zsh", "busybox"];
        for path in tree(&img.root).keys() {
            let base = path.rsplit('/').next().unwrap();
            assert!(!shells.contains(&base), "{}: a shell at {path}", img.name);
        }
        assert!(!img.root.join("bin").exists(), "{}: no /bin", img.name);
        let ca = read(&img.root.join("etc/ssl/certs/ca-certificates.crt"));
        assert!(
            ca.matches("BEGIN CERTIFICATE").count() > 50,
            "{}: Debian's CA bundle",
            img.name
        );
        let passwd = read(&img.root.join("etc/passwd"));
        assert!(
            passwd
                .lines()
                .any(|l| l.starts_with("nonroot:x:65532:65532:"))
        );
        let group = read(&img.root.join("etc/group"));
        assert!(group.lines().any(|l| l.starts_with("nonroot:x:65532:")));
    }
}

/// Each entrypoint (and the server's amd64 agent and CLI) prints its version from the unpacked
/// root mounted read-only, as 65532, with nothing from the host: static executables.
#[test]
fn entrypoints_print_their_version_from_the_read_only_root_as_65532() {
    let version = app_version();
    for img in &built().images {
        let mut programs = vec![entrypoint(img)[0].clone()];
        if img.name == "server" {
            programs.push("/usr/local/share/lumie-coder/bin/lumie-agent-linux-amd64".into());
            programs.push("/usr/local/share/lumie-coder/bin/lumie-linux-amd64".into());
        }
        for p in programs {
            let out = in_image(&img.root, &[], &image_env(img), &[&p, "--version"])
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{}: {p} --version: {}\n{stdout}{}",
                img.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(stdout.contains(&version), "{p} --version: {stdout}");
            eprintln!("{}: {p} --version: {}", img.name, stdout.trim());
        }
    }
    // The root really is read-only there: with no data volume over it, the server cannot
    // create its database in the image's (65532-owned) data dir.
    let img = image("server");
    let mut env = image_env(img);
    env.push(("CODER_ACCESS_URL".into(), "http://127.0.0.1:1".into()));
    let out = in_image(&img.root, &[], &env, &[&entrypoint(img)[0]])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "no writable data dir: {stderr}");
    assert!(
        stderr.contains("database"),
        "the server names its database: {stderr}"
    );
    let data = img.root.join("var/lib/lumie-coder");
    assert_eq!(
        std::fs::read_dir(&data).unwrap().count(),
        0,
        "nothing written"
    );
}

/// Beside each archive, a CycloneDX SBOM naming the image by digest and covering the crates
/// linked into its binaries (the workspace crates the image holds, and what they link).
#[test]
fn each_image_has_an_sbom_of_the_crates_in_its_binaries() {
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "server",
            &[
                "lumie-server",
                "lumie-agent",
                "lumie-cli",
                "lumie-contract",
                "sqlx-sqlite",
                "russh",
            ],
            &["lumie-webhook", "lumie-tests", "tempfile"],
        ),
        (
            "webhook",
            &["lumie-webhook", "lumie-contract", "kube-client", "rustls"],
            &["lumie-server", "lumie-agent", "sqlx-core", "russh"],
        ),
    ];
    for (name, has, lacks) in cases {
        let img = image(name);
        let bom = json_file(&target_dir().join(format!("images/lumie-{name}.cdx.json")));
        assert_eq!(bom["bomFormat"], "CycloneDX");
        assert_eq!(
            bom["metadata"]["component"]["bom-ref"],
            format!("ghcr.io/lumie-infra/lumie-{name}@{}", img.digest).as_str()
        );
        let crates: Vec<&str> = bom["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        for c in *has {
            assert!(crates.contains(c), "lumie-{name} SBOM lists {c}");
        }
        for c in *lacks {
            assert!(!crates.contains(c), "lumie-{name} SBOM does not list {c}");
        }
        for c in bom["components"].as_array().unwrap() {
            let registry = c["type"] == "library";
            assert!(c["licenses"][0]["expression"].is_string(), "{c}: a licence");
            assert_eq!(
                registry,
                c["hashes"][0]["content"].is_string(),
                "{c}: checksum"
            );
        }
    }
}

#[test]
fn compressed_layers_fit_their_budgets() {
    for (name, budget) in BUDGETS {
        let img = image(name);
        let layers: u64 = img.manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["size"].as_u64().unwrap())
            .sum();
        eprintln!("lumie-{name}: {layers} bytes of compressed layers (budget {budget})");
        assert!(
            layers <= *budget,
            "lumie-{name}: {layers} bytes of compressed layers, over {budget}"
        );
    }
}

/// lumie-server from its image root against the harness, the way the chart runs it: as 65532,
/// root read-only, only the data volume and /tmp writable, the image's env. It lists both agent
/// binaries, serves the CLI, and a workspace pod downloads the agent from it and connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_from_its_image_hands_the_agent_to_a_workspace_pod() {
    let img = image("server");
    let cluster = Cluster::shared();
    let work = tempfile::tempdir().unwrap();
    let _webhook = stack::start_workspace_admission(cluster, work.path())
        .await
        .unwrap();

    // The chart's volumes: the data dir and /tmp, owned by 65532 as fsGroup makes them.
    let data = work.path().join("data");
    let tmp = work.path().join("tmp");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&tmp).unwrap();
    let env = image_env(img);
    let data_dir = env
        .iter()
        .find(|(k, _)| k == "LUMIE_DATA_DIR")
        .map(|(_, v)| v.clone())
        .expect("the image names its data dir");
    // The admin exists before the start (the server shows a first admin's token only on a
    // terminal), in the database file the server's default SQLite path names.
    let db = lumie_server::db::Db::connect(&DatabaseConfig::Sqlite(data.join("lumie-coder.db")))
        .await
        .unwrap();
    let (_, token) = db.bootstrap_admin("admin").await.unwrap().unwrap();
    db.close().await;
    // The control plane's kubeconfig, its CA file moved into the /tmp volume.
    let kubeconfig = read(&cluster.kubeconfig(Identity::ControlPlane));
    let ca = cluster.dir().join("ca.crt");
    std::fs::copy(&ca, tmp.join("ca.crt")).unwrap();
    std::fs::write(
        tmp.join("kubeconfig"),
        kubeconfig.replace(&ca.display().to_string(), "/tmp/ca.crt"),
    )
    .unwrap();
    run_ok(
        Command::new("chown")
            .args(["-R", &format!("{NONROOT}:{NONROOT}")])
            .arg(&data)
            .arg(&tmp),
    );

    let addr = control_plane::free_loopback_addr().unwrap();
    let base = format!("http://{addr}");
    let mut env = env.clone();
    env.extend([
        ("LUMIE_LISTEN_ADDR".into(), addr.to_string()),
        ("CODER_ACCESS_URL".into(), base.clone()),
        ("LUMIE_AGENT_URL".into(), base.clone()),
        ("KUBECONFIG".into(), "/tmp/kubeconfig".into()),
        ("RUST_LOG".into(), "info".into()),
        ("NO_COLOR".into(), "1".into()),
    ]);
    let mut server = ImageServer::spawn(
        in_image(
            &img.root,
            &[(&data, data_dir.as_str()), (&tmp, "/tmp")],
            &env,
            &[&entrypoint(img)[0]],
        ),
        addr,
    );
    let http = reqwest::Client::new();

    // Both agents and both CLIs, where the server looks for them, served with their checksums.
    let ready: ReadyJson = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ready.agent_binaries,
        ["lumie-agent-linux-amd64", "lumie-agent-linux-arm64"]
    );
    assert!(ready.database && ready.kube, "{ready:?}");
    let bin_dir = img.root.join("usr/local/share/lumie-coder/bin");
    for file in [
        "lumie-linux-amd64",
        "lumie-linux-arm64",
        "lumie-agent-linux-arm64",
    ] {
        let resp = http
            .head(format!("{base}/bin/{file}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "/bin/{file}");
        let want = hex::encode(Sha256::digest(std::fs::read(bin_dir.join(file)).unwrap()));
        assert_eq!(
            resp.headers()[lumie_server::distribution::SHA256_HEADER],
            want.as_str(),
            "/bin/{file} checksum"
        );
    }

    // A workspace pod downloads the agent from the image's server; the agent connects.
    let runner = DevContainerRunner::created(work.path().join("pods")).unwrap();
    cluster.set_pod_action(Arc::new(runner));
    let api = WorkspaceClient::new(&base, &token);
    let created = api.create("admin", "from-image").await;
    let log = work
        .path()
        .join("pods")
        .join(format!("{}.log", created.pod_name));
    let ws = api
        .wait_for(
            "the agent to connect",
            &created.id,
            Duration::from_secs(120),
            &log,
            agent_connected,
        )
        .await;
    let downloaded = work
        .path()
        .join("pods")
        .join(&created.pod_name)
        .join("bin/lumie-agent");
    let pod_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        std::fs::read(&downloaded).unwrap()
            == std::fs::read(bin_dir.join("lumie-agent-linux-amd64")).unwrap(),
        "the pod runs the image's agent"
    );
    eprintln!(
        "agent {:?} after download from the image's server\n{pod_log}",
        ws.agent.map(|a| a.status)
    );
    // The server wrote its state only into the data volume.
    assert!(data.join("lumie-coder.db").exists());
    server.kill();
    cluster.clear_pod_action();
}

/// The image's lumie-server process (the unshare/chroot chain execs into it: one pid).
struct ImageServer {
    child: std::process::Child,
}

impl ImageServer {
    /// Starts `cmd` and waits (bounded) until the server says it listens on `addr`; its log
    /// goes to the test's stderr.
    fn spawn(mut cmd: Command, addr: SocketAddr) -> ImageServer {
        let label = format!("lumie-server (image)[{addr}]");
        let child =
            control_plane::spawn_until_listening(&mut cmd, Stdio::inherit(), Echo::all(label))
                .unwrap();
        ImageServer { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ImageServer {
    fn drop(&mut self) {
        self.kill();
    }
}
