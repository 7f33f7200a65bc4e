"""Installs the custom nodes of gpu-runner/custom-nodes.toml at image build.

Usage: install_custom_nodes.py MANIFEST CUSTOM_NODES_DIR

Each node is pinned: a git node names a full 40-hex commit, a registry node an exact
version. Any failure (a fetch, a pin that does not match, a requirement that does not
install) exits non-zero, so the image build fails instead of shipping a broken node.
PyTorch stays as pinned (/opt/constraints.txt).
"""

import io
import json
import re
import subprocess
import sys
import tomllib
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

REGISTRY_API = "https://api.comfy.org"
CONSTRAINTS = "/opt/constraints.txt"
COMMIT = re.compile(r"^[0-9a-f]{40}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
TIMEOUT_S = 120


def run(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def from_git(node: dict, dest_root: Path) -> Path:
    url, ref = node["git"], node.get("ref", "")
    if not COMMIT.match(ref):
        raise SystemExit(f"{url}: ref must be a full 40-hex commit, got {ref!r}")
    name = node.get("name") or url.rstrip("/").removesuffix(".git").rsplit("/", 1)[-1]
    dest = dest_root / name
    run("git", "init", "-q", str(dest))
    run("git", "-C", str(dest), "fetch", "-q", "--depth", "1", url, ref)
    run("git", "-C", str(dest), "checkout", "-q", "--detach", "FETCH_HEAD")
    head = subprocess.run(
        ["git", "-C", str(dest), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    if head != ref:
        raise SystemExit(f"{url}: fetched {head}, expected {ref}")
    run("rm", "-rf", str(dest / ".git"))
    return dest


def from_registry(node: dict, dest_root: Path) -> Path:
    node_id, version = node["registry"], node.get("version", "")
    if not re.match(r"^\d+\.\d+\.\d+", version):
        raise SystemExit(f"{node_id}: version must be exact (e.g. 1.2.3), got {version!r}")
    query = urllib.parse.urlencode({"version": version})
    url = f"{REGISTRY_API}/nodes/{urllib.parse.quote(node_id)}/install?{query}"
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        info = json.load(response)
    if info.get("version") != version or not info.get("downloadUrl"):
        raise SystemExit(f"{node_id}: the registry has no version {version}: {info}")
    with urllib.request.urlopen(info["downloadUrl"], timeout=TIMEOUT_S) as response:
        archive = response.read()
    dest = dest_root / node.get("name", node_id)
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        for member in zf.namelist():
            if member.startswith("/") or ".." in Path(member).parts:
                raise SystemExit(f"{node_id}: unsafe path in archive: {member}")
        zf.extractall(dest)
    return dest


def main() -> None:
    manifest, dest_root = Path(sys.argv[1]), Path(sys.argv[2])
    nodes = tomllib.loads(manifest.read_text()).get("node", [])
    seen = set()
    for node in nodes:
        if ("git" in node) == ("registry" in node):
            raise SystemExit(f"each [[node]] names exactly one of git or registry: {node}")
        dest = from_git(node, dest_root) if "git" in node else from_registry(node, dest_root)
        if not NAME.match(dest.name) or dest.name in seen:
            raise SystemExit(f"bad or duplicate node folder name: {dest.name!r}")
        seen.add(dest.name)
        requirements = dest / "requirements.txt"
        if requirements.exists():
            run(sys.executable, "-m", "pip", "install", "-c", CONSTRAINTS, "-r", str(requirements))
        print(f"installed {dest.name}", flush=True)
    print(f"{len(nodes)} custom node(s) installed", flush=True)


if __name__ == "__main__":
    main()
