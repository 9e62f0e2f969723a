"""Run the installed nicwarden-agent as a subprocess, as an operator would."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
AGENT, CTL, SHIM = (str(BIN / n) for n in ("nicwarden-agent", "nicwardenctl", "nicwarden-cni"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Running:
    proc: subprocess.Popen[str]
    sock: Path
    cni_sock: Path
    prefix: str
    metrics_port: int
    args: list[str] = field(default_factory=list)

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CTL, "--socket", str(self.sock), *args], capture_output=True, text=True, timeout=60
        )

    def ctl_json(self, *args: str) -> dict[str, object]:
        r = self.ctl("-o", "json", *args)
        assert r.returncode == 0, r.stderr
        out: dict[str, object] = json.loads(r.stdout)
        return out


def start_agent(
    tmp: Path,
    *extra: str,
    spec: str = "2x8",
    prefix: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 30,
    persistent: bool = False,
) -> Running:
    """``persistent``: the simulated node lives in ``tmp/sim`` and outlives the
    agent (--sim-keep), so a restarted agent adopts it as it would a real node."""
    prefix = prefix or "e" + uuid.uuid4().hex[:4]
    run_dir = tmp / "run"
    sock, cni_sock = run_dir / "agent.sock", run_dir / "cni.sock"
    port = free_port()
    cmd = [
        AGENT,
        "--simulate",
        spec,
        "--sim-prefix",
        prefix,
        "--state-dir",
        str(tmp / "state"),
        "--socket",
        str(sock),
        "--cni-socket",
        str(cni_sock),
        "--metrics-port",
        str(port),
        *extra,
    ]
    if persistent:
        cmd += ["--sim-root", str(tmp / "sim"), "--sim-keep"]
    log = open(tmp / f"agent-{prefix}-{time.monotonic_ns()}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    r = Running(proc, sock, cni_sock, prefix, port, cmd)
    r.log_path = Path(log.name)  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"agent exited {proc.returncode}: {Path(log.name).read_text()}")
        if sock.exists() and cni_sock.exists() and r.ctl("version").returncode == 0:
            return r
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("agent did not become ready")


def stop_agent(r: Running, timeout: float = 30) -> str:
    if r.proc.poll() is None:
        r.proc.send_signal(signal.SIGTERM)
        r.proc.wait(timeout=timeout)
    return Path(r.log_path).read_text()  # type: ignore[attr-defined]


def kill_agent(r: Running) -> None:
    if r.proc.poll() is None:
        r.proc.kill()
        r.proc.wait(timeout=30)


def cleanup_node(prefix: str) -> None:
    """What a killed agent could not remove: its simulated links and pins."""
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(prefix):
            subprocess.run(["ip", "link", "del", name], capture_output=True)
    pins = Path("/sys/fs/bpf/nicwarden") / f"sim-{prefix}"
    if pins.exists():
        shutil.rmtree(pins, ignore_errors=True)
    for root in Path(tempfile.gettempdir()).glob(f"nicwarden-sim-{prefix}-*"):
        shutil.rmtree(root, ignore_errors=True)
