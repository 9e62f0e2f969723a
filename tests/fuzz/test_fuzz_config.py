"""Hostile agent configuration files: the agent either starts, or exits at
once with a message that names the problem, never a traceback, and leaves no
link of its simulated node behind."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.conftest import examples
from tests.support.agent_proc import AGENT, cleanup_node, free_port
from tests.support.oracle import host_links

pytestmark = [pytest.mark.root, pytest.mark.e2e, pytest.mark.fuzz]

ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**65), 2**65),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=2),
)
SELECTORS = st.dictionaries(
    st.sampled_from(["vendors", "devices", "drivers", "pfNames", "rootDevices", "bogus"]),
    ANY,
    max_size=3,
)
SECTIONS: dict[str, st.SearchStrategy[Any]] = {
    "logLevel": st.sampled_from(["debug", "loud", 3]),
    "reconcileInterval": st.one_of(st.integers(-5, 10**12), st.text(max_size=4)),
    "deviceTimeout": st.one_of(st.floats(allow_nan=True), st.integers(-1, 5)),
    "metrics": st.dictionaries(
        st.sampled_from(["enabled", "address", "port", "allowRemote", "x"]), ANY, max_size=3
    ),
    "resourceList": st.lists(
        st.dictionaries(
            st.sampled_from(["resourceName", "resourcePrefix", "selectors", "deviceType"]),
            st.one_of(ANY, SELECTORS),
            max_size=4,
        ),
        max_size=3,
    ),
    "sriov": st.lists(
        st.dictionaries(
            st.sampled_from(["pfNames", "numVfs", "vfDrivers", "mtu", "bogus"]), ANY, max_size=3
        ),
        max_size=2,
    ),
    "policy": st.dictionaries(
        st.sampled_from(["keepEstablished", "enabled", "x"]), ANY, max_size=2
    ),
    "kubernetes": st.dictionaries(
        st.sampled_from(["watch", "kubeconfig", "events"]), ANY, max_size=2
    ),
    "unknownKey": ANY,
}


@st.composite
def config_text(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["mapping", "mapping", "mapping", "scalar", "bytes", "deep"]))
    if kind == "mapping":
        return yaml.safe_dump(draw(st.fixed_dictionaries({}, optional=SECTIONS))).encode()
    if kind == "scalar":
        return yaml.safe_dump(draw(ANY)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=256))
    return b"[" * 50_000 + b"]" * 50_000


@pytest.mark.timeout(900)
def test_hostile_config(tmp_path: Path) -> None:
    @settings(max_examples=examples(8))
    @given(content=config_text())
    def one(content: bytes) -> None:
        prefix = "c" + uuid.uuid4().hex[:4]
        run = tmp_path / prefix
        run.mkdir()
        (run / "agent.yaml").write_bytes(content)
        cmd = [
            AGENT,
            "--config",
            str(run / "agent.yaml"),
            "--simulate",
            "1x2",
            "--sim-prefix",
            prefix,
            "--state-dir",
            str(run / "state"),
            "--socket",
            str(run / "a.sock"),
            "--cni-socket",
            str(run / "c.sock"),
            "--metrics-port",
            str(free_port()),
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = proc.communicate(timeout=8)
        except subprocess.TimeoutExpired:
            proc.terminate()  # it started: the config was acceptable
            out, _ = proc.communicate(timeout=30)
            assert proc.returncode == 0, out
        else:
            assert proc.returncode != 0 or "ready" in out, out
            assert "Traceback" not in out, out
            assert out.strip(), "a refused config must say why"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            cleanup_node(prefix)
        assert "Traceback" not in out, out
        assert host_links(prefix) == set(), "a refused start left links behind"

    one()
