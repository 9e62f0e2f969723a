"""Independent oracles for kernel tests: run ``ip``/``tc``/``bpftool`` and
read what the kernel holds, not what the agent says it did."""

from __future__ import annotations

import subprocess
import uuid


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run an independent oracle command (ip, tc, bpftool, ping) and capture it."""
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def unique(prefix: str) -> str:
    """A short unique name (interface names are limited to 15 characters)."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def host_links(prefix: str) -> set[str]:
    """Names of host-netns links starting with ``prefix`` (oracle: ip)."""
    out = run("ip", "-o", "link", "show").stdout
    names = {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}
    return {n for n in names if n.startswith(prefix)}
