"""Play a container runtime: exec a CNI plugin with env + stdin, as libcni does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CNI_PATH = "/usr/lib/cni"
REPO = Path(__file__).resolve().parents[2]
SHIM_SOURCE = REPO / "cni" / "shim.c"
BUILD_SHIM = REPO / "scripts" / "build-shim"
# The static shim binary, where scripts/build-shim (run by scripts/setup) puts it.
SHIM = Path(sys.executable).parent / "nicwarden-cni"


def ensure_shim_built() -> Path:
    """Rebuild the shim when its source is newer than the binary, so tests
    never exercise a stale build (the build is atomic and takes well under a
    second)."""
    fresh = SHIM.exists() and SHIM.stat().st_mtime >= SHIM_SOURCE.stat().st_mtime
    if not fresh or SHIM.read_bytes()[:4] != b"\x7fELF":
        subprocess.run([str(BUILD_SHIM), str(SHIM)], check=True, capture_output=True)
    return SHIM


def build_scan_harness(out: Path) -> Path:
    """The shim's config scanner with a test main() (see cni/shim.c)."""
    env = {**os.environ, "SHIM_CFLAGS": "-DNICWARDEN_SCAN_MAIN -Wno-unused"}
    subprocess.run([str(BUILD_SHIM), str(out)], check=True, capture_output=True, env=env)
    return out


K8S_ARGS = "IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={cid};K8S_POD_UID=uid-{pod}"


@dataclass
class CniOutput:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout) if self.stdout.strip() else None


def invoke(
    plugin: str,
    command: str,
    config: dict[str, Any],
    *,
    container: str = "",
    netns: str = "",
    ifname: str = "",
    pod: str = "pod",
    namespace: str = "default",
    cni_path: str = CNI_PATH,
    extra_env: dict[str, str] | None = None,
    timeout: float = 60,
) -> CniOutput:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CNI_COMMAND": command,
        "CNI_PATH": cni_path,
    }
    if container:
        env["CNI_CONTAINERID"] = container
        env["CNI_ARGS"] = K8S_ARGS.format(ns=namespace, pod=pod, cid=container)
    if netns:
        env["CNI_NETNS"] = netns
    if ifname:
        env["CNI_IFNAME"] = ifname
    env.update(extra_env or {})
    proc = subprocess.run(
        [plugin],
        input=json.dumps(config),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CniOutput(proc.returncode, proc.stdout, proc.stderr)


def netns_path(name: str) -> str:
    return str(Path("/var/run/netns") / name)
