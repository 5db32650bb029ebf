#!/usr/bin/env python3
"""CycloneDX 1.5 SBOM (JSON, on stdout) of one image: every crate linked into its binaries.

Usage: sbom.py IMAGE VERSION REVISION CREATED DIGEST  (IMAGE: server or webhook; called by
scripts/build-images.sh). The crates are what `cargo tree -e normal` resolves for the image's
packages on the musl targets the static binaries are built for (no build scripts, proc macros or
dev-dependencies: they are not in the binaries), with licences from the crates' manifests,
checksums from Cargo.lock and the dependency edges. Written from `cargo tree` rather than with
cargo-cyclonedx so nothing more is compiled on CI and the crate set is exactly the link set.
"""

import json
import re
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = "ghcr.io/lumie-infra"
# The packages each image's binaries come from, and the targets they are built for.
IMAGES = {
    "server": (
        ["lumie-server", "lumie-agent", "lumie-cli"],
        ["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"],
    ),
    "webhook": (["lumie-webhook"], ["x86_64-unknown-linux-musl"]),
}
LINE = re.compile(r"^(\d+)(\S+) v(\S+)(?: \((/[^)]*)\))?\|([^|]*)\|([^|]*?)(?: \(\*\))?$")


def cargo_tree(packages, targets):
    cmd = ["cargo", "tree", "--locked", "--offline", "-e", "normal", "--prefix", "depth"]
    for t in targets:
        cmd += ["--target", t]
    for p in packages:
        cmd += ["-p", p]
    cmd += ["--format", "{p}|{l}|{r}"]
    return subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout


def main():
    image, version, revision, created, digest = sys.argv[1:6]
    packages, targets = IMAGES[image]
    lock = tomllib.loads((ROOT / "Cargo.lock").read_text())
    checksums = {(p["name"], p["version"]): p.get("checksum") for p in lock["package"]}

    components, edges, stack = {}, {}, []
    for line in cargo_tree(packages, targets).splitlines():
        m = LINE.match(line.strip())
        if not m:
            continue
        depth, name, ver, path, licence, repo = m.groups()
        ref = f"pkg:cargo/{name}@{ver}"
        depth = int(depth)
        del stack[depth:]
        if stack:
            edges.setdefault(stack[-1], set()).add(ref)
        stack.append(ref)
        edges.setdefault(ref, set())
        if ref in components:
            continue
        c = {"type": "application" if path else "library", "bom-ref": ref, "name": name,
             "version": ver, "purl": ref}
        if licence:
            c["licenses"] = [{"expression": licence}]
        sha = checksums.get((name, ver))
        if sha:
            c["hashes"] = [{"alg": "SHA-256", "content": sha}]
        if repo:
            c["externalReferences"] = [{"type": "vcs", "url": repo}]
        components[ref] = c

    name = f"lumie-{image}"
    bom = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{REGISTRY}/{name}@{digest}')}",
        "version": 1,
        "metadata": {
            "timestamp": created,
            "tools": {"components": [{"type": "application", "name": "scripts/sbom.py"}]},
            "component": {
                "type": "container",
                "bom-ref": f"{REGISTRY}/{name}@{digest}",
                "name": f"{REGISTRY}/{name}",
                "version": version,
                "purl": f"pkg:oci/{name}@{digest.replace(':', '%3A')}"
                f"?repository_url={REGISTRY}/{name}&tag={version}",
                "properties": [{"name": "org.opencontainers.image.revision", "value": revision}],
            },
        },
        "components": sorted(components.values(), key=lambda c: c["bom-ref"]),
        "dependencies": [{"ref": r, "dependsOn": sorted(d)} for r, d in sorted(edges.items())],
    }
    json.dump(bom, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
